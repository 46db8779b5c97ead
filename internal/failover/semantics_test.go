package failover

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
)

func TestRevocationVersusOutage(t *testing.T) {
	tests := []struct {
		name        string
		a, b        error // injected into every op of a and b; nil = healthy
		wantKind    kek.Kind
		wantOK      bool // the call succeeds (b answers)
		wantPartial bool // errors.Is(err, ErrPartialRevocation) and PartialRevocation()
	}{
		{name: "revoked in both", a: revoked("a"), b: revoked("b"), wantKind: kek.KindRevoked},
		{name: "revoked in a, key gone in b", a: revoked("a"), b: notFound("b"), wantKind: kek.KindRevoked},
		{name: "key gone in both", a: notFound("a"), b: notFound("b"), wantKind: kek.KindNotFound},
		{name: "revoked in a, b down", a: revoked("a"), b: unavailable("b"), wantKind: kek.KindUnavailable, wantPartial: true},
		{name: "a down, revoked in b", a: unavailable("a"), b: revoked("b"), wantKind: kek.KindUnavailable, wantPartial: true},
		{name: "revoked in a, b throttled", a: revoked("a"), b: throttled("b", 0), wantKind: kek.KindUnavailable, wantPartial: true},
		{name: "revoked in a, b fine", a: revoked("a"), wantOK: true, wantPartial: true},
		{name: "both down", a: unavailable("a"), b: unavailable("b"), wantKind: kek.KindUnavailable},
	}
	ops := []struct {
		name string
		call func(ctx context.Context, e *env, copies []kek.Wrapped) error
	}{
		{"UnwrapKey", func(ctx context.Context, e *env, c []kek.Wrapped) error {
			k, err := e.w.UnwrapKey(ctx, c)
			if err == nil && !bytes.Equal(k, e.key) {
				return errors.New("wrong key")
			}
			return err
		}},
		{"KeyInfo", func(ctx context.Context, e *env, _ []kek.Wrapped) error { _, err := e.w.KeyInfo(ctx); return err }},
		{"WrapKey", func(ctx context.Context, e *env, _ []kek.Wrapped) error {
			_, err := e.w.WrapKey(ctx, e.key)
			return err
		}},
	}
	for _, tc := range tests {
		for _, op := range ops {
			t.Run(tc.name+"/"+op.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					// Configured key identifiers: the wrapper knows from the
					// start that a and b share one key.
					e := newEnv(t, true, func(c *Config) {
						id := c.Regions[0].Wrapper.(*kektest.Fake).KeyID()
						c.Regions[0].KeyID, c.Regions[1].KeyID = id, id
					})
					copies := e.copiesOf(t, e.a)
					e.a.SetError(kektest.OpAny, tc.a)
					e.b.SetError(kektest.OpAny, tc.b)
					err := op.call(t.Context(), e, copies)
					if tc.wantOK {
						if err != nil {
							t.Fatalf("%s err = %v, want nil (b answers)", op.name, err)
						}
					} else {
						var ke *kek.Error
						if !errors.As(err, &ke) || ke.Kind != tc.wantKind {
							t.Fatalf("%s err = %v, want a *kek.Error of kind %v", op.name, err, tc.wantKind)
						}
						if got := errors.Is(err, ErrPartialRevocation); got != tc.wantPartial {
							t.Fatalf("%s err = %v; matches ErrPartialRevocation = %v, want %v", op.name, err, got, tc.wantPartial)
						}
						if tc.wantKind.IsRevocation() && !strings.Contains(err.Error(), "in region a") {
							t.Fatalf("%s err = %v, want the first region's revocation error", op.name, err)
						}
					}
					if got := e.w.PartialRevocation(); got != tc.wantPartial {
						t.Fatalf("PartialRevocation() = %v, want %v", got, tc.wantPartial)
					}
					if got := e.ev.count(EventPartialRevocation); got != map[bool]int{true: 1}[tc.wantPartial] {
						t.Fatalf("%d partial revocation events, want %v", got, tc.wantPartial)
					}
				})
			})
		}
	}
}

