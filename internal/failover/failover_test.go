package failover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
)

func TestConformance(t *testing.T) {
	tests := []struct {
		name string
		regs func() []Region
	}{
		{"one region", func() []Region {
			return []Region{{Name: "a", Wrapper: kektest.NewFake("a", "cmk")}}
		}},
		{"two regions, two keys", func() []Region {
			return []Region{{Name: "a", Wrapper: kektest.NewFake("a", "cmk")}, {Name: "b", Wrapper: kektest.NewFake("b", "cmk")}}
		}},
		{"two regions, one key", func() []Region {
			a := kektest.NewFake("a", "cmk")
			return []Region{{Name: "a", Wrapper: a}, {Name: "b", Wrapper: a.Replica("b")}}
		}},
		{"two regions, one configured key", func() []Region {
			a := kektest.NewFake("a", "cmk")
			return []Region{{Name: "a", Wrapper: a, KeyID: a.KeyID()}, {Name: "b", Wrapper: a.Replica("b"), KeyID: a.KeyID()}}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			kektest.RunConformance(t, func(t *testing.T) kektest.Wrapper {
				w, err := New(Config{Regions: tc.regs()})
				if err != nil {
					t.Fatalf("New err = %v, want nil", err)
				}
				t.Cleanup(func() { _ = w.Close() })
				return w
			})
		})
	}
}

func TestHedging(t *testing.T) {
	tests := []struct {
		name      string
		hedge     time.Duration // Config.HedgeDelay
		train     time.Duration // latency of a during 20 calls before the black hole, 0 for none
		bLatency  time.Duration
		wantDelay time.Duration // when b's call must start
	}{
		{"fixed delay", 100 * time.Millisecond, 0, 0, 100 * time.Millisecond},
		{"fixed delay, slow secondary", 100 * time.Millisecond, 0, 30 * time.Millisecond, 100 * time.Millisecond},
		{"derived, nothing observed yet", 0, 0, 0, DefaultInitialHedge},
		{"derived from observed latency", 0, 40 * time.Millisecond, 10 * time.Millisecond, 40 * time.Millisecond},
		{"derived, clamped to MinHedge", 0, time.Millisecond, 0, DefaultMinHedge},
		{"derived, clamped to MaxHedge", 0, 5 * time.Second, 0, DefaultMaxHedge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, true, func(c *Config) { c.HedgeDelay = tc.hedge })
				copies := e.copiesOf(t, e.a)
				if tc.train > 0 {
					// b is a black hole while a answers, so that a wins
					// every call and its latency is learnt.
					e.a.SetLatency(tc.train)
					e.b.Block()
					for range 20 {
						got, err := e.w.UnwrapKey(t.Context(), copies)
						if err != nil || !bytes.Equal(got, e.key) {
							t.Fatalf("training UnwrapKey = %v; want the key", err)
						}
					}
					synctest.Wait()
					e.b.Unblock()
					if got := e.w.Active(); got != "a" {
						t.Fatalf("Active() after training = %q, want a", got)
					}
				}
				bCalls := e.b.Calls(kektest.OpUnwrap)
				e.a.Block()
				e.b.SetLatency(tc.bLatency)

				start := time.Now()
				type res struct {
					key []byte
					err error
				}
				done := make(chan res, 1)
				go func() {
					k, err := e.w.UnwrapKey(t.Context(), copies)
					done <- res{k, err}
				}()
				time.Sleep(tc.wantDelay - time.Nanosecond)
				synctest.Wait()
				if n := e.b.Calls(kektest.OpUnwrap) - bCalls; n != 0 {
					t.Fatalf("b called %d times %v into the call, want 0 before the hedge delay %v", n, time.Since(start), tc.wantDelay)
				}
				r := <-done
				if r.err != nil || !bytes.Equal(r.key, e.key) {
					t.Fatalf("UnwrapKey with a black-holed primary = %v, want the key from b", r.err)
				}
				if got, want := time.Since(start), tc.wantDelay+tc.bLatency; got != want {
					t.Fatalf("UnwrapKey took %v, want hedge delay + b's latency = %v", got, want)
				}
				if n := e.b.Calls(kektest.OpUnwrap) - bCalls; n != 1 {
					t.Fatalf("b.Calls(unwrap) = %d, want 1", n)
				}
				// The loser is cancelled: a's black-holed call returns.
				synctest.Wait()
				if n := e.a.InFlight(); n != 0 {
					t.Fatalf("a.InFlight() after the call = %d, want 0: the losing attempt must be cancelled", n)
				}
			})
		})
	}
}

