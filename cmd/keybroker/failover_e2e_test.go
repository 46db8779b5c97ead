package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/akv"
	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
	"github.com/keybroker/keybroker/internal/keystore"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// The regional topology every test here runs on: two vaults in the
// emulator, each with a key of its own, and a private-endpoint alias of the
// first (same vault, same key, another host name, as Azure Private Link
// gives each region).
const (
	eastHost   = "kb-east.vault.keybroker.test"
	eastPEHost = "kb-east-pe.privatelink.keybroker.test"
	westHost   = "kb-west.vault.keybroker.test"
)

// Failover settings of the test configuration: short, so that the tests
// take seconds, with bounds generous enough for a busy 2-core machine.
const (
	testHedge         = 100 * time.Millisecond
	testProbeInterval = 200 * time.Millisecond
	testFailBackAfter = 2
)

// regionsOpts shapes a multi-region harness.
type regionsOpts struct {
	// regions are the configured regions in priority order: "east" and
	// "west" (a vault and key each) or "east-pe" (east's key through the
	// private-endpoint alias).
	regions []string
	// timeout is the per-region timeout; "" means 5s.
	timeout string
	// ttl and maxStale set the cache section; "" leaves the defaults.
	ttl, maxStale string
}

// newRegionsHarness is newHarness for several regions: the emulator serves
// both vaults and the alias, the configuration lists o.regions, and the
// keystore is initialised with it (one copy per configured key).
func newRegionsHarness(t *testing.T, o regionsOpts) *harness {
	t.Helper()
	h := startHarness(t, akvemu.Config{
		Ephemeral: true,
		Vaults:    []akvemu.VaultSpec{{Host: eastHost, Aliases: []string{eastPEHost}}, {Host: westHost}},
		Keys:      []akvemu.KeySpec{{Vault: eastHost, Name: "cmk", Size: 2048}, {Vault: westHost, Name: "cmk", Size: 2048}},
	})
	h.setRegions(o)
	h.initKeystore()
	return h
}

// setRegions rewrites the configuration (file and h.cfg) for o, as an
// operator editing keybroker.yaml would; it takes effect at the next start.
func (h *harness) setRegions(o regionsOpts) {
	h.t.Helper()
	kid := func(host string) string {
		for _, id := range h.info.KeyIDs {
			if strings.HasPrefix(id, "https://"+host+"/keys/") {
				return id
			}
		}
		h.t.Fatalf("the emulator has no key in %s (key ids %v)", host, h.info.KeyIDs)
		return ""
	}
	timeout := o.timeout
	if timeout == "" {
		timeout = "5s"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "  timeout: %s\n  max_retries: 0\n  regions:\n", timeout)
	for _, r := range o.regions {
		switch r {
		case "east":
			fmt.Fprintf(&b, "    - name: east\n      key_id: %q\n", kid(eastHost))
		case "west":
			fmt.Fprintf(&b, "    - name: west\n      key_id: %q\n", kid(westHost))
		case "east-pe":
			fmt.Fprintf(&b, "    - name: east-pe\n      vault_url: %q\n      key_id: %q\n", "https://"+eastPEHost+"/", kid(eastHost))
		default:
			h.t.Fatalf("setRegions: unknown region %q", r)
		}
	}
	fmt.Fprintf(&b, "  failover:\n    hedge_delay: %s\n    fail_back_after: %d\n    probe_interval: %s\n", testHedge, testFailBackAfter, testProbeInterval)

	yaml := devConfig(h.dir, "127.0.0.1:0", h.files, h.info)
	keyLine := regexp.MustCompile(`(?m)^  key_id: .*\n`)
	if !keyLine.MatchString(yaml) {
		h.t.Fatal("devConfig has no azure.key_id line to replace: update setRegions")
	}
	yaml = keyLine.ReplaceAllLiteralString(yaml, b.String())
	yaml = strings.Replace(yaml, "log:\n  level: info\n  format: text", "log:\n  level: debug\n  format: json", 1)
	if o.ttl != "" || o.maxStale != "" {
		cache := "cache:\n"
		if o.ttl != "" {
			cache += "  ttl: " + o.ttl + "\n"
		}
		if o.maxStale != "" {
			cache += "  max_stale: " + o.maxStale + "\n"
		}
		yaml = strings.Replace(yaml, "log:\n", cache+"log:\n", 1)
	}
	if err := h.writeConfig([]byte(yaml)); err != nil {
		h.t.Fatalf("config.Parse(regions config) err = %v, want nil\n%s", err, yaml)
	}
}

// logBuffer collects the broker's JSON log lines, for the events the
// tests count (failover switches, copies added).
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// count returns how many log records have a message starting with msg and
// every attribute of attrs.
func (l *logBuffer) count(msg string, attrs map[string]string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range bytes.Split(l.buf.Bytes(), []byte("\n")) {
		var rec map[string]any
		if json.Unmarshal(line, &rec) != nil || !strings.HasPrefix(fmt.Sprint(rec["msg"]), msg) {
			continue
		}
		match := true
		for k, v := range attrs {
			match = match && fmt.Sprint(rec[k]) == v
		}
		if match {
			n++
		}
	}
	return n
}