// TestRevocationWithRegionLeftOut: a region whose circuit is open is not
// asked, so it does not count: once b's circuit opens, a's revocation
// evidence is all there is.
func TestRevocationWithRegionLeftOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, true, nil)
		e.a.SetError(kektest.OpAny, revoked("a"))
		e.b.SetError(kektest.OpAny, unavailable("b"))
		for i := range DefaultBreakerThreshold {
			_, err := e.w.KeyInfo(t.Context())
			if !errors.Is(err, ErrPartialRevocation) || kek.KindOf(err) != kek.KindUnavailable {
				t.Fatalf("call %d: KeyInfo err = %v, want unavailable with partial revocation while b is asked", i, err)
			}
		}
		if st := e.status(t, "b"); st.State != StateOpen {
			t.Fatalf("Status(b).State = %v, want open", st.State)
		}
		_, err := e.w.KeyInfo(t.Context())
		if kek.KindOf(err) != kek.KindRevoked {
			t.Fatalf("KeyInfo with b left out err = %v, want KindRevoked", err)
		}
		if n := e.b.Calls(kektest.OpKeyInfo); n != DefaultBreakerThreshold {
			t.Fatalf("b.Calls(get) = %d, want %d", n, DefaultBreakerThreshold)
		}
	})
}

func TestKeyInfoDisabledKey(t *testing.T) {
	tests := []struct {
		name        string
		disableB    bool
		wantEnabled bool
		wantKeyOf   string
	}{
		{"disabled in a only: b's key is served", false, true, "b"},
		{"disabled in both: a's answer is returned", true, false, "a"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, false, nil)
				e.a.Disable()
				if tc.disableB {
					e.b.Disable()
				}
				info, err := e.w.KeyInfo(t.Context())
				if err != nil {
					t.Fatalf("KeyInfo err = %v, want nil", err)
				}
				want := map[string]string{"a": e.a.KeyID(), "b": e.b.KeyID()}[tc.wantKeyOf]
				if info.Enabled != tc.wantEnabled || info.KeyID != want {
					t.Fatalf("KeyInfo = %s enabled %v, want %s enabled %v", info.KeyID, info.Enabled, want, tc.wantEnabled)
				}
				if got := e.w.PartialRevocation(); got == tc.disableB {
					t.Fatalf("PartialRevocation() = %v, want %v", got, !tc.disableB)
				}
			})
		})
	}
}