func TestHedgingDisabled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, true, func(c *Config) { c.HedgeDelay = -1 })
		copies := e.copiesOf(t, e.a)
		e.a.Block()
		start := time.Now()
		if _, err := e.w.UnwrapKey(t.Context(), copies); err != nil {
			t.Fatalf("UnwrapKey err = %v, want nil after a's timeout", err)
		}
		if got := time.Since(start); got != DefaultTimeout {
			t.Fatalf("UnwrapKey without hedging took %v, want a's timeout %v", got, DefaultTimeout)
		}
	})
}

func TestBlackHoledPrimaryFailsOver(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, true, func(c *Config) { c.HedgeDelay = 100 * time.Millisecond })
		copies := e.copiesOf(t, e.a)
		e.a.Block()
		for i := range DefaultBreakerThreshold {
			start := time.Now()
			if _, err := e.w.UnwrapKey(t.Context(), copies); err != nil {
				t.Fatalf("call %d: UnwrapKey err = %v, want nil", i, err)
			}
			if got := time.Since(start); got != 100*time.Millisecond {
				t.Fatalf("call %d took %v, want the hedge delay", i, got)
			}
		}
		synctest.Wait() // the losers record their failure as they return
		if got := e.w.Active(); got != "b" {
			t.Fatalf("Active() after %d lost hedges = %q, want b", DefaultBreakerThreshold, got)
		}
		start := time.Now()
		if _, err := e.w.UnwrapKey(t.Context(), copies); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(start); got != 0 {
			t.Fatalf("UnwrapKey after failover took %v, want no wait: b is active", got)
		}
		if n := e.a.Calls(kektest.OpUnwrap); n != DefaultBreakerThreshold {
			t.Fatalf("a.Calls(unwrap) = %d, want %d: an open circuit is not called", n, DefaultBreakerThreshold)
		}
		synctest.Wait()
		if n := e.a.InFlight(); n != 0 {
			t.Fatalf("a.InFlight() = %d, want 0", n)
		}
	})
}

// TestLostHedgeCountsAfterCallerReturns: a gRPC handler's context ends as
// soon as the winner's answer is used, before the black-holed loser
// returns; the loser must still count against its region.
func TestLostHedgeCountsAfterCallerReturns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, true, func(c *Config) { c.HedgeDelay = 100 * time.Millisecond })
		copies := e.copiesOf(t, e.a)
		e.a.Block()
		for i := range DefaultBreakerThreshold {
			ctx, cancel := context.WithCancel(t.Context())
			_, err := e.w.UnwrapKey(ctx, copies)
			cancel() // the handler returns with the winner's answer
			if err != nil {
				t.Fatalf("call %d: UnwrapKey err = %v, want nil", i, err)
			}
		}
		synctest.Wait()
		if got := e.w.Active(); got != "b" {
			t.Fatalf("Active() after %d lost hedges whose callers returned = %q, want b", DefaultBreakerThreshold, got)
		}
	})
}

func TestOutageStormFailsOver(t *testing.T) {
	for _, op := range []string{kektest.OpUnwrap, kektest.OpKeyInfo} {
		t.Run(op, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, true, nil)
				copies := e.copiesOf(t, e.a)
				e.a.SetError(kektest.OpAny, unavailable("a"))
				for i := range 20 {
					var err error
					if op == kektest.OpUnwrap {
						_, err = e.w.UnwrapKey(t.Context(), copies)
					} else {
						_, err = e.w.KeyInfo(t.Context())
					}
					if err != nil {
						t.Fatalf("call %d during a's 503 storm err = %v, want nil (b answers)", i, err)
					}
				}
				if n := e.a.Calls(op); n != DefaultBreakerThreshold {
					t.Fatalf("a.Calls(%s) = %d, want %d: the circuit opens after the threshold", op, n, DefaultBreakerThreshold)
				}
				st := e.status(t, "a")
				if st.State != StateOpen || st.Healthy || st.LastErrorKind != kek.KindUnavailable || st.LastError == "" || st.Revoked {
					t.Fatalf("Status(a) = %+v, want open, unhealthy, unavailable, not revoked", st)
				}
				if got := e.w.Active(); got != "b" {
					t.Fatalf("Active() = %q, want b", got)
				}
				if e.w.PartialRevocation() {
					t.Fatal("PartialRevocation() = true after an outage, want false: outage is never revocation")
				}
				if got := e.ev.kinds(); strings.Join(got, " ") != "region_down:a switch:b<-a" {
					t.Fatalf("events = %v, want [region_down:a switch:b<-a]", got)
				}
			})
		})
	}
}

