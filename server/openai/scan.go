package openai

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

// eachElement calls f with each element of the array b (valid JSON), in order, until f
// fails. ok is false when b is not an array.
func eachElement(b []byte, f func(i int, elem []byte) *Error) (ok bool, err *Error) {
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

// eachMember calls f with the key (as written, without its quotes) and the value of
// each member of the object b (valid JSON), in order. ok is false when b is not an
// object.
func eachMember(b []byte, f func(key, value []byte)) (ok bool) {
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
