package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/cache"
	"github.com/keybroker/keybroker/internal/failover"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
	"github.com/keybroker/keybroker/internal/keystore"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// newBrokerOver makes a broker over a fresh keystore whose master key is
// wrapped by w, warmed, with cfg's options applied.
func newBrokerOver(t *testing.T, w KeyWrapper, opts func(*Config)) *Broker {
	t.Helper()
	ctx := context.Background()
	store, err := keystore.Create(filepath.Join(t.TempDir(), "keystore"), keystore.Options{})
	if err != nil {
		t.Fatalf("keystore.Create err = %v", err)
	}
	t.Cleanup(func() { store.Close() })
	v, err := NewVersion(ctx, w)
	if err != nil {
		t.Fatalf("NewVersion err = %v, want nil", err)
	}
	if _, err := store.CreateKey(DefaultKeyName, keystore.StateActive, v); err != nil {
		t.Fatalf("CreateKey err = %v", err)
	}
	// No jitter: the first scheduled check comes a full interval after start.
	cfg := Config{Store: store, Wrapper: w, Cache: cache.Config{MaxStale: 24 * time.Hour}, Rand: noJitter}
	if opts != nil {
		opts(&cfg)
	}
	b, err := New(cfg)
	if err != nil {
		t.Fatalf("New err = %v, want nil", err)
	}
	t.Cleanup(b.Close)
	if err := b.Warm(ctx); err != nil {
		t.Fatalf("Warm err = %v, want nil", err)
	}
	return b
}

// runChecks starts RunChecks on clk and returns once its first timer is armed.
func runChecks(t *testing.T, b *Broker, clk *fakeClock, interval time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.RunChecks(ctx, interval); close(done) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	if d := clk.waitArmed(t); d != interval {
		t.Fatalf("RunChecks armed a timer of %v, want the interval %v", d, interval)
	}
}

// tick runs one scheduled check and waits for it to finish.
func tick(t *testing.T, clk *fakeClock, interval time.Duration) {
	t.Helper()
	clk.Advance(interval)
	clk.waitArmed(t)
}

func nextEvent(t *testing.T, w *watcher) Event {
	t.Helper()
	select {
	case ev := <-w.ch:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event within 10s")
		return Event{}
	}
}

func noEvent(t *testing.T, w *watcher) {
	t.Helper()
	select {
	case ev := <-w.ch:
		t.Fatalf("unexpected watch event %+v", ev)
	default:
	}
}

func healthOf(t *testing.T, b *Broker) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	r, err := b.health.Check(context.Background(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("health Check err = %v", err)
	}
	return r.GetStatus()
}

// dirHash hashes every file of dir, to prove a pause leaves the keystore as it was.
func dirHash(t *testing.T, dir string) [32]byte {
	t.Helper()
	h := sha256.New()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		h.Write([]byte(e.Name()))
		h.Write(b)
	}
	var out [32]byte
	copy(out[:], h.Sum(nil))
	return out
}

