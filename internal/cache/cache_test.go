package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/secret"
)

// fakeClock is a settable Config.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// keyRing makes real random 256-bit keys and remembers every one, so a test
// can check that all of them were wiped.
type keyRing struct {
	mu    sync.Mutex
	keys  []*secret.Bytes
	plain [][]byte // copies, for leak checks
}

func (r *keyRing) New(t testing.TB) *secret.Bytes {
	t.Helper()
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("rand.Read() err = %v", err)
	}
	b[0] |= 1 // never all zeros, so "wiped" is unambiguous
	k := secret.New(b)
	r.mu.Lock()
	r.keys = append(r.keys, k)
	r.plain = append(r.plain, b)
	r.mu.Unlock()
	return k
}

func (r *keyRing) All() []*secret.Bytes {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.keys)
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// assertWiped checks the buffer itself, not just the flag.
func assertWiped(t *testing.T, what string, k *secret.Bytes) {
	t.Helper()
	if !k.Wiped() {
		t.Errorf("%s: Wiped() = false, want true", what)
	}
	if !isZero(k.Raw()) {
		t.Errorf("%s: buffer not zero after wipe", what)
	}
	if k.Bytes() != nil {
		t.Errorf("%s: Bytes() != nil after wipe", what)
	}
}

func assertLive(t *testing.T, what string, k *secret.Bytes) {
	t.Helper()
	if k.Wiped() || isZero(k.Raw()) {
		t.Errorf("%s: key wiped, want it live", what)
	}
}

// evictLog records OnEvict calls.
type evictLog struct {
	mu  sync.Mutex
	got []string
}

func (l *evictLog) hook(id string, r EvictReason) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.got = append(l.got, id+":"+r.String())
}

func (l *evictLog) list() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.got)
}

var (
	errOutage  = &kek.Error{Kind: kek.KindUnavailable, Op: "unwrap", Region: "westeurope", Status: 503}
	errThrottl = &kek.Error{Kind: kek.KindThrottled, Op: "unwrap", Status: 429}
	errRevoked = &kek.Error{Kind: kek.KindRevoked, Op: "unwrap", Code: "KeyDisabled", Status: 403}
	errGone    = &kek.Error{Kind: kek.KindNotFound, Op: "unwrap", Code: "KeyNotFound", Status: 404}
	errOther   = errors.New("keystore: checksum mismatch")
)

func TestGetLoadsThenHits(t *testing.T) {
	var ring keyRing
	var loads atomic.Int32
	c := New(Config{Now: newClock().Now}, func(ctx context.Context, id string) (*secret.Bytes, error) {
		loads.Add(1)
		return ring.New(t), nil
	})
	defer c.Close()
	ctx := context.Background()

	k1, err := c.Get(ctx, "mk1")
	if err != nil {
		t.Fatalf("Get(ctx, mk1) err = %v, want nil", err)
	}
	k2, info, err := c.GetInfo(ctx, "mk1")
	if err != nil {
		t.Fatalf("GetInfo(ctx, mk1) err = %v, want nil", err)
	}
	if k1 != k2 {
		t.Errorf("second Get(ctx, mk1) returned another key, want the cached one")
	}
	if info.Stale {
		t.Errorf("GetInfo(ctx, mk1).Stale = true, want false")
	}
	if n := loads.Load(); n != 1 {
		t.Errorf("load calls = %d, want 1", n)
	}
	want := Stats{Hits: 1, Misses: 1, Loads: 1}
	if got := c.Stats(); got != want {
		t.Errorf("Stats() = %+v, want %+v", got, want)
	}
	if got := c.Keys(); !slices.Equal(got, []string{"mk1"}) {
		t.Errorf("Keys() = %v, want [mk1]", got)
	}
	if got := c.Len(); got != 1 {
		t.Errorf("Len() = %d, want 1", got)
	}
}