// startLogged is start with the broker's log captured: it runs serve until
// stop, and returns once the broker listens.
func (h *harness) startLogged() *logBuffer {
	h.t.Helper()
	logs := &logBuffer{}
	var w io.Writer = logs
	if testing.Verbose() {
		w = io.MultiWriter(logs, os.Stderr)
	}
	h.startWith(slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})))
	return logs
}

// version is a master-key version and its bytes, as GetMasterKey gave them.
type version struct {
	id  string
	key []byte
}

// makeVersions rotates the master key n times and restarts the broker, so
// that the n versions before the current one are cold: the next request
// for each makes one unwrap through the regions, which is how these tests
// drive the failover wrapper with engine requests. The current version
// comes last.
func (h *harness) makeVersions(ctx context.Context, n int) []version {
	h.t.Helper()
	eng, adm := h.engine(), h.admin()
	var vs []version
	for i := 0; i <= n; i++ {
		if i > 0 {
			if _, err := adm.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); err != nil {
				h.t.Fatalf("RotateDEK err = %v, want nil", err)
			}
		}
		mk, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
		if err != nil {
			h.t.Fatalf("GetMasterKey err = %v, want nil", err)
		}
		vs = append(vs, version{id: mk.GetVersion(), key: mk.GetKey()})
	}
	h.stop()
	h.start()
	return vs
}

// getVersion fetches one version and checks its bytes.
func getVersion(ctx context.Context, t *testing.T, eng keybrokerv1.KeyBrokerServiceClient, v version) {
	t.Helper()
	mk, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: v.id})
	if err != nil {
		t.Fatalf("GetMasterKey(%s) err = %v, want nil", v.id, err)
	}
	if !bytes.Equal(mk.GetKey(), v.key) {
		t.Fatalf("GetMasterKey(%s) returned other bytes than before, want the same master key", v.id)
	}
}

// unwraps returns the unwrapkey requests each vault host has seen.
func (h *harness) unwraps(ctx context.Context) map[string]int64 {
	h.t.Helper()
	c, err := h.emu.Control().Counters(ctx)
	if err != nil {
		h.t.Fatalf("Counters err = %v", err)
	}
	out := map[string]int64{}
	for _, host := range []string{eastHost, eastPEHost, westHost} {
		out[host] = c[host][akvemu.OpUnwrapKey]
	}
	return out
}

// regionsByName returns GetStatus's regions by name.
func regionsByName(ctx context.Context, t *testing.T, eng keybrokerv1.KeyBrokerServiceClient) (*keybrokerv1.GetStatusResponse, map[string]*keybrokerv1.RegionStatus) {
	t.Helper()
	st, err := eng.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus err = %v, want nil", err)
	}
	m := map[string]*keybrokerv1.RegionStatus{}
	for _, r := range st.GetRegions() {
		m[r.GetName()] = r
	}
	return st, m
}

// waitFor polls cond every 50ms until it holds or limit passes.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// failOver runs validity checks, each of which meets the failing east,
// until west is active: the broker learns of an outage from the calls it
// makes. Outage is never revocation: no check may pause.
func failOver(ctx context.Context, t *testing.T, adm, eng keybrokerv1.KeyBrokerServiceClient) {
	t.Helper()
	for range 10 {
		rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
		if err != nil || rv.GetState() == keybrokerv1.State_STATE_PAUSED {
			t.Fatalf("Revalidate with east failing = %v (%v), want not PAUSED", rv, err)
		}
		if _, regions := regionsByName(ctx, t, eng); regions["west"].GetActive() {
			return
		}
	}
	t.Fatal("west not active after 10 validity checks with east failing")
}

// stateWatch records every state WatchKeyState reports while the broker
// runs, so a test can say the broker never paused, not just that it is not
// paused when asked.
type stateWatch struct {
	mu     sync.Mutex
	states []keybrokerv1.State
}

func (h *harness) watchStates(ctx context.Context) *stateWatch {
	h.t.Helper()
	stream, err := h.engine().WatchKeyState(ctx, &keybrokerv1.WatchKeyStateRequest{})
	if err != nil {
		h.t.Fatalf("WatchKeyState err = %v", err)
	}
	w := &stateWatch{}
	first, err := stream.Recv()
	if err != nil {
		h.t.Fatalf("WatchKeyState first event err = %v", err)
	}
	w.states = append(w.states, first.GetEvent().GetState())
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				return
			}
			w.mu.Lock()
			w.states = append(w.states, ev.GetEvent().GetState())
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *stateWatch) neverPaused(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if slices.Contains(w.states, keybrokerv1.State_STATE_PAUSED) {
		t.Fatalf("WatchKeyState states = %v, want never PAUSED: an outage is not a revocation", w.states)
	}
}