// TestScheduledCheckPausesAndResumes drives RunChecks with a fake clock:
// each revocation kind pauses at the first check after it, with the keys
// wiped, every key RPC refused with a message naming the region, the Azure
// code and the way out, health NOT_SERVING and the keystore untouched; the
// first check after access is restored resumes, the key already in memory.
func TestScheduledCheckPausesAndResumes(t *testing.T) {
	const interval = time.Minute
	revoked := func(code string, status int) error {
		return &kek.Error{Kind: kek.KindRevoked, Op: "unwrap", Code: code, Status: status, Err: errors.New("denied")}
	}
	tests := []struct {
		name     string
		revoke   func(f *kektest.Fake)
		restore  func(f *kektest.Fake)
		wantCode string
		wantHow  string
	}{
		{"access revoked", func(f *kektest.Fake) { f.SetError(kektest.OpAny, revoked("ForbiddenByRbac", 403)) },
			func(f *kektest.Fake) { f.SetError(kektest.OpAny, nil) }, "ForbiddenByRbac", "grant the broker's identity"},
		{"key disabled", (*kektest.Fake).Disable, (*kektest.Fake).Enable, "KeyDisabled", "enable the key"},
		{"key deleted", func(f *kektest.Fake) {
			f.SetError(kektest.OpAny, &kek.Error{Kind: kek.KindNotFound, Op: "get", Code: "KeyNotFound", Status: 404, Err: errors.New("gone")})
		}, func(f *kektest.Fake) { f.SetError(kektest.OpAny, nil) }, "KeyNotFound", "recover the deleted key"},
		{"client secret expired", func(f *kektest.Fake) { f.SetError(kektest.OpAny, revoked("AADSTS7000222", 401)) },
			func(f *kektest.Fake) { f.SetError(kektest.OpAny, nil) }, "AADSTS7000222", "create a new client secret"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk := newFakeClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), "RunChecks")
			fake := kektest.NewFake("east", "cmk")
			b := newBrokerOver(t, fake, func(c *Config) { c.Now, c.AfterFunc = clk.Now, clk.AfterFunc })
			w := b.hub.subscribe()
			defer b.hub.unsubscribe(w)
			if ev := nextEvent(t, w); ev.Kind != EventCurrent || ev.State != StateServing {
				t.Fatalf("first watch event = %+v, want CURRENT SERVING", ev)
			}
			v := b.activeVersions()[0]
			held := b.HeldKeys(ctx)
			if len(held) != 1 {
				t.Fatalf("HeldKeys() = %d keys after Warm, want 1", len(held))
			}
			blob, err := b.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("data key")})
			if err != nil {
				t.Fatalf("WrapDEK err = %v", err)
			}
			before := dirHash(t, b.store.Dir())
			runChecks(t, b, clk, interval)

			tick(t, clk, interval)
			noEvent(t, w) // all well: no event
			tc.revoke(fake)
			tick(t, clk, interval)
			ev := nextEvent(t, w)
			if ev.Kind != EventPause || ev.State != StatePaused || !ev.Time.Equal(clk.Now()) {
				t.Fatalf("watch event after %s = %+v, want PAUSE at %v", tc.name, ev, clk.Now())
			}
			for i, c := range held[0].Raw() {
				if c != 0 {
					t.Fatalf("held key byte %d = %#x after the pause, want 0 (wiped)", i, c)
				}
			}
			if n := b.cache.Len(); n != 0 {
				t.Fatalf("cache.Len() = %d while PAUSED, want 0", n)
			}
			if got := healthOf(t, b); got != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("health while PAUSED = %v, want NOT_SERVING", got)
			}
			rpcs := map[string]func() error{
				"GetMasterKey": func() error { _, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); return err },
				"WrapDEK":      func() error { _, err := b.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("k")}); return err },
				"UnwrapDEK": func() error {
					_, err := b.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: blob.GetWrappedDek()})
					return err
				},
				"RotateDEK": func() error { _, err := b.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); return err },
			}
			for name, call := range rpcs {
				err := call()
				st := status.Convert(err)
				if st.Code() != codes.FailedPrecondition {
					t.Fatalf("%s while PAUSED code = %v (%v), want FailedPrecondition", name, st.Code(), err)
				}
				for _, want := range []string{"region east", tc.wantCode, tc.wantHow, "Revalidate"} {
					if !strings.Contains(st.Message(), want) {
						t.Errorf("%s while PAUSED message = %q, want it to contain %q", name, st.Message(), want)
					}
				}
			}
			if after := dirHash(t, b.store.Dir()); after != before {
				t.Fatal("the keystore files changed while pausing, want them untouched")
			}

			tick(t, clk, interval) // still revoked: stays PAUSED, no event
			noEvent(t, w)
			tc.restore(fake)
			tick(t, clk, interval)
			if ev := nextEvent(t, w); ev.Kind != EventResumed || ev.State != StateServing {
				t.Fatalf("watch event after restoring access = %+v, want RESUMED SERVING", ev)
			}
			if !slicesContains(b.cache.Keys(), v.ID) {
				t.Fatalf("cache after RESUMED holds %v, want the current version %s loaded before any request", b.cache.Keys(), v.ID)
			}
			if _, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); err != nil {
				t.Fatalf("GetMasterKey after RESUMED err = %v, want nil", err)
			}
			if got := healthOf(t, b); got != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("health after RESUMED = %v, want SERVING", got)
			}
		})
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// TestOutageNeverPauses runs many scheduled checks through every kind of
// outage, including one longer than the cache TTL: the broker degrades,
// keeps serving the key held in memory, and never pauses.
func TestOutageNeverPauses(t *testing.T) {
	// Real time bounds each check (min(interval, 30s)), so the black hole
	// needs a short interval; the fake clock jumps much further below.
	const interval = 20 * time.Millisecond
	const checks = 30
	outage := func(kind kek.Kind, op, code string, status int) func(*kektest.Fake) {
		return func(f *kektest.Fake) {
			f.SetError(kektest.OpAny, &kek.Error{Kind: kind, Op: op, Code: code, Status: status, Err: errors.New("outage")})
		}
	}
	tests := []struct {
		name  string
		start func(*kektest.Fake)
	}{
		{"timeout", outage(kek.KindUnavailable, "get", "Timeout", 0)},
		{"connection reset", outage(kek.KindUnavailable, "get", "ConnectionReset", 0)},
		{"DNS failure", outage(kek.KindUnavailable, "get", "DNSFailure", 0)},
		{"HTTP 503", outage(kek.KindUnavailable, "get", "ServiceUnavailable", 503)},
		{"HTTP 500", outage(kek.KindUnavailable, "unwrap", "InternalServerError", 500)},
		{"HTTP 429", outage(kek.KindThrottled, "get", "Throttled", 429)},
		{"token endpoint unreachable", outage(kek.KindUnavailable, "token", "TokenEndpointUnreachable", 0)},
		{"token endpoint 503", outage(kek.KindUnavailable, "token", "", 503)},
		{"black hole", (*kektest.Fake).Block},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk := newFakeClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), "RunChecks")
			fake := kektest.NewFake("east", "cmk")
			t.Cleanup(fake.Unblock)
			b := newBrokerOver(t, fake, func(c *Config) {
				c.Now, c.AfterFunc = clk.Now, clk.AfterFunc
				// Past the TTL a request waits for one reload before it is
				// served stale: keep that short against the black hole.
				c.Cache.LoadTimeout = 50 * time.Millisecond
			})
			w := b.hub.subscribe()
			defer b.hub.unsubscribe(w)
			nextEvent(t, w)
			want, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
			if err != nil {
				t.Fatal(err)
			}
			runChecks(t, b, clk, interval)
			tc.start(fake)
			for i := range checks {
				if i == checks/2 {
					clk.Advance(2 * time.Hour) // past the cache TTL: keys now served stale
					clk.waitArmed(t)
					continue
				}
				tick(t, clk, interval)
				if st := b.State().State; st == StatePaused {
					t.Fatalf("state after %d checks in a %s outage = PAUSED, want never", i+1, tc.name)
				}
				got, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
				if err != nil || !bytes.Equal(got.GetKey(), want.GetKey()) {
					t.Fatalf("GetMasterKey after %d checks in a %s outage err = %v, want the key held in memory", i+1, tc.name, err)
				}
			}
			if ev := nextEvent(t, w); ev.State != StateDegraded {
				t.Fatalf("watch event in a %s outage = %+v, want DEGRADED (and never PAUSE)", tc.name, ev)
			}
			noEvent(t, w)
			fake.Unblock()
			fake.SetError(kektest.OpAny, nil)
			tick(t, clk, interval)
			if ev := nextEvent(t, w); ev.Kind != EventServing {
				t.Fatalf("watch event after the %s outage = %+v, want SERVING", tc.name, ev)
			}
		})
	}
}