func TestGetRejects(t *testing.T) {
	noLoader := New(Config{}, nil)
	defer noLoader.Close()
	closed := New(Config{}, func(ctx context.Context, id string) (*secret.Bytes, error) { return nil, errOther })
	closed.Close()
	var ring keyRing
	tests := []struct {
		name string
		c    *Cache
		id   string
		load func(ctx context.Context, id string) (*secret.Bytes, error)
		want error
	}{
		{"empty id", noLoader, "", nil, ErrInvalidKey},
		{"no loader", noLoader, "mk1", nil, ErrNoLoader},
		{"closed", closed, "mk1", nil, ErrClosed},
		{"loader returns nil, nil", nil, "mk1", func(context.Context, string) (*secret.Bytes, error) { return nil, nil }, ErrInvalidKey},
		{"loader returns empty key", nil, "mk1", func(context.Context, string) (*secret.Bytes, error) { return secret.New(nil), nil }, ErrInvalidKey},
		{"loader returns wiped key", nil, "mk1", func(context.Context, string) (*secret.Bytes, error) {
			k := ring.New(t)
			k.Wipe()
			return k, nil
		}, ErrInvalidKey},
		{"loader error", nil, "mk1", func(context.Context, string) (*secret.Bytes, error) { return nil, errRevoked }, kek.ErrRevoked},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.c
			if c == nil {
				c = New(Config{}, tc.load)
				defer c.Close()
			}
			k, err := c.Get(context.Background(), tc.id)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Get(ctx, %q) err = %v, want %v", tc.id, err, tc.want)
			}
			if k != nil {
				t.Errorf("Get(ctx, %q) returned a key with an error", tc.id)
			}
			if c.Len() != 0 {
				t.Errorf("Len() = %d after a failed Get, want 0", c.Len())
			}
		})
	}
}

func TestLoaderErrorKeyIsWiped(t *testing.T) {
	var ring keyRing
	var leaked *secret.Bytes
	c := New(Config{}, func(context.Context, string) (*secret.Bytes, error) {
		leaked = ring.New(t)
		return leaked, errOutage
	})
	defer c.Close()
	if _, err := c.Get(context.Background(), "mk1"); !errors.Is(err, kek.ErrUnavailable) {
		t.Fatalf("Get(ctx, mk1) err = %v, want %v", err, kek.ErrUnavailable)
	}
	assertWiped(t, "key returned with an error", leaked)
}

func TestLoaderPanicIsAnError(t *testing.T) {
	var ring keyRing
	var calls atomic.Int32
	c := New(Config{}, func(_ context.Context, id string) (*secret.Bytes, error) {
		if calls.Add(1) == 1 {
			var none []byte
			_ = none[len(id)] // index out of range: a runtime panic
		}
		return ring.New(t), nil
	})
	defer c.Close()
	_, err := c.Get(context.Background(), "mk1")
	if err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("Get(ctx, mk1) err = %v, want a panic turned into an error", err)
	}
	if _, err := c.Get(context.Background(), "mk1"); err != nil {
		t.Fatalf("Get(ctx, mk1) after a panic err = %v, want nil", err)
	}
}

// TestSingleFlight makes 1000 concurrent cold Gets for one id and expects one
// load, which blocks until every goroutine has started asking.
func TestSingleFlight(t *testing.T) {
	const n = 1000
	var ring keyRing
	var loads atomic.Int32
	var started atomic.Int32
	allStarted := make(chan struct{})
	c := New(Config{}, func(ctx context.Context, id string) (*secret.Bytes, error) {
		loads.Add(1)
		select {
		case <-allStarted:
		case <-time.After(10 * time.Second):
			return nil, errors.New("test: goroutines did not all start within 10s")
		}
		return ring.New(t), nil
	})
	defer c.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	got := make([]*secret.Bytes, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if started.Add(1) == n {
				close(allStarted)
			}
			got[i], errs[i] = c.Get(ctx, "mk1")
		})
	}
	wg.Wait()
	if l := loads.Load(); l != 1 {
		t.Errorf("load calls for %d concurrent Gets = %d, want 1", n, l)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Get #%d err = %v, want nil", i, errs[i])
		}
		if got[i] != got[0] {
			t.Fatalf("Get #%d returned another key than Get #0", i)
		}
	}
	if s := c.Stats(); s.Loads != 1 || s.Hits+s.Misses != n {
		t.Errorf("Stats() = %+v, want Loads 1 and Hits+Misses %d", s, n)
	}
}

