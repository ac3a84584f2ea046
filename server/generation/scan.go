package generation

import (
	"bytes"
	"encoding/json"
	"unicode/utf8"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
)

// Walking JSON that encoding/json has already validated (the request body is decoded
// whole first), without decoding it: the elements of the messages array and the
// members of each message, as sub-slices of the body. A conversation of a hundred
// thousand messages then costs its decoded messages and nothing on the way, where a
// decoder per message allocated many times the body.

// skipSpace returns the index of the first byte at or after i that is not white space.
func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// valueEnd returns the index just after the value that starts at i.
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return i
	}
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', ']', '}', ' ', '\t', '\n', '\r':
			return i
		}
	}
	return i
}

// stringEnd returns the index just after the string that starts at i.
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// EachElement calls f with each element of the array b (valid JSON), in order, until f
// fails. ok is false when b is not an array.
func EachElement(b []byte, f func(i int, elem []byte) *Error) (ok bool, err *Error) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '[' {
		return false, nil
	}
	for n := 0; ; n++ {
		i = skipSpace(b, i+1)
		if i >= len(b) || b[i] == ']' {
			return true, nil
		}
		end := valueEnd(b, i)
		if err := f(n, b[i:end]); err != nil {
			return true, err
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ',' {
			return true, nil
		}
	}
}

// EachMember calls f with the key (as written, without its quotes) and the value of
// each member of the object b (valid JSON), in order. ok is false when b is not an
// object.
func EachMember(b []byte, f func(key, value []byte)) (ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	for {
		i = skipSpace(b, i+1)
		if i >= len(b) || b[i] != '"' {
			return true
		}
		keyEnd := stringEnd(b, i)
		key := b[i+1 : keyEnd-1]
		i = skipSpace(b, skipSpace(b, keyEnd)+1) // past the colon
		end := valueEnd(b, i)
		f(key, b[i:end])
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ',' {
			return true
		}
	}
}

// MemberName is a member's name as written (without quotes), its escapes decoded (and
// invalid UTF-8 replaced) as encoding/json does.
func MemberName(key []byte) string {
	if bytes.IndexByte(key, '\\') >= 0 || !utf8.Valid(key) {
		var k string
		if json.Unmarshal(append(append([]byte{'"'}, key...), '"'), &k) == nil {
			return k
		}
	}
	return string(key)
}

// Elements counts the elements of raw, a valid JSON array (0 for anything else).
func Elements(raw []byte) int {
	n := 0
	_, _ = EachElement(raw, func(int, []byte) *Error { n++; return nil })
	return n
}

// PlainString decodes a JSON string without escapes, the common case, without the
// decoder's allocations; false leaves it to encoding/json.
func PlainString(raw []byte, s *string) bool {
	if len(raw) < 2 || raw[0] != '"' || raw[len(raw)-1] != '"' {
		return false
	}
	body := raw[1 : len(raw)-1]
	if bytes.IndexByte(body, '\\') >= 0 || bytes.IndexByte(body, '"') >= 0 || !utf8.Valid(body) {
		return false
	}
	*s = string(body)
	return true
}

// DecodeMessages decodes the messages array raw (valid JSON) one message at a time with
// decode, paying first for the slice (cost a message besides its text) and then, before
// each message is decoded, twice its length (its strings, and what joining parts or
// rewriting arguments takes). A long conversation then costs its messages and not a
// copy of each one's members on the way (a 15 MiB body of one-character messages once
// took 950 MiB of allocations to decode). isArray is false when raw is not an array.
func DecodeMessages(raw []byte, pay Budget, cost int, decode func(i int, one []byte, msg *chattemplate.Message) *Error) (msgs []chattemplate.Message, isArray bool, e *Error) {
	n := 0
	if ok, _ := EachElement(raw, func(int, []byte) *Error { n++; return nil }); !ok {
		return nil, false, nil
	}
	if e := pay.Pay(n * cost); e != nil {
		return nil, true, e
	}
	msgs = make([]chattemplate.Message, n)
	_, e = EachElement(raw, func(i int, one []byte) *Error {
		if e := pay.Pay(2 * len(one)); e != nil {
			return e
		}
		return decode(i, one, &msgs[i])
	})
	if e != nil {
		return nil, true, e
	}
	return msgs, true, nil
}