// twoRegions is a broker over the failover wrapper with two regions, each
// with its own key (two wrapped copies).
func twoRegions(t *testing.T) (*Broker, *kektest.Fake, *kektest.Fake) {
	t.Helper()
	east, west := kektest.NewFake("east", "cmk"), kektest.NewFake("west", "cmk")
	fw, err := failover.New(failover.Config{Regions: []failover.Region{
		{Name: "east", Wrapper: east, KeyID: east.KeyID(), Timeout: 2 * time.Second},
		{Name: "west", Wrapper: west, KeyID: west.KeyID(), Timeout: 2 * time.Second},
	}})
	if err != nil {
		t.Fatalf("failover.New err = %v", err)
	}
	t.Cleanup(func() { fw.Close() })
	t.Cleanup(east.Unblock)
	t.Cleanup(west.Unblock)
	return newBrokerOver(t, fw, nil), east, west
}

// TestRegionVerdicts checks the pause rule across two regions: PAUSED only
// when every region that answered gave revocation evidence and one did;
// revocation in some regions only is DEGRADED with an alert.
func TestRegionVerdicts(t *testing.T) {
	type outcome int
	const (
		ok outcome = iota
		revoked
		disabled
		deleted
		down
		blackhole
	)
	apply := func(f *kektest.Fake, o outcome) {
		switch o {
		case revoked:
			f.SetError(kektest.OpAny, &kek.Error{Kind: kek.KindRevoked, Op: "get", Code: "ForbiddenByRbac", Status: 403, Err: errors.New("denied")})
		case disabled:
			f.Disable()
		case deleted:
			f.SetError(kektest.OpAny, &kek.Error{Kind: kek.KindNotFound, Op: "get", Code: "KeyNotFound", Status: 404, Err: errors.New("gone")})
		case down:
			f.SetError(kektest.OpAny, &kek.Error{Kind: kek.KindUnavailable, Op: "get", Status: 503, Err: errors.New("down")})
		case blackhole:
			f.Block()
		}
	}
	tests := []struct {
		name       string
		east, west outcome
		want       State
		wantAlert  bool
		wantReason []string
	}{
		{"both give access", ok, ok, StateServing, false, nil},
		{"revoked in the first only", revoked, ok, StateDegraded, true, []string{"region east (revoked, ForbiddenByRbac, HTTP 403)", "not in region west"}},
		{"revoked in the second only", ok, revoked, StateDegraded, true, []string{"region west (revoked, ForbiddenByRbac"}},
		{"disabled in one", disabled, ok, StateDegraded, true, []string{"KeyDisabled"}},
		{"revoked in both", revoked, revoked, StatePaused, false, []string{"region east (revoked, ForbiddenByRbac, HTTP 403), region west (revoked", "grant the broker's identity"}},
		{"revoked and deleted", revoked, deleted, StatePaused, false, []string{"ForbiddenByRbac", "KeyNotFound", "recover the deleted key"}},
		{"revoked, the other down", revoked, down, StatePaused, false, []string{"no answer from region west (unavailable, HTTP 503)"}},
		{"revoked, the other black-holed", revoked, blackhole, StatePaused, false, []string{"no answer from region west"}},
		{"one down", down, ok, StateDegraded, false, []string{"region east (unavailable, HTTP 503)"}},
		{"both down", down, down, StateDegraded, false, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, east, west := twoRegions(t)
			apply(east, tc.east)
			apply(west, tc.west)
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			ev, err := b.Check(ctx)
			if ev.State != tc.want {
				t.Fatalf("Check() state = %v (%s, err %v), want %v", ev.State, ev.Reason, err, tc.want)
			}
			if (err == nil) != (tc.want == StateServing) {
				t.Errorf("Check() err = %v, want nil only when SERVING", err)
			}
			for _, s := range tc.wantReason {
				if !strings.Contains(ev.Reason, s) {
					t.Errorf("Check() reason = %q, want it to contain %q", ev.Reason, s)
				}
			}
			st, err := b.GetStatus(context.Background(), &keybrokerv1.GetStatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			gotAlert := false
			for _, a := range st.GetAlerts() {
				gotAlert = gotAlert || a.GetCode() == "REVOCATION_PARTIAL"
			}
			if gotAlert != tc.wantAlert {
				t.Errorf("GetStatus alerts = %v, want REVOCATION_PARTIAL %v", st.GetAlerts(), tc.wantAlert)
			}
			_, err = b.GetMasterKey(context.Background(), &keybrokerv1.GetMasterKeyRequest{})
			if got, want := status.Code(err), map[bool]codes.Code{true: codes.FailedPrecondition, false: codes.OK}[tc.want == StatePaused]; got != want {
				t.Errorf("GetMasterKey in state %v code = %v (%v), want %v", tc.want, got, err, want)
			}
		})
	}
}

