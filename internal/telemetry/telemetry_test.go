package telemetry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cache"
	"github.com/keybroker/keybroker/internal/failover"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
)

// newTestProvider is a Provider with Prometheus and an in-memory span
// recorder in place of the (no-op) tracer.
func newTestProvider(t testing.TB) (*Provider, *tracetest.SpanRecorder) {
	t.Helper()
	p, err := New(context.Background(), Config{Prometheus: true, ServiceVersion: "test"})
	if err != nil {
		t.Fatalf("New err = %v, want nil", err)
	}
	t.Cleanup(func() { _ = p.Shutdown(context.Background()) })
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	p.tracerProvider = tp
	p.tracer = tp.Tracer(ScopeName)
	return p, rec
}

// scrape returns the Prometheus text p serves.
func scrape(t *testing.T, p *Provider) string {
	t.Helper()
	rr := httptest.NewRecorder()
	p.MetricsHandler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rr.Code != http.StatusOK {
		t.Fatalf("GET /metrics = %d, want 200: %s", rr.Code, rr.Body)
	}
	return rr.Body.String()
}

// sample finds the value of the series name{labels...} (labels in any
// order, others allowed); ok is false when there is none.
func sample(text, name string, labels map[string]string) (float64, bool) {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `(\{[^}]*\})? (\S+)$`)
	for _, m := range re.FindAllStringSubmatch(text, -1) {
		all := true
		for k, v := range labels {
			if !strings.Contains(m[1], fmt.Sprintf(`%s="%s"`, k, v)) {
				all = false
				break
			}
		}
		if all {
			var f float64
			if _, err := fmt.Sscan(m[2], &f); err == nil {
				return f, true
			}
		}
	}
	return 0, false
}

