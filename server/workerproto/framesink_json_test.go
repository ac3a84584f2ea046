//go:build cgo

package workerproto

import (
	"testing"
	"unicode/utf8"

	"github.com/rkllm-operator/rkllm-operator/server/jsonrpc"
)

// jsonCases are texts a runtime may deliver whose JSON takes care: escapes, HTML
// characters, line separators, and every kind of invalid UTF-8 Go's decoder knows.
var jsonCases = []string{
	"", "plain", ` "quoted" \ back\slash`, "<b>&amp;</b>", "\x00\x01\x1f\x7f", "\b\f\n\r\t",
	"café 日本 🙂", "\u2028\u2029", "\xff", "\xc0\xaf", "\xc2", "\xe2\x80", "\xed\xa0\x80",
	"\xf4\x90\x80\x80", "\xf0\x8f\xbf\xbf", "\xf5\x80\x80\x80", "\xe0\x9f\xbf", "a\x80b",
	"\xef\xbf\xbd", "\xf4\x8f\xbf\xbf", "\xe2\x80\xa8x\xe2\x80\xa9",
}

// The worker writes a token's text to the client with the C encoder: it must be the
// supervisor's JSON byte for byte, or a client sees different bytes depending on
// which process wrote the token.
func TestDirectJSONStringIsTheSupervisors(t *testing.T) {
	for _, s := range jsonCases {
		if got, want := jsonString(s), string(jsonrpc.AppendString(nil, s)); got != want {
			t.Errorf("%q: C writes %s, the supervisor %s", s, got, want)
		}
	}
}

func FuzzDirectJSONString(f *testing.F) {
	for _, s := range jsonCases {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := jsonString(s)
		if want := string(jsonrpc.AppendString(nil, s)); got != want {
			t.Fatalf("%q: C writes %s, the supervisor %s", s, got, want)
		}
		if !utf8.ValidString(got) {
			t.Fatalf("%q: C writes invalid UTF-8 %q", s, got)
		}
	})
}