// TestFailoverPrimaryOutage: the preferred region fails in each way an
// outage shows (no answer, a 503 storm, reset connections); engine
// requests keep being served through the other region, the broker never
// pauses, the failing region's circuit opens and GetStatus says so.
func TestFailoverPrimaryOutage(t *testing.T) {
	tests := []struct {
		name      string
		second    string // the other configured region
		fault     akvemu.Fault
		wantKind  string
		hedged    bool   // the first request waits for the hedge, not for a failure
		otherHost string // where the other region's requests go
	}{
		{"black-holed primary", "west", akvemu.Fault{Host: eastHost, Blackhole: true}, "unavailable", true, westHost},
		{"503 storm", "west", akvemu.Fault{Host: eastHost, Status: 503}, "unavailable", false, westHost},
		{"connection resets", "west", akvemu.Fault{Host: eastHost, Reset: true}, "unavailable", false, westHost},
		{"black-holed primary, private endpoint of the same key", "east-pe", akvemu.Fault{Host: eastHost, Blackhole: true}, "unavailable", true, eastPEHost},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The validity check waits for a black-holed primary's
			// timeout: keep it short, yet well above hedge delay plus a
			// request to the other region.
			h := newRegionsHarness(t, regionsOpts{regions: []string{"east", tc.second}, timeout: "3s"})
			h.start()
			ctx := ctxT(t, 2*time.Minute)
			vs := h.makeVersions(ctx, 4)
			eng, adm := h.engine(), h.admin()
			watch := h.watchStates(ctx)
			ctl := h.emu.Control()
			if err := ctl.ResetCounters(ctx); err != nil {
				t.Fatal(err)
			}
			if err := ctl.InjectFault(ctx, tc.fault); err != nil {
				t.Fatal(err)
			}
			defer ctl.ClearFaults(ctx)

			// A cold request: the primary first, then the other region.
			start := time.Now()
			getVersion(ctx, t, eng, vs[0])
			took := time.Since(start)
			if tc.hedged && took < testHedge {
				t.Errorf("cold GetMasterKey with a black-holed primary took %v, want at least the hedge delay %v (the primary asked first)", took, testHedge)
			}
			// Generous: on a busy machine the secondary may take a while,
			// but it must not wait for the primary's 3s timeout.
			if limit := testHedge + 1500*time.Millisecond; took > limit {
				t.Errorf("cold GetMasterKey took %v, want within the hedge delay plus the secondary's latency (bound %v), not the primary's timeout", took, limit)
			}
			// The other region's first request since the restart may come
			// twice: azkeys first sends it without a token, for the
			// bearer challenge.
			got := h.unwraps(ctx)
			if got[eastHost] != 1 || got[tc.otherHost] < 1 || got[tc.otherHost] > 2 {
				t.Errorf("unwrapkey requests = %v, want 1 to %s (failed) and 1 (2 with the bearer challenge) to %s (served)", got, eastHost, tc.otherHost)
			}

			// Two more cold requests: the primary's third failure opens its
			// circuit. A hedging loser's failure is recorded when its call
			// returns, a little after the winner's answer: poll.
			getVersion(ctx, t, eng, vs[1])
			getVersion(ctx, t, eng, vs[2])
			waitFor(t, 10*time.Second, "the primary's circuit open", func() bool {
				_, regions := regionsByName(ctx, t, eng)
				return !regions["east"].GetHealthy() && regions[tc.second].GetActive()
			})
			st, regions := regionsByName(ctx, t, eng)
			east, other := regions["east"], regions[tc.second]
			if east == nil || other == nil {
				t.Fatalf("GetStatus regions = %v, want east and %s", st.GetRegions(), tc.second)
			}
			if east.GetHealthy() || east.GetLastErrorKind() != tc.wantKind || east.GetLastError() == "" || east.GetActive() || !east.GetPreferred() {
				t.Errorf("GetStatus east = %v, want unhealthy, last error kind %q with a message, not active, preferred", east, tc.wantKind)
			}
			if !other.GetHealthy() || !other.GetActive() || other.GetLatencyMs() <= 0 || other.GetLastErrorKind() != "" {
				t.Errorf("GetStatus %s = %v, want healthy, active, a latency, no error", tc.second, other)
			}

			// With the primary's circuit open, cold requests go straight
			// to the other region.
			before := h.unwraps(ctx)
			getVersion(ctx, t, eng, vs[3])
			after := h.unwraps(ctx)
			if after[eastHost] != before[eastHost] || after[tc.otherHost] != before[tc.otherHost]+1 {
				t.Errorf("unwrapkey requests after the circuit opened: %v -> %v, want one more to %s and none to %s", before, after, tc.otherHost, eastHost)
			}

			// The validity check asks every region: a region down is an
			// outage, so DEGRADED, never PAUSED.
			rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
			if err != nil || rv.GetState() != keybrokerv1.State_STATE_DEGRADED {
				t.Fatalf("Revalidate with the primary down = %v (%v), want DEGRADED", rv, err)
			}
			// Keys in memory, and the DEK calls, never needed a region.
			w, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("data key"), AssociatedData: []byte("db")})
			if err != nil {
				t.Fatalf("WrapDEK err = %v, want nil", err)
			}
			if _, err := eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek(), AssociatedData: []byte("db")}); err != nil {
				t.Fatalf("UnwrapDEK err = %v, want nil", err)
			}
			watch.neverPaused(t)
		})
	}
}

