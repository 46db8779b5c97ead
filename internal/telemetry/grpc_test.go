package telemetry

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// serveHealth serves grpc.health.v1 on a loopback port with opts, records
// its methods in methods, and returns a client connection to it.
func serveHealth(t *testing.T, methods *Methods, opts ...grpc.ServerOption) *grpc.ClientConn {
	t.Helper()
	srv := grpc.NewServer(opts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	methods.Set(srv.GetServiceInfo())
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func TestGRPCStatsHandler(t *testing.T) {
	p, rec := newTestProvider(t)
	var methods Methods
	cc := serveHealth(t, &methods, grpc.StatsHandler(p.GRPCStatsHandler(&methods)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Health/Check err = %v, want nil", err)
	}
	if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Health/Check(unknown service) err = %v, want NotFound", err)
	}
	// Made-up method names, as a client probing the server might send.
	for _, m := range []string{"/made.Up/Method1", "/made.Up/Method2", "not-even-a-path"} {
		err := cc.Invoke(ctx, m, &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("Invoke(%q) err = %v, want Unimplemented", m, err)
		}
	}

	text := scrape(t, p)
	tests := []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"rpc_method": "grpc.health.v1.Health/Check", "rpc_response_status_code": "OK"}, 1},
		{map[string]string{"rpc_method": "grpc.health.v1.Health/Check", "rpc_response_status_code": "NOT_FOUND"}, 1},
	}
	for _, tc := range tests {
		if got, ok := sample(text, "rpc_server_call_duration_seconds_count", tc.labels); !ok || got != tc.want {
			t.Errorf("rpc_server_call_duration_seconds_count%v = %v (found %v), want %v", tc.labels, got, ok, tc.want)
		}
	}
	for _, bad := range []string{"made.Up", "not-even-a-path"} {
		if strings.Contains(text, bad) {
			t.Errorf("/metrics mentions the made-up method %q, want it counted as %s", bad, OtherMethod)
		}
	}
	// The finer buckets, not the SDK's millisecond-sized defaults.
	if _, ok := sample(text, "rpc_server_call_duration_seconds_bucket", map[string]string{"le": "0.0005"}); !ok {
		t.Errorf("rpc_server_call_duration_seconds has no le=0.0005 bucket, want sub-millisecond buckets")
	}
	// grpc-go ends no RPC for an unknown method (no stats.End), so those
	// leave no span and no measurement at all.
	names := map[string]int{}
	for _, s := range rec.Ended() {
		names[s.Name()]++
	}
	if len(names) != 1 || names["grpc.health.v1.Health/Check"] != 2 {
		t.Errorf("server spans by name = %v, want 2 grpc.health.v1.Health/Check only", names)
	}
}

// tagRecorder is a stats.Handler that remembers the method names it was given.
type tagRecorder struct {
	stats.Handler
	got []string
}

func (r *tagRecorder) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	r.got = append(r.got, info.FullMethodName)
	return ctx
}

func TestMethodNormalizer(t *testing.T) {
	var methods Methods
	if methods.Has("/grpc.health.v1.Health/Check") {
		t.Fatalf("Has before Set = true, want false")
	}
	srv := grpc.NewServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	methods.Set(srv.GetServiceInfo())
	tests := []struct{ in, want string }{
		{"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Check"},
		{"/grpc.health.v1.Health/Watch", "/grpc.health.v1.Health/Watch"},
		{"/grpc.health.v1.Health/Nope", "/" + OtherMethod},
		{"/made.Up/Method", "/" + OtherMethod},
		{"", "/" + OtherMethod},
	}
	for _, tc := range tests {
		rec := &tagRecorder{}
		info := &stats.RPCTagInfo{FullMethodName: tc.in}
		methodNormalizer{Handler: rec, known: &methods}.TagRPC(context.Background(), info)
		if len(rec.got) != 1 || rec.got[0] != tc.want {
			t.Errorf("TagRPC(%q) passed on %v, want [%q]", tc.in, rec.got, tc.want)
		}
		if info.FullMethodName != tc.in {
			t.Errorf("TagRPC(%q) changed the caller's info to %q, want it untouched", tc.in, info.FullMethodName)
		}
	}
	var nilMethods *Methods
	if nilMethods.Has("/grpc.health.v1.Health/Check") {
		t.Errorf("(*Methods)(nil).Has = true, want false")
	}
}
