package jsonrpc

import (
	"encoding/json"
	"errors"

	"github.com/rkllm-operator/rkllm-operator/server/inflight"
)

// BusyError is the -32002 answer to a request that does not fit the budget of bytes in
// flight (an *inflight.OverError).
func BusyError(err error) *Error {
	data := map[string]any{"limit": "max-inflight-bytes", "retry_after": inflight.RetryAfterSeconds}
	var over *inflight.OverError
	if errors.As(err, &over) {
		data["max"] = over.Max
	}
	return ErrBusy.Withf("%v", err).WithData(data)
}

// DecodeCost bounds what decoding a message and handing its requests to the worker
// may allocate beyond its raw bytes, counted without decoding anything: a copy of the
// params, each string decoded and copied into the worker's frame (at most the
// message's size, three times in all), and each array element as a 4-byte value twice
// (an id, a float) with the slice's growth.
func DecodeCost(msg []byte) int {
	elements := 0
	for i := 0; i < len(msg); i++ {
		switch msg[i] {
		case '"':
			for i++; i < len(msg) && msg[i] != '"'; i++ {
				if msg[i] == '\\' {
					i++
				}
			}
		case ',':
			elements++
		}
	}
	return 3*len(msg) + 16*elements
}

// LeadingID is the id of a request from the start of its message, which was not read
// to its end (it did not fit the budget): an answer can then still name the request.
// It is nil when the prefix does not hold a whole id member of a request object.
func LeadingID(prefix []byte) json.RawMessage {
	p := &prefixScan{b: prefix}
	if !p.byte('{') {
		return nil
	}
	for {
		key, ok := p.str()
		if !ok || !p.byte(':') {
			return nil
		}
		start := p.skipSpace()
		if !p.value() {
			return nil
		}
		if string(key) == `"id"` {
			id := json.RawMessage(append([]byte(nil), p.b[start:p.i]...))
			if validID(id) != nil || !json.Valid(id) {
				return nil
			}
			return id
		}
		if !p.byte(',') {
			return nil
		}
	}
}

// prefixScan walks the beginning of a JSON object that may be cut anywhere.
type prefixScan struct {
	b []byte
	i int
}

func (p *prefixScan) skipSpace() int {
	for p.i < len(p.b) && (p.b[p.i] == ' ' || p.b[p.i] == '\t' || p.b[p.i] == '\n' || p.b[p.i] == '\r') {
		p.i++
	}
	return p.i
}

// byte consumes c (after white space).
func (p *prefixScan) byte(c byte) bool {
	if p.skipSpace() < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// str consumes a whole string and returns it with its quotes.
func (p *prefixScan) str() ([]byte, bool) {
	start := p.skipSpace()
	if start >= len(p.b) || p.b[start] != '"' {
		return nil, false
	}
	for p.i = start + 1; p.i < len(p.b); p.i++ {
		switch p.b[p.i] {
		case '\\':
			p.i++
		case '"':
			p.i++
			return p.b[start:p.i], true
		}
	}
	return nil, false
}

// value consumes a whole value; false when the prefix ends inside it.
func (p *prefixScan) value() bool {
	if p.i >= len(p.b) {
		return false
	}
	switch p.b[p.i] {
	case '"':
		_, ok := p.str()
		return ok
	case '{', '[':
		depth := 0
		for ; p.i < len(p.b); p.i++ {
			switch p.b[p.i] {
			case '"':
				if _, ok := p.str(); !ok {
					return false
				}
				p.i--
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					p.i++
					return true
				}
			}
		}
		return false
	}
	for ; p.i < len(p.b); p.i++ {
		switch p.b[p.i] {
		case ',', '}', ']', ' ', '\t', '\n', '\r':
			return true
		}
	}
	return false // a number may go on
}
