//go:build cgo

package runtime

/*
#include <malloc.h>
*/
import "C"

// ReleaseFreeMemory returns the C allocator's free memory to the system
// (malloc_trim): the inputs the binding copied for a large run, freed, may otherwise
// stay in glibc's heap.
func ReleaseFreeMemory() { C.malloc_trim(0) }