// TestPartialRevocationLifecycle walks a customer revoking region by region
// and restoring access the same way.
func TestPartialRevocationLifecycle(t *testing.T) {
	b, east, west := twoRegions(t)
	ctx := context.Background()
	w := b.hub.subscribe()
	defer b.hub.unsubscribe(w)
	nextEvent(t, w)
	deny := &kek.Error{Kind: kek.KindRevoked, Op: "get", Code: "ForbiddenByPolicy", Status: 403, Err: errors.New("denied")}
	steps := []struct {
		name      string
		act       func()
		wantKind  EventKind
		wantState State
	}{
		{"revoke east", func() { east.SetError(kektest.OpAny, deny) }, EventDegraded, StateDegraded},
		{"revoke west", func() { west.SetError(kektest.OpAny, deny) }, EventPause, StatePaused},
		{"restore west", func() { west.SetError(kektest.OpAny, nil) }, EventResumed, StateDegraded},
		{"restore east", func() { east.SetError(kektest.OpAny, nil) }, EventServing, StateServing},
	}
	for _, s := range steps {
		s.act()
		if _, err := b.Check(ctx); err != nil && s.wantState == StateServing {
			t.Fatalf("%s: Check err = %v", s.name, err)
		}
		if ev := nextEvent(t, w); ev.Kind != s.wantKind || ev.State != s.wantState {
			t.Fatalf("%s: watch event = %+v, want %v %v", s.name, ev, s.wantKind, s.wantState)
		}
		if _, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); (err == nil) == (s.wantState == StatePaused) {
			t.Fatalf("%s: GetMasterKey in %v err = %v", s.name, s.wantState, err)
		}
	}
}

