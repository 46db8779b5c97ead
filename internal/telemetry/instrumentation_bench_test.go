package telemetry

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcotel "google.golang.org/grpc/stats/opentelemetry"
)

// BenchmarkServerInstrumentation compares ways of instrumenting the gRPC
// server on Health/Check over loopback (no TLS, client in the process),
// each with a Prometheus-backed meter provider and no trace export, as the
// broker runs unless OTLP traces are configured:
//
//	none:         no instrumentation (the floor of this benchmark)
//	otelgrpc:     otelgrpc's stats handler, as keybroker used before
//	statshandler: keybroker's stats handler (cached attribute sets)
//	interceptors: keybroker's interceptors (what the broker uses)
//	grpc-otel:    grpc-go's stats/opentelemetry plugin (other series names:
//	              grpc.server.call.duration by grpc.method, grpc.status)
//
//	go test -run '^$' -bench BenchmarkServerInstrumentation -benchmem -count 3 ./internal/telemetry/
func BenchmarkServerInstrumentation(b *testing.B) {
	variants := []struct {
		name string
		opts func(p *Provider, m *Methods) []grpc.ServerOption
	}{
		{"none", func(*Provider, *Methods) []grpc.ServerOption { return nil }},
		{"otelgrpc", func(p *Provider, m *Methods) []grpc.ServerOption {
			return []grpc.ServerOption{grpc.StatsHandler(p.OtelgrpcStatsHandler(m))}
		}},
		{"statshandler", func(p *Provider, m *Methods) []grpc.ServerOption {
			return []grpc.ServerOption{grpc.StatsHandler(p.GRPCStatsHandler(m))}
		}},
		{"interceptors", func(p *Provider, m *Methods) []grpc.ServerOption {
			u, s := p.RPCInterceptors(m)
			return []grpc.ServerOption{grpc.UnaryInterceptor(u), grpc.StreamInterceptor(s)}
		}},
		{"grpc-otel", func(p *Provider, _ *Methods) []grpc.ServerOption {
			return []grpc.ServerOption{grpcotel.ServerOption(grpcotel.Options{
				MetricsOptions: grpcotel.MetricsOptions{MeterProvider: p.meterProvider},
			})}
		}},
	}
	for _, v := range variants {
		b.Run(v.name, func(b *testing.B) {
			p, err := New(context.Background(), Config{Prometheus: true, ServiceVersion: "bench"})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = p.Shutdown(context.Background()) })
			var methods Methods
			srv := grpc.NewServer(v.opts(p, &methods)...)
			healthpb.RegisterHealthServer(srv, health.NewServer())
			methods.Set(srv.GetServiceInfo())
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			go func() { _ = srv.Serve(l) }()
			b.Cleanup(srv.Stop)
			cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { cc.Close() })
			hc := healthpb.NewHealthClient(cc)
			ctx := context.Background()
			b.SetParallelism(10)
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
						b.Errorf("Check err = %v", err)
						return
					}
				}
			})
		})
	}
}
