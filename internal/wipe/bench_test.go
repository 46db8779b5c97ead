package wipe

import (
	"bytes"
	"net"
	"testing"

	"google.golang.org/grpc/encoding"
	_ "google.golang.org/grpc/encoding/proto" // grpc-go's codec, the baseline
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// BenchmarkMarshal compares grpc-go's proto codec with Codec on a
// key-sized secret message, encode and release, as the server does per reply.
func BenchmarkMarshal(b *testing.B) {
	key := bytes.Repeat([]byte{7}, 32)
	secretMsg := func(v any) bool { _, ok := v.(*wrapperspb.BytesValue); return ok }
	codecs := []struct {
		name  string
		codec encoding.CodecV2
	}{
		{"grpc-proto", encoding.GetCodecV2("proto")},
		{"wipe", NewCodec(secretMsg, func(v any) { clear(v.(*wrapperspb.BytesValue).Value) })},
	}
	for _, c := range codecs {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				msg := &wrapperspb.BytesValue{Value: bytes.Clone(key)}
				data, err := c.codec.Marshal(msg)
				if err != nil {
					b.Fatal(err)
				}
				data.Free()
			}
		})
	}
}

// discardConn is a net.Conn whose writes succeed and go nowhere.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkConnWrite is the cost Conn adds to a write of a typical reply
// flush (a few hundred bytes): the zeroing and Do.
func BenchmarkConnWrite(b *testing.B) {
	buf := make([]byte, 300)
	for _, tc := range []struct {
		name string
		conn net.Conn
	}{{"plain", discardConn{}}, {"wipe", WrapConn(discardConn{})}} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				if _, err := tc.conn.Write(buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