func TestRetryAfterHonoured(t *testing.T) {
	clock := newManualClock()
	e := newEnv(t, true, func(c *Config) {
		c.Now = clock.Now
		c.AfterFunc = clock.AfterFunc
	})
	ctx := t.Context()
	copies := e.copiesOf(t, e.a)
	e.a.FailNext(kektest.OpUnwrap, 1, throttled("a", 5*time.Second))
	if _, err := e.w.UnwrapKey(ctx, copies); err != nil {
		t.Fatalf("UnwrapKey with a throttled err = %v, want nil from b", err)
	}
	if st := e.status(t, "a"); st.Healthy || !st.ThrottledUntil.Equal(clock.Now().Add(5*time.Second)) {
		t.Fatalf("Status(a) Healthy, ThrottledUntil = %v, %v; want false, now+5s", st.Healthy, st.ThrottledUntil)
	}
	steps := []struct {
		advance time.Duration
		aCalls  int
		bCalls  int
	}{
		{0, 1, 2},
		{time.Second, 1, 3},
		{3900 * time.Millisecond, 1, 4},
		{99 * time.Millisecond, 1, 5},
		{time.Millisecond, 2, 5}, // Retry-After over: a again
		{time.Second, 3, 5},
	}
	for i, s := range steps {
		clock.Advance(s.advance)
		if _, err := e.w.UnwrapKey(ctx, copies); err != nil {
			t.Fatalf("step %d: UnwrapKey err = %v, want nil", i, err)
		}
		if a, b := e.a.Calls(kektest.OpUnwrap), e.b.Calls(kektest.OpUnwrap); a != s.aCalls || b != s.bCalls {
			t.Fatalf("step %d (+%v): calls a, b = %d, %d; want %d, %d", i, s.advance, a, b, s.aCalls, s.bCalls)
		}
	}
}

func TestAllThrottled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := newEnv(t, true, nil)
		e.a.SetError(kektest.OpAny, throttled("a", 7*time.Second))
		e.b.SetError(kektest.OpAny, throttled("b", 3*time.Second))
		_, err := e.w.KeyInfo(t.Context())
		var ke *kek.Error
		if !errors.As(err, &ke) || ke.Kind != kek.KindThrottled || ke.RetryAfter != 3*time.Second {
			t.Fatalf("KeyInfo with both regions throttled err = %v, want KindThrottled with RetryAfter 3s", err)
		}
		// Within the Retry-After nothing is called and the answer stays.
		time.Sleep(2 * time.Second)
		_, err = e.w.KeyInfo(t.Context())
		if !errors.As(err, &ke) || ke.Kind != kek.KindThrottled || ke.RetryAfter != time.Second {
			t.Fatalf("KeyInfo 2s later err = %v, want KindThrottled with RetryAfter 1s", err)
		}
		if a, b := e.a.Calls(kektest.OpKeyInfo), e.b.Calls(kektest.OpKeyInfo); a != 1 || b != 1 {
			t.Fatalf("calls a, b = %d, %d; want 1, 1", a, b)
		}
	})
}

