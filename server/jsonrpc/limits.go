package jsonrpc

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Limits bound what one message may hold. They are checked on the raw bytes, in one
// pass that allocates nothing, before any of the message is decoded: a hostile message
// costs a scan, never the memory its contents would take. A zero field takes the
// default named in its comment.
type Limits struct {
	// MaxDepth bounds the nesting of objects and arrays (DefaultMaxDepth).
	MaxDepth int
	// MaxStringBytes bounds one string (a prompt, a base64 embedding), counted as sent,
	// escapes included (DefaultMaxStringBytes).
	MaxStringBytes int
	// MaxArrayLen bounds the elements of one array (an embedding, a token list)
	// (DefaultMaxArrayLen).
	MaxArrayLen int
	// MaxBatch bounds the requests of one batch (DefaultMaxBatch).
	MaxBatch int
	// MaxPeerMessages bounds the requests one connection may have in flight at once
	// (DefaultMaxPeerMessages), those of NeverWaits methods aside; more are answered
	// -32002 at once.
	MaxPeerMessages int
	// MaxInflightBytes is the size of the dispatcher's own budget of bytes in flight
	// (DefaultMaxInflightBytes), when it does not share the server's (SetBudget): what
	// the messages being served hold, raw and decoded, over every connection. A message
	// over it is answered -32002 at once.
	MaxInflightBytes int64
}

// Defaults of Limits.
const (
	DefaultMaxDepth         = 32
	DefaultMaxStringBytes   = 4 << 20
	DefaultMaxArrayLen      = 1 << 20
	DefaultMaxBatch         = 64
	DefaultMaxPeerMessages  = 32
	DefaultMaxInflightBytes = 64 << 20
)

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxDepth, DefaultMaxDepth)
	def(&l.MaxStringBytes, DefaultMaxStringBytes)
	def(&l.MaxArrayLen, DefaultMaxArrayLen)
	def(&l.MaxBatch, DefaultMaxBatch)
	def(&l.MaxPeerMessages, DefaultMaxPeerMessages)
	if l.MaxInflightBytes <= 0 {
		l.MaxInflightBytes = DefaultMaxInflightBytes
	}
	return l
}

// LimitError is a message over one of the Limits; the dispatcher answers it with
// ErrTooLarge, whose data names the limit and where in the message it was exceeded.
type LimitError struct {
	// Limit is the server flag that sets the bound ("max-json-depth", ...).
	Limit string
	// Max is the bound.
	Max int
	// Path is where the message exceeds it ("params.input.prompt_input"), "" for the
	// whole message.
	Path string
	// What is the thing that was too large, for the message.
	What string
}

func (e *LimitError) Error() string {
	at := ""
	if e.Path != "" {
		at = " at " + e.Path
	}
	return fmt.Sprintf("request too large: %s%s exceeds the limit of %d (--%s)", e.What, at, e.Max, e.Limit)
}

func (e *LimitError) rpcError() *Error {
	data := map[string]any{"limit": e.Limit, "max": e.Max}
	if e.Path != "" {
		data["field"] = e.Path
	}
	return ErrTooLarge.Withf("%s", e.Error()).WithData(data)
}

// textError is a message that is JSON but not valid text: invalid UTF-8, or a \u
// escape of half a UTF-16 surrogate pair.
type textError struct {
	offset int
	what   string
}

func (e *textError) Error() string { return fmt.Sprintf("%s at byte %d", e.what, e.offset) }

func (e *textError) rpcError() *Error {
	return ErrParse.Withf("parse error: %s at byte %d; JSON text must be UTF-8", e.what, e.offset)
}

// scanner checks a syntactically valid JSON value against the limits.
type scanner struct {
	b    []byte
	i    int
	lim  Limits
	path []pathElem
	// member records, for the request object being scanned (at reqDepth), the raw
	// value of its "id" member, so errors can still name the request.
	reqDepth int
	id       []byte
}

type pathElem struct {
	key   []byte // nil for an array element
	index int
}

func (s *scanner) pathString() string {
	var b strings.Builder
	for i, p := range s.path {
		switch {
		case p.key != nil:
			if i > 0 {
				b.WriteByte('.')
			}
			b.Write(p.key)
		default:
			b.WriteByte('[')
			b.WriteString(strconv.Itoa(p.index))
			b.WriteByte(']')
		}
	}
	return b.String()
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// value scans one value whose enclosing containers number depth.
func (s *scanner) value(depth int) error {
	s.ws()
	switch s.b[s.i] {
	case '{':
		return s.object(depth)
	case '[':
		return s.array(depth)
	case '"':
		return s.str()
	}
	// A number or a literal: it ends at a delimiter.
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ',', ']', '}', ' ', '\t', '\n', '\r':
			return nil
		}
		s.i++
	}
	return nil
}

func (s *scanner) tooDeep() error {
	return &LimitError{Limit: "max-json-depth", Max: s.lim.MaxDepth, Path: s.pathString(), What: "nesting of objects and arrays"}
}

