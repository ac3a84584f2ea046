package inflight

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestChargeAndRelease(t *testing.T) {
	b := New(100)
	a, c := b.Open(), b.Open()
	if err := a.Charge(60); err != nil {
		t.Fatal(err)
	}
	var over *OverError
	if err := c.Charge(50); !errors.As(err, &over) || over.Used != 60 || over.Need != 50 || over.Max != 100 || c.Held() != 0 {
		t.Fatalf("a charge over the budget: %v (%+v), held %d", err, over, c.Held())
	}
	if err := c.Charge(40); err != nil || b.Used() != 100 {
		t.Fatalf("a charge that fits exactly: %v, used %d", err, b.Used())
	}
	a.Release(30)
	if b.Used() != 70 || a.Held() != 30 {
		t.Fatalf("after a release: used %d, held %d", b.Used(), a.Held())
	}
	a.Close()
	c.Close()
	if b.Used() != 0 || a.Held() != 0 {
		t.Fatalf("after close: used %d", b.Used())
	}
	var none *Account
	if err := none.Charge(1 << 40); err != nil {
		t.Error("a nil account refused a charge")
	}
}

// A request alone in flight is served whatever its size; a second one is not let in
// beside it.
func TestAloneIsAlwaysServed(t *testing.T) {
	b := New(100)
	a := b.Open()
	if err := a.Charge(150); err != nil {
		t.Fatalf("alone: %v", err)
	}
	if err := a.Charge(150); err != nil {
		t.Fatalf("alone, growing: %v", err)
	}
	if err := b.Open().Charge(1); err == nil {
		t.Fatal("a second request beside one over the budget was let in")
	}
}

type chunks struct{ parts []string }

func (c *chunks) Read(p []byte) (int, error) {
	if len(c.parts) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.parts[0])
	if c.parts[0] = c.parts[0][n:]; c.parts[0] == "" {
		c.parts = c.parts[1:]
	}
	return n, nil
}

func TestReadAllChargesBeforeAllocating(t *testing.T) {
	body := strings.Repeat("x", 200<<10)
	// A known size is charged once, exactly.
	b := New(1 << 30)
	a := b.Open()
	got, err := ReadAll(strings.NewReader(body), a, int64(len(body)))
	if err != nil || string(got) != body || a.Held() != int64(len(body))+1 {
		t.Fatalf("known size: %d bytes, %v, held %d", len(got), err, a.Held())
	}
	// An unknown size is charged as the buffer grows, never less than it holds.
	a = b.Open()
	got, err = ReadAll(&chunks{parts: []string{body[:1000], body[1000:100000], body[100000:]}}, a, -1)
	if err != nil || string(got) != body || a.Held() < int64(cap(got)) {
		t.Fatalf("unknown size: %d bytes, %v, held %d for a buffer of %d", len(got), err, a.Held(), cap(got))
	}
	// Over the budget the read stops with the error, and holds no more than charged.
	small := New(100 << 10)
	other := small.Open()
	_ = other.Charge(1)
	a = small.Open()
	_, err = ReadAll(bytes.NewReader([]byte(body)), a, -1)
	var over *OverError
	if !errors.As(err, &over) || a.Held() > 100<<10 {
		t.Fatalf("over the budget: %v, held %d", err, a.Held())
	}
}

// TestOnLarge: an account that held the threshold or more at once reports its peak
// when it closes, once, even if it released some of it before; smaller ones do not.
func TestOnLarge(t *testing.T) {
	b := New(0)
	var peaks []int64
	b.OnLarge(100, func(peak int64) { peaks = append(peaks, peak) })
	small := b.Open()
	_ = small.Charge(99)
	small.Close()
	large := b.Open()
	_ = large.Charge(80)
	_ = large.Charge(70)
	large.Release(100)
	_ = large.Charge(10)
	large.Close()
	large.Close()
	if len(peaks) != 1 || peaks[0] != 150 {
		t.Errorf("OnLarge saw %v, want [150]", peaks)
	}
}