func TestAllRegionsDown(t *testing.T) {
	tests := []struct {
		name      string
		setup     func(e *env)
		deadline  time.Duration // 0: none
		wantKind  kek.Kind
		wantIn    []string
		wantTook  time.Duration
		wantCtxEr error
	}{
		{
			name: "both 503",
			setup: func(e *env) {
				e.a.SetError(kektest.OpAny, unavailable("a"))
				e.b.SetError(kektest.OpAny, unavailable("b"))
			},
			wantKind: kek.KindUnavailable,
			wantIn:   []string{"a: unavailable (ServiceUnavailable, HTTP 503)", "b: unavailable (ServiceUnavailable, HTTP 503)"},
		},
		{
			name:     "a black hole, b 503",
			setup:    func(e *env) { e.a.Block(); e.b.SetError(kektest.OpAny, unavailable("b")) },
			wantKind: kek.KindUnavailable,
			wantIn:   []string{"a: unavailable (no answer within 10s)", "b: unavailable (ServiceUnavailable, HTTP 503)"},
			wantTook: DefaultTimeout,
		},
		{
			name: "a 503, b unclassified error",
			setup: func(e *env) {
				e.a.SetError(kektest.OpAny, unavailable("a"))
				e.b.SetError(kektest.OpAny, errors.New("tls: bad record MAC"))
			},
			wantKind: kek.KindUnavailable,
			wantIn:   []string{"a: unavailable", "b: unknown (unclassified error)"},
		},
		{
			name:      "both black holes, caller deadline",
			setup:     func(e *env) { e.a.Block(); e.b.Block() },
			deadline:  2 * time.Second,
			wantTook:  2 * time.Second,
			wantCtxEr: context.DeadlineExceeded,
		},
	}
	ops := []struct {
		name string
		call func(ctx context.Context, e *env, copies []kek.Wrapped) error
	}{
		{"WrapKey", func(ctx context.Context, e *env, _ []kek.Wrapped) error {
			_, err := e.w.WrapKey(ctx, e.key)
			return err
		}},
		{"UnwrapKey", func(ctx context.Context, e *env, c []kek.Wrapped) error { _, err := e.w.UnwrapKey(ctx, c); return err }},
		{"KeyInfo", func(ctx context.Context, e *env, _ []kek.Wrapped) error { _, err := e.w.KeyInfo(ctx); return err }},
	}
	for _, tc := range tests {
		for _, op := range ops {
			t.Run(tc.name+"/"+op.name, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					e := newEnv(t, true, nil)
					copies := e.copiesOf(t, e.a)
					tc.setup(e)
					ctx := t.Context()
					if tc.deadline > 0 {
						var cancel context.CancelFunc
						ctx, cancel = context.WithTimeout(ctx, tc.deadline)
						defer cancel()
					}
					start := time.Now()
					err := op.call(ctx, e, copies)
					if got := time.Since(start); got != tc.wantTook {
						t.Errorf("%s took %v, want %v", op.name, got, tc.wantTook)
					}
					if tc.wantCtxEr != nil {
						if !errors.Is(err, tc.wantCtxEr) {
							t.Fatalf("%s err = %v, want %v", op.name, err, tc.wantCtxEr)
						}
					} else {
						var ke *kek.Error
						if !errors.As(err, &ke) || ke.Kind != tc.wantKind || !errors.Is(err, ErrAllRegionsFailed) {
							t.Fatalf("%s err = %v, want a *kek.Error of kind %v matching ErrAllRegionsFailed", op.name, err, tc.wantKind)
						}
						for _, s := range tc.wantIn {
							if !strings.Contains(err.Error(), s) {
								t.Errorf("%s err = %q, want it to name %q", op.name, err, s)
							}
						}
					}
					if kek.KindOf(err).IsRevocation() {
						t.Fatalf("%s err kind = %v: outage must never be revocation", op.name, kek.KindOf(err))
					}
					synctest.Wait()
					if n := e.a.InFlight() + e.b.InFlight(); n != 0 {
						t.Fatalf("calls still in flight after %s returned: %d, want 0", op.name, n)
					}
				})
			})
		}
	}
}

