package wipe

import (
	"bytes"
	"net"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func allZero(b []byte) bool { return bytes.Equal(b, make([]byte, len(b))) }

func TestPoolZeroesOnPut(t *testing.T) {
	p := NewPool()
	tests := []struct {
		name string
		n    int
	}{
		{"small", 40},
		{"tier edge", 2 << 10},
		{"middle", 5000},
		{"over the largest tier", 2 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := p.Get(tc.n)
			if len(*b) != tc.n {
				t.Fatalf("Get(%d) len = %d", tc.n, len(*b))
			}
			full := (*b)[:cap(*b)]
			for i := range full {
				full[i] = 0xAB
			}
			*b = (*b)[:1] // a prefix, as grpc-go gives back
			p.Put(b)
			if !allZero(full) {
				t.Errorf("buffer of %d bytes not zeroed over its capacity after Put", tc.n)
			}
		})
	}
}

func TestCodec(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	isSecret := func(v any) bool { _, ok := v.(*wrapperspb.BytesValue); return ok }
	scrub := func(v any) { clear(v.(*wrapperspb.BytesValue).Value) }
	c := NewCodec(isSecret, scrub)
	if c.Name() != "proto" {
		t.Fatalf("Name() = %q, want proto", c.Name())
	}

	msg := &wrapperspb.BytesValue{Value: bytes.Clone(secret)}
	data, err := c.Marshal(msg)
	if err != nil {
		t.Fatalf("Marshal err = %v, want nil", err)
	}
	if !allZero(msg.Value) {
		t.Errorf("Marshal left the key field of a secret message: %x", msg.Value)
	}
	wire := data.Materialize()
	var back wrapperspb.BytesValue
	if err := proto.Unmarshal(wire, &back); err != nil || !bytes.Equal(back.Value, secret) {
		t.Fatalf("the encoding decodes to %x (%v), want the key", back.Value, err)
	}
	if len(data) != 1 {
		t.Fatalf("Marshal gave %d buffers, want 1", len(data))
	}
	pooled := data[0].ReadOnlyData()
	data.Free()
	if !allZero(pooled) {
		t.Errorf("the encoded buffer is not zeroed once gRPC frees it")
	}

	// Receiving: the wire buffers of a secret message are zeroed once decoded.
	in := mem.BufferSlice{mem.SliceBuffer(bytes.Clone(wire)), mem.SliceBuffer(nil)}
	var got wrapperspb.BytesValue
	if err := c.Unmarshal(in, &got); err != nil || !bytes.Equal(got.Value, secret) {
		t.Fatalf("Unmarshal = %x, %v; want the key", got.Value, err)
	}
	if !allZero(in[0].ReadOnlyData()) {
		t.Errorf("Unmarshal left the wire bytes of a secret message")
	}

	// Other messages are left alone.
	plain := &wrapperspb.StringValue{Value: "hello"}
	pd, err := c.Marshal(plain)
	if err != nil || plain.Value != "hello" {
		t.Fatalf("Marshal(plain) = %v, value %q", err, plain.Value)
	}
	var plainBack wrapperspb.StringValue
	if err := c.Unmarshal(pd, &plainBack); err != nil || plainBack.Value != "hello" {
		t.Fatalf("round trip of a plain message = %q, %v", plainBack.Value, err)
	}
	if _, err := c.Marshal("not a message"); err == nil {
		t.Errorf("Marshal(string) err = nil, want an error")
	}
}

func TestConnZeroesWrites(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := WrapConn(a)
	msg := []byte("key bytes on the wire")
	done := make(chan []byte)
	go func() {
		buf := make([]byte, 64)
		n, _ := b.Read(buf)
		done <- buf[:n]
	}()
	if _, err := c.Write(msg); err != nil {
		t.Fatalf("Write err = %v", err)
	}
	if got := <-done; string(got) != "key bytes on the wire" {
		t.Errorf("peer read %q, want the bytes written", got)
	}
	if !allZero(msg) {
		t.Errorf("Write left the buffer as %q, want zeros", msg)
	}
}
