package runtime

import (
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
)

// TestLargeAllocationsAreUnmapped: an allocation of largeAlloc bytes or more is a
// mapping of its own, gone once the arena is freed (so a long prompt's copy leaves
// nothing resident), beside small ones from malloc; every one is counted while held.
func TestLargeAllocationsAreUnmapped(t *testing.T) {
	var live atomic.Int64
	a := newArena(&live)
	large := uintptr(a.alloc(largeAlloc + 1))
	small := uintptr(a.alloc(16))
	if live.Load() != 2 {
		t.Errorf("%d allocations counted, want 2", live.Load())
	}
	if !mappingStartsAt(t, large) {
		t.Fatalf("the large allocation at %#x is not a mapping of its own", large)
	}
	if mappingStartsAt(t, small) {
		t.Errorf("a small allocation got a mapping of its own")
	}
	a.free()
	if mappingStartsAt(t, large) {
		t.Errorf("the large allocation's mapping is still there after free")
	}
	if live.Load() != 0 {
		t.Errorf("%d allocations counted after free", live.Load())
	}
}

// mappingStartsAt reports whether a mapping of this process begins at addr.
func mappingStartsAt(t *testing.T, addr uintptr) bool {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Contains(string(maps), fmt.Sprintf("\n%x-", addr)) || strings.HasPrefix(string(maps), fmt.Sprintf("%x-", addr))
}
