//go:build cgo

package runtime

/*
#include <stdlib.h>
#include <stdint.h>
*/
import "C"

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// arena owns C memory handed to the runtime. Everything allocated through it is freed
// exactly once, by free, when what it was handed for ends: a run (per-run arena), a
// replaced setting (chat template, tools, cross-attention buffers, prompt cache path)
// or the handle (init-time strings and structs, LoRA adapters). live counts the
// allocations that are held, per Library, so tests can prove that none leak.
//
// Allocations of largeAlloc bytes or more (a long prompt, an embedding) are mappings
// of their own, unmapped by free: from malloc they could stay resident after the run,
// in a thread's arena whose top glibc neither returns on free (its threshold grows
// with the largest block freed) nor with malloc_trim.
type arena struct {
	ptrs []unsafe.Pointer
	maps [][]byte
	live *atomic.Int64
}

// largeAlloc is the size from which an allocation is a mapping of its own.
const largeAlloc = 1 << 20

func newArena(live *atomic.Int64) *arena { return &arena{live: live} }

// alloc returns n zeroed bytes of C memory (at least 1, so the pointer is never NULL).
func (a *arena) alloc(n uintptr) unsafe.Pointer {
	if n == 0 {
		n = 1
	}
	if n >= largeAlloc {
		m, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS) //nolint:gosec // n is a length in memory, an int
		if err != nil {
			panic(fmt.Sprintf("runtime: mmap(%d) failed: %v", n, err))
		}
		a.maps = append(a.maps, m)
		a.live.Add(1)
		return unsafe.Pointer(&m[0])
	}
	p := C.calloc(1, C.size_t(n))
	if p == nil {
		panic(fmt.Sprintf("runtime: C.calloc(%d) failed", n))
	}
	a.ptrs = append(a.ptrs, p)
	a.live.Add(1)
	return p
}

// str copies s into a NUL-terminated C string. The caller has checked with cString that
// s holds no NUL byte.
func (a *arena) str(s string) *C.char {
	p := a.alloc(uintptr(len(s)) + 1)
	copy(unsafe.Slice((*byte)(p), len(s)), s)
	return (*C.char)(p)
}

// floats copies f into C memory; NULL when f is empty.
func (a *arena) floats(f []float32) *C.float {
	if len(f) == 0 {
		return nil
	}
	p := a.alloc(uintptr(len(f)) * 4)
	copy(unsafe.Slice((*float32)(p), len(f)), f)
	return (*C.float)(p)
}

// int32s copies v into C memory; NULL when v is empty.
func (a *arena) int32s(v []int32) *C.int32_t {
	if len(v) == 0 {
		return nil
	}
	p := a.alloc(uintptr(len(v)) * 4)
	copy(unsafe.Slice((*int32)(p), len(v)), v)
	return (*C.int32_t)(p)
}

// ints copies v into C ints (int is 4 bytes on every LP64 target the ABI allows).
func (a *arena) ints(v []int) *C.int {
	p := a.alloc(uintptr(len(v)) * 4)
	dst := unsafe.Slice((*C.int)(p), len(v))
	for i, x := range v {
		dst[i] = C.int(x)
	}
	return (*C.int)(p)
}

// adopt moves the allocations of b into a, to be freed with a.
func (a *arena) adopt(b *arena) {
	a.ptrs = append(a.ptrs, b.ptrs...)
	a.maps = append(a.maps, b.maps...)
	b.ptrs, b.maps = nil, nil
}

// free releases every allocation once; the arena can be reused afterwards.
func (a *arena) free() {
	if a == nil {
		return
	}
	for _, p := range a.ptrs {
		C.free(p)
	}
	for _, m := range a.maps {
		if err := unix.Munmap(m); err != nil {
			panic(fmt.Sprintf("runtime: munmap: %v", err)) // a mapping of ours: cannot fail
		}
	}
	a.live.Add(-int64(len(a.ptrs) + len(a.maps)))
	a.ptrs, a.maps = nil, nil
}
