package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/telemetry"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// adminGet fetches path from the broker's admin listener.
func (h *harness) adminGet(path string) (int, string) {
	h.t.Helper()
	if h.at.Admin == "" {
		h.t.Fatal("the broker reported no admin listener: the dev configuration should turn it on")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, h.at.Admin+path, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatalf("GET %s err = %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("GET %s: reading the body: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

// scrape parses the broker's /metrics.
func (h *harness) scrape() map[string]*dto.MetricFamily {
	h.t.Helper()
	code, body := h.adminGet("/metrics")
	if code != http.StatusOK {
		h.t.Fatalf("GET /metrics = %d, want 200", code)
	}
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		h.t.Fatalf("/metrics is not Prometheus text: %v", err)
	}
	return fams
}

// scrapeFor scrapes until every series in want is present with at least its
// minimum, for at most 5 s:
// grpc-go's stats handler records a server call after the reply has left,
// so the client can see the reply before the metric exists.
func (h *harness) scrapeFor(want ...series) map[string]*dto.MetricFamily {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		fams := h.scrape()
		missing := false
		for _, s := range want {
			if v, ok := s.find(fams); !ok || v < s.min {
				missing = true
			}
		}
		if !missing || time.Now().After(deadline) {
			return fams
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// series is what a test asks of one series: its family, labels, and a
// bound on its value (a histogram's sample count).
type series struct {
	name   string
	labels map[string]string
	min    float64 // the value must be at least this
	max    float64 // and at most this; 0 = no bound
}

// find returns the value of the first series of fams matching s's labels.
func (s series) find(fams map[string]*dto.MetricFamily) (float64, bool) {
	f := fams[s.name]
	if f == nil {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range s.labels {
			found := false
			for _, l := range m.GetLabel() {
				found = found || (l.GetName() == k && l.GetValue() == v)
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		}
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}

func checkSeries(t *testing.T, fams map[string]*dto.MetricFamily, want []series) {
	t.Helper()
	for _, s := range want {
		got, ok := s.find(fams)
		if !ok || got < s.min || (s.max != 0 && got > s.max) {
			t.Errorf("%s%v = %v (present %v), want between %v and %v", s.name, s.labels, got, ok, s.min, s.max)
		}
	}
}

// allowedLabels are the label names keybroker's and otelgrpc's series may
// carry: every one has a bounded set of values.
var allowedLabels = []string{
	"rpc_method", "rpc_response_status_code", "rpc_system_name", "error_type",
	"operation", "region", "outcome", "state", "key", "from", "to", "event", "le",
	"otel_scope_name", "otel_scope_version", "otel_scope_schema_url",
}

// labelValue is what a label value may look like: names, codes, numbers,
// URLs of schemas. No spaces, so no sentence of error text.
var labelValue = regexp.MustCompile(`^[A-Za-z0-9_.:/+\-]*$`)

// checkHygiene fails on label names outside allowedLabels (keybroker and
// rpc series), and on label values that hold secrets or error text.
func checkHygiene(t *testing.T, fams map[string]*dto.MetricFamily, secrets [][]byte) {
	t.Helper()
	var bad []string
	for _, s := range secrets {
		bad = append(bad, hex.EncodeToString(s), base64.StdEncoding.EncodeToString(s), base64.RawURLEncoding.EncodeToString(s))
	}
	for name, f := range fams {
		ours := strings.HasPrefix(name, "keybroker_") || strings.HasPrefix(name, "rpc_")
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if ours && !slices.Contains(allowedLabels, l.GetName()) {
					t.Errorf("%s has label %s=%q, want only %v", name, l.GetName(), l.GetValue(), allowedLabels)
				}
				v := l.GetValue()
				if !labelValue.MatchString(v) || len(v) > 80 {
					t.Errorf("%s{%s=%q}: want a short name or code, never free text", name, l.GetName(), v)
				}
				for _, b := range bad {
					if strings.Contains(v, b) {
						t.Errorf("%s{%s=...} holds key material", name, l.GetName())
					}
				}
			}
		}
	}
}

const (
	kbService    = "keybroker.v1.KeyBrokerService/"
	primary      = "primary" // the region name of a single-key configuration
	emulatorHost = akvemu.DefaultVaultHost
)

// TestMetricsEndToEnd drives the real broker over mTLS against the emulator
// and scrapes the admin listener: every family the issue names is there
// with its attributes, the figures follow what the test did, no label
// carries key material or error text, and /readyz follows the state
// through a revocation and back.
func TestMetricsEndToEnd(t *testing.T) {
	h := newHarness(t, "")
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	eng, adm := h.engine(), h.admin()

	if code, body := h.adminGet("/healthz"); code != http.StatusOK || !strings.Contains(body, "ok") {
		t.Fatalf("GET /healthz = %d %q, want 200 ok", code, body)
	}
	if code, body := h.adminGet("/readyz"); code != http.StatusOK || !strings.Contains(body, "SERVING") {
		t.Fatalf("GET /readyz while serving = %d %q, want 200 naming SERVING", code, body)
	}

	const gets = 5
	var key []byte
	for range gets {
		mk, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
		if err != nil {
			t.Fatalf("GetMasterKey err = %v", err)
		}
		key = mk.GetKey()
	}
	dek := bytes.Repeat([]byte{0x5a}, 32)
	w, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: dek, AssociatedData: []byte("db=metrics")})
	if err != nil {
		t.Fatalf("WrapDEK err = %v", err)
	}
	if _, err := eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek(), AssociatedData: []byte("db=metrics")}); err != nil {
		t.Fatalf("UnwrapDEK err = %v", err)
	}
	_, err = eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: []byte("not a blob")})
	wantCode(t, "UnwrapDEK(garbage)", err, codes.InvalidArgument)
	_, err = eng.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{})
	wantCode(t, "RotateDEK as the engine", err, codes.PermissionDenied)
	if rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{}); err != nil || !rv.GetOk() {
		t.Fatalf("Revalidate = %v, %v, want ok", rv, err)
	}

	rpc := func(method, code string, lo, hi float64) series {
		return series{name: "rpc_server_call_duration_seconds", labels: map[string]string{"rpc_method": kbService + method, "rpc_response_status_code": code}, min: lo, max: hi}
	}
	fams := h.scrapeFor(rpc("GetMasterKey", "OK", gets, gets), rpc("Revalidate", "OK", 1, 1))
	azure := func(op, outcome string, lo float64) series {
		return series{name: "keybroker_azure_call_duration_seconds", labels: map[string]string{"operation": op, "region": primary, "outcome": outcome}, min: lo}
	}
	checkSeries(t, fams, []series{
		rpc("GetMasterKey", "OK", gets, gets),
		rpc("WrapDEK", "OK", 1, 1),
		rpc("UnwrapDEK", "OK", 1, 1),
		rpc("UnwrapDEK", "INVALID_ARGUMENT", 1, 1),
		rpc("RotateDEK", "PERMISSION_DENIED", 1, 1),
		rpc("Revalidate", "OK", 1, 1),
		azure("unwrap", "ok", 2), // start-up, and the validity check
		azure("get", "ok", 1),    // the validity check
		{name: "keybroker_cache_hits_total", min: gets},
		{name: "keybroker_cache_misses_total", min: 1}, // start-up's load
		{name: "keybroker_cache_loads_total", labels: map[string]string{"outcome": "ok"}, min: 1},
		{name: "keybroker_cache_size", min: 1, max: 1},
		{name: "keybroker_state", labels: map[string]string{"state": "SERVING"}, min: 1, max: 1},
		{name: "keybroker_state", labels: map[string]string{"state": "PAUSED"}, max: 0},
		{name: "keybroker_validation_age_seconds", min: 0, max: 120},
		{name: "keybroker_validity_checks_total", labels: map[string]string{"outcome": "ok"}, min: 1},
		{name: "keybroker_master_key_age_seconds", labels: map[string]string{"key": config.DefaultKeyName}, min: 0, max: 3600},
		{name: "keybroker_region_healthy", labels: map[string]string{"region": primary}, min: 1, max: 1},
		{name: "keybroker_region_active", labels: map[string]string{"region": primary}, min: 1, max: 1},
		{name: "process_resident_memory_bytes", min: 1},
		{name: "go_goroutines", min: 1},
	})
	if _, ok := (series{name: "keybroker_cmk_age_seconds", labels: map[string]string{"region": primary}}).find(fams); !ok {
		t.Errorf("keybroker_cmk_age_seconds{region=%s} missing after a validity check, want the customer key version's age", primary)
	}
	checkHygiene(t, fams, [][]byte{key, dek})

	// Revocation: PAUSED, /readyz 503 with the reason, /healthz still 200,
	// and the revoked outcome counted without its text.
	if err := h.emu.Control().RevokeAccess(ctx, "", "", akvemu.CodeForbiddenByRbac); err != nil {
		t.Fatalf("RevokeAccess err = %v", err)
	}
	rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || rv.GetState() != keybrokerv1.State_STATE_PAUSED {
		t.Fatalf("Revalidate after revoking = %v, %v, want PAUSED", rv, err)
	}
	code, body := h.adminGet("/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "PAUSED") || !strings.Contains(body, "revoked") {
		t.Errorf("GET /readyz while paused = %d %q, want 503 naming PAUSED and the revocation", code, body)
	}
	if code, _ := h.adminGet("/healthz"); code != http.StatusOK {
		t.Errorf("GET /healthz while paused = %d, want 200: the process is alive", code)
	}
	_, err = eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	wantCode(t, "GetMasterKey while paused", err, codes.FailedPrecondition)
	fams = h.scrapeFor(rpc("GetMasterKey", "FAILED_PRECONDITION", 1, 1))
	checkSeries(t, fams, []series{
		{name: "keybroker_state", labels: map[string]string{"state": "PAUSED"}, min: 1, max: 1},
		{name: "keybroker_state", labels: map[string]string{"state": "SERVING"}, max: 0},
		{name: "keybroker_state_changes_total", labels: map[string]string{"state": "PAUSED"}, min: 1, max: 1},
		{name: "keybroker_validity_checks_total", labels: map[string]string{"outcome": "revoked"}, min: 1},
		{name: "keybroker_region_healthy", labels: map[string]string{"region": primary}, max: 0},
		{name: "keybroker_cache_size", max: 0},
		rpc("GetMasterKey", "FAILED_PRECONDITION", 1, 1),
	})
	if got, _ := (series{name: "keybroker_azure_call_duration_seconds", labels: map[string]string{"outcome": "revoked", "region": primary}}).find(fams); got < 1 {
		t.Errorf("keybroker_azure_call_duration_seconds{outcome=revoked} = %v, want at least 1", got)
	}
	checkHygiene(t, fams, [][]byte{key, dek})

	if err := h.emu.Control().GrantAccess(ctx, "", ""); err != nil {
		t.Fatalf("GrantAccess err = %v", err)
	}
	if rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{}); err != nil || rv.GetState() != keybrokerv1.State_STATE_SERVING {
		t.Fatalf("Revalidate after granting = %v, %v, want SERVING", rv, err)
	}
	if code, body := h.adminGet("/readyz"); code != http.StatusOK {
		t.Errorf("GET /readyz after resuming = %d %q, want 200", code, body)
	}
}