// datedFake reports validity dates Key Vault would send.
type datedFake struct {
	*kektest.Fake
	nbf, exp time.Time
}

func (d *datedFake) KeyInfo(ctx context.Context) (kek.KeyInfo, error) {
	i, err := d.Fake.KeyInfo(ctx)
	i.NotBefore, i.Expires = d.nbf, d.exp
	return i, err
}

// TestValidityDates: Key Vault keeps unwrapping with a key outside its
// nbf/exp window (only encrypt and wrapKey are refused), so such a key is
// not a revocation: the broker keeps serving and raises an alert.
func TestValidityDates(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		nbf, exp time.Time
		want     string
	}{
		{"within dates", now.Add(-time.Hour), now.Add(time.Hour), ""},
		{"expired", time.Time{}, now.Add(-time.Hour), "KEY_EXPIRED"},
		{"not yet valid", now.Add(time.Hour), time.Time{}, "KEY_NOT_YET_VALID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := &datedFake{Fake: kektest.NewFake("east", "cmk")}
			b := newBrokerOver(t, w, func(c *Config) { c.Now = func() time.Time { return now } })
			w.nbf, w.exp = tc.nbf, tc.exp
			ev, err := b.Check(context.Background())
			if err != nil || ev.State != StateServing {
				t.Fatalf("Check() = %v, %v; want SERVING, nil", ev.State, err)
			}
			st, _ := b.GetStatus(context.Background(), &keybrokerv1.GetStatusRequest{})
			var codes []string
			for _, a := range st.GetAlerts() {
				if strings.HasPrefix(a.GetCode(), "KEY_") { // rotation raises alerts of its own
					codes = append(codes, a.GetCode())
				}
			}
			if got := strings.Join(codes, ","); got != tc.want {
				t.Fatalf("GetStatus alerts = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestNoKeyAfterPause hammers the key RPCs, cold loads included, while a
// check pauses the broker: no call that starts once a watcher has seen
// PAUSE gets a key, and nothing is left in memory.
func TestNoKeyAfterPause(t *testing.T) {
	fake := kektest.NewFake("east", "cmk")
	b := newBrokerOver(t, fake, nil)
	ctx := context.Background()
	// A second version, cold (never used), so loads are in flight during the pause.
	if _, err := b.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); err != nil {
		t.Fatal(err)
	}
	k, _ := b.store.Key(DefaultKeyName)
	cold := k.Versions[0].ID
	b.cache.Remove(cold)
	fake.SetLatency(5 * time.Millisecond)

	w := b.hub.subscribe()
	defer b.hub.unsubscribe(w)
	nextEvent(t, w)
	var (
		paused      atomic.Bool // set once the watcher has seen PAUSE
		okBefore    atomic.Int64
		okAfter     atomic.Int64 // successes of calls started after PAUSE: must stay 0
		refused     atomic.Int64
		stop        = make(chan struct{})
		wg          sync.WaitGroup
		unexpected  = make(chan error, 1)
		sawPaused   = make(chan struct{})
		pausedClose sync.Once
		warm        = make(chan struct{}) // closed once 200 keys were served
	)
	for g := range 8 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				after := paused.Load()
				req := &keybrokerv1.GetMasterKeyRequest{}
				if (g+i)%4 == 0 {
					req.Version = cold
				}
				resp, err := b.GetMasterKey(ctx, req)
				switch code := status.Code(err); {
				case err == nil && after:
					okAfter.Add(1)
					clear(resp.GetKey())
				case err == nil:
					if okBefore.Add(1) == 200 {
						close(warm)
					}
					clear(resp.GetKey())
				case code == codes.FailedPrecondition || code == codes.Unavailable:
					refused.Add(1)
					if after {
						pausedClose.Do(func() { close(sawPaused) })
					}
				default:
					select {
					case unexpected <- err:
					default:
					}
				}
			}
		})
	}
	// Let the load run until some keys were served, then revoke.
	select {
	case <-warm:
	case err := <-unexpected:
		t.Fatalf("GetMasterKey err = %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("200 keys were not served within 10s")
	}
	fake.Disable()
	go func() { _, _ = b.Check(ctx) }()
	if ev := nextEvent(t, w); ev.Kind != EventPause {
		t.Fatalf("watch event = %+v, want PAUSE", ev)
	}
	paused.Store(true)
	select {
	case <-sawPaused:
	case <-time.After(10 * time.Second):
		t.Fatal("no call was refused within 10s of the PAUSE event")
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-unexpected:
		t.Fatalf("GetMasterKey err = %v", err)
	default:
	}
	if n := okAfter.Load(); n != 0 {
		t.Fatalf("%d GetMasterKey calls started after the PAUSE event got a key, want 0", n)
	}
	if n := b.cache.Len(); n != 0 {
		t.Fatalf("cache.Len() = %d after the pause and every call returned, want 0 (in-flight loads purged)", n)
	}
	t.Logf("%d keys served before the pause, %d calls refused", okBefore.Load(), refused.Load())
}