// TestCallerCancelDoesNotCancelLoad: the caller that started a load leaves;
// the load goes on for the others and is cached.
func TestCallerCancelDoesNotCancelLoad(t *testing.T) {
	var ring keyRing
	type ctxKey struct{}
	entered := make(chan struct{})
	release := make(chan struct{})
	loadErr := make(chan error, 1)
	var loads atomic.Int32
	c := New(Config{}, func(ctx context.Context, id string) (*secret.Bytes, error) {
		loads.Add(1)
		close(entered)
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		loadErr <- ctx.Err()
		if ctx.Value(ctxKey{}) != "req-1" {
			return nil, errors.New("test: load context lost the first caller's values")
		}
		return ring.New(t), nil
	})
	defer c.Close()

	ctxA, cancelA := context.WithCancel(context.WithValue(context.Background(), ctxKey{}, "req-1"))
	aDone := make(chan error, 1)
	go func() {
		_, err := c.Get(ctxA, "mk1")
		aDone <- err
	}()
	<-entered
	bDone := make(chan error, 1)
	var bKey *secret.Bytes
	go func() {
		var err error
		bKey, err = c.Get(context.Background(), "mk1")
		bDone <- err
	}()
	cancelA()
	select {
	case err := <-aDone:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled Get err = %v, want %v", err, context.Canceled)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelled Get did not return within 10s")
	}
	close(release)
	if err := <-bDone; err != nil {
		t.Fatalf("other caller's Get err = %v, want nil", err)
	}
	if err := <-loadErr; err != nil {
		t.Errorf("load context err = %v after the first caller left, want nil", err)
	}
	assertLive(t, "key loaded for the remaining caller", bKey)
	if l := loads.Load(); l != 1 {
		t.Errorf("load calls = %d, want 1", l)
	}
}

func TestLoadTimeoutIsOutage(t *testing.T) {
	c := New(Config{LoadTimeout: 20 * time.Millisecond}, func(ctx context.Context, id string) (*secret.Bytes, error) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Second):
			return nil, errors.New("test: load context had no deadline")
		}
	})
	defer c.Close()
	_, err := c.Get(context.Background(), "mk1")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Get(ctx, mk1) err = %v, want %v", err, context.DeadlineExceeded)
	}
	if k := kek.KindOf(err); !k.IsOutage() {
		t.Errorf("KindOf(Get err) = %v, want an outage kind", k)
	}
}

// TestReloadPastTTL drives each outcome of a reload with the fake clock.
func TestReloadPastTTL(t *testing.T) {
	const (
		ttl      = time.Hour
		maxStale = 30 * time.Minute
	)
	tests := []struct {
		name      string
		maxStale  time.Duration
		advance   time.Duration
		reloadErr error
		wantErr   error // nil: served
		wantStale bool
		wantEvict string // OnEvict record, "" for none
	}{
		{"success replaces", maxStale, ttl, nil, nil, false, "mk1:replaced"},
		{"unavailable within MaxStale serves stale", maxStale, ttl + maxStale - time.Second, errOutage, nil, true, ""},
		{"throttled within MaxStale serves stale", maxStale, ttl, errThrottl, nil, true, ""},
		{"unavailable past MaxStale wipes", maxStale, ttl + maxStale, errOutage, kek.ErrUnavailable, false, "mk1:expired"},
		{"unavailable with no MaxStale wipes", 0, ttl, errOutage, kek.ErrUnavailable, false, "mk1:expired"},
		{"revoked wipes", maxStale, ttl, errRevoked, kek.ErrRevoked, false, "mk1:load_failed"},
		{"not found wipes", maxStale, ttl, errGone, kek.ErrNotFound, false, "mk1:load_failed"},
		{"other error wipes", maxStale, ttl, errOther, errOther, false, "mk1:load_failed"},
		{"just before TTL is fresh", maxStale, ttl - time.Nanosecond, errRevoked, nil, false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ring keyRing
			clock := newClock()
			var evicts evictLog
			var loads atomic.Int32
			c := New(Config{TTL: ttl, MaxStale: tc.maxStale, Now: clock.Now, OnEvict: evicts.hook},
				func(ctx context.Context, id string) (*secret.Bytes, error) {
					if loads.Add(1) > 1 && tc.reloadErr != nil {
						return nil, tc.reloadErr
					}
					return ring.New(t), nil
				})
			defer c.Close()
			ctx := context.Background()
			first, err := c.Get(ctx, "mk1")
			if err != nil {
				t.Fatalf("first Get(ctx, mk1) err = %v, want nil", err)
			}
			loadedAt := clock.Now()
			clock.Advance(tc.advance)

			got, info, err := c.GetInfo(ctx, "mk1")
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("GetInfo(ctx, mk1) after %v err = %v, want %v", tc.advance, err, tc.wantErr)
			}
			if info.Stale != tc.wantStale {
				t.Errorf("GetInfo(ctx, mk1).Stale = %v, want %v", info.Stale, tc.wantStale)
			}
			if tc.wantStale && !errors.Is(info.ReloadErr, tc.reloadErr) {
				t.Errorf("GetInfo(ctx, mk1).ReloadErr = %v, want %v", info.ReloadErr, tc.reloadErr)
			}
			if gotEv := evicts.list(); tc.wantEvict == "" && len(gotEv) != 0 || tc.wantEvict != "" && !slices.Equal(gotEv, []string{tc.wantEvict}) {
				t.Errorf("OnEvict calls = %v, want [%s]", gotEv, tc.wantEvict)
			}
			switch {
			case tc.wantErr != nil:
				assertWiped(t, "key after a failed reload", first)
				if got != nil {
					t.Errorf("GetInfo returned a key with err = %v", err)
				}
				if c.Len() != 0 {
					t.Errorf("Len() = %d after a failed reload, want 0", c.Len())
				}
			case tc.wantStale || tc.advance < ttl:
				if got != first {
					t.Errorf("GetInfo returned another key, want the cached one")
				}
				if !info.LoadedAt.Equal(loadedAt) {
					t.Errorf("GetInfo(ctx, mk1).LoadedAt = %v, want %v", info.LoadedAt, loadedAt)
				}
				assertLive(t, "served key", first)
			default:
				if got == first {
					t.Errorf("GetInfo returned the old key after a successful reload")
				}
				assertWiped(t, "replaced key", first)
				assertLive(t, "new key", got)
			}
		})
	}
}