func TestDeadlines(t *testing.T) {
	t.Run("caller deadline ends a call on black holes", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, true, nil)
			copies := e.copiesOf(t, e.a)
			e.a.Block()
			e.b.Block()
			ctx, cancel := context.WithTimeout(t.Context(), 700*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := e.w.UnwrapKey(ctx, copies)
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("UnwrapKey err = %v, want DeadlineExceeded", err)
			}
			if got := time.Since(start); got != 700*time.Millisecond {
				t.Fatalf("UnwrapKey returned after %v, want at the deadline, 700ms", got)
			}
			synctest.Wait()
			if n := e.a.InFlight() + e.b.InFlight(); n != 0 {
				t.Fatalf("%d region calls still running after the deadline, want 0", n)
			}
			// The caller's deadline is not the regions' fault.
			if st := e.status(t, "b"); st.LastError != "" {
				t.Fatalf("Status(b).LastError = %q, want none: b was cut short by the caller", st.LastError)
			}
		})
	})
	t.Run("caller cancellation", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, true, nil)
			e.a.Block()
			ctx, cancel := context.WithCancel(t.Context())
			time.AfterFunc(50*time.Millisecond, cancel)
			start := time.Now()
			_, err := e.w.KeyInfo(ctx)
			if !errors.Is(err, context.Canceled) || time.Since(start) != 50*time.Millisecond {
				t.Fatalf("KeyInfo err = %v after %v, want Canceled after 50ms", err, time.Since(start))
			}
		})
	})
	t.Run("no attempt that cannot finish in time", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, true, nil)
			// a goes down and b, slow, becomes active and known to take 200ms.
			e.a.SetError(kektest.OpAny, unavailable("a"))
			e.b.SetLatency(200 * time.Millisecond)
			for range 5 {
				if _, err := e.w.KeyInfo(t.Context()); err != nil {
					t.Fatal(err)
				}
			}
			before := e.b.Calls(kektest.OpKeyInfo)
			ctx, cancel := context.WithTimeout(t.Context(), 150*time.Millisecond)
			defer cancel()
			start := time.Now()
			_, err := e.w.KeyInfo(ctx)
			if !errors.Is(err, context.DeadlineExceeded) || kek.KindOf(err) != kek.KindUnavailable {
				t.Fatalf("KeyInfo with 150ms left err = %v, want unavailable matching DeadlineExceeded", err)
			}
			if got := time.Since(start); got != 0 {
				t.Fatalf("KeyInfo took %v, want an immediate answer", got)
			}
			if n := e.b.Calls(kektest.OpKeyInfo) - before; n != 0 {
				t.Fatalf("b called %d times, want 0: its 200ms cannot fit in 150ms", n)
			}
			// With time enough, b is called.
			ctx2, cancel2 := context.WithTimeout(t.Context(), 250*time.Millisecond)
			defer cancel2()
			if _, err := e.w.KeyInfo(ctx2); err != nil {
				t.Fatalf("KeyInfo with 250ms left err = %v, want nil", err)
			}
		})
	})
	t.Run("retry rounds stop at the deadline", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, true, func(c *Config) { c.MaxAttempts = 100; c.BreakerThreshold = 1000 })
			e.a.SetError(kektest.OpAny, unavailable("a"))
			e.b.SetError(kektest.OpAny, unavailable("b"))
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			start := time.Now()
			_, err := e.w.KeyInfo(ctx)
			if !errors.Is(err, ErrAllRegionsFailed) {
				t.Fatalf("KeyInfo err = %v, want ErrAllRegionsFailed", err)
			}
			if got := time.Since(start); got >= 10*time.Second {
				t.Fatalf("KeyInfo took %v, want less than the 10s deadline", got)
			}
			n := e.a.Calls(kektest.OpKeyInfo)
			if n < 2 || n > 10 {
				t.Fatalf("a called %d times in 10s of retry rounds, want a few (backoff 1s, 2s, 4s...)", n)
			}
		})
	})
}

func TestWrapKey(t *testing.T) {
	t.Run("one copy per key", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, false, nil)
			copies, err := e.w.WrapKey(t.Context(), e.key)
			if err != nil || len(copies) != 2 {
				t.Fatalf("WrapKey = %d copies, %v; want 2, nil", len(copies), err)
			}
			for i, f := range []*kektest.Fake{e.a, e.b} {
				if copies[i].KeyID != f.KeyID() {
					t.Fatalf("copy %d KeyID = %s, want %s", i, copies[i].KeyID, f.KeyID())
				}
				got, err := f.UnwrapKey(t.Context(), copies[i:i+1])
				if err != nil || !bytes.Equal(got, e.key) {
					t.Fatalf("%s.UnwrapKey(its copy) = %v, want the key", f.Region(), err)
				}
			}
		})
	})
	t.Run("regions sharing a key get one copy", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, true, nil)
			for i := range 3 {
				copies, err := e.w.WrapKey(t.Context(), e.key)
				if err != nil || len(copies) != 1 {
					t.Fatalf("call %d: WrapKey = %d copies, %v; want 1, nil", i, len(copies), err)
				}
			}
			// The first call learns that b shares a's key; later ones do not ask b.
			if a, b := e.a.Calls(kektest.OpWrap), e.b.Calls(kektest.OpWrap); a != 3 || b != 1 {
				t.Fatalf("wrap calls a, b = %d, %d; want 3, 1", a, b)
			}
		})
	})
	t.Run("configured shared key: one copy from the start", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, true, nil)
			w, err := New(Config{Regions: []Region{
				{Name: "a", Wrapper: e.a, KeyID: e.a.KeyID()},
				{Name: "b", Wrapper: e.b, KeyID: strings.ToUpper(e.a.KeyID()[:8]) + e.a.KeyID()[8:]},
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			copies, err := w.WrapKey(t.Context(), e.key)
			if err != nil || len(copies) != 1 || e.b.Calls(kektest.OpWrap) != 0 {
				t.Fatalf("WrapKey = %d copies, %v, b called %d times; want 1, nil, 0", len(copies), err, e.b.Calls(kektest.OpWrap))
			}
			// a down: b writes the copy for the shared key.
			e.a.SetError(kektest.OpAny, unavailable("a"))
			copies, err = w.WrapKey(t.Context(), e.key)
			if err != nil || len(copies) != 1 {
				t.Fatalf("WrapKey with a down = %d copies, %v; want 1 from b", len(copies), err)
			}
		})
	})
	t.Run("a key's region down: no copies at all", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, false, nil)
			e.b.SetError(kektest.OpAny, unavailable("b"))
			copies, err := e.w.WrapKey(t.Context(), e.key)
			if copies != nil || kek.KindOf(err) != kek.KindUnavailable || !errors.Is(err, ErrMissingCopy) || errors.Is(err, ErrPartialRevocation) {
				t.Fatalf("WrapKey = %d copies, %v; want none, unavailable, ErrMissingCopy", len(copies), err)
			}
			if !strings.Contains(err.Error(), "b: unavailable") || strings.Contains(err.Error(), "a: ") {
				t.Fatalf("WrapKey err = %q, want it to name b and only b", err)
			}
		})
	})
	t.Run("a key revoked: no copies, partial revocation", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, false, nil)
			e.b.Disable()
			copies, err := e.w.WrapKey(t.Context(), e.key)
			if copies != nil || kek.KindOf(err) != kek.KindUnavailable || !errors.Is(err, ErrMissingCopy) || !errors.Is(err, ErrPartialRevocation) {
				t.Fatalf("WrapKey = %d copies, %v; want none, unavailable, ErrMissingCopy and ErrPartialRevocation", len(copies), err)
			}
		})
	})
	t.Run("empty key", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEnv(t, false, nil)
			if _, err := e.w.WrapKey(t.Context(), nil); kek.KindOf(err) != kek.KindInvalidInput {
				t.Fatalf("WrapKey(nil) err = %v, want KindInvalidInput", err)
			}
			if n := e.a.Calls(kektest.OpAny) + e.b.Calls(kektest.OpAny); n != 0 {
				t.Fatalf("regions called %d times for an empty key, want 0", n)
			}
		})
	})
}