// TestFailoverRetryAfter: a 429 with Retry-After from the primary sends the
// request to the other region at once, and the primary is not asked again
// until the Retry-After has passed.
func TestFailoverRetryAfter(t *testing.T) {
	const retryAfter = 2 * time.Second
	h := newRegionsHarness(t, regionsOpts{regions: []string{"east", "west"}})
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	vs := h.makeVersions(ctx, 3)
	eng := h.engine()
	watch := h.watchStates(ctx)
	ctl := h.emu.Control()
	if err := ctl.ResetCounters(ctx); err != nil {
		t.Fatal(err)
	}
	if err := ctl.InjectFault(ctx, akvemu.Fault{Host: eastHost, Op: akvemu.OpUnwrapKey, Status: 429, RetryAfter: int(retryAfter / time.Second), Count: 1}); err != nil {
		t.Fatal(err)
	}
	throttledAt := time.Now()
	getVersion(ctx, t, eng, vs[0])
	first := h.unwraps(ctx)
	if first[eastHost] != 1 || first[westHost] < 1 || first[westHost] > 2 {
		t.Fatalf("unwrapkey requests = %v, want 1 to east (429) and 1 (2 with the bearer challenge) to west", first)
	}
	west := first[westHost]
	_, regions := regionsByName(ctx, t, eng)
	if e := regions["east"]; e.GetHealthy() || e.GetLastErrorKind() != "throttled" {
		t.Errorf("GetStatus east while throttled = %v, want unhealthy, last error kind throttled", e)
	}

	// Within the Retry-After: the primary is left alone.
	getVersion(ctx, t, eng, vs[1])
	if got := h.unwraps(ctx); got[eastHost] != 1 || got[westHost] != west+1 {
		t.Fatalf("unwrapkey requests within Retry-After = %v, want still 1 to east, %d to west", got, west+1)
	}

	waitFor(t, 30*time.Second, "east healthy again after its Retry-After", func() bool {
		_, regions := regionsByName(ctx, t, eng)
		return regions["east"].GetHealthy()
	})
	// The broker counts the Retry-After from the 429's arrival, a little
	// after throttledAt: allow a small margin.
	if waited := time.Since(throttledAt); waited < retryAfter-200*time.Millisecond {
		t.Errorf("east healthy again %v after the 429, want after its Retry-After %v", waited, retryAfter)
	}
	getVersion(ctx, t, eng, vs[2])
	if got := h.unwraps(ctx); got[eastHost] != 2 || got[westHost] != west+1 {
		t.Fatalf("unwrapkey requests after Retry-After = %v, want the primary asked again (2) and west not (%d)", got, west+1)
	}
	watch.neverPaused(t)
}

// TestFailoverAllRegionsDown: keys in memory keep being served, even past
// their TTL; cold requests fail UNAVAILABLE naming every region; the
// broker is DEGRADED, never PAUSED.
func TestFailoverAllRegionsDown(t *testing.T) {
	const ttl = time.Second
	h := newRegionsHarness(t, regionsOpts{regions: []string{"east", "west"}, timeout: "1s", ttl: ttl.String(), maxStale: "1h"})
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	vs := h.makeVersions(ctx, 1)
	loaded := time.Now() // the current version was loaded before start returned
	cur := vs[len(vs)-1]
	eng, adm := h.engine(), h.admin()
	watch := h.watchStates(ctx)
	aad := []byte("db=orders")
	w, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("a data key"), AssociatedData: aad})
	if err != nil {
		t.Fatalf("WrapDEK err = %v, want nil", err)
	}
	ctl := h.emu.Control()
	for _, f := range []akvemu.Fault{{Host: eastHost, Blackhole: true}, {Host: westHost, Status: 503}} {
		if err := ctl.InjectFault(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	defer ctl.ClearFaults(ctx)
	// Let the TTL pass in real time: the broker's clock is the real one.
	time.Sleep(time.Until(loaded.Add(ttl + 100*time.Millisecond)))

	getVersion(ctx, t, eng, cur) // past TTL, no region answers: served from memory
	w2, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("another key"), AssociatedData: aad})
	if err != nil {
		t.Fatalf("WrapDEK with every region down err = %v, want nil (the key is in memory)", err)
	}
	for _, blob := range [][]byte{w.GetWrappedDek(), w2.GetWrappedDek()} {
		if _, err := eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: blob, AssociatedData: aad}); err != nil {
			t.Fatalf("UnwrapDEK with every region down err = %v, want nil (the key is in memory)", err)
		}
	}

	_, err = eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: vs[0].id})
	wantCode(t, "cold GetMasterKey with every region down", err, codes.Unavailable)
	msg := status.Convert(err).Message()
	t.Logf("cold GetMasterKey with every region down: %s", msg)
	for _, r := range []string{"east: unavailable", "west: unavailable"} {
		if !strings.Contains(msg, r) {
			t.Errorf("cold GetMasterKey message = %q, want it to name %q", msg, r)
		}
	}

	rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || rv.GetOk() || rv.GetState() != keybrokerv1.State_STATE_DEGRADED {
		t.Fatalf("Revalidate with every region down = %v (%v), want not ok, DEGRADED", rv, err)
	}
	st, regions := regionsByName(ctx, t, eng)
	if st.GetState() != keybrokerv1.State_STATE_DEGRADED {
		t.Errorf("GetStatus state = %v, want DEGRADED", st.GetState())
	}
	for _, name := range []string{"east", "west"} {
		r := regions[name]
		// Each region failed three calls (stale reload, cold load, check):
		// its circuit is open.
		if r.GetHealthy() || r.GetLastErrorKind() != "unavailable" || r.GetLastError() == "" {
			t.Errorf("GetStatus region %s = %v, want unhealthy, last error kind unavailable with a message", name, r)
		}
	}
	// The latency shown is that of the last success: east loaded the key
	// at start.
	if l := regions["east"].GetLatencyMs(); l <= 0 {
		t.Errorf("GetStatus region east latency = %vms, want that of its last success", l)
	}
	getVersion(ctx, t, eng, cur) // still served
	watch.neverPaused(t)
}

