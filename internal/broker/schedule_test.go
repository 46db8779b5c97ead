package broker

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
	"github.com/keybroker/keybroker/internal/keystore"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

func throttled(retryAfter time.Duration) error {
	return &kek.Error{Kind: kek.KindThrottled, Op: "unwrap", Status: 429, RetryAfter: retryAfter, Err: errors.New("too many requests")}
}

// TestScheduledCheckCalls drives RunChecks with a fake clock and counts the
// vault calls: the first check at the random phase (moved to one interval
// after the start-up load, less jitter, when it comes sooner), then one
// unwrap per interval, the key's info only every KeyInfoInterval (first at a random
// point of it), and after a
// throttled check the next one waits for Retry-After plus jitter.
func TestScheduledCheckCalls(t *testing.T) {
	const interval = time.Minute
	clk := newFakeClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), "RunChecks")
	fake := kektest.NewFake("east", "cmk")
	b := newBrokerOver(t, fake, func(c *Config) {
		c.Now, c.AfterFunc = clk.Now, clk.AfterFunc
		c.KeyInfoInterval = 3 * interval
		c.Rand = func(n time.Duration) time.Duration { return n / 4 }
	})
	unwraps, infos := fake.Calls(kektest.OpUnwrap), fake.Calls(kektest.OpKeyInfo)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.RunChecks(ctx, interval); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if d := clk.waitArmed(t); d != interval*3/4 {
		t.Fatalf("first check armed after %v, want %v (interval minus the jitter)", d, interval*3/4)
	}
	steps := []struct {
		advance              time.Duration
		wantUnwrap, wantInfo int // calls made by this check
		wantNext             time.Duration
	}{
		// The first key-info call is due at a random point of the first
		// KeyInfoInterval: 180s - 45s of jitter = t=135s.
		{interval * 3 / 4, 0, 0, 13500 * time.Millisecond}, // t=45s: the start-up load at t=0 proved the key; moved to 60s after it less 1.5s of jitter
		{13500 * time.Millisecond, 1, 0, interval},         // t=58.5s: within an interval of the load (the revocation bound)
		{interval, 1, 0, interval},                         // t=118.5s
		{interval, 1, 1, interval},                         // t=178.5s: the first key-info call
		{interval, 1, 0, interval},                         // t=238.5s
		{interval, 1, 0, interval},                         // t=298.5s
		{interval, 1, 1, interval},                         // t=358.5s: the info is 180s old
	}
	for i, st := range steps {
		clk.Advance(st.advance)
		next := clk.waitArmed(t)
		u, in := fake.Calls(kektest.OpUnwrap)-unwraps, fake.Calls(kektest.OpKeyInfo)-infos
		unwraps, infos = unwraps+u, infos+in
		if u != st.wantUnwrap || in != st.wantInfo || next != st.wantNext {
			t.Errorf("check %d: %d unwraps, %d key-info calls, next in %v; want %d, %d, %v", i, u, in, next, st.wantUnwrap, st.wantInfo, st.wantNext)
		}
	}
	if s := b.State().State; s != StateServing {
		t.Fatalf("state = %v after passing checks, want SERVING", s)
	}

	fake.FailNext(kektest.OpUnwrap, 1, throttled(90*time.Second))
	clk.Advance(interval)
	if next := clk.waitArmed(t); next != 90*time.Second+interval/8 {
		t.Errorf("after a throttled check the next is in %v, want Retry-After 90s + jitter %v", next, interval/8)
	}
	if u := fake.Calls(kektest.OpUnwrap) - unwraps; u != 1 {
		t.Errorf("throttled check made %d unwraps, want 1 (no retries)", u)
	}
	if ev := b.State(); ev.State != StateDegraded {
		t.Errorf("state after a throttled check = %v, want DEGRADED (never PAUSED)", ev.State)
	}
}

func TestNextWait(t *testing.T) {
	s := newSchedule(Config{Rand: func(n time.Duration) time.Duration { return n / 2 }})
	const iv = time.Minute
	tests := []struct {
		name string
		err  error
		want time.Duration
	}{
		{"passed", nil, iv},
		{"outage", &kek.Error{Kind: kek.KindUnavailable}, iv},
		{"revoked", &kek.Error{Kind: kek.KindRevoked}, iv},
		{"throttled, short Retry-After", throttled(5 * time.Second), iv + iv/4},
		{"throttled, long Retry-After", throttled(5 * time.Minute), 5*time.Minute + iv/4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := s.nextWait(iv, tc.err); got != tc.want {
				t.Errorf("nextWait(%v, %v) = %v, want %v", iv, tc.err, got, tc.want)
			}
		})
	}
}