func TestUnwrapRouting(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, false, nil)
		copies, err := e.w.WrapKey(t.Context(), e.key) // also teaches the wrapper each region's key
		if err != nil {
			t.Fatal(err)
		}
		e.a.SetError(kektest.OpAny, unavailable("a"))
		got, err := e.w.UnwrapKey(t.Context(), copies)
		if err != nil || !bytes.Equal(got, e.key) {
			t.Fatalf("UnwrapKey with a down = %v, want the key from b's copy", err)
		}

		// Only a's copy, a down: b holds another key and is not asked.
		before := e.b.Calls(kektest.OpUnwrap)
		_, err = e.w.UnwrapKey(t.Context(), copies[:1])
		if kek.KindOf(err) != kek.KindUnavailable || !strings.Contains(err.Error(), "a: unavailable") {
			t.Fatalf("UnwrapKey(a's copy) with a down err = %v, want unavailable naming a", err)
		}
		if n := e.b.Calls(kektest.OpUnwrap) - before; n != 0 {
			t.Fatalf("b asked %d times to unwrap a copy of a's key, want 0", n)
		}

		// Copies of a key no region holds: refused without a call.
		other := kektest.NewFake("c", "cmk")
		oc, err := other.WrapKey(t.Context(), e.key)
		if err != nil {
			t.Fatal(err)
		}
		calls := e.a.Calls(kektest.OpAny) + e.b.Calls(kektest.OpAny)
		_, err = e.w.UnwrapKey(t.Context(), oc)
		if kek.KindOf(err) != kek.KindInvalidInput || !errors.Is(err, ErrNoMatchingCopy) {
			t.Fatalf("UnwrapKey(copies of an unknown key) err = %v, want invalid input, ErrNoMatchingCopy", err)
		}
		if n := e.a.Calls(kektest.OpAny) + e.b.Calls(kektest.OpAny) - calls; n != 0 {
			t.Fatalf("regions called %d times for copies of an unknown key, want 0", n)
		}
	})
}