func (s *scanner) object(depth int) error {
	if depth+1 > s.lim.MaxDepth {
		return s.tooDeep()
	}
	s.i++ // {
	for {
		s.ws()
		if s.b[s.i] == '}' {
			s.i++
			return nil
		}
		start := s.i
		if err := s.str(); err != nil {
			return err
		}
		key := s.b[start+1 : s.i-1]
		s.ws()
		s.i++ // :
		s.ws()
		valStart := s.i
		s.path = append(s.path, pathElem{key: key})
		if err := s.value(depth + 1); err != nil {
			return err
		}
		s.path = s.path[:len(s.path)-1]
		if depth+1 == s.reqDepth && string(key) == "id" {
			s.id = s.b[valStart:s.i]
		}
		s.ws()
		if s.b[s.i] == ',' {
			s.i++
			continue
		}
		s.i++ // }
		return nil
	}
}

func (s *scanner) array(depth int) error {
	if depth+1 > s.lim.MaxDepth {
		return s.tooDeep()
	}
	s.i++ // [
	for n := 0; ; n++ {
		s.ws()
		if s.b[s.i] == ']' {
			s.i++
			return nil
		}
		if n == s.lim.MaxArrayLen {
			return &LimitError{Limit: "max-array-len", Max: s.lim.MaxArrayLen, Path: s.pathString(), What: "an array's length"}
		}
		s.path = append(s.path, pathElem{index: n})
		if err := s.value(depth + 1); err != nil {
			return err
		}
		s.path = s.path[:len(s.path)-1]
		s.ws()
		if s.b[s.i] == ',' {
			s.i++
		}
	}
}

// str scans a string, checking its length and its \u escapes (a lone UTF-16
// surrogate is not a character: encoding/json would silently replace it).
func (s *scanner) str() error {
	start := s.i
	s.i++ // "
	for {
		switch s.b[s.i] {
		case '"':
			s.i++
			if n := s.i - start - 2; n > s.lim.MaxStringBytes {
				return &LimitError{Limit: "max-string-bytes", Max: s.lim.MaxStringBytes, Path: s.pathString(), What: "a string's length (" + strconv.Itoa(n) + " bytes)"}
			}
			return nil
		case '\\':
			if s.b[s.i+1] == 'u' {
				if err := s.escape(); err != nil {
					return err
				}
				continue
			}
			s.i += 2
		default:
			s.i++
		}
		if s.i-start-1 > s.lim.MaxStringBytes {
			return &LimitError{Limit: "max-string-bytes", Max: s.lim.MaxStringBytes, Path: s.pathString(), What: "a string's length"}
		}
	}
}

// escape reads a \uXXXX escape at s.i (and its pair, for a high surrogate).
func (s *scanner) escape() error {
	at := s.i
	r := hex4(s.b[s.i+2 : s.i+6])
	s.i += 6
	switch {
	case r >= 0xDC00 && r <= 0xDFFF:
		return &textError{offset: at, what: "a \\u escape of a lone low surrogate"}
	case r >= 0xD800 && r <= 0xDBFF:
		if s.i+6 > len(s.b) || s.b[s.i] != '\\' || s.b[s.i+1] != 'u' {
			return &textError{offset: at, what: "a \\u escape of a high surrogate without its low half"}
		}
		if lo := hex4(s.b[s.i+2 : s.i+6]); lo < 0xDC00 || lo > 0xDFFF {
			return &textError{offset: at, what: "a \\u escape of a high surrogate without its low half"}
		}
		s.i += 6
	}
	return nil
}

func hex4(b []byte) rune {
	var r rune
	for _, c := range b {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c-'a') + 10
		case c >= 'A' && c <= 'F':
			r |= rune(c-'A') + 10
		}
	}
	return r
}

// skip moves past one value without checking limits (after a violation inside a batch
// element, to reach the next element). It does not recurse.
func (s *scanner) skip() {
	s.ws()
	depth := 0
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case '"':
			s.i++
			for s.b[s.i] != '"' {
				if s.b[s.i] == '\\' {
					s.i++
				}
				s.i++
			}
		case '{', '[':
			depth++
		case '}', ']':
			depth--
			if depth < 0 {
				return
			}
			if depth == 0 {
				s.i++
				return
			}
		case ',':
			if depth == 0 {
				return
			}
		}
		s.i++
	}
}

// maxNesting is the deepest nesting of brackets outside strings in msg, which need not
// be valid JSON.
func maxNesting(msg []byte) int {
	depth, deepest := 0, 0
	for i := 0; i < len(msg); i++ {
		switch msg[i] {
		case '"':
			for i++; i < len(msg) && msg[i] != '"'; i++ {
				if msg[i] == '\\' {
					i++
				}
			}
		case '{', '[':
			depth++
			deepest = max(deepest, depth)
		case '}', ']':
			depth--
		}
	}
	return deepest
}

// checkText reports invalid UTF-8 anywhere in msg (outside strings JSON is ASCII).
func checkText(msg []byte) *textError {
	if utf8.Valid(msg) {
		return nil
	}
	for i := 0; i < len(msg); {
		r, n := utf8.DecodeRune(msg[i:])
		if r == utf8.RuneError && n <= 1 {
			return &textError{offset: i, what: "invalid UTF-8"}
		}
		i += n
	}
	return &textError{what: "invalid UTF-8"}
}