// TestColdStartStorm restarts a broker holding four master-key versions
// and lets 50 clients, each on its own connection, ask for every version
// at once: the cache's single flight must make exactly one Key Vault unwrap
// per version (the current one at start-up, each older one on first
// demand). The emulator counts the storm's unwraps (its counters are reset
// once start-up is over: they also count the SDK's first, unauthenticated
// request, which only fetches the bearer challenge); the broker's own
// metric counts every unwrap since the restart.
func TestColdStartStorm(t *testing.T) {
	const (
		versions = 4
		clients  = 50
	)
	h := newHarness(t, "")
	h.start()
	ctx := ctxT(t, 3*time.Minute)
	adm := h.admin()
	for range versions - 1 {
		if _, err := adm.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); err != nil {
			t.Fatalf("RotateDEK err = %v", err)
		}
	}
	st, err := adm.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
	if err != nil || len(st.GetKeys()) != 1 || len(st.GetKeys()[0].GetVersions()) != versions {
		t.Fatalf("GetStatus = %v, %v, want one key with %d versions", st, err, versions)
	}
	ids := st.GetKeys()[0].GetVersions()

	h.stop()
	h.start()
	ctl := h.emu.Control()
	if err := ctl.ResetCounters(ctx); err != nil {
		t.Fatal(err)
	}

	engines := make([]keybrokerv1.KeyBrokerServiceClient, clients)
	for i := range engines {
		engines[i] = keybrokerv1.NewKeyBrokerServiceClient(h.conn(h.files.EngineCert, h.files.EngineKey, false))
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	keys := map[string][]byte{} // version -> key, the same for every client
	errs := make(chan error, clients*versions)
	for i, eng := range engines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for j := range ids {
				v := ids[(i+j)%len(ids)] // every client starts on another version
				mk, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: v})
				if err != nil {
					errs <- err
					continue
				}
				mu.Lock()
				if prev, ok := keys[v]; ok && !bytes.Equal(prev, mk.GetKey()) {
					errs <- io.ErrUnexpectedEOF // two different keys for one version
				}
				keys[v] = mk.GetKey()
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("GetMasterKey during the storm err = %v, want nil (and one key per version)", err)
	}
	if len(keys) != versions {
		t.Errorf("storm served %d distinct versions, want %d", len(keys), versions)
	}

	counters, err := ctl.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var unwraps int64
	for _, ops := range counters {
		unwraps += ops["unwrapkey"]
	}
	if unwraps != versions-1 {
		t.Errorf("Key Vault unwraps during the storm = %d (%v), want %d: one per version not loaded at start-up", unwraps, counters, versions-1)
	}
	checkSeries(t, h.scrape(), []series{
		{name: "keybroker_azure_call_duration_seconds", labels: map[string]string{"operation": "unwrap", "outcome": "ok"}, min: versions, max: versions},
		{name: "keybroker_cache_loads_total", labels: map[string]string{"outcome": "ok"}, min: versions, max: versions},
		{name: "keybroker_cache_size", min: versions, max: versions},
		{name: "rpc_server_call_duration_seconds", labels: map[string]string{"rpc_method": kbService + "GetMasterKey", "rpc_response_status_code": "OK"}, min: clients * versions, max: clients * versions},
	})
}