// TestFailoverFailBack: once the primary heals, the broker goes back to it
// after fail_back_after probes, and cold requests go there again.
func TestFailoverFailBack(t *testing.T) {
	h := newRegionsHarness(t, regionsOpts{regions: []string{"east", "west"}})
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	vs := h.makeVersions(ctx, 1)
	eng, adm := h.engine(), h.admin()
	watch := h.watchStates(ctx)
	ctl := h.emu.Control()
	if err := ctl.InjectFault(ctx, akvemu.Fault{Host: eastHost, Status: 503}); err != nil {
		t.Fatal(err)
	}
	failOver(ctx, t, adm, eng)
	if err := ctl.ClearFaults(ctx); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	waitFor(t, 30*time.Second, "fail-back to east", func() bool {
		_, regions := regionsByName(ctx, t, eng)
		return regions["east"].GetActive() && regions["east"].GetHealthy()
	})
	// fail_back_after probes, probe_interval apart: never at once.
	if took, least := time.Since(healed), time.Duration(testFailBackAfter-1)*testProbeInterval; took < least {
		t.Errorf("fail-back %v after the primary healed, want at least %v (%d probes)", took, least, testFailBackAfter)
	}
	if err := ctl.ResetCounters(ctx); err != nil {
		t.Fatal(err)
	}
	getVersion(ctx, t, eng, vs[0])
	if got := h.unwraps(ctx); got[eastHost] != 1 || got[westHost] != 0 {
		t.Fatalf("unwrapkey requests after fail-back = %v, want 1 to east, none to west", got)
	}
	watch.neverPaused(t)
}

