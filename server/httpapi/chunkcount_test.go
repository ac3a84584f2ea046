package httpapi

import "testing"

// The bytes counted of a chunked stream are its messages' alone, however the writes
// split the chunks: a size line, a message and its CRLF written apart or together.
func TestChunkCounterCountsMessagesOnly(t *testing.T) {
	// Two chunks: "5\r\n" "hello" "\r\n", then "b\r\n" "hello world" "\r\n".
	sizes := []struct{ head, body int }{{3, 5}, {3, 11}}
	total := 0
	for _, s := range sizes {
		total += s.head + s.body + 2
	}
	for _, tc := range []struct {
		name   string
		writes []int
	}{
		{"all at once", []int{total}},
		{"chunk by chunk", []int{10, 16}},
		{"byte by byte", nil},
		{"splits inside size lines, messages and CRLFs", []int{2, 4, 3, 1, 5, 11}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &chunkCounter{}
			for _, s := range sizes {
				c.queued(s.head, s.body)
			}
			writes := tc.writes
			if writes == nil {
				for range total {
					writes = append(writes, 1)
				}
			}
			got := 0
			for _, n := range writes {
				got += c.written(n)
			}
			if got != 16 {
				t.Errorf("counted %d bytes, want the messages' 16", got)
			}
			if len(c.chunks) != 0 || c.at != 0 {
				t.Errorf("chunks left after every byte was written: %v, at %d", c.chunks, c.at)
			}
		})
	}
}
