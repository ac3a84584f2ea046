// Package jsonrpc is a JSON-RPC 2.0 codec and method dispatcher that is independent of
// the transport: HTTP and the Unix socket hand it one message (a request, a
// notification or a batch) at a time and write back what it returns.
package jsonrpc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
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

// MarshalJSON writes the notification with the version member.
func (n *Notification) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		JSONRPC string `json:"jsonrpc"`
		Method  string `json:"method"`
		Params  any    `json:"params,omitempty"`
	}{Version, n.Method, n.Params})
}

// item is one element of a decoded message: a valid request, or the error response
// that an invalid one gets.
type item struct {
	req *Request
	err *Response
}

// decode splits a message into its requests. A message that is not JSON, or an empty
// batch, yields a single error response (batch false), as the specification asks.
func decode(msg []byte) (items []item, batch bool) {
	msg = bytes.TrimSpace(msg)
	if len(msg) == 0 {
		return []item{{err: &Response{Error: ErrInvalidRequest.Withf("invalid request: empty message; send a JSON-RPC 2.0 request object or a batch array")}}}, false
	}
	if !json.Valid(msg) {
		return []item{{err: &Response{Error: ErrParse.Withf("parse error: the message is not valid JSON")}}}, false
	}
	switch msg[0] {
	case '[':
		var elems []json.RawMessage
		if err := json.Unmarshal(msg, &elems); err != nil {
			return []item{{err: &Response{Error: ErrParse.Withf("parse error: %v", err)}}}, false
		}
		if len(elems) == 0 {
			return []item{{err: &Response{Error: ErrInvalidRequest.Withf("invalid request: empty batch; a batch holds at least one request")}}}, false
		}
		items = make([]item, len(elems))
		for i, e := range elems {
			items[i] = decodeOne(e)
		}
		return items, true
	case '{':
		return []item{decodeOne(msg)}, false
	}
	return []item{{err: &Response{Error: ErrInvalidRequest.Withf("invalid request: a message must be a JSON object or an array of them")}}}, false
}

// decodeOne validates one request object.
func decodeOne(raw json.RawMessage) item {
	fail := func(id json.RawMessage, format string, args ...any) item {
		return item{err: &Response{ID: id, Error: ErrInvalidRequest.Withf("invalid request: "+format, args...)}}
	}
	var w struct {
		JSONRPC json.RawMessage `json:"jsonrpc"`
		ID      json.RawMessage `json:"id"`
		Method  json.RawMessage `json:"method"`
		Params  json.RawMessage `json:"params"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
			// Still echo the id when there is a valid one.
			var probe struct {
				ID json.RawMessage `json:"id"`
			}
			_ = json.Unmarshal(raw, &probe)
			id := probe.ID
			if validID(id) != nil {
				id = nil
			}
			return fail(id, "unknown member %s; a request has only jsonrpc, id, method and params", strings.TrimPrefix(msg, "json: unknown field "))
		}
		return fail(nil, "the request must be a JSON object")
	}
	if err := validID(w.ID); err != nil {
		return fail(nil, "%v", err)
	}
	var version string
	if json.Unmarshal(w.JSONRPC, &version) != nil || version != Version {
		return fail(w.ID, `member "jsonrpc" must be exactly "2.0"`)
	}
	var method string
	if json.Unmarshal(w.Method, &method) != nil || method == "" {
		return fail(w.ID, `member "method" must be a non-empty string`)
	}
	if w.Params != nil {
		if p := bytes.TrimSpace(w.Params); len(p) == 0 || (p[0] != '{' && p[0] != '[') {
			return fail(w.ID, `member "params" must be an object or an array`)
		}
	}
	return item{req: &Request{ID: w.ID, Method: method, Params: w.Params}}
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
