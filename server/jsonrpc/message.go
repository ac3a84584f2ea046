// Package jsonrpc is a JSON-RPC 2.0 codec and method dispatcher that is independent of
// the transport: HTTP and the Unix socket hand it one message (a request, a
// notification or a batch) at a time and write back what it returns.
package jsonrpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	kjson "sigs.k8s.io/json"
)

// Version is the only protocol version accepted and sent.
const Version = "2.0"

// Request is one JSON-RPC request, or a notification when ID is nil.
type Request struct {
	// ID is the raw JSON id (a string, a number or null); nil for a notification.
	ID     json.RawMessage
	Method string
	// Params is the raw params member (an object or an array), nil when absent.
	Params json.RawMessage
}

// IsNotification reports whether the request has no id and therefore gets no response.
func (r *Request) IsNotification() bool { return r.ID == nil }

// Response is one JSON-RPC response: exactly one of Result and Error is set.
type Response struct {
	// ID echoes the request's id; nil is written as null (the id was unknown).
	ID     json.RawMessage
	Result json.RawMessage
	Error  *Error
}

// MarshalJSON writes the response with the version member and exactly one of result
// and error.
func (r *Response) MarshalJSON() ([]byte, error) {
	id := r.ID
	if id == nil {
		id = json.RawMessage("null")
	}
	if r.Error != nil {
		return json.Marshal(struct {
			JSONRPC string          `json:"jsonrpc"`
			ID      json.RawMessage `json:"id"`
			Error   *Error          `json:"error"`
		}{Version, id, r.Error})
	}
	result := r.Result
	if result == nil {
		result = json.RawMessage("null")
	}
	return json.Marshal(struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Result  json.RawMessage `json:"result"`
	}{Version, id, result})
}

// UnmarshalJSON reads a response (used by clients and tests).
func (r *Response) UnmarshalJSON(data []byte) error {
	var w struct {
		JSONRPC string          `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Result  json.RawMessage `json:"result"`
		Error   *Error          `json:"error"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return err
	}
	if w.JSONRPC != Version {
		return fmt.Errorf("jsonrpc member is %q, want %q", w.JSONRPC, Version)
	}
	r.ID, r.Result, r.Error = w.ID, w.Result, w.Error
	return nil
}

// Notification is a message from the server with no id (token deliveries, async results).
type Notification struct {
	Method string
	Params any
}

// Appender is implemented by params that write their own JSON (the token
// notifications, the server's most frequent message): in one pass, without
// encoding/json's reflection and the second pass it makes over a Marshaler's output.
// AppendJSON must append exactly what encoding/json would marshal.
type Appender interface {
	AppendJSON(b []byte) []byte
}

// MarshalJSON writes the notification with the version member.
func (n *Notification) MarshalJSON() ([]byte, error) { return n.AppendJSON(nil) }