// TestStaleServingBacksOffAndRecovers: during an outage a stale key is served
// without a load on every Get, then replaced once the vault answers again,
// and never served past TTL+MaxStale.
func TestStaleServingBacksOffAndRecovers(t *testing.T) {
	var ring keyRing
	clock := newClock()
	var down atomic.Bool
	var loads atomic.Int32
	c := New(Config{TTL: time.Hour, MaxStale: time.Hour, StaleRetry: time.Minute, Now: clock.Now},
		func(ctx context.Context, id string) (*secret.Bytes, error) {
			loads.Add(1)
			if down.Load() {
				return nil, errOutage
			}
			return ring.New(t), nil
		})
	defer c.Close()
	ctx := context.Background()
	first, err := c.Get(ctx, "mk1")
	if err != nil {
		t.Fatalf("Get(ctx, mk1) err = %v, want nil", err)
	}

	down.Store(true)
	clock.Advance(time.Hour)
	for i := range 5 {
		k, info, err := c.GetInfo(ctx, "mk1")
		if err != nil || k != first || !info.Stale {
			t.Fatalf("GetInfo #%d during outage = (same key %v, stale %v, err %v), want the stale key", i, k == first, info.Stale, err)
		}
	}
	if l := loads.Load(); l != 2 {
		t.Errorf("load calls after 5 stale Gets within StaleRetry = %d, want 2", l)
	}
	clock.Advance(time.Minute)
	if _, info, err := c.GetInfo(ctx, "mk1"); err != nil || !info.Stale {
		t.Fatalf("GetInfo after StaleRetry = (stale %v, err %v), want stale, nil", info.Stale, err)
	}
	if l := loads.Load(); l != 3 {
		t.Errorf("load calls after StaleRetry = %d, want 3", l)
	}
	if s := c.Stats(); s.StaleServes != 6 || s.LoadErrors != 2 {
		t.Errorf("Stats() = %+v, want StaleServes 6, LoadErrors 2", s)
	}

	down.Store(false)
	clock.Advance(time.Minute)
	k, info, err := c.GetInfo(ctx, "mk1")
	if err != nil || info.Stale || k == first {
		t.Fatalf("GetInfo after recovery = (new key %v, stale %v, err %v), want a fresh key", k != first, info.Stale, err)
	}
	assertWiped(t, "stale key after recovery", first)

	// A second outage that outlasts MaxStale.
	down.Store(true)
	clock.Advance(time.Hour)
	if _, info, err := c.GetInfo(ctx, "mk1"); err != nil || !info.Stale {
		t.Fatalf("GetInfo in second outage = (stale %v, err %v), want stale, nil", info.Stale, err)
	}
	clock.Advance(time.Hour) // exactly TTL+MaxStale: past the bound, even within StaleRetry
	if _, err := c.Get(ctx, "mk1"); !errors.Is(err, kek.ErrUnavailable) {
		t.Fatalf("Get past TTL+MaxStale err = %v, want %v", err, kek.ErrUnavailable)
	}
	assertWiped(t, "key past TTL+MaxStale", k)
}

