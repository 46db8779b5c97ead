package wipe

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// Codec is a gRPC codec for protobuf (registered under the name "proto",
// for grpc.ForceServerCodecV2) that keeps key bytes out of reused memory:
// every message is encoded into Pool, which zeroes buffers when gRPC
// releases them; a message Secret reports is encoded into a locked page
// (secret.Page) where the OS allows, else into Pool, whatever its size
// (grpc-go's own codec puts small messages in plain garbage), and Scrub
// clears its key fields once encoded; and the wire bytes of a
// received message Secret reports are zeroed once decoded. It is safe for
// concurrent use.
type Codec struct {
	// Pool receives every encoded message; nil means a NewPool().
	Pool *Pool
	// Secret reports whether v carries key bytes; nil means none does.
	Secret func(v any) bool
	// Scrub clears the key fields of v once v is encoded; nil clears
	// nothing. It runs only for messages Secret reports.
	Scrub func(v any)
}

// NewCodec returns a Codec with a NewPool() and the given functions.
func NewCodec(secret func(v any) bool, scrub func(v any)) *Codec {
	return &Codec{Pool: NewPool(), Secret: secret, Scrub: scrub}
}

var _ encoding.CodecV2 = (*Codec)(nil)

// Name is "proto": the codec replaces grpc-go's for the same content type.
func (c *Codec) Name() string { return "proto" }

func (c *Codec) pool() *Pool {
	if c.Pool == nil {
		return defaultPool
	}
	return c.Pool
}

var defaultPool = NewPool()

func (c *Codec) secret(v any) bool { return c.Secret != nil && c.Secret(v) }

// Marshal encodes v into a buffer of the pool.
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("wipe: cannot marshal %T: not a proto.Message", v)
	}
	opts := proto.MarshalOptions{UseCachedSize: true}
	size := proto.Size(m)
	secret := c.secret(v)
	if !secret && mem.IsBelowBufferPoolingThreshold(size) {
		b, err := opts.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	var p mem.BufferPool = c.pool()
	var buf *[]byte
	if secret {
		// A locked page, when the OS gives one (RLIMIT_MEMLOCK).
		if b := (pagePool{}).getPage(size); b != nil {
			buf, p = b, pagePool{}
		}
	}
	if buf == nil {
		buf = p.Get(size)
	}
	out, err := opts.MarshalAppend((*buf)[:0], m)
	if secret && c.Scrub != nil {
		c.Scrub(v)
	}
	if err != nil {
		p.Put(buf)
		return nil, err
	}
	if len(out) != size || (size > 0 && &out[0] != &(*buf)[0]) {
		// proto.Size lied (a message changed under us): the encoding
		// grew out of the pooled buffer. Keep the bytes, wipe the rest.
		clear(*buf)
		p.Put(buf)
		return mem.BufferSlice{mem.SliceBuffer(out)}, nil
	}
	*buf = out
	return mem.BufferSlice{mem.NewBuffer(buf, p)}, nil
}

// Unmarshal decodes data into v; for a message Secret reports, it zeroes
// data's buffers afterwards (gRPC frees them right after Unmarshal).
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("wipe: cannot unmarshal into %T: not a proto.Message", v)
	}
	p := c.pool()
	buf := data.MaterializeToBuffer(p)
	err := proto.Unmarshal(buf.ReadOnlyData(), m)
	if c.secret(v) {
		// A copy MaterializeToBuffer made came from the pool, which
		// zeroes it on Free; the wire buffers are gRPC's.
		for _, b := range data {
			clear(b.ReadOnlyData())
		}
	}
	buf.Free()
	return err
}