// AppendJSON appends the notification with the version member to b, as MarshalJSON
// writes it.
func (n *Notification) AppendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"jsonrpc":"2.0","method":`...)
	b = AppendString(b, n.Method)
	switch p := n.Params.(type) {
	case nil:
	case Appender:
		b = append(b, `,"params":`...)
		b = p.AppendJSON(b)
	default:
		raw, err := json.Marshal(p)
		if err != nil {
			return nil, err
		}
		b = append(append(b, `,"params":`...), raw...)
	}
	return append(b, '}'), nil
}

// AppendString appends s as a JSON string, escaped exactly as encoding/json escapes it
// (HTML characters, U+2028 and U+2029 as \u escapes; invalid UTF-8 as U+FFFD).
func AppendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if !plainASCII[c] {
				b = appendEscape(append(b, s[start:i]...), c)
				start = i + 1
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if esc := runeEscape(r, size); esc != "" {
			b = append(append(b, s[start:i]...), esc...)
			start = i + size
		}
		i += size
	}
	return append(append(b, s[start:]...), '"')
}

// plainASCII marks the ASCII bytes a JSON string holds as they are (encoding/json's
// HTML-safe set).
var plainASCII = func() (t [utf8.RuneSelf]bool) {
	for c := byte(0x20); c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return t
}()

// appendEscape appends the escape of an ASCII byte that is not plain.
func appendEscape(b []byte, c byte) []byte {
	const hex = "0123456789abcdef"
	switch c {
	case '"', '\\':
		return append(b, '\\', c)
	case '\b':
		return append(b, '\\', 'b')
	case '\f':
		return append(b, '\\', 'f')
	case '\n':
		return append(b, '\\', 'n')
	case '\r':
		return append(b, '\\', 'r')
	case '\t':
		return append(b, '\\', 't')
	}
	return append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
}

// runeEscape is what stands for a decoded rune that is not written as it is, or "".
func runeEscape(r rune, size int) string {
	switch {
	case r == utf8.RuneError && size == 1:
		return `\ufffd`
	case r == '\u2028':
		return `\u2028`
	case r == '\u2029':
		return `\u2029`
	}
	return ""
}

// item is one element of a decoded message: a valid request, or the error response
// that an invalid one gets.
type item struct {
	req *Request
	err *Response
}

func errItem(id json.RawMessage, e *Error) item {
	if validID(id) != nil {
		id = nil
	}
	return item{err: &Response{ID: id, Error: e}}
}

// decode splits a message into its requests. The message is first checked against the
// limits and for valid UTF-8 without decoding anything; a message that is not JSON, an
// empty batch or one over MaxBatch yields a single error response (batch false), as the
// specification asks. Inside a batch, each invalid element gets its own error and the
// others are served.
func decode(msg []byte, lim Limits) (items []item, batch bool) {
	msg = bytes.TrimSpace(msg)
	if len(msg) == 0 {
		return []item{errItem(nil, ErrInvalidRequest.Withf("invalid request: empty message; send a JSON-RPC 2.0 request object or a batch array"))}, false
	}
	if !json.Valid(msg) {
		// encoding/json refuses nesting beyond 10000 levels as invalid; say which limit
		// such a message broke.
		if maxNesting(msg) > lim.MaxDepth {
			e := &LimitError{Limit: "max-json-depth", Max: lim.MaxDepth, What: "nesting of objects and arrays"}
			return []item{errItem(nil, e.rpcError())}, false
		}
		return []item{errItem(nil, ErrParse.Withf("parse error: the message is not valid JSON"))}, false
	}
	if te := checkText(msg); te != nil {
		return []item{errItem(nil, te.rpcError())}, false
	}
	switch msg[0] {
	case '[':
		return decodeBatch(msg, lim)
	case '{':
		s := &scanner{b: msg, lim: lim, reqDepth: 1}
		if err := s.value(0); err != nil {
			return []item{errItem(s.id, scanError(err))}, false
		}
		return []item{decodeOne(msg)}, false
	}
	return []item{errItem(nil, ErrInvalidRequest.Withf("invalid request: a message must be a JSON object or an array of them"))}, false
}

func scanError(err error) *Error {
	switch e := err.(type) {
	case *LimitError:
		return e.rpcError()
	case *textError:
		return e.rpcError()
	}
	return ErrInvalidRequest.Withf("invalid request: %v", err)
}

// decodeBatch checks and decodes the elements of a batch.
func decodeBatch(msg []byte, lim Limits) ([]item, bool) {
	s := &scanner{b: msg, lim: lim, reqDepth: 2, i: 1}
	var elems [][2]int
	var errs []error
	var ids [][]byte
	for {
		s.ws()
		if s.b[s.i] == ']' {
			break
		}
		if len(elems) == lim.MaxBatch {
			e := &LimitError{Limit: "max-batch", Max: lim.MaxBatch, What: "the number of requests in a batch"}
			return []item{errItem(nil, e.rpcError())}, false
		}
		start := s.i
		s.id = nil
		s.path = append(s.path[:0], pathElem{index: len(elems)})
		err := s.value(1)
		if err != nil {
			s.i = start
			s.skip()
		}
		elems = append(elems, [2]int{start, s.i})
		errs = append(errs, err)
		ids = append(ids, s.id)
		s.ws()
		if s.b[s.i] == ',' {
			s.i++
		}
	}
	if len(elems) == 0 {
		return []item{errItem(nil, ErrInvalidRequest.Withf("invalid request: empty batch; a batch holds at least one request"))}, false
	}
	items := make([]item, len(elems))
	for i, e := range elems {
		if errs[i] != nil {
			items[i] = errItem(ids[i], scanError(errs[i]))
			continue
		}
		items[i] = decodeOne(msg[e[0]:e[1]])
	}
	rejectDuplicateIDs(items)
	return items, true
}

// rejectDuplicateIDs turns every request of a batch whose id another request of the
// batch shares into an error: their responses could not be told apart.
func rejectDuplicateIDs(items []item) {
	seen := map[string][]int{}
	for i, it := range items {
		if it.req != nil && !it.req.IsNotification() {
			k := idKey(it.req.ID)
			seen[k] = append(seen[k], i)
		}
	}
	for _, idx := range seen {
		if len(idx) < 2 {
			continue
		}
		for _, i := range idx {
			id := items[i].req.ID
			items[i] = errItem(id, ErrInvalidRequest.Withf("invalid request: id %s is used by %d requests of this batch; give each request its own id", id, len(idx)))
		}
	}
}

// idKey is an id in a canonical form: two ids have one key when a client could not
// tell their responses apart. Strings compare by their characters ("a" and "\u0061"
// are one id). Numbers compare by value as the IEEE 754 doubles a client decodes them
// into (RFC 8259 section 6): 1, 1.0 and 1e0 are one number, so are 0 and -0 (equal as
// numbers), 9007199254740993 and 9007199254740992 (one double), and every number too
// large for a double is one infinity of its sign (1e999999 and 2e999999).
func idKey(id json.RawMessage) string {
	id = bytes.TrimSpace(id)
	if len(id) > 0 && id[0] == '"' {
		var s string
		if json.Unmarshal(id, &s) == nil {
			return "s" + s
		}
	}
	f, err := strconv.ParseFloat(string(id), 64)
	var numErr *strconv.NumError
	if err == nil || errors.As(err, &numErr) && errors.Is(numErr.Err, strconv.ErrRange) {
		if f == 0 {
			f = 0 // -0 == 0: one key
		}
		return "n" + strconv.FormatFloat(f, 'g', -1, 64)
	}
	return "r" + string(id)
}

// envelope is a request object's members, matched exactly (case-sensitive).
type envelope struct {
	JSONRPC json.RawMessage `json:"jsonrpc"`
	ID      json.RawMessage `json:"id"`
	Method  json.RawMessage `json:"method"`
	Params  json.RawMessage `json:"params"`
}

// decodeOne validates one request object: exactly the members jsonrpc ("2.0"), method,
// id and params, each at most once, names matched exactly.
func decodeOne(raw json.RawMessage) item {
	var w envelope
	strict, err := kjson.UnmarshalStrict(raw, &w)
	if err != nil {
		return errItem(nil, ErrInvalidRequest.Withf("invalid request: the request must be a JSON object"))
	}
	if len(strict) > 0 {
		return errItem(w.ID, ErrInvalidRequest.Withf("invalid request: %s; a request has exactly the members jsonrpc, method, params and id, each once (names are case-sensitive)", strictMessage(strict[0])))
	}
	if err := validID(w.ID); err != nil {
		return errItem(nil, ErrInvalidRequest.Withf("invalid request: %v", err))
	}
	var version string
	if json.Unmarshal(w.JSONRPC, &version) != nil || version != Version {
		return errItem(w.ID, ErrInvalidRequest.Withf(`invalid request: member "jsonrpc" must be exactly "2.0"`))
	}
	var method string
	if json.Unmarshal(w.Method, &method) != nil || method == "" {
		return errItem(w.ID, ErrInvalidRequest.Withf(`invalid request: member "method" must be a non-empty string`))
	}
	if w.Params != nil {
		if p := bytes.TrimSpace(w.Params); len(p) == 0 || (p[0] != '{' && p[0] != '[') {
			return errItem(w.ID, ErrInvalidRequest.Withf(`invalid request: member "params" must be an object or an array`))
		}
	}
	return item{req: &Request{ID: w.ID, Method: method, Params: w.Params}}
}

// strictMessage words a strict-decoding error ("unknown member \"x\"").
func strictMessage(err error) string {
	return strings.Replace(err.Error(), " field ", " member ", 1)
}

// validID accepts a missing id (notification), a string, a number or null.
func validID(id json.RawMessage) error {
	if id == nil {
		return nil
	}
	id = bytes.TrimSpace(id)
	if len(id) == 0 {
		return errors.New(`member "id" is empty`)
	}
	switch c := id[0]; {
	case c == '"', c == '-', c >= '0' && c <= '9', bytes.Equal(id, []byte("null")):
		return nil
	}
	return errors.New(`member "id" must be a string, a number or null`)
}

// EncodeResponses writes the responses of one message: nothing when there are none (a
// notification or a batch of them), a bare object for a single request, an array for a
// batch.
func EncodeResponses(resps []*Response, batch bool) ([]byte, error) {
	switch {
	case len(resps) == 0:
		return nil, nil
	case !batch && len(resps) == 1:
		return json.Marshal(resps[0])
	}
	return json.Marshal(resps)
}