// TestOTELVariablesAgree keeps the variables the configuration copies from
// the environment and those telemetry reads the same list.
func TestOTELVariablesAgree(t *testing.T) {
	a, b := slices.Sorted(slices.Values(config.OTELVariables)), slices.Sorted(slices.Values(telemetry.EnvNames))
	if !slices.Equal(a, b) {
		t.Errorf("config.OTELVariables = %v, telemetry.EnvNames = %v, want the same names", a, b)
	}
}

// TestServeBadOTELEnv: an OTEL_* setting keybroker cannot honour stops the
// start with a usage error naming it, before anything listens.
func TestServeBadOTELEnv(t *testing.T) {
	h := newHarness(t, "")
	cfg := *h.cfg
	cfg.Telemetry.OTEL = map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}
	err := serve(context.Background(), &cfg, testLogger(t), func(listening) { t.Error("serve listened, want it to refuse to start") })
	if err == nil || !strings.Contains(err.Error(), "OTEL_TRACES_EXPORTER") || report(io.Discard, err) != exitUsage {
		t.Fatalf("serve with OTEL_TRACES_EXPORTER=zipkin err = %v, want a usage error naming the variable", err)
	}
}

// TestFailoverMetrics: with two regions, an outage in the preferred one
// shows in the per-region Azure series, the region health gauges and the
// failover switch counter, through failover's OnEvent hook.
func TestFailoverMetrics(t *testing.T) {
	h := newRegionsHarness(t, regionsOpts{regions: []string{"east", "west"}, timeout: "2s"})
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	eng, adm := h.engine(), h.admin()
	checkSeries(t, h.scrape(), []series{
		{name: "keybroker_region_active", labels: map[string]string{"region": "east"}, min: 1, max: 1},
		{name: "keybroker_region_active", labels: map[string]string{"region": "west"}, max: 0},
		{name: "keybroker_region_healthy", labels: map[string]string{"region": "east"}, min: 1, max: 1},
	})

	if err := h.emu.Control().InjectFault(ctx, akvemu.Fault{Host: eastHost, Status: http.StatusServiceUnavailable}); err != nil {
		t.Fatal(err)
	}
	failOver(ctx, t, adm, eng)
	fams := h.scrape()
	checkSeries(t, fams, []series{
		{name: "keybroker_failover_switches_total", labels: map[string]string{"from": "east", "to": "west"}, min: 1},
		{name: "keybroker_region_events_total", labels: map[string]string{"region": "east", "event": "region_down"}, min: 1},
		{name: "keybroker_region_active", labels: map[string]string{"region": "west"}, min: 1, max: 1},
		{name: "keybroker_region_healthy", labels: map[string]string{"region": "east"}, max: 0},
		{name: "keybroker_region_healthy", labels: map[string]string{"region": "west"}, min: 1, max: 1},
		{name: "keybroker_azure_call_duration_seconds", labels: map[string]string{"region": "east", "outcome": "unavailable"}, min: 1},
		{name: "keybroker_azure_call_duration_seconds", labels: map[string]string{"region": "west", "outcome": "ok"}, min: 1},
		{name: "keybroker_state", labels: map[string]string{"state": "PAUSED"}, max: 0},
	})
	checkHygiene(t, fams, nil)
}
