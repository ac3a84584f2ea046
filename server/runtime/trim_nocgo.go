//go:build !cgo

package runtime

// ReleaseFreeMemory does nothing without cgo: there is no C allocator to trim.
func ReleaseFreeMemory() {}
