package failover

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
)

func unavailable(region string) *kek.Error {
	return &kek.Error{Kind: kek.KindUnavailable, Op: "test", Region: region, Status: 503, Code: "ServiceUnavailable", Err: errors.New("injected 503")}
}

func revoked(region string) *kek.Error {
	return &kek.Error{Kind: kek.KindRevoked, Op: "test", Region: region, Status: 403, Code: "ForbiddenByRbac", Err: errors.New("injected 403")}
}

func notFound(region string) *kek.Error {
	return &kek.Error{Kind: kek.KindNotFound, Op: "test", Region: region, Status: 404, Code: "KeyNotFound", Err: errors.New("injected 404")}
}

func throttled(region string, after time.Duration) *kek.Error {
	return &kek.Error{Kind: kek.KindThrottled, Op: "test", Region: region, Status: 429, RetryAfter: after, Err: errors.New("injected 429")}
}

// events records what the wrapper reports through OnEvent.
type events struct {
	mu  sync.Mutex
	all []Event
}

func (e *events) add(ev Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

func (e *events) count(k EventKind) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, ev := range e.all {
		if ev.Kind == k {
			n++
		}
	}
	return n
}

func (e *events) kinds() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []string
	for _, ev := range e.all {
		s := ev.Kind.String() + ":" + ev.Region
		if ev.From != "" {
			s += "<-" + ev.From
		}
		out = append(out, s)
	}
	return out
}

// env is a two-region wrapper over Fakes: a preferred, b secondary.
type env struct {
	a, b *kektest.Fake
	w    *Wrapper
	ev   *events
	key  []byte
}

// newEnv builds an env; shared makes b a replica of a's key. It must be
// called inside the synctest bubble when the test uses one, so that the
// prober belongs to it.
func newEnv(t *testing.T, shared bool, mod func(*Config)) *env {
	t.Helper()
	a := kektest.NewFake("a", "cmk")
	b := kektest.NewFake("b", "cmk")
	if shared {
		b = a.Replica("b")
	}
	e := &env{a: a, b: b, ev: &events{}, key: bytes.Repeat([]byte{0x5a}, 32)}
	cfg := Config{
		Regions: []Region{{Name: "a", Wrapper: a}, {Name: "b", Wrapper: b}},
		OnEvent: e.ev.add,
	}
	if mod != nil {
		mod(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatalf("New(cfg) err = %v, want nil", err)
	}
	t.Cleanup(func() { _ = w.Close() })
	e.w = w
	return e
}

// copiesOf wraps the env's key with a region's Fake directly, so that the
// wrapper's health is untouched.
func (e *env) copiesOf(t *testing.T, f *kektest.Fake) []kek.Wrapped {
	t.Helper()
	c, err := f.WrapKey(context.Background(), e.key)
	if err != nil {
		t.Fatalf("%s.WrapKey err = %v, want nil", f.Region(), err)
	}
	return c
}

func (e *env) status(t *testing.T, name string) RegionStatus {
	t.Helper()
	for _, s := range e.w.Status() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("Status() has no region %q", name)
	return RegionStatus{}
}

// flappy is a region whose health follows down(): when it returns true
// every call fails with a 503.
type flappy struct {
	*kektest.Fake
	down func() bool
}

func (f *flappy) WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
	if f.down() {
		return nil, unavailable(f.Region())
	}
	return f.Fake.WrapKey(ctx, key)
}

func (f *flappy) UnwrapKey(ctx context.Context, c []kek.Wrapped) ([]byte, error) {
	if f.down() {
		return nil, unavailable(f.Region())
	}
	return f.Fake.UnwrapKey(ctx, c)
}

func (f *flappy) KeyInfo(ctx context.Context) (kek.KeyInfo, error) {
	if f.down() {
		return kek.KeyInfo{}, unavailable(f.Region())
	}
	return f.Fake.KeyInfo(ctx)
}

// panicky is a region whose wrapper panics.
type panicky struct{}

func (panicky) WrapKey(context.Context, []byte) ([]kek.Wrapped, error)   { panic("boom") }
func (panicky) UnwrapKey(context.Context, []kek.Wrapped) ([]byte, error) { panic("boom") }
func (panicky) KeyInfo(context.Context) (kek.KeyInfo, error)             { panic("boom") }

// manualClock is a clock for Config.Now and Config.AfterFunc that moves
// only when told, to show that the wrapper uses them rather than the time
// package.
type manualClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*manualTimer
}

type manualTimer struct {
	at      time.Time
	f       func()
	stopped bool
}

func newManualClock() *manualClock {
	return &manualClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &manualTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.stopped
		t.stopped = true
		return was
	}
}

// Advance moves the clock and runs the timers that fall due, each in its
// own goroutine as time.AfterFunc does.
func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []func()
	kept := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.stopped:
		case !t.at.After(c.now):
			t.stopped = true
			due = append(due, t.f)
		default:
			kept = append(kept, t)
		}
	}
	c.timers = kept
	c.mu.Unlock()
	for _, f := range due {
		go f()
	}
}