// TestCheckLockHonoursContext: a check stuck on a black-holed vault
// neither blocks GetStatus nor a Revalidate whose caller gives up.
func TestCheckLockHonoursContext(t *testing.T) {
	fake := kektest.NewFake("east", "cmk")
	b := newBrokerOver(t, fake, nil)
	fake.Block()
	stuck, cancelStuck := context.WithCancel(context.Background())
	done, holding := make(chan struct{}), make(chan struct{})
	go func() { _, _ = b.check(stuck, func() { close(holding) }, true); close(done) }()
	t.Cleanup(func() { cancelStuck(); <-done; fake.Unblock() })
	select {
	case <-holding:
	case <-time.After(10 * time.Second):
		t.Fatal("the check did not start within 10s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := b.GetStatus(ctx, &keybrokerv1.GetStatusRequest{}); err != nil {
		t.Fatalf("GetStatus during a stuck check err = %v", err)
	}
	_, err := b.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if got := status.Code(err); got != codes.DeadlineExceeded {
		t.Fatalf("Revalidate behind a stuck check code = %v (%v), want DeadlineExceeded", got, err)
	}
}

// watchStream is a WatchKeyState stream in memory.
type watchStream struct {
	grpc.ServerStream
	ctx  context.Context
	sent chan *keybrokerv1.WatchKeyStateResponse
}

func (s *watchStream) Context() context.Context { return s.ctx }
func (s *watchStream) Send(m *keybrokerv1.WatchKeyStateResponse) error {
	s.sent <- m
	return nil
}

// TestWatchersAndShutdown: many watchers each get the current state and
// then the PAUSE; Shutdown ends every stream with UNAVAILABLE so a
// graceful stop does not wait for them.
func TestWatchersAndShutdown(t *testing.T) {
	fake := kektest.NewFake("east", "cmk")
	b := newBrokerOver(t, fake, nil)
	const n = 20
	var streams []*watchStream
	errs := make(chan error, n)
	for range n {
		s := &watchStream{ctx: context.Background(), sent: make(chan *keybrokerv1.WatchKeyStateResponse, 4)}
		streams = append(streams, s)
		go func() { errs <- b.WatchKeyState(&keybrokerv1.WatchKeyStateRequest{}, s) }()
	}
	recv := func(s *watchStream) *keybrokerv1.KeyStateEvent {
		select {
		case m := <-s.sent:
			return m.GetEvent()
		case <-time.After(10 * time.Second):
			t.Fatal("no event within 10s")
			return nil
		}
	}
	for i, s := range streams {
		if ev := recv(s); ev.GetKind() != keybrokerv1.KeyStateEvent_KIND_CURRENT {
			t.Fatalf("watcher %d first event = %v, want CURRENT", i, ev)
		}
	}
	fake.Disable()
	if _, err := b.Check(context.Background()); err == nil {
		t.Fatal("Check with the key disabled err = nil")
	}
	for i, s := range streams {
		if ev := recv(s); ev.GetKind() != keybrokerv1.KeyStateEvent_KIND_PAUSE || !strings.Contains(ev.GetReason(), "KeyDisabled") {
			t.Fatalf("watcher %d event = %v, want PAUSE naming KeyDisabled", i, ev)
		}
	}
	b.Shutdown()
	for range n {
		select {
		case err := <-errs:
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("WatchKeyState after Shutdown err = %v, want UNAVAILABLE", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a WatchKeyState stream did not end within 10s of Shutdown")
		}
	}
}

// TestPauseDrainsKeyCalls: a pause waits for the key calls that started
// before it, not for those that keep arriving, and not beyond its bound.
func TestPauseDrainsKeyCalls(t *testing.T) {
	var d drain
	leave := d.enter()
	old := d.flip()
	_ = d.enter() // a call of the new epoch that never leaves
	var left atomic.Bool
	done := make(chan struct{})
	go func() {
		waitEpoch(old, time.Minute, 0)
		if !left.Load() {
			t.Error("waitEpoch returned before the call of its epoch left")
		}
		close(done)
	}()
	left.Store(true)
	leave()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("waitEpoch did not return within 10s of the last call leaving: it waits for the new epoch too")
	}

	_ = d.enter() // stuck for ever
	start := time.Now()
	d.wait(20*time.Millisecond, 0)
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("wait on a stuck call took %v, want about its 20ms bound", took)
	}
	d.wait(time.Minute, time.Minute) // no call in flight: returns at once, no margin
}

