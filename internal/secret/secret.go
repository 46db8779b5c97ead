// Package secret holds key material in memory: a byte string that never
// prints, compares in constant time, sits in locked memory where the OS
// allows it and is wiped on demand.
//
// Wiping is best effort: Go's garbage collector may have copied the bytes
// before Wipe runs (for example while growing a slice), and nothing can clear
// those copies. Bytes hands out a fresh copy the caller owns and should clear.
package secret

import (
	"crypto/subtle"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
)

// Redacted is what a Bytes prints as.
const Redacted = "REDACTED"

// Bytes is key material. The zero value is empty. It is safe for concurrent
// use; a wiped Bytes stays wiped.
type Bytes struct {
	mu     sync.RWMutex
	b      []byte
	locked bool
	page   bool // s.b is the start of a Page, recycled by a cleanup
	wiped  bool
	// attached is derived from b (UseAttached) and wiped with it.
	attached Attachment
}

// New copies b into a new Bytes. The caller keeps b and should clear it.
// A key up to a page long gets a locked page of its own (Page), so that
// wiping one key never unlocks another's; the page is recycled once the
// Bytes is unreachable.
func New(b []byte) *Bytes {
	if len(b) > 0 && len(b) <= PageSize() {
		if p, locked := Page(); p != nil {
			s := &Bytes{b: p[:len(b):len(b)], page: true, locked: locked}
			copy(s.b, b)
			runtime.AddCleanup(s, func(p []byte) { Release(p, locked) }, p)
			return s
		}
	}
	s := &Bytes{b: make([]byte, len(b))}
	copy(s.b, b)
	s.locked = lock(s.b)
	return s
}

// Len returns the length of the key, 0 once wiped.
func (s *Bytes) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.wiped {
		return 0
	}
	return len(s.b)
}

// Bytes returns a copy of the key; the caller should clear it after use.
// It returns nil once the key is wiped.
func (s *Bytes) Bytes() []byte {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.wiped {
		return nil
	}
	out := make([]byte, len(s.b))
	copy(out, s.b)
	return out
}

// Use calls f with the key bytes in place, without copying them. f must not
// keep or modify the slice. It reports false, without calling f, once wiped.
func (s *Bytes) Use(f func(key []byte)) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.wiped {
		return false
	}
	f(s.b)
	return true
}

// Equal reports in constant time whether s and o hold the same bytes.
func (s *Bytes) Equal(o *Bytes) bool {
	if s == o {
		return true
	}
	a, b := s.Bytes(), o.Bytes()
	defer clear(a)
	defer clear(b)
	return len(a) == len(b) && subtle.ConstantTimeCompare(a, b) == 1
}

// Wipe overwrites the key with zeros and releases its locked memory. Further
// reads see an empty key. Safe to call more than once.
func (s *Bytes) Wipe() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.wiped {
		return
	}
	clear(s.b)
	if s.attached != nil {
		s.attached.Wipe()
		s.attached = nil
	}
	if s.locked && !s.page {
		unlock(s.b)
	}
	s.wiped = true
}

// Wiped reports whether Wipe has run.
func (s *Bytes) Wiped() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.wiped
}

// Raw exposes the backing slice for tests that check wiping left only zeros.
// Never use it outside tests.
func (s *Bytes) Raw() []byte { return s.b }

// String implements fmt.Stringer without revealing the key.
func (s *Bytes) String() string { return Redacted }

// GoString implements fmt.GoStringer without revealing the key.
func (s *Bytes) GoString() string { return Redacted }

// Format implements fmt.Formatter: every verb (%x and %q included) prints
// Redacted, never the key.
func (s *Bytes) Format(f fmt.State, _ rune) { io.WriteString(f, Redacted) }

// LogValue implements slog.LogValuer without revealing the key.
func (s *Bytes) LogValue() slog.Value { return slog.StringValue(Redacted) }

// MarshalText keeps encoders (JSON, YAML) from revealing the key.
func (s *Bytes) MarshalText() ([]byte, error) { return []byte(Redacted), nil }
