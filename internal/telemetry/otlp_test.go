package telemetry

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/keybroker/keybroker/internal/kek/kektest"
)

// TestOTLPExport points the OTLP/HTTP exporters at a local receiver through
// the standard variables and checks that a span and the metrics arrive
// when the Provider flushes at shutdown.
func TestOTLPExport(t *testing.T) {
	var mu sync.Mutex
	got := map[string]int{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got[r.Method+" "+r.URL.Path]++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/x-protobuf")
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()
	env := map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": srv.URL}
	// The exporters read their endpoint from the process environment.
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", srv.URL)

	ctx := context.Background()
	p, err := New(ctx, Config{Getenv: func(k string) string { return env[k] }})
	if err != nil {
		t.Fatalf("New with OTEL_EXPORTER_OTLP_ENDPOINT err = %v, want nil", err)
	}
	if sel := p.OTLP(); sel.Traces != ProtocolHTTP || sel.Metrics != ProtocolHTTP {
		t.Fatalf("OTLP() = %+v, want traces and metrics over %s", sel, ProtocolHTTP)
	}
	w := p.InstrumentWrapper(kektest.NewFake("eastus", "cmk"), "eastus")
	if _, err := w.KeyInfo(ctx); err != nil {
		t.Fatal(err)
	}
	if err := p.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown err = %v, want nil", err)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, want := range []string{"POST /v1/traces", "POST /v1/metrics"} {
		if got[want] == 0 {
			t.Errorf("OTLP receiver got %v, want at least one %s", got, want)
		}
	}
}