// TestUnaryInterceptorTracksKeyCalls: key RPCs are counted, others not
// (Revalidate, which pauses, must never wait for itself).
func TestUnaryInterceptorTracksKeyCalls(t *testing.T) {
	b := newBrokerOver(t, kektest.NewFake("east", "cmk"), nil)
	icpt := b.UnaryInterceptor()
	tests := []struct {
		method  string
		tracked bool
	}{
		{keybrokerv1.KeyBrokerService_GetMasterKey_FullMethodName, true},
		{keybrokerv1.KeyBrokerService_WrapDEK_FullMethodName, true},
		{keybrokerv1.KeyBrokerService_UnwrapDEK_FullMethodName, true},
		{keybrokerv1.KeyBrokerService_RotateDEK_FullMethodName, true},
		{keybrokerv1.KeyBrokerService_Revalidate_FullMethodName, false},
		{keybrokerv1.KeyBrokerService_GetStatus_FullMethodName, false},
		{"/grpc.health.v1.Health/Check", false},
	}
	for _, tc := range tests {
		var inFlight bool
		_, err := icpt(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: tc.method}, func(context.Context, any) (any, error) {
			inFlight = b.hub.calls.flip() != nil
			return nil, nil
		})
		if err != nil || inFlight != tc.tracked {
			t.Errorf("UnaryInterceptor(%s) counted the call = %v (err %v), want %v", tc.method, inFlight, err, tc.tracked)
		}
	}
}