func TestSelectOTLP(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    OTLPSelection
		wantErr string
	}{
		{"nothing set", nil, OTLPSelection{}, ""},
		{"endpoint turns both on, http by default", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, OTLPSelection{Traces: ProtocolHTTP, Metrics: ProtocolHTTP}, ""},
		{"grpc protocol", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, OTLPSelection{Traces: ProtocolGRPC, Metrics: ProtocolGRPC}, ""},
		{"per-signal endpoint", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, OTLPSelection{Traces: ProtocolHTTP}, ""},
		{"per-signal protocol wins", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf"}, OTLPSelection{Traces: ProtocolGRPC, Metrics: ProtocolHTTP}, ""},
		{"exporter otlp without endpoint", map[string]string{"OTEL_TRACES_EXPORTER": "otlp"}, OTLPSelection{Traces: ProtocolHTTP}, ""},
		{"exporter none wins over endpoint", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_METRICS_EXPORTER": "none"}, OTLPSelection{Traces: ProtocolHTTP}, ""},
		{"prometheus metrics exporter is the admin endpoint", map[string]string{"OTEL_METRICS_EXPORTER": "prometheus"}, OTLPSelection{}, ""},
		{"list", map[string]string{"OTEL_METRICS_EXPORTER": "prometheus, otlp"}, OTLPSelection{Metrics: ProtocolHTTP}, ""},
		{"sdk disabled", map[string]string{"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}, OTLPSelection{}, ""},
		{"unsupported exporter", map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, OTLPSelection{}, `OTEL_TRACES_EXPORTER="zipkin"`},
		{"unsupported protocol", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, OTLPSelection{}, `"http/json"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SelectOTLP(func(k string) string { return tc.env[k] })
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, ErrOTLPEnv) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("SelectOTLP(%v) err = %v, want ErrOTLPEnv naming %s", tc.env, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("SelectOTLP(%v) = %+v, %v, want %+v, nil", tc.env, got, err, tc.want)
			}
			for k := range tc.env {
				if !strings.HasPrefix(k, "OTEL_") || !contains(EnvNames, k) {
					t.Errorf("test sets %s, which is not in EnvNames: cmd/keybroker would not pass it", k)
				}
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func TestNewWithoutExportersIsNoop(t *testing.T) {
	p, err := New(context.Background(), Config{})
	if err != nil {
		t.Fatalf("New(Config{}) err = %v, want nil", err)
	}
	rr := httptest.NewRecorder()
	p.MetricsHandler().ServeHTTP(rr, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	if rr.Code != http.StatusNotFound {
		t.Errorf("MetricsHandler without Prometheus = %d, want 404", rr.Code)
	}
	// Instrumenting and observing still work, recording nothing.
	w := p.InstrumentWrapper(kektest.NewFake("r", "k"), "r")
	if _, err := w.KeyInfo(context.Background()); err != nil {
		t.Errorf("KeyInfo through a no-op Provider err = %v, want nil", err)
	}
	if _, err := p.Observe(Observed{}); err != nil {
		t.Errorf("Observe on a no-op Provider err = %v, want nil", err)
	}
	if err := p.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown err = %v, want nil", err)
	}
}

func TestNewBadOTLPEnv(t *testing.T) {
	env := map[string]string{"OTEL_TRACES_EXPORTER": "jaeger"}
	_, err := New(context.Background(), Config{Prometheus: true, Getenv: func(k string) string { return env[k] }})
	if !errors.Is(err, ErrOTLPEnv) {
		t.Fatalf("New with OTEL_TRACES_EXPORTER=jaeger err = %v, want ErrOTLPEnv", err)
	}
}

func TestInstrumentedWrapperConformance(t *testing.T) {
	p, _ := newTestProvider(t)
	kektest.RunConformance(t, func(t *testing.T) kektest.Wrapper {
		return p.InstrumentWrapper(kektest.NewFake("eastus", "cmk"), "eastus")
	})
}

// secretish is what no series may ever carry: error text, key bytes.
const secretError = "AADSTS7000215: Invalid client secret provided for s3cr3t-token"

func TestInstrumentedWrapperMetricsAndSpans(t *testing.T) {
	p, rec := newTestProvider(t)
	fake := kektest.NewFake("westeurope", "cmk")
	w := p.InstrumentWrapper(fake, "westeurope")
	ctx := context.Background()

	if _, known := w.Health(); known {
		t.Errorf("Health() before any call: known = true, want false")
	}
	key := []byte("0123456789abcdef0123456789abcdef")
	copies, err := w.WrapKey(ctx, key)
	if err != nil {
		t.Fatalf("WrapKey err = %v", err)
	}
	if _, err := w.UnwrapKey(ctx, copies); err != nil {
		t.Fatalf("UnwrapKey err = %v", err)
	}
	info, err := w.KeyInfo(ctx)
	if err != nil {
		t.Fatalf("KeyInfo err = %v", err)
	}
	if id, _ := w.CMK(); id != info.KeyID {
		t.Errorf("CMK() = %q, want the KeyInfo answer %q", id, info.KeyID)
	}
	if ok, known := w.Health(); !ok || !known {
		t.Errorf("Health() after successes = %v, %v, want true, true", ok, known)
	}

	revoked := &kek.Error{Kind: kek.KindRevoked, Op: "unwrap", Code: "ForbiddenByRbac", Status: 403, Err: errors.New(secretError)}
	fake.FailNext(kektest.OpUnwrap, 1, revoked)
	if _, err := w.UnwrapKey(ctx, copies); kek.KindOf(err) != kek.KindRevoked {
		t.Fatalf("UnwrapKey with injected revocation err = %v, want KindRevoked", err)
	}
	if ok, known := w.Health(); ok || !known {
		t.Errorf("Health() after revocation = %v, %v, want false, true", ok, known)
	}
	fake.FailNext(kektest.OpUnwrap, 1, &kek.Error{Kind: kek.KindUnavailable, Op: "unwrap", Err: errors.New(secretError)})
	_, _ = w.UnwrapKey(ctx, copies)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _ = w.UnwrapKey(cctx, copies)
	if ok, _ := w.Health(); ok {
		t.Errorf("Health() after unavailable then cancelled = healthy, want unhealthy: a cancelled call says nothing of the region")
	}

	text := scrape(t, p)
	for _, tc := range []struct {
		op, outcome string
		want        float64
	}{
		{"wrap", "ok", 1},
		{"unwrap", "ok", 1},
		{"get", "ok", 1},
		{"unwrap", "revoked", 1},
		{"unwrap", "unavailable", 1},
		{"unwrap", "canceled", 1},
	} {
		labels := map[string]string{"operation": tc.op, "region": "westeurope", "outcome": tc.outcome}
		if got, ok := sample(text, "keybroker_azure_call_duration_seconds_count", labels); !ok || got != tc.want {
			t.Errorf("keybroker_azure_call_duration_seconds_count%v = %v (found %v), want %v", labels, got, ok, tc.want)
		}
	}
	assertClean(t, text, key)

	spans := rec.Ended()
	if len(spans) != 6 {
		t.Fatalf("spans ended = %d, want 6 (one per call)", len(spans))
	}
	var sawRevoked bool
	for _, s := range spans {
		if !strings.HasPrefix(s.Name(), "akv.") {
			t.Errorf("span name = %q, want akv.<operation>", s.Name())
		}
		if strings.Contains(s.Status().Description, "AADSTS") || strings.Contains(s.Status().Description, "s3cr3t") {
			t.Errorf("span %s status = %q, want no error text", s.Name(), s.Status().Description)
		}
		for _, a := range s.Attributes() {
			if a.Key == "azure.error_code" && a.Value.AsString() == "ForbiddenByRbac" {
				sawRevoked = true
			}
			if strings.Contains(a.Value.String(), "s3cr3t") {
				t.Errorf("span %s attribute %s = %q, want no error text", s.Name(), a.Key, a.Value.String())
			}
		}
	}
	if !sawRevoked {
		t.Errorf("no span carries azure.error_code=ForbiddenByRbac, want the revoked call's span to")
	}
}

// assertClean fails when the exposition holds error text or key bytes.
func assertClean(t *testing.T, text string, key []byte) {
	t.Helper()
	for _, bad := range []string{"AADSTS", "s3cr3t", "Invalid client", string(key), fmt.Sprintf("%x", key)} {
		if strings.Contains(text, bad) {
			t.Errorf("/metrics contains %q, want no error text or key material", bad)
		}
	}
}

func TestObserve(t *testing.T) {
	p, _ := newTestProvider(t)
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return now }
	state := broker.StateDegraded
	unregister, err := p.Observe(Observed{
		State: func() broker.State { return state },
		Broker: func() broker.Stats {
			return broker.Stats{
				Cache:              cache.Stats{Hits: 40, Misses: 2, Loads: 3, LoadErrors: 1, StaleServes: 5, Evictions: 6},
				CachedKeys:         2,
				LastGoodValidation: now.Add(-90 * time.Second),
			}
		},
		MasterKeys: func() []KeyAge {
			return []KeyAge{{Name: "master", Age: 48 * time.Hour}, {Name: "new", Age: 0}}
		},
		CMKs: func() []KeyAge { return []KeyAge{{Name: "eastus", Age: time.Hour}} },
		Regions: func() []RegionHealth {
			return []RegionHealth{{Name: "eastus", Healthy: true, Active: true}, {Name: "westus"}}
		},
	})
	if err != nil {
		t.Fatalf("Observe err = %v, want nil", err)
	}
	text := scrape(t, p)
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"keybroker_state", map[string]string{"state": "DEGRADED"}, 1},
		{"keybroker_state", map[string]string{"state": "SERVING"}, 0},
		{"keybroker_state", map[string]string{"state": "PAUSED"}, 0},
		{"keybroker_validation_age_seconds", nil, 90},
		{"keybroker_cache_size", nil, 2},
		{"keybroker_cache_hits_total", nil, 40},
		{"keybroker_cache_misses_total", nil, 2},
		{"keybroker_cache_loads_total", map[string]string{"outcome": "ok"}, 2},
		{"keybroker_cache_loads_total", map[string]string{"outcome": "error"}, 1},
		{"keybroker_cache_stale_serves_total", nil, 5},
		{"keybroker_cache_evictions_total", nil, 6},
		{"keybroker_master_key_age_seconds", map[string]string{"key": "master"}, 48 * 3600},
		{"keybroker_master_key_age_seconds", map[string]string{"key": "new"}, 0},
		{"keybroker_cmk_age_seconds", map[string]string{"region": "eastus"}, 3600},
		{"keybroker_region_healthy", map[string]string{"region": "eastus"}, 1},
		{"keybroker_region_healthy", map[string]string{"region": "westus"}, 0},
		{"keybroker_region_active", map[string]string{"region": "eastus"}, 1},
		{"keybroker_region_active", map[string]string{"region": "westus"}, 0},
	}
	for _, tc := range tests {
		if got, ok := sample(text, tc.name, tc.labels); !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	want := []string{"go_goroutines"}
	if runtime.GOOS == "linux" {
		want = append(want, "process_resident_memory_bytes")
	}
	for _, name := range want {
		if _, ok := sample(text, name, nil); !ok {
			t.Errorf("%s missing from /metrics, want the runtime and process collectors", name)
		}
	}

	state = broker.StatePaused
	if got, _ := sample(scrape(t, p), "keybroker_state", map[string]string{"state": "PAUSED"}); got != 1 {
		t.Errorf("keybroker_state{state=PAUSED} after pausing = %v, want 1", got)
	}
	if err := unregister(); err != nil {
		t.Fatalf("unregister err = %v", err)
	}
	if _, ok := sample(scrape(t, p), "keybroker_state", nil); ok {
		t.Errorf("keybroker_state still reported after unregister, want none")
	}
}

func TestBrokerRecorderAndFailoverEvents(t *testing.T) {
	p, _ := newTestProvider(t)
	rec := p.BrokerMetrics()
	rec.ValidityCheck(nil, 20*time.Millisecond)
	rec.ValidityCheck(&kek.Error{Kind: kek.KindRevoked, Err: errors.New(secretError)}, time.Second)
	rec.ValidityCheck(fmt.Errorf("wrapped: %w", context.Canceled), time.Second)
	rec.StateChange(broker.StatePaused)
	on := p.FailoverEvents()
	on(failover.Event{Kind: failover.EventSwitch, From: "eastus", Region: "westus", Reason: secretError})
	on(failover.Event{Kind: failover.EventRegionDown, Region: "eastus", ErrKind: kek.KindUnavailable})
	on(failover.Event{Kind: failover.EventRegionDown, Region: "eastus", ErrKind: kek.KindUnavailable})

	text := scrape(t, p)
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"keybroker_validity_checks_total", map[string]string{"outcome": "ok"}, 1},
		{"keybroker_validity_checks_total", map[string]string{"outcome": "revoked"}, 1},
		{"keybroker_validity_checks_total", map[string]string{"outcome": "canceled"}, 1},
		{"keybroker_validity_check_duration_seconds_count", map[string]string{"outcome": "ok"}, 1},
		{"keybroker_state_changes_total", map[string]string{"state": "PAUSED"}, 1},
		{"keybroker_failover_switches_total", map[string]string{"from": "eastus", "to": "westus"}, 1},
		{"keybroker_region_events_total", map[string]string{"region": "eastus", "event": "region_down"}, 2},
	}
	for _, tc := range tests {
		if got, ok := sample(text, tc.name, tc.labels); !ok || got != tc.want {
			t.Errorf("%s%v = %v (found %v), want %v", tc.name, tc.labels, got, ok, tc.want)
		}
	}
	assertClean(t, text, []byte("no key here"))
}

func TestAdminHandler(t *testing.T) {
	p, _ := newTestProvider(t)
	ready, reason := true, "SERVING"
	srv := httptest.NewServer(Admin{Metrics: p.MetricsHandler(), Ready: func() (bool, string) { return ready, reason }}.Handler())
	t.Cleanup(srv.Close)
	get := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s %s err = %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tests := []struct {
		name         string
		ready        bool
		reason       string
		method, path string
		wantCode     int
		wantBody     string
	}{
		{"healthz", true, "", "GET", "/healthz", 200, "ok"},
		{"healthz while not ready", false, "PAUSED", "GET", "/healthz", 200, "ok"},
		{"readyz serving", true, "SERVING", "GET", "/readyz", 200, "ready: SERVING"},
		{"readyz paused", false, "PAUSED: access revoked", "GET", "/readyz", 503, "not ready: PAUSED: access revoked"},
		{"metrics", true, "", "GET", "/metrics", 200, "go_goroutines"},
		{"head metrics", true, "", "HEAD", "/metrics", 200, ""},
		{"post", true, "", "POST", "/readyz", 405, ""},
		{"unknown path", true, "", "GET", "/debug/pprof/", 404, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ready, reason = tc.ready, tc.reason
			code, body := get(tc.method, tc.path)
			if code != tc.wantCode || !strings.Contains(body, tc.wantBody) {
				t.Errorf("%s %s = %d %q, want %d containing %q", tc.method, tc.path, code, body, tc.wantCode, tc.wantBody)
			}
		})
	}
}
