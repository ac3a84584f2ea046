package openai

import "testing"

// TestDecodeMessagesBudget: the messages are charged before they are decoded, and a
// refusal stops the decoding.
func TestDecodeMessagesBudget(t *testing.T) {
	raw := []byte(`[{"role":"user","content":"hello"},{"role":"assistant","content":"hi"},{"role":"user","content":"more"}]`)
	var charged []int
	msgs, e := decodeMessages(raw, func(n int) *Error { charged = append(charged, n); return nil })
	if e != nil || len(msgs) != 3 || msgs[2].Content != "more" || msgs[1].Role != "assistant" {
		t.Fatalf("messages %+v, %v", msgs, e)
	}
	if len(charged) != 4 || charged[0] != 3*messageCost || charged[1] != 2*len(`{"role":"user","content":"hello"}`) {
		t.Errorf("charges %v: want the messages' slice first, then each message's text before it is decoded", charged)
	}
	busy := &Error{Status: 429}
	calls := 0
	if _, e := decodeMessages(raw, func(int) *Error {
		calls++
		if calls == 2 {
			return busy
		}
		return nil
	}); e != busy {
		t.Errorf("a refused charge: %v, want it returned", e)
	}
}