// TestFailoverFlappingPrimary: a primary that goes down and up again and
// again makes the broker switch regions a bounded number of times: each
// failure soon after a fail-back doubles the probes the next fail-back
// needs. Without that damping, every cycle here would switch twice.
func TestFailoverFlappingPrimary(t *testing.T) {
	const (
		cycles = 5
		down   = 500 * time.Millisecond // more than two probe intervals: the prober sees it
		up     = time.Second            // room for the undamped fail-back (2 probes) but not for 8
	)
	h := newRegionsHarness(t, regionsOpts{regions: []string{"east", "west"}})
	logs := h.startLogged()
	ctx := ctxT(t, 2*time.Minute)
	eng, adm := h.engine(), h.admin()
	watch := h.watchStates(ctx)
	ctl := h.emu.Control()
	// The fault schedule is real time: the broker's probes run on it.
	for range cycles {
		if err := ctl.InjectFault(ctx, akvemu.Fault{Host: eastHost, Status: 503}); err != nil {
			t.Fatal(err)
		}
		failOver(ctx, t, adm, eng)
		time.Sleep(down)
		if err := ctl.ClearFaults(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(up)
	}
	switches := logs.count("key vault failover", map[string]string{"event": "switch"})
	if switches < 1 || switches > cycles+1 {
		t.Errorf("region switches over %d flaps = %d, want between 1 and %d (undamped: %d)", cycles, switches, cycles+1, 2*cycles)
	}
	t.Logf("%d switches over %d flaps", switches, cycles)
	watch.neverPaused(t)
}

// TestRewrapAddRegion: a keystore made for one region gains the copies of
// a second region with a key of its own, without changing the master key;
// the second copy then serves alone when the first region is down.
func TestRewrapAddRegion(t *testing.T) {
	tests := []struct {
		name  string
		args  []string // rewrap's flags; nil: let serve add the copies at start
		fault akvemu.Fault
		down  string // how the first region is down afterwards
	}{
		{"rewrap --add-region, primary black-holed", []string{"--add-region", "west"}, akvemu.Fault{Host: eastHost, Blackhole: true}, "black-holed"},
		{"rewrap --all-missing, primary key disabled", []string{"--all-missing"}, akvemu.Fault{}, "disabled"},
		{"serve adds the copies at start, primary 503", nil, akvemu.Fault{Host: eastHost, Status: 503}, "503"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newRegionsHarness(t, regionsOpts{regions: []string{"east"}, timeout: "2s"})
			h.start()
			ctx := ctxT(t, 2*time.Minute)
			eng := h.engine()
			v1, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.admin().RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); err != nil {
				t.Fatal(err)
			}
			v2, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
			if err != nil {
				t.Fatal(err)
			}
			vs := []version{{v1.GetVersion(), v1.GetKey()}, {v2.GetVersion(), v2.GetKey()}}
			h.stop()

			h.setRegions(regionsOpts{regions: []string{"east", "west"}, timeout: "2s"})
			if tc.args != nil {
				out, errOut, code := runCLI(t, append([]string{"rewrap", "--config", h.cfgPath}, tc.args...)...)
				if code != exitOK || strings.Count(out, "added a copy") != 2 {
					t.Fatalf("rewrap %v = exit %d, stdout %q, stderr %q; want 0 and 2 copies added", tc.args, code, out, errOut)
				}
				h.start()
			} else {
				logs := h.startLogged()
				if n := logs.count("added a wrapped copy of a master key", map[string]string{"region": "west"}); n != 2 {
					t.Fatalf("serve logged %d copies added for west, want 2", n)
				}
			}
			checkCopies(t, h, vs, []string{eastHost, westHost})
			eng = h.engine()
			for _, v := range vs {
				getVersion(ctx, t, eng, v) // the master key is unchanged
			}

			// The first region goes down; after a restart every version is
			// cold and unwraps through the new copy.
			h.stop()
			ctl := h.emu.Control()
			if tc.down == "disabled" {
				if err := ctl.SetKeyEnabled(ctx, eastHost, "cmk", false); err != nil {
					t.Fatal(err)
				}
			} else if err := ctl.InjectFault(ctx, tc.fault); err != nil {
				t.Fatal(err)
			}
			defer ctl.ClearFaults(ctx)
			if err := ctl.ResetCounters(ctx); err != nil {
				t.Fatal(err)
			}
			h.start()
			eng = h.engine()
			for _, v := range vs {
				getVersion(ctx, t, eng, v)
			}
			if got := h.unwraps(ctx); got[westHost] < 2 || got[westHost] > 3 {
				t.Errorf("unwrapkey requests to west with east %s = %d, want 2 (both versions; 3 with the bearer challenge)", tc.down, got[westHost])
			}
			st, _ := regionsByName(ctx, t, eng)
			if st.GetState() == keybrokerv1.State_STATE_PAUSED {
				t.Errorf("GetStatus state with east %s = %v, want not PAUSED", tc.down, st.GetState())
			}
		})
	}
}

// checkCopies checks every version has one copy per vault host in hosts,
// in that order (the original copy first), read straight from the disk.
func checkCopies(t *testing.T, h *harness, vs []version, hosts []string) {
	t.Helper()
	store, err := keystore.Open(h.cfg.Keystore.Dir, keystore.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("keystore.Open(read-only) err = %v", err)
	}
	defer store.Close()
	for _, v := range vs {
		_, kv, err := store.FindVersion(v.id)
		if err != nil {
			t.Fatalf("FindVersion(%s) err = %v", v.id, err)
		}
		var got []string
		for _, c := range kv.Copies {
			host, _, _ := strings.Cut(strings.TrimPrefix(c.KeyID, "https://"), "/")
			got = append(got, host)
		}
		if !slices.Equal(got, hosts) {
			t.Errorf("version %s copies are wrapped by %v, want %v", v.id, got, hosts)
		}
	}
}

// TestRewrapAtStartFailureKeepsServing: when the new region cannot be
// reached at start, serve says so loudly and serves with the copies there
// are; the next start adds them.
func TestRewrapAtStartFailureKeepsServing(t *testing.T) {
	h := newRegionsHarness(t, regionsOpts{regions: []string{"east"}, timeout: "1s"})
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	mk, err := h.engine().GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	vs := []version{{mk.GetVersion(), mk.GetKey()}}
	h.stop()

	h.setRegions(regionsOpts{regions: []string{"east", "west"}, timeout: "1s"})
	ctl := h.emu.Control()
	if err := ctl.InjectFault(ctx, akvemu.Fault{Host: westHost, Blackhole: true}); err != nil {
		t.Fatal(err)
	}
	logs := h.startLogged()
	if n := logs.count("COULD NOT ADD every missing wrapped copy", map[string]string{"level": "ERROR", "regions": "west"}); n != 1 {
		t.Errorf("serve logged %d errors about the missing copies, want 1", n)
	}
	getVersion(ctx, t, h.engine(), vs[0])
	checkCopies(t, h, vs, []string{eastHost})

	h.stop()
	if err := ctl.ClearFaults(ctx); err != nil {
		t.Fatal(err)
	}
	h.start()
	checkCopies(t, h, vs, []string{eastHost, westHost})
	getVersion(ctx, t, h.engine(), vs[0])
}

