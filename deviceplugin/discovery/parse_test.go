package discovery

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseLoad(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr string
	}{
		{in: "NPU load:  Core0:  0%, Core1:  0%, Core2:  0%,", want: []int{0, 0, 0}},
		{in: "NPU load:  Core0:100%, Core1: 45%, Core2:  7%,\n", want: []int{100, 45, 7}},
		{in: "NPU load:  Core0:100%,", want: []int{100}},
		{in: "NPU load:  Core0: 12%, Core1: 99%,", want: []int{12, 99}},
		{in: "NPU load:  0%", want: []int{0}},
		{in: "NPU load: 100%\n", want: []int{100}},
		{in: "", wantErr: "neither"},
		{in: "NPU load: busy", wantErr: "neither"},
		{in: "NPU load:  Core0: 10%, Core2: 20%,", wantErr: "skips core 1"},
		{in: "NPU load:  Core0: 10%, Core0: 20%,", wantErr: "lists core 0 twice"},
		{in: "NPU load:  Core0:200%,", wantErr: "not a percentage"},
		{in: "NPU load:  Core99: 1%,", wantErr: "at most 16 cores"},
		{in: "NPU load:  Core0:99999999999999999999%,", wantErr: "not a percentage"},
	}
	for _, tt := range tests {
		got, err := ParseLoad(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseLoad(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseLoad(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		in      string
		want    Version
		wantErr bool
	}{
		{in: "0.9.8", want: Version{0, 9, 8}},
		{in: "0.9.8\n", want: Version{0, 9, 8}},
		{in: "v0.9.6", want: Version{0, 9, 6}},
		{in: "RKNPU driver: v0.9.8\n", want: Version{0, 9, 8}},
		{in: "RKNPU driver: v0.8.2", want: Version{0, 8, 2}},
		{in: "1.10", want: Version{1, 10, 0}},
		{in: "", wantErr: true},
		{in: "0.9", want: Version{0, 9, 0}},
		{in: "0.9.8.1", wantErr: true},
		{in: "v0.9.x", wantErr: true},
		{in: "0.-1.2", wantErr: true},
		{in: "RKNPU driver:", wantErr: true},
	}
	for _, tt := range tests {
		got, err := ParseVersion(tt.in)
		if tt.wantErr {
			if err == nil || !strings.Contains(err.Error(), "MAJOR.MINOR[.PATCH]") {
				t.Errorf("ParseVersion(%q) = %v, %v; want an error naming the expected form", tt.in, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestVersionLess(t *testing.T) {
	ordered := []Version{{0, 8, 2}, {0, 9, 6}, {0, 9, 7}, {0, 9, 8}, {0, 10, 0}, {1, 0, 0}}
	for i := range ordered {
		for j := range ordered {
			if got := ordered[i].Less(ordered[j]); got != (i < j) {
				t.Errorf("%v.Less(%v) = %v, want %v", ordered[i], ordered[j], got, i < j)
			}
		}
	}
	if s := (Version{0, 9, 8}).String(); s != "0.9.8" {
		t.Errorf("String() = %q", s)
	}
}

func FuzzParseLoad(f *testing.F) {
	f.Add("NPU load:  Core0:  0%, Core1:  0%, Core2:100%,")
	f.Add("NPU load:  5%")
	f.Fuzz(func(t *testing.T, s string) {
		load, err := ParseLoad(s)
		if err != nil {
			return
		}
		if len(load) == 0 || len(load) > maxCores {
			t.Fatalf("ParseLoad(%q) returned %d cores", s, len(load))
		}
		for _, p := range load {
			if p < 0 || p > 100 {
				t.Fatalf("ParseLoad(%q) returned %d%%", s, p)
			}
		}
	})
}
