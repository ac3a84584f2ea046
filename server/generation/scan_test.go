package generation

import (
	"bytes"
	"encoding/json"
	"testing"
)

// FuzzScanMatchesDecoder: on any valid JSON, EachMember and EachElement see what
// encoding/json decodes (the same members, last one winning, the same elements with
// the same values).
func FuzzScanMatchesDecoder(f *testing.F) {
	for _, seed := range []string{
		`{}`, `[]`, ` { "a" : 1 , "b":[1,{"c":"]}"}] } `, `{"role":"user","content":"x\"}"}`,
		`{"\u0072ole":"user","role":"system"}`, `[{"a":1},{"a":[]},"s",null,true,-1.5e3]`,
		`{"content":[{"type":"text","text":"a\\"}]"}],"name":null}`, `["\\", "\u00e9", {"k":{"k":{"k":[]}}}]`,
		"{\"a\":\t\n\r1}", `[[[]],[{}]]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			return
		}
		var wantObj map[string]json.RawMessage
		if json.Unmarshal(b, &wantObj) == nil && wantObj != nil {
			got := map[string]json.RawMessage{}
			if !EachMember(b, func(k, v []byte) { got[MemberName(k)] = v }) {
				t.Fatalf("%q: not seen as an object", b)
			}
			sameValues(t, b, got, wantObj)
		}
		var wantArr []json.RawMessage
		if json.Unmarshal(b, &wantArr) == nil && wantArr != nil {
			var got []json.RawMessage
			ok, _ := EachElement(b, func(_ int, e []byte) *Error { got = append(got, e); return nil })
			if !ok || len(got) != len(wantArr) {
				t.Fatalf("%q: elements %q, want %q", b, got, wantArr)
			}
			for i := range got {
				if !bytes.Equal(compact(t, got[i]), compact(t, wantArr[i])) {
					t.Fatalf("%q: element %d %q, want %q", b, i, got[i], wantArr[i])
				}
			}
		}
	})
}

func sameValues(t *testing.T, b []byte, got, want map[string]json.RawMessage) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%q: members %q, want %q", b, got, want)
	}
	for k, v := range want {
		if !bytes.Equal(compact(t, got[k]), compact(t, v)) {
			t.Fatalf("%q: member %q is %q, want %q", b, k, got[k], v)
		}
	}
}

func compact(t *testing.T, raw []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	if err := json.Compact(&out, raw); err != nil {
		t.Fatalf("%q is not one JSON value: %v", raw, err)
	}
	return out.Bytes()
}
