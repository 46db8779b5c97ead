package telemetry

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestRPCInterceptors checks the interceptors make the series and spans
// TestGRPCStatsHandler checks for the stats handler, and that a refusal by
// a chained interceptor (as the authorizer's) is measured with its code.
func TestRPCInterceptors(t *testing.T) {
	p, rec := newTestProvider(t)
	var methods Methods
	unary, stream := p.RPCInterceptors(&methods)
	refuse := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*healthpb.HealthCheckRequest); ok && r.GetService() == "refused" {
			return nil, status.Error(codes.PermissionDenied, "no")
		}
		return handler(ctx, req)
	}
	cc := serveHealth(t, &methods, grpc.UnaryInterceptor(unary), grpc.StreamInterceptor(stream), grpc.ChainUnaryInterceptor(refuse))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("Health/Check err = %v, want nil", err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"}); status.Code(err) != codes.NotFound {
		t.Fatalf("Health/Check(unknown service) err = %v, want NotFound", err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "refused"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Health/Check(refused) err = %v, want PermissionDenied", err)
	}
	// A server-streaming call, ended by the client once it has the first answer.
	wctx, wcancel := context.WithCancel(ctx)
	w, err := hc.Watch(wctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatalf("Health/Watch Recv err = %v, want nil", err)
	}
	wcancel()
	if err := cc.Invoke(ctx, "/made.Up/Method", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{}); status.Code(err) != codes.Unimplemented {
		t.Fatalf("Invoke(made-up) err = %v, want Unimplemented", err)
	}

	// The Watch stream ends on the server shortly after the client cancels.
	var text string
	deadline := time.Now().Add(10 * time.Second)
	for {
		text = scrape(t, p)
		if _, ok := sample(text, "rpc_server_call_duration_seconds_count", map[string]string{"rpc_method": "grpc.health.v1.Health/Watch"}); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	tests := []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"rpc_method": "grpc.health.v1.Health/Check", "rpc_response_status_code": "OK", "rpc_system_name": "grpc"}, 1},
		{map[string]string{"rpc_method": "grpc.health.v1.Health/Check", "rpc_response_status_code": "NOT_FOUND"}, 1},
		{map[string]string{"rpc_method": "grpc.health.v1.Health/Check", "rpc_response_status_code": "PERMISSION_DENIED"}, 1},
		{map[string]string{"rpc_method": "grpc.health.v1.Health/Watch", "rpc_response_status_code": "CANCELLED"}, 1},
	}
	for _, tc := range tests {
		if got, ok := sample(text, "rpc_server_call_duration_seconds_count", tc.labels); !ok || got != tc.want {
			t.Errorf("rpc_server_call_duration_seconds_count%v = %v (found %v), want %v", tc.labels, got, ok, tc.want)
		}
	}
	if strings.Contains(text, "made.Up") {
		t.Errorf("/metrics mentions the made-up method")
	}
	if _, ok := sample(text, "rpc_server_call_duration_seconds_bucket", map[string]string{"le": "0.0005"}); !ok {
		t.Errorf("rpc_server_call_duration_seconds has no le=0.0005 bucket, want sub-millisecond buckets")
	}
	names := map[string]int{}
	for _, s := range rec.Ended() {
		names[s.Name()]++
	}
	if names["grpc.health.v1.Health/Check"] != 3 || names["grpc.health.v1.Health/Watch"] != 1 || len(names) != 2 {
		t.Errorf("server spans by name = %v, want 3 grpc.health.v1.Health/Check and 1 grpc.health.v1.Health/Watch", names)
	}
}

// TestRPCKindOptionsCached checks a (method, code) pair's record options are
// made once: the point of the handler is no per-call attribute set.
func TestRPCKindOptionsCached(t *testing.T) {
	k := newRPCKind("/keybroker.v1.KeyBrokerService/GetMasterKey")
	a, b := k.options(codes.OK), k.options(codes.OK)
	if len(a) != 1 || &a[0] != &b[0] {
		t.Errorf("options(OK) twice gave different slices, want the cached one")
	}
	if allocs := testing.AllocsPerRun(100, func() { k.options(codes.Unavailable) }); allocs != 0 {
		t.Errorf("options(cached code) allocates %v times per call, want 0", allocs)
	}
	if got := canonicalCode(codes.Code(99)); got != "CODE(99)" {
		t.Errorf("canonicalCode(99) = %q, want CODE(99)", got)
	}
}