func TestFailBack(t *testing.T) {
	for _, failBackAfter := range []int{1, 3, 5} {
		t.Run(fmt.Sprint("after ", failBackAfter), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				e := newEnv(t, true, func(c *Config) { c.FailBackAfter = failBackAfter })
				e.a.SetError(kektest.OpAny, unavailable("a"))
				for range DefaultBreakerThreshold {
					if _, err := e.w.KeyInfo(t.Context()); err != nil {
						t.Fatal(err)
					}
				}
				if got := e.w.Active(); got != "b" {
					t.Fatalf("Active() = %q, want b", got)
				}
				// a stays down for a minute of failing probes, then heals.
				time.Sleep(time.Minute)
				synctest.Wait()
				if got := e.w.Active(); got != "b" {
					t.Fatalf("Active() while a is still down = %q, want b", got)
				}
				failedProbes := e.a.Calls(kektest.OpKeyInfo) - DefaultBreakerThreshold
				if failedProbes < 3 || failedProbes > 8 {
					t.Fatalf("a was probed %d times in a minute of outage, want a few (backoff 1s, 2s, 4s... up to 30s)", failedProbes)
				}
				e.a.SetError(kektest.OpAny, nil)
				healed := time.Now()
				before := e.a.Calls(kektest.OpKeyInfo)
				for time.Since(healed) < 10*time.Minute && e.w.Active() != "a" {
					time.Sleep(time.Second)
					synctest.Wait()
				}
				if got := e.w.Active(); got != "a" {
					t.Fatalf("Active() 10 minutes after a healed = %q, want a", got)
				}
				if got := e.a.Calls(kektest.OpKeyInfo) - before; got != failBackAfter {
					t.Fatalf("failed back after %d successful probes, want FailBackAfter = %d", got, failBackAfter)
				}
				if took := time.Since(healed); took < time.Duration(failBackAfter-1)*DefaultProbeInterval {
					t.Fatalf("failed back %v after a healed, want at least %d probe intervals", took, failBackAfter-1)
				}
				if sa, sb := e.status(t, "a").Switches, e.status(t, "b").Switches; sa != 1 || sb != 1 {
					t.Fatalf("Switches a, b = %d, %d; want 1, 1", sa, sb)
				}
				want := "region_down:a switch:b<-a region_up:a switch:a<-b"
				if got := strings.Join(e.ev.kinds(), " "); got != want {
					t.Fatalf("events = %s, want %s", got, want)
				}
				// Once back, the preferred region takes the calls.
				before = e.b.Calls(kektest.OpKeyInfo)
				if _, err := e.w.KeyInfo(t.Context()); err != nil || e.b.Calls(kektest.OpKeyInfo) != before {
					t.Fatalf("KeyInfo after fail-back err = %v, b called %d more times; want nil, 0", err, e.b.Calls(kektest.OpKeyInfo)-before)
				}
			})
		})
	}
}

func TestFlappingPrimary(t *testing.T) {
	const outage = 20 * time.Second // a is down at first, so that the wrapper fails over
	tests := []struct {
		name        string
		down        func(since time.Duration, call int64) bool
		maxSwitches int
		stableAfter bool // a is then made stable: the wrapper must fail back
	}{
		{
			name:        "every other call fails",
			down:        func(_ time.Duration, call int64) bool { return call%2 == 0 },
			maxSwitches: 1, // the first failover only: never FailBackAfter probes in a row
		},
		{
			name:        "up two minutes, down one",
			down:        func(since time.Duration, _ int64) bool { return since%(3*time.Minute) < time.Minute },
			maxSwitches: 4, // without damping: two switches every 3 minutes, 40 in the hour
			stableAfter: true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				start := time.Now()
				var calls atomic.Int64
				var stable atomic.Bool
				fa := kektest.NewFake("a", "cmk")
				a := &flappy{Fake: fa, down: func() bool {
					n := calls.Add(1)
					since := time.Since(start)
					switch {
					case since < outage:
						return true
					case stable.Load():
						return false
					}
					return tc.down(since, n)
				}}
				e := newEnv(t, true, func(c *Config) {
					c.Regions[0].Wrapper = a
					c.Regions[1].Wrapper = fa.Replica("b")
				})
				for time.Since(start) < time.Hour {
					if _, err := e.w.KeyInfo(t.Context()); err != nil {
						t.Fatalf("KeyInfo at %v err = %v, want nil: b is always up", time.Since(start), err)
					}
					time.Sleep(5 * time.Second)
				}
				switches := e.ev.count(EventSwitch)
				if switches < 1 || switches > tc.maxSwitches {
					t.Fatalf("%d switches in an hour of flapping (%v), want 1 to %d", switches, e.ev.kinds(), tc.maxSwitches)
				}
				t.Logf("%d switches in an hour: %v", switches, e.ev.kinds())
				if !tc.stableAfter {
					return
				}
				stable.Store(true)
				for i := 0; i < 30 && e.w.Active() != "a"; i++ {
					time.Sleep(time.Minute)
				}
				if got := e.w.Active(); got != "a" {
					t.Fatalf("Active() 30 minutes after a became stable = %q, want a: damping must not prevent fail-back", got)
				}
			})
		})
	}
}