func TestStatus(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, true, nil)
		e.b.SetLatency(20 * time.Millisecond)
		e.a.SetError(kektest.OpAny, unavailable("a"))
		for range DefaultBreakerThreshold {
			if _, err := e.w.KeyInfo(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		st := e.w.Status()
		if len(st) != 2 {
			t.Fatalf("Status() has %d regions, want 2", len(st))
		}
		a, b := st[0], st[1]
		if a.Name != "a" || !a.Preferred || a.Active || a.Healthy || a.State != StateOpen ||
			a.LastErrorKind != kek.KindUnavailable || !strings.Contains(a.LastError, "503") || a.Switches != 0 {
			t.Fatalf("Status()[0] = %+v, want a: preferred, inactive, unhealthy, open, unavailable", a)
		}
		if b.Name != "b" || b.Preferred || !b.Active || !b.Healthy || b.State != StateClosed ||
			b.LastError != "" || b.LastLatency != 20*time.Millisecond || b.Switches != 1 || b.KeyID != e.b.KeyID() {
			t.Fatalf("Status()[1] = %+v, want b: active, healthy, closed, 20ms, 1 switch, key %s", b, e.b.KeyID())
		}
		if got := e.w.Active(); got != "b" {
			t.Fatalf("Active() = %q, want b", got)
		}
		for _, s := range []BreakerState{StateClosed, StateOpen, StateHalfOpen} {
			if s.String() == "unknown" {
				t.Fatalf("BreakerState(%d).String() = unknown", s)
			}
		}
	})
}

func TestPanickingRegion(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := kektest.NewFake("b", "cmk")
		w, err := New(Config{Regions: []Region{{Name: "a", Wrapper: panicky{}}, {Name: "b", Wrapper: b}}})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.KeyInfo(t.Context()); err != nil {
			t.Fatalf("KeyInfo with a panicking region err = %v, want nil from b", err)
		}
		st := w.Status()[0]
		if st.LastErrorKind != kek.KindUnknown || !strings.Contains(st.LastError, "panicked") {
			t.Fatalf("Status(a) = %+v, want the panic recorded as an unclassified error", st)
		}
	})
}

func TestCloseStopsProber(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, true, nil)
		e.a.SetError(kektest.OpAny, unavailable("a"))
		for range DefaultBreakerThreshold {
			_, _ = e.w.KeyInfo(t.Context())
		}
		e.a.SetError(kektest.OpAny, nil)
		e.a.Block() // probes hang until Close cancels them
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if n := e.a.InFlight(); n != 1 {
			t.Fatalf("a.InFlight() = %d, want 1 hanging probe", n)
		}
		if err := e.w.Close(); err != nil {
			t.Fatalf("Close() = %v, want nil", err)
		}
		if n := e.a.InFlight(); n != 0 {
			t.Fatalf("a.InFlight() after Close = %d, want 0", n)
		}
		calls := e.a.Calls(kektest.OpKeyInfo)
		time.Sleep(time.Hour)
		if n := e.a.Calls(kektest.OpKeyInfo); n != calls {
			t.Fatalf("a probed %d times in the hour after Close, want 0", n-calls)
		}
		if err := e.w.Close(); err != nil {
			t.Fatalf("second Close() = %v, want nil", err)
		}
		// Calls still work after Close.
		if _, err := e.w.KeyInfo(t.Context()); err != nil {
			t.Fatalf("KeyInfo after Close err = %v, want nil", err)
		}
	})
}

func TestNewRejectsBadConfig(t *testing.T) {
	f := kektest.NewFake("a", "cmk")
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no regions", Config{}, "no regions"},
		{"unnamed region", Config{Regions: []Region{{Wrapper: f}}}, "region 0 has no Name"},
		{"duplicate name", Config{Regions: []Region{{Name: "a", Wrapper: f}, {Name: "a", Wrapper: f}}}, `"a" appears twice`},
		{"no wrapper", Config{Regions: []Region{{Name: "a"}}}, `"a" has no Wrapper`},
		{"negative timeout", Config{Regions: []Region{{Name: "a", Wrapper: f, Timeout: -time.Second}}}, "Timeout is -1s"},
		{"negative probe interval", Config{Regions: []Region{{Name: "a", Wrapper: f}}, ProbeInterval: -1}, "ProbeInterval"},
		{"negative attempts", Config{Regions: []Region{{Name: "a", Wrapper: f}}, MaxAttempts: -1}, "MaxAttempts"},
		{"min hedge above max", Config{Regions: []Region{{Name: "a", Wrapper: f}}, MinHedge: time.Second, MaxHedge: time.Millisecond}, "MinHedge 1s is above MaxHedge 1ms"},
		{"backoff above max", Config{Regions: []Region{{Name: "a", Wrapper: f}}, BaseBackoff: time.Minute, MaxBackoff: time.Second}, "BaseBackoff"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := New(tc.cfg)
			if err == nil {
				w.Close()
				t.Fatalf("New(%s) err = nil, want ErrInvalidConfig", tc.name)
			}
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New(%s) err = %v, want ErrInvalidConfig saying %q", tc.name, err, tc.want)
			}
		})
	}
}