func TestStartDelay(t *testing.T) {
	s := newSchedule(Config{Rand: func(n time.Duration) time.Duration { return n - 1 }}) // the top of each spread
	tests := []struct {
		attempt int
		err     error
		want    time.Duration
	}{
		{1, throttled(4 * time.Second), 4*time.Second + time.Second + 10*time.Second - 1},
		{2, throttled(4 * time.Second), 4*time.Second + time.Second + 30*time.Second - 1},
		{3, &kek.Error{Kind: kek.KindUnavailable}, time.Second + 90*time.Second - 1},
		{4, nil, time.Second + 270*time.Second - 1},
		{9, nil, time.Second + 5*time.Minute - 1},
	}
	for _, tc := range tests {
		if got := s.startDelay(tc.attempt, tc.err); got != tc.want {
			t.Errorf("startDelay(%d, %v) = %v, want %v", tc.attempt, tc.err, got, tc.want)
		}
	}
}

// TestWarmUntilLoaded: a start-up whose unwraps are throttled retries with
// jittered backoff honouring Retry-After until it succeeds; meanwhile the
// broker is DEGRADED, watchers hear why, and GetMasterKey answers
// UNAVAILABLE without a Key Vault call of its own.
func TestWarmUntilLoaded(t *testing.T) {
	ctx := context.Background()
	clk := newFakeClock(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), "WarmUntilLoaded")
	fake := kektest.NewFake("east", "cmk")
	store, err := keystore.Create(filepath.Join(t.TempDir(), "keystore"), keystore.Options{})
	if err != nil {
		t.Fatalf("keystore.Create err = %v", err)
	}
	t.Cleanup(func() { store.Close() })
	v, err := NewVersion(ctx, fake)
	if err != nil {
		t.Fatalf("NewVersion err = %v", err)
	}
	if _, err := store.CreateKey(DefaultKeyName, keystore.StateActive, v); err != nil {
		t.Fatalf("CreateKey err = %v", err)
	}
	b, err := New(Config{Store: store, Wrapper: fake, Now: clk.Now, AfterFunc: clk.AfterFunc,
		Rand: func(n time.Duration) time.Duration { return n / 2 }})
	if err != nil {
		t.Fatalf("New err = %v", err)
	}
	t.Cleanup(b.Close)
	w := b.hub.subscribe()
	defer b.hub.unsubscribe(w)
	nextEvent(t, w) // CURRENT

	base := fake.Calls(kektest.OpUnwrap)
	fake.FailNext(kektest.OpUnwrap, 2, throttled(3*time.Second))
	done := make(chan error, 1)
	go func() { done <- b.WarmUntilLoaded(ctx, nil) }()

	if d := clk.waitArmed(t); d != 3*time.Second+time.Second+5*time.Second {
		t.Fatalf("first retry in %v, want Retry-After 3s + 1s + half of the 10s spread", d)
	}
	if ev := nextEvent(t, w); ev.Kind != EventDegraded {
		t.Errorf("watch event after a throttled start = %+v, want DEGRADED", ev)
	}
	if r := b.State().Reason; !strings.Contains(r, "throttling") || !strings.Contains(r, "until it succeeds") {
		t.Errorf("DEGRADED reason = %q, want it to say Key Vault is throttling and the broker retries until it succeeds", r)
	}
	_, err = b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "retry this call later") {
		t.Errorf("GetMasterKey while starting = %v, want UNAVAILABLE saying to retry later", err)
	}
	if n := fake.Calls(kektest.OpUnwrap) - base; n != 1 {
		t.Errorf("%d unwraps after GetMasterKey during the backoff, want 1 (the engine's call makes none)", n)
	}

	clk.Advance(9 * time.Second) // attempt 2: throttled again
	if d := clk.waitArmed(t); d != 3*time.Second+time.Second+15*time.Second {
		t.Fatalf("second retry in %v, want Retry-After 3s + 1s + half of the 30s spread", d)
	}
	clk.Advance(19 * time.Second) // attempt 3 succeeds
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("WarmUntilLoaded err = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("WarmUntilLoaded did not return within 10s of a successful attempt")
	}
	if n := fake.Calls(kektest.OpUnwrap) - base; n != 3 {
		t.Errorf("%d unwraps in all, want 3", n)
	}
	if ev := nextEvent(t, w); ev.Kind != EventServing || !strings.Contains(ev.Reason, "attempt 3") {
		t.Errorf("watch event after loading = %+v, want SERVING naming attempt 3", ev)
	}
	if _, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); err != nil {
		t.Errorf("GetMasterKey after start-up err = %v, want nil", err)
	}
	if n := fake.Calls(kektest.OpUnwrap) - base; n != 3 {
		t.Errorf("%d unwraps after GetMasterKey, want 3 (served from memory)", n)
	}
}
