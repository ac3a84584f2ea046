package jsonrpc

import (
	"encoding/json"
)

// Marshal encodes a message for a client. A *Response or a []*Response (a batch) is
// written by appending its members into one buffer of the exact size, with room for a
// line's end: its result is JSON already (a handler's result encoded by the dispatcher,
// or one a handler encoded itself), which encoding/json would copy and check once more
// for each level it is wrapped in, and a result can be hundreds of megabytes of hidden
// states or logits. Anything else goes through encoding/json.
func Marshal(v any) ([]byte, error) {
	switch v := v.(type) {
	case *Response:
		return appendResponses(nil, []*Response{v}, false)
	case []*Response:
		return appendResponses(nil, v, true)
	}
	return json.Marshal(v)
}

// lineEnd is the room Marshal leaves after a message: a transport's "\n" (or an
// event's "\n\n") is appended without copying the message.
const lineEnd = 2

// appendResponses writes resps (as an array when batch is set).
func appendResponses(b []byte, resps []*Response, batch bool) ([]byte, error) {
	errs := make([][]byte, len(resps))
	size := lineEnd + 2
	for i, r := range resps {
		if r.Error != nil {
			raw, err := json.Marshal(r.Error)
			if err != nil {
				return nil, err
			}
			errs[i] = raw
		}
		size += len(`{"jsonrpc":"2.0","id":,"result":},`) + len(r.ID) + len("null") + len(r.Result) + len(errs[i])
	}
	if b == nil {
		b = make([]byte, 0, size)
	}
	if batch {
		b = append(b, '[')
	}
	for i, r := range resps {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"jsonrpc":"2.0","id":`...)
		if r.ID == nil {
			b = append(b, "null"...)
		} else {
			b = append(b, r.ID...)
		}
		switch {
		case r.Error != nil:
			b = append(append(b, `,"error":`...), errs[i]...)
		case r.Result == nil:
			b = append(b, `,"result":null`...)
		default:
			b = append(append(b, `,"result":`...), r.Result...)
		}
		b = append(b, '}')
	}
	if batch {
		b = append(b, ']')
	}
	return b, nil
}
