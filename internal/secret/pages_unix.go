//go:build unix

package secret

import (
	"sync"

	"golang.org/x/sys/unix"
)

// pageSize is the unit of locked memory.
var pageSize = unix.Getpagesize()

// pages holds zeroed locked pages for reuse: a page, once mapped, is never
// unmapped (a slice of it may outlive its owner in tests), only recycled.
var pages struct {
	mu   sync.Mutex
	free [][]byte
}

// Page returns a zeroed page of memory outside the Go heap, locked in
// memory where the OS allows it (RLIMIT_MEMLOCK; locked reports whether
// it is) and excluded from core dumps. Release gives it back. It returns
// nil if the OS refuses the mapping; callers then fall back to the heap.
func Page() (b []byte, locked bool) {
	pages.mu.Lock()
	if n := len(pages.free); n > 0 {
		p := pages.free[n-1]
		pages.free = pages.free[:n-1]
		pages.mu.Unlock()
		return p, true
	}
	pages.mu.Unlock()
	p, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, false
	}
	_ = unix.Madvise(p, unix.MADV_DONTDUMP)
	if unix.Mlock(p) != nil {
		// Not locked: keep using it (still out of core dumps), but do not
		// recycle it as a locked page.
		return p, false
	}
	return p, true
}

// Release zeroes a page from Page (locked as Page reported) and keeps it
// for reuse. p must be the whole page.
func Release(p []byte, locked bool) {
	p = p[:cap(p)]
	clear(p)
	if !locked {
		_ = unix.Munmap(p)
		return
	}
	pages.mu.Lock()
	pages.free = append(pages.free, p)
	pages.mu.Unlock()
}

// PageSize is the size of a Page.
func PageSize() int { return pageSize }
