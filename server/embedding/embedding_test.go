package embedding

import (
	"math"
	"slices"
	"testing"
)

// rows are 3 positions of width 2.
var rows = []float32{1, 2, 3, 4, 5, 12}

func TestPooling(t *testing.T) {
	cases := []struct {
		how       Pooling
		normalize bool
		want      []float32
	}{
		{Mean, false, []float32{3, 6}},
		{Mean, true, []float32{float32(3 / math.Sqrt(45)), float32(6 / math.Sqrt(45))}},
		{Last, false, []float32{5, 12}},
		{Last, true, []float32{5.0 / 13, 12.0 / 13}},
		{CLS, false, []float32{1, 2}},
		{CLS, true, []float32{float32(1 / math.Sqrt(5)), float32(2 / math.Sqrt(5))}},
	}
	for _, c := range cases {
		// Whole, and in two deliveries (a runtime may split the rows).
		whole, parts := NewPooler(c.how), NewPooler(c.how)
		if err := whole.Add(rows, 2, 3); err != nil {
			t.Fatal(err)
		}
		if err := parts.Add(rows[:2], 2, 1); err != nil {
			t.Fatal(err)
		}
		if err := parts.Add(rows[2:], 2, 2); err != nil {
			t.Fatal(err)
		}
		for _, p := range []*Pooler{whole, parts} {
			if got := p.Vector(c.normalize); !slices.Equal(got, c.want) || p.Rows() != 3 {
				t.Errorf("%s normalize %v: %v (%d rows), want %v", c.how, c.normalize, got, p.Rows(), c.want)
			}
		}
	}
}

func TestPoolerEdges(t *testing.T) {
	p := NewPooler(Mean)
	if p.Vector(true) != nil {
		t.Error("a vector without rows")
	}
	for _, bad := range []struct {
		states   []float32
		width, n int
	}{{rows, 4, 3}, {rows, 2, 2}, {rows, 0, 3}, {nil, 2, 0}} {
		if err := p.Add(bad.states, bad.width, bad.n); err == nil {
			t.Errorf("%d floats as %d x %d accepted", len(bad.states), bad.n, bad.width)
		}
	}
	if err := p.Add(rows, 2, 3); err != nil {
		t.Fatal(err)
	}
	if err := p.Add(rows, 3, 2); err == nil {
		t.Error("a width change within one input accepted")
	}
	zero := NewPooler(Mean)
	if err := zero.Add([]float32{0, 0}, 2, 1); err != nil {
		t.Fatal(err)
	}
	if v := zero.Vector(true); !slices.Equal(v, []float32{0, 0}) {
		t.Errorf("a zero vector normalized to %v", v)
	}
}

func TestParseAndDefaults(t *testing.T) {
	for in, want := range map[string]Pooling{"mean": Mean, "LAST": Last, "cls": CLS} {
		if p, err := ParsePooling(in); err != nil || p != want {
			t.Errorf("%q: %q %v", in, p, err)
		}
	}
	if _, err := ParsePooling("max"); err == nil {
		t.Error("max accepted")
	}
	for tmpl, want := range map[string]Pooling{"chatml": Last, "qwen2.5": Last, "qwen3": Last, "gemma": Mean, "llama3": Mean, "deepseek-r1": Mean, "custom": Mean} {
		if got := DefaultPooling(tmpl); got != want {
			t.Errorf("%s: %s, want %s", tmpl, got, want)
		}
	}
}
