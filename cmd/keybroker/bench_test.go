package main

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// BenchmarkRPC measures each engine RPC over the real broker: real mTLS
// on loopback, 4 connections shared by parallel callers, keys warm. Compare
// the sub-benchmarks with Health/Check, the floor a gRPC call costs here:
//
//	go test -run '^$' -bench BenchmarkRPC -benchtime 20000x -count 5 ./cmd/keybroker/
//	go test -run '^$' -bench 'BenchmarkRPC/UnwrapDEK' -cpuprofile cpu.out ./cmd/keybroker/
func BenchmarkRPC(b *testing.B) {
	h := newHarness(b, "")
	h.start()
	ctx := context.Background()
	conns := make([]*grpc.ClientConn, 4)
	for i := range conns {
		conns[i] = h.conn(h.files.EngineCert, h.files.EngineKey, false)
	}
	kb := keybrokerv1.NewKeyBrokerServiceClient(conns[0])
	dek, aad := make([]byte, 32), []byte("database=bench")
	w, err := kb.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: dek, AssociatedData: aad})
	if err != nil {
		b.Fatalf("WrapDEK err = %v", err)
	}
	calls := []struct {
		name string
		call func(cc *grpc.ClientConn) error
	}{
		{"Health", func(cc *grpc.ClientConn) error {
			_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}},
		{"GetMasterKey", func(cc *grpc.ClientConn) error {
			_, err := keybrokerv1.NewKeyBrokerServiceClient(cc).GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
			return err
		}},
		{"WrapDEK", func(cc *grpc.ClientConn) error {
			_, err := keybrokerv1.NewKeyBrokerServiceClient(cc).WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: dek, AssociatedData: aad})
			return err
		}},
		{"UnwrapDEK", func(cc *grpc.ClientConn) error {
			_, err := keybrokerv1.NewKeyBrokerServiceClient(cc).UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek(), AssociatedData: aad})
			return err
		}},
	}
	for _, c := range calls {
		b.Run(c.name, func(b *testing.B) {
			b.SetParallelism(10) // 20 callers on 2 CPUs, as make bench runs ghz
			var next uint32
			b.RunParallel(func(pb *testing.PB) {
				next++
				cc := conns[int(next)%len(conns)]
				for pb.Next() {
					if err := c.call(cc); err != nil {
						b.Errorf("%s err = %v, want nil", c.name, err)
						return
					}
				}
			})
		})
	}
}
