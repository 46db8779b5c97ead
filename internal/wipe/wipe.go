// Package wipe zeroes the buffers that carry key material on their way in
// and out of the process, so that no copy outlives its use: a buffer pool
// that zeroes what it is given back, a gRPC codec that encodes
// key-carrying messages into that pool and clears their key fields once
// encoded, and a connection wrapper that zeroes what the transport has
// written before the transport reuses its write buffer.
//
// Front-ends use it at their edge: the gRPC server of cmd/keybroker, and
// any other protocol (KMIP) that writes key bytes to a connection
// (WrapConn, Pool). Under a garbage collector this is best effort: the
// buffers this package sees are zeroed; copies made by code it does not
// see are not.
package wipe

import (
	"net"
	"sync"

	"google.golang.org/grpc/mem"

	"github.com/keybroker/keybroker/internal/secret"
)

// Pool is a mem.BufferPool whose buffers are zeroed, over their whole
// capacity, when they are put back: no buffer handed out again, or left
// unused in the pool, holds what it carried. It is safe for concurrent use.
type Pool struct {
	tiers []tier
}

type tier struct {
	size int
	pool sync.Pool
}

// DefaultSizes are the capacities of the tiers of NewPool(). The smallest
// is above grpc-go's pooling threshold (1 KiB): mem.NewBuffer never gives
// a smaller buffer back to its pool, so it would never be zeroed.
var DefaultSizes = []int{2 << 10, 4 << 10, 16 << 10, 32 << 10, 1 << 20}

// NewPool returns a Pool with buffers of the given capacities (ascending,
// each above 1 KiB for use with grpc-go), DefaultSizes when none are given. Larger requests are allocated, and
// zeroed on Put like the rest.
func NewPool(sizes ...int) *Pool {
	if len(sizes) == 0 {
		sizes = DefaultSizes
	}
	p := &Pool{tiers: make([]tier, len(sizes))}
	for i, s := range sizes {
		p.tiers[i].size = s
	}
	return p
}

// Get returns a buffer of length n.
func (p *Pool) Get(n int) *[]byte {
	for i := range p.tiers {
		t := &p.tiers[i]
		if n > t.size {
			continue
		}
		if b, ok := t.pool.Get().(*[]byte); ok {
			*b = (*b)[:n]
			return b
		}
		b := make([]byte, n, t.size)
		return &b
	}
	b := make([]byte, n)
	return &b
}

// Put zeroes b over its whole capacity and keeps it for reuse.
func (p *Pool) Put(b *[]byte) {
	if b == nil {
		return
	}
	full := (*b)[:cap(*b)]
	clear(full)
	for i := range p.tiers {
		t := &p.tiers[i]
		if cap(full) == t.size {
			*b = full
			t.pool.Put(b)
			return
		}
	}
	// Not one of ours (or over the largest tier): zeroed and dropped.
}

var _ mem.BufferPool = (*Pool)(nil)

// Conn zeroes every buffer once it has been written to the connection
// below it, so a transport's write buffer does not keep the last frames it
// sent (gRPC's HTTP/2 writer keeps a 32 KiB buffer per connection). A
// caller that writes a buffer it still needs afterwards must not use a
// Conn: grpc-go's transport writes through its own write buffer (as long
// as grpc.WriteBufferSize is not 0) and never reads it back.
type Conn struct {
	net.Conn
}

// WrapConn returns c wrapped in a Conn.
func WrapConn(c net.Conn) *Conn { return &Conn{Conn: c} }

// Write writes b, then zeroes it. The write runs under Do: crypto/tls
// encrypts records in place, but a record that outgrows its pooled buffer
// leaves its plaintext in the dropped one, which only runtime/secret erases.
func (c *Conn) Write(b []byte) (n int, err error) {
	Do(func() { n, err = c.Conn.Write(b) })
	clear(b)
	return n, err
}

// pagePool is the mem.BufferPool of buffers that are locked pages
// (secret.Page): key-carrying replies are encoded into one, so the encoded
// key stays in locked memory until gRPC has written it.
type pagePool struct{}

// getPage returns a locked page cut to n bytes, or nil when n is over a
// page or the OS gives no locked page.
func (pagePool) getPage(n int) *[]byte {
	if n > secret.PageSize() {
		return nil
	}
	p, locked := secret.Page()
	if p == nil {
		return nil
	}
	if !locked {
		secret.Release(p, false)
		return nil
	}
	b := p[:n]
	return &b
}

// Get is not used: buffers come from getPage.
func (pp pagePool) Get(n int) *[]byte {
	if b := pp.getPage(n); b != nil {
		return b
	}
	b := make([]byte, n)
	return &b
}

// Put zeroes the page and keeps it locked for reuse.
func (pagePool) Put(b *[]byte) {
	if b == nil {
		return
	}
	if cap(*b) != secret.PageSize() {
		clear((*b)[:cap(*b)])
		return
	}
	secret.Release(*b, true)
}