// TestHardBound: the LRU drops a key TTL+MaxStale after it was stored, in
// real time, with nobody calling Get.
func TestHardBound(t *testing.T) {
	var ring keyRing
	var evicts evictLog
	c := New(Config{TTL: 60 * time.Millisecond, MaxStale: 40 * time.Millisecond, OnEvict: evicts.hook}, nil)
	defer c.Close()
	k := ring.New(t)
	if err := c.Put("mk1", k); err != nil {
		t.Fatalf("Put(mk1) err = %v, want nil", err)
	}
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for c.Len() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("Len() = %d 5s after a 100ms hard bound, want 0", c.Len())
		}
		<-tick.C
	}
	assertWiped(t, "key past the hard bound", k)
	if got := evicts.list(); !slices.Equal(got, []string{"mk1:expired"}) {
		t.Errorf("OnEvict calls = %v, want [mk1:expired]", got)
	}
}

func TestCapacityEviction(t *testing.T) {
	var ring keyRing
	var evicts evictLog
	c := New(Config{Size: 2, OnEvict: evicts.hook}, nil)
	defer c.Close()
	keys := []*secret.Bytes{ring.New(t), ring.New(t), ring.New(t)}
	for i, k := range keys {
		if err := c.Put(fmt.Sprintf("mk%d", i), k); err != nil {
			t.Fatalf("Put(mk%d) err = %v, want nil", i, err)
		}
	}
	assertWiped(t, "least recently used key", keys[0])
	assertLive(t, "mk1", keys[1])
	assertLive(t, "mk2", keys[2])
	if got := c.Keys(); !slices.Equal(got, []string{"mk1", "mk2"}) {
		t.Errorf("Keys() = %v, want [mk1 mk2]", got)
	}
	if got := evicts.list(); !slices.Equal(got, []string{"mk0:capacity"}) {
		t.Errorf("OnEvict calls = %v, want [mk0:capacity]", got)
	}
	if got := c.Stats().Evictions; got != 1 {
		t.Errorf("Stats().Evictions = %d, want 1", got)
	}
}

// TestWipedWhenLeaving checks the buffers themselves after each way out.
func TestWipedWhenLeaving(t *testing.T) {
	tests := []struct {
		name      string
		leave     func(c *Cache, ring *keyRing) // acts on keys mk1 and mk2
		wantGone  []string                      // ids whose first key must be wiped
		wantEvict []string
	}{
		{"Put replaces", func(c *Cache, ring *keyRing) { _ = c.Put("mk1", ring.New(t)) }, []string{"mk1"}, []string{"mk1:replaced"}},
		{"Remove", func(c *Cache, _ *keyRing) { c.Remove("mk2") }, []string{"mk2"}, []string{"mk2:removed"}},
		{"Purge", func(c *Cache, _ *keyRing) { c.Purge() }, []string{"mk1", "mk2"}, []string{"mk1:purged", "mk2:purged"}},
		{"Close", func(c *Cache, _ *keyRing) { c.Close() }, []string{"mk1", "mk2"}, []string{"mk1:closed", "mk2:closed"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ring keyRing
			var evicts evictLog
			c := New(Config{OnEvict: evicts.hook}, nil)
			defer c.Close()
			first := map[string]*secret.Bytes{"mk1": ring.New(t), "mk2": ring.New(t)}
			for _, id := range []string{"mk1", "mk2"} {
				if err := c.Put(id, first[id]); err != nil {
					t.Fatalf("Put(%s) err = %v, want nil", id, err)
				}
			}
			tc.leave(c, &ring)
			for id, k := range first {
				if slices.Contains(tc.wantGone, id) {
					assertWiped(t, id, k)
				} else {
					assertLive(t, id, k)
				}
			}
			got := evicts.list()
			slices.Sort(got)
			if !slices.Equal(got, tc.wantEvict) {
				t.Errorf("OnEvict calls = %v, want %v", got, tc.wantEvict)
			}
		})
	}
}