// TestRewrapCommandErrors: bad input gets a clear message and the usage
// exit code; a running broker's keystore is refused, not shared.
func TestRewrapCommandErrors(t *testing.T) {
	h := newRegionsHarness(t, regionsOpts{regions: []string{"east", "west"}})
	tests := []struct {
		name     string
		args     []string
		running  bool
		wantCode int
		wantMsg  string
	}{
		{"no config", []string{"rewrap", "--all-missing"}, false, exitUsage, "--config is required"},
		{"no choice", []string{"rewrap", "--config", h.cfgPath}, false, exitUsage, "--add-region NAME"},
		{"both choices", []string{"rewrap", "--config", h.cfgPath, "--all-missing", "--add-region", "west"}, false, exitUsage, "exclude each other"},
		{"unknown region", []string{"rewrap", "--config", h.cfgPath, "--add-region", "north"}, false, exitUsage, `"north" is not a configured region (azure.regions: east, west)`},
		{"nothing missing", []string{"rewrap", "--config", h.cfgPath, "--all-missing"}, false, exitOK, ""},
		{"broker running", []string{"rewrap", "--config", h.cfgPath, "--add-region", "west"}, true, exitFailure, "in use, most likely by a running broker: stop it"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.running {
				h.start()
				defer h.stop()
			}
			out, errOut, code := runCLI(t, tc.args...)
			if code != tc.wantCode || !strings.Contains(errOut, tc.wantMsg) {
				t.Fatalf("keybroker %v = exit %d, stderr %q; want exit %d and %q", tc.args, code, errOut, tc.wantCode, tc.wantMsg)
			}
			if tc.wantCode == exitOK && !strings.Contains(out, "nothing to do") {
				t.Errorf("keybroker %v stdout = %q, want it to say there is nothing to do", tc.args, out)
			}
		})
	}
}

// liar unwraps every copy of its key to the wrong bytes: a vault answering
// wrongly, which rewrap must catch before it writes anything.
type liar struct{ *kektest.Fake }

func (l liar) UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error) {
	b, err := l.Fake.UnwrapKey(ctx, copies)
	for i := range b {
		b[i] ^= 0xff
	}
	return b, err
}