func TestLatencyQuantile(t *testing.T) {
	var l latencies
	if _, ok := l.quantile(0.9); ok {
		t.Fatal("quantile of no samples ok = true, want false")
	}
	for i := 1; i <= 100; i++ { // only the last 32 (69..100) are kept
		l.add(time.Duration(i) * time.Millisecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{{0.5, 84 * time.Millisecond}, {0.9, 97 * time.Millisecond}, {1, 100 * time.Millisecond}, {0, 69 * time.Millisecond}}
	for _, tc := range tests {
		if got, _ := l.quantile(tc.q); got != tc.want {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
}

func TestKeyBase(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://v.vault.azure.net/keys/cmk/0123", "https://v.vault.azure.net/keys/cmk"},
		{"https://V.vault.azure.net:443/keys/CMK/abc", "https://v.vault.azure.net/keys/cmk"},
		{"https://v.vault.azure.net/keys/cmk", "https://v.vault.azure.net/keys/cmk"},
		{"https://v.vault.azure.net:8443/keys/cmk/1", "https://v.vault.azure.net:8443/keys/cmk"},
		{"https://h.managedhsm.azure.net/keys/k/v", "https://h.managedhsm.azure.net/keys/k"},
		{"not a key id", "not a key id"},
		{"https://v.vault.azure.net/secrets/s/1", "https://v.vault.azure.net/secrets/s/1"},
	}
	for _, tc := range tests {
		if got := keyBase(tc.in); got != tc.want {
			t.Errorf("keyBase(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func FuzzKeyBase(f *testing.F) {
	f.Add("https://v.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef")
	f.Add("https://[::1]:443/keys/k/v")
	f.Add("https://h/keys/a%3Fb/v")
	f.Add("HTTPS://H:443/KEYS/x")
	f.Add("%zz")
	f.Fuzz(func(t *testing.T, id string) {
		b := keyBase(id)
		if again := keyBase(b); again != b {
			t.Fatalf("keyBase(%q) = %q but keyBase(%q) = %q: want idempotent", id, b, b, again)
		}
		// Any version of a key has the key's base.
		u, err := url.Parse(b)
		if err != nil || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			return
		}
		if segs := strings.Split(strings.TrimPrefix(u.EscapedPath(), "/"), "/"); len(segs) == 2 && segs[0] == "keys" && segs[1] != "" {
			if v := keyBase(b + "/0123abcd"); v != b {
				t.Fatalf("keyBase(%q + version) = %q, want %q", b, v, b)
			}
		}
	})
}

// TestNoGoroutineLeak makes many hedged, timed-out and cancelled calls in a
// bubble. synctest.Test fails ("blocked goroutines remain") if any
// goroutine the wrapper started outlives the test: attempts, hedging
// losers, timers, the prober.
func TestNoGoroutineLeak(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, true, func(c *Config) { c.HedgeDelay = 10 * time.Millisecond })
		copies := e.copiesOf(t, e.a)
		e.a.Block()
		for i := range 50 {
			ctx, cancel := context.WithTimeout(t.Context(), time.Duration(i%7)*5*time.Millisecond)
			_, _ = e.w.UnwrapKey(ctx, copies)
			_, _ = e.w.KeyInfo(ctx)
			_, _ = e.w.WrapKey(ctx, e.key)
			cancel()
			if i == 25 {
				e.b.Block()
			}
		}
		time.Sleep(time.Minute) // probes run, and hang on the black holes
		if err := e.w.Close(); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if n := e.a.InFlight() + e.b.InFlight(); n != 0 {
			t.Fatalf("%d region calls still running after Close, want 0", n)
		}
	})
}

func TestLogsAndEvents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf bytes.Buffer
		var evs events
		a := kektest.NewFake("a", "cmk")
		b := a.Replica("b")
		w, err := New(Config{
			Regions: []Region{{Name: "a", Wrapper: a}, {Name: "b", Wrapper: b}},
			Logger:  slog.New(slog.NewTextHandler(&buf, nil)),
			OnEvent: evs.add,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		key := []byte("a-very-secret-master-key-0000001")
		copies, err := w.WrapKey(t.Context(), key)
		if err != nil {
			t.Fatal(err)
		}
		a.SetError(kektest.OpAny, revoked("a"))
		got, err := w.UnwrapKey(t.Context(), copies)
		if err != nil || !bytes.Equal(got, key) {
			t.Fatalf("UnwrapKey = %v, want the key from b", err)
		}
		log := buf.String()
		for _, want := range []string{"event=region_down region=a", "error_kind=revoked", "event=switch region=b from=a", "level=ERROR", "event=partial_revocation"} {
			if !strings.Contains(log, want) {
				t.Errorf("log lacks %q:\n%s", want, log)
			}
		}
		if strings.Contains(log, string(key)) || strings.Contains(log, hex.EncodeToString(key)) {
			t.Fatalf("log carries the key:\n%s", log)
		}
		if got := strings.Join(evs.kinds(), " "); got != "region_down:a switch:b<-a partial_revocation:" {
			t.Fatalf("events = %s, want region_down:a switch:b<-a partial_revocation:", got)
		}
		for _, ev := range evs.all {
			if ev.Time.IsZero() || ev.Kind.String() == "unknown" {
				t.Fatalf("event %+v: want a time and a named kind", ev)
			}
		}
	})
}

// timedRegion records when each KeyInfo call starts.
type timedRegion struct {
	*kektest.Fake
	mu    sync.Mutex
	times []time.Time
}

func (r *timedRegion) KeyInfo(ctx context.Context) (kek.KeyInfo, error) {
	r.mu.Lock()
	r.times = append(r.times, time.Now())
	r.mu.Unlock()
	return r.Fake.KeyInfo(ctx)
}

func TestBreakerBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fa := kektest.NewFake("a", "cmk")
		fa.SetError(kektest.OpAny, unavailable("a"))
		a := &timedRegion{Fake: fa}
		w, err := New(Config{Regions: []Region{{Name: "a", Wrapper: a}, {Name: "b", Wrapper: fa.Replica("b")}}})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		for range DefaultBreakerThreshold {
			if _, err := w.KeyInfo(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(5 * time.Minute)
		a.mu.Lock()
		times := slices.Clone(a.times[DefaultBreakerThreshold-1:]) // from the failure that opened the circuit
		a.mu.Unlock()
		if len(times) < 8 {
			t.Fatalf("%d probes in 5 minutes, want at least 8", len(times)-1)
		}
		for k := 1; k < len(times); k++ {
			full := min(DefaultBaseBackoff<<(k-1), DefaultProbeInterval)
			gap := times[k].Sub(times[k-1])
			if gap < full/2 || gap > full {
				t.Fatalf("gap before probe %d = %v, want within [%v, %v] (jittered exponential backoff)", k, gap, full/2, full)
			}
		}
		// While a probe hangs, the circuit is half-open.
		fa.Block()
		if err := fa.WaitCalls(t.Context(), kektest.OpKeyInfo, fa.Calls(kektest.OpKeyInfo)+1); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if st := w.Status()[0].State; st != StateHalfOpen {
			t.Fatalf("Status(a).State while a probe hangs = %v, want half-open", st)
		}
		time.Sleep(DefaultTimeout) // the probe times out: open again
		synctest.Wait()
		if st := w.Status()[0]; st.State != StateOpen || !strings.Contains(st.LastError, "no answer within 10s") {
			t.Fatalf("Status(a) after the probe timed out = %v, %q; want open, no answer within 10s", st.State, st.LastError)
		}
	})
}