func TestPut(t *testing.T) {
	var ring keyRing
	c := New(Config{}, nil)
	defer c.Close()

	k := ring.New(t)
	if err := c.Put("mk1", k); err != nil {
		t.Fatalf("Put(mk1) err = %v, want nil", err)
	}
	if err := c.Put("mk1", k); err != nil {
		t.Fatalf("Put(mk1) of the same key again err = %v, want nil", err)
	}
	assertLive(t, "key put twice", k)
	got, err := c.Get(context.Background(), "mk1")
	if err != nil || got != k {
		t.Fatalf("Get(ctx, mk1) = (same %v, %v), want the put key", got == k, err)
	}

	wiped := ring.New(t)
	wiped.Wipe()
	noID := ring.New(t)
	tests := []struct {
		name string
		id   string
		key  *secret.Bytes
	}{
		{"nil key", "mk2", nil},
		{"empty key", "mk2", secret.New(nil)},
		{"wiped key", "mk2", wiped},
		{"empty id", "", noID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := c.Put(tc.id, tc.key); !errors.Is(err, ErrInvalidKey) {
				t.Errorf("Put(%q) err = %v, want %v", tc.id, err, ErrInvalidKey)
			}
		})
	}
	assertWiped(t, "key refused for an empty id", noID)

	c.Close()
	late := ring.New(t)
	if err := c.Put("mk3", late); !errors.Is(err, ErrClosed) {
		t.Errorf("Put after Close err = %v, want %v", err, ErrClosed)
	}
	assertWiped(t, "key put after Close", late)
	c.Close() // twice is fine
}

// TestRemovedWhileLoading: a key being loaded when the cache is purged (a
// pause), the id removed, or the cache closed is wiped, not stored.
func TestRemovedWhileLoading(t *testing.T) {
	tests := []struct {
		name string
		act  func(c *Cache)
		want error
	}{
		{"Purge", func(c *Cache) { c.Purge() }, ErrPurged},
		{"Remove", func(c *Cache) { c.Remove("mk1") }, ErrPurged},
		{"Close", func(c *Cache) { c.Close() }, ErrClosed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ring keyRing
			entered := make(chan struct{})
			release := make(chan struct{})
			var loaded *secret.Bytes
			c := New(Config{}, func(ctx context.Context, id string) (*secret.Bytes, error) {
				close(entered)
				select {
				case <-release:
				case <-time.After(10 * time.Second):
				}
				loaded = ring.New(t)
				return loaded, nil
			})
			defer c.Close()
			done := make(chan error, 1)
			go func() {
				_, err := c.Get(context.Background(), "mk1")
				done <- err
			}()
			<-entered
			tc.act(c)
			close(release)
			if err := <-done; !errors.Is(err, tc.want) {
				t.Fatalf("Get(ctx, mk1) err = %v, want %v", err, tc.want)
			}
			assertWiped(t, "key loaded across "+tc.name, loaded)
			if c.Len() != 0 {
				t.Errorf("Len() = %d, want 0", c.Len())
			}
		})
	}
}

func TestUseRetriesAfterWipe(t *testing.T) {
	tests := []struct {
		name      string
		wipes     int // how many lookups are followed by a wipe
		wantErr   error
		wantLoads int32
	}{
		{"no wipe", 0, nil, 1},
		{"wiped once", 1, nil, 2},
		{"wiped every time", 100, ErrWiped, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var ring keyRing
			var loads atomic.Int32
			c := New(Config{}, func(context.Context, string) (*secret.Bytes, error) {
				loads.Add(1)
				return ring.New(t), nil
			})
			defer c.Close()
			left := tc.wipes
			c.afterLookup = func() {
				if left > 0 {
					left--
					c.Remove("mk1")
				}
			}
			var seen []byte
			_, err := c.Use(context.Background(), "mk1", func(key []byte) { seen = slices.Clone(key) })
			if !errors.Is(err, tc.wantErr) || (err == nil) != (tc.wantErr == nil) {
				t.Fatalf("Use(ctx, mk1) err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr == nil && (len(seen) != 32 || isZero(seen)) {
				t.Errorf("Use(ctx, mk1) saw a %d-byte key (zero: %v), want a live 32-byte key", len(seen), isZero(seen))
			}
			if l := loads.Load(); l != tc.wantLoads {
				t.Errorf("load calls = %d, want %d", l, tc.wantLoads)
			}
		})
	}
}

