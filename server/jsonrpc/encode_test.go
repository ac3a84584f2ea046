package jsonrpc

import (
	"encoding/json"
	"testing"
)

// stringSeeds are the strings whose escaping has a rule of its own.
var stringSeeds = []string{
	"", "plain", `quote " and backslash \`, "\b\f\n\r\t\x00\x01\x1f\x7f", "<script>&amp;</script>",
	"é, 世界, 😀", "\u2028\u2029", "bad \xff\xfe utf-8 \xe2\x82", "\xed\xa0\x80 surrogate", "@1234567890123",
}

// FuzzAppendString: AppendString writes what encoding/json writes, for any string.
func FuzzAppendString(f *testing.F) {
	for _, s := range stringSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := AppendString([]byte("prefix"), s); string(got) != "prefix"+string(want) {
			t.Errorf("AppendString(%q) = %s, want %s", s, got[len("prefix"):], want)
		}
	})
}

// appendedNote encodes itself; plainNote goes through encoding/json.
type appendedNote struct{ Text string }

func (n appendedNote) AppendJSON(b []byte) []byte {
	return append(AppendString(append(b, `{"text":`...), n.Text), '}')
}

// TestNotificationEncoding: a notification encodes as the JSON-RPC 2.0 object whatever
// its params, with or without an Appender.
func TestNotificationEncoding(t *testing.T) {
	for _, tc := range []struct {
		params any
		want   string
	}{
		{nil, `{"jsonrpc":"2.0","method":"m\u003cx\u003e"}`},
		{map[string]any{"a": 1, "b": "<"}, `{"jsonrpc":"2.0","method":"m\u003cx\u003e","params":{"a":1,"b":"\u003c"}}`},
		{[]int{1, 2}, `{"jsonrpc":"2.0","method":"m\u003cx\u003e","params":[1,2]}`},
		{appendedNote{"a\"b\n"}, `{"jsonrpc":"2.0","method":"m\u003cx\u003e","params":{"text":"a\"b\n"}}`},
	} {
		n := &Notification{Method: "m<x>", Params: tc.params}
		got, err := n.AppendJSON(nil)
		if err != nil || string(got) != tc.want {
			t.Errorf("AppendJSON(%v) = %s, %v; want %s", tc.params, got, err, tc.want)
		}
		if !json.Valid(got) {
			t.Errorf("AppendJSON(%v) is not valid JSON: %s", tc.params, got)
		}
		marshalled, err := json.Marshal(n)
		if err != nil || string(marshalled) != string(got) {
			t.Errorf("json.Marshal = %s, %v; want what AppendJSON wrote", marshalled, err)
		}
	}
}