// TestCopierAdd drives the rewrap logic with fake regions: what it adds,
// and that a failure writes nothing and says where it failed.
func TestCopierAdd(t *testing.T) {
	env := akv.Environment{Name: akv.EnvCustom, AuthorityHost: "https://login.keybroker.test/", VaultSuffix: "vault.keybroker.test"}
	unavailable := &kek.Error{Kind: kek.KindUnavailable, Op: "unwrap", Err: errors.New("injected outage")}
	type setup struct {
		old     *kektest.Fake // wraps the keystore's copies; nil means east
		regions []vaultRegion
	}
	tests := []struct {
		name     string
		setup    func() setup
		targets  []string
		wantAdd  int      // copies added
		wantErr  []string // substrings of the error; nil: no error
		wantHost []string // the copies of each version afterwards
	}{
		{
			name: "adds one copy per version",
			setup: func() setup {
				return setup{regions: []vaultRegion{region(t, env, "east", kektest.NewFake("east", "")), region(t, env, "west", kektest.NewFake("west", ""))}}
			},
			targets: []string{"west"}, wantAdd: 2, wantHost: []string{"fake-east", "fake-west"},
		},
		{
			name: "regions sharing a key get one copy",
			setup: func() setup {
				west := kektest.NewFake("west", "")
				return setup{regions: []vaultRegion{region(t, env, "east", kektest.NewFake("east", "")), region(t, env, "west", west), region(t, env, "west-pe", west.Replica("west-pe"))}}
			},
			targets: []string{"west", "west-pe"}, wantAdd: 2, wantHost: []string{"fake-east", "fake-west"},
		},
		{
			name: "every source down",
			setup: func() setup {
				east := kektest.NewFake("east", "")
				east.SetError(kektest.OpUnwrap, unavailable)
				return setup{regions: []vaultRegion{region(t, env, "east", east), region(t, env, "west", kektest.NewFake("west", ""))}}
			},
			targets: []string{"west"}, wantErr: []string{"region west", "no region could unwrap an existing copy (east: unavailable)"}, wantHost: []string{"fake-east"},
		},
		{
			name: "copies under a key no configured region holds are not touched",
			setup: func() setup {
				return setup{old: kektest.NewFake("gone", ""), regions: []vaultRegion{region(t, env, "east", kektest.NewFake("east", "")), region(t, env, "west", kektest.NewFake("west", ""))}}
			},
			targets: []string{"west"}, wantHost: []string{"fake-gone"}, // left to CMK rotation
		},
		{
			name: "a new copy that does not unwrap to the same key is not written",
			setup: func() setup {
				return setup{regions: []vaultRegion{region(t, env, "east", kektest.NewFake("east", "")), region(t, env, "west", liar{kektest.NewFake("west", "")})}}
			},
			targets: []string{"west"}, wantErr: []string{"does not unwrap to the same key (nothing was written)"}, wantHost: []string{"fake-east"},
		},
		{
			name: "a failing target does not stop the others",
			setup: func() setup {
				west := kektest.NewFake("west", "")
				west.SetError(kektest.OpWrap, unavailable)
				return setup{regions: []vaultRegion{region(t, env, "east", kektest.NewFake("east", "")), region(t, env, "west", west), region(t, env, "north", kektest.NewFake("north", ""))}}
			},
			targets: []string{"west", "north"}, wantAdd: 2, wantErr: []string{"region west", "wrapping with the region's key"}, wantHost: []string{"fake-east", "fake-north"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			s := tc.setup()
			old := s.old
			if old == nil {
				old = s.regions[0].kw.(*kektest.Fake)
			}
			store, err := keystore.Create(filepath.Join(t.TempDir(), "keystore"), keystore.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			var ids []string
			for i := range 2 {
				copies, err := old.WrapKey(ctx, bytes.Repeat([]byte{byte(i + 1)}, 32))
				if err != nil {
					t.Fatal(err)
				}
				v := keystore.Version{ID: keystore.NewID(), Copies: copies}
				if i == 0 {
					_, err = store.CreateKey("master", keystore.StateActive, v)
				} else {
					_, err = store.AddVersion("master", v)
				}
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, v.ID)
			}

			c := &copier{store: store, env: env, regions: s.regions}
			added, err := c.add(ctx, tc.targets)
			if len(added) != tc.wantAdd {
				t.Errorf("add(%v) added %d copies, want %d", tc.targets, len(added), tc.wantAdd)
			}
			switch {
			case tc.wantErr == nil && err != nil:
				t.Errorf("add(%v) err = %v, want nil", tc.targets, err)
			case tc.wantErr != nil && err == nil:
				t.Errorf("add(%v) err = nil, want one saying %q", tc.targets, tc.wantErr)
			}
			for _, want := range tc.wantErr {
				if err != nil && !strings.Contains(err.Error(), want) {
					t.Errorf("add(%v) err = %q, want it to say %q", tc.targets, err, want)
				}
			}
			for _, r := range s.regions { // heal, to check the copies
				if f, ok := r.kw.(*kektest.Fake); ok {
					f.SetError(kektest.OpWrap, nil)
					f.SetError(kektest.OpUnwrap, nil)
				}
			}
			for i, id := range ids {
				_, v, err := store.FindVersion(id)
				if err != nil {
					t.Fatal(err)
				}
				var hosts []string
				for _, w := range v.Copies {
					host, _, _ := strings.Cut(strings.TrimPrefix(w.KeyID, "https://"), ".")
					hosts = append(hosts, host)
					// Every copy unwraps, through its own key, to the
					// version's bytes: the master key did not change.
					back, err := old.UnwrapKey(ctx, []kek.Wrapped{w})
					for _, r := range s.regions {
						if err != nil && c.holds([]kek.Wrapped{w}, r.key) {
							back, err = r.kw.UnwrapKey(ctx, []kek.Wrapped{w})
						}
					}
					if err != nil || !bytes.Equal(back, bytes.Repeat([]byte{byte(i + 1)}, 32)) {
						t.Errorf("version %d copy by %s unwraps to other bytes (err %v), want the version's key", i, host, err)
					}
				}
				if !slices.Equal(hosts, tc.wantHost) {
					t.Errorf("version %d copies = %v, want %v", i, hosts, tc.wantHost)
				}
			}
			if tc.wantErr == nil && len(c.missing()) != 0 {
				t.Errorf("missing() after add = %v, want none", c.missing())
			}
			wantOrphans := 0
			if s.old != nil {
				wantOrphans = 2
			}
			if got := c.orphans(); got != wantOrphans {
				t.Errorf("orphans() = %d, want %d", got, wantOrphans)
			}
		})
	}
}

// region makes a vaultRegion over a fake.
func region(t *testing.T, env akv.Environment, name string, kw interface {
	broker.KeyWrapper
	KeyID() string
}) vaultRegion {
	t.Helper()
	id, err := akv.ParseKeyID(kw.KeyID(), env)
	if err != nil {
		t.Fatalf("ParseKeyID(%s) err = %v", kw.KeyID(), err)
	}
	return vaultRegion{name: name, key: id, kw: kw}
}