// TestCallerWipeIsRecovered: a caller that wipes the key it was lent (a
// misuse) does not leave a dead key in the cache.
func TestCallerWipeIsRecovered(t *testing.T) {
	var ring keyRing
	c := New(Config{}, func(context.Context, string) (*secret.Bytes, error) { return ring.New(t), nil })
	defer c.Close()
	k, err := c.Get(context.Background(), "mk1")
	if err != nil {
		t.Fatalf("Get(ctx, mk1) err = %v, want nil", err)
	}
	k.Wipe()
	k2, err := c.Get(context.Background(), "mk1")
	if err != nil || k2 == k {
		t.Fatalf("Get after the caller wiped the key = (same %v, %v), want a fresh key", k2 == k, err)
	}
	assertLive(t, "reloaded key", k2)
}

// TestNoKeyBytesInLogsOrErrors runs the noisy paths with a debug logger and
// looks for every key made, raw and encoded, in the logs and errors.
func TestNoKeyBytesInLogsOrErrors(t *testing.T) {
	var ring keyRing
	var logs bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	clock := newClock()
	var fail atomic.Pointer[error]
	c := New(Config{Size: 2, TTL: time.Hour, MaxStale: time.Hour, Now: clock.Now, Logger: logger},
		func(context.Context, string) (*secret.Bytes, error) {
			if p := fail.Load(); p != nil {
				return nil, *p
			}
			return ring.New(t), nil
		})
	ctx := context.Background()
	var out strings.Builder
	note := func(k *secret.Bytes, err error) {
		if err != nil {
			out.WriteString(err.Error() + "\n")
		}
		if k != nil {
			fmt.Fprintf(&out, "%v %+v %#v %s\n", k, k, k, k)
		}
	}
	for _, id := range []string{"mk1", "mk2", "mk3"} { // mk1 evicted for capacity
		note(c.Get(ctx, id))
	}
	clock.Advance(time.Hour)
	outage, revoked := error(errOutage), error(errRevoked)
	fail.Store(&outage)
	note(c.Get(ctx, "mk3")) // stale
	fail.Store(&revoked)
	clock.Advance(2 * time.Hour)
	note(c.Get(ctx, "mk2")) // wiped on revocation
	c.Close()

	all := logs.String() + out.String()
	for _, want := range []string{"serving the key past its TTL", "key wiped", "key_id"} {
		if !strings.Contains(all, want) {
			t.Errorf("logs lack %q; the test would prove nothing:\n%s", want, all)
		}
	}
	for i, key := range ring.plain {
		for _, enc := range []string{string(key), hex.EncodeToString(key), base64.StdEncoding.EncodeToString(key),
			base64.RawStdEncoding.EncodeToString(key[:12]), fmt.Sprint(key[:8])} {
			if strings.Contains(all, enc) {
				t.Errorf("logs or errors contain key %d (as %q)", i, enc)
			}
		}
	}
}

// TestPutDuringFailingLoad: a key put while a load of the same id fails is
// served rather than the load's error.
func TestPutDuringFailingLoad(t *testing.T) {
	var ring keyRing
	entered := make(chan struct{})
	release := make(chan struct{})
	c := New(Config{}, func(context.Context, string) (*secret.Bytes, error) {
		close(entered)
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		return nil, errOutage
	})
	defer c.Close()
	type got struct {
		k   *secret.Bytes
		err error
	}
	done := make(chan got, 1)
	go func() {
		k, err := c.Get(context.Background(), "mk1")
		done <- got{k, err}
	}()
	<-entered
	put := ring.New(t)
	if err := c.Put("mk1", put); err != nil {
		t.Fatalf("Put(mk1) err = %v, want nil", err)
	}
	close(release)
	r := <-done
	if r.err != nil || r.k != put {
		t.Fatalf("Get(ctx, mk1) = (the put key %v, %v), want the put key, nil", r.k == put, r.err)
	}
	assertLive(t, "put key", put)
}

func TestTinyTTLDoesNotPanic(t *testing.T) {
	c := New(Config{TTL: time.Nanosecond}, func(context.Context, string) (*secret.Bytes, error) {
		return secret.New([]byte("k")), nil
	})
	defer c.Close()
	if _, err := c.Get(context.Background(), "id"); err != nil {
		t.Fatalf("Get with a 1ns TTL err = %v, want nil", err)
	}
}
