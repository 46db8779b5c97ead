//go:build !unix

package secret

// Page returns nil: no locked pages on this OS; callers use the heap.
func Page() (b []byte, locked bool) { return nil, false }

// Release does nothing on this OS beyond zeroing.
func Release(p []byte, locked bool) { clear(p[:cap(p)]) }

// PageSize is the size of a Page.
func PageSize() int { return 4096 }
