// Package cache keeps plaintext master keys in memory for the broker: an LRU
// with a time-to-live (github.com/hashicorp/golang-lru/v2/expirable), loading
// through a single flight per key, and wiping every key it lets go of.
//
// It knows nothing of Azure or gRPC: the broker gives it a load function (in
// practice: read the wrapped key from the keystore and unwrap it with the
// customer-managed key) and the cache decides when to call it.
//
// Freshness is decided with Config.Now, so tests can drive it with a fake
// clock. Independently of that clock, the LRU drops every entry TTL+MaxStale
// after it was stored, in real time, even if nobody asks for it again: that is
// the hard bound on how long a key stays in memory.
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/sync/singleflight"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/secret"
)

// Defaults for the zero values of Config.
const (
	DefaultSize        = 64
	DefaultTTL         = time.Hour
	DefaultStaleRetry  = 10 * time.Second
	DefaultLoadTimeout = 30 * time.Second
)

// Errors returned, wrapped with details, by the Cache.
var (
	// ErrClosed means the cache was closed; its keys are wiped.
	ErrClosed = errors.New("cache: closed")
	// ErrPurged means the key was removed or purged (a pause) while it was
	// loading, so the loaded copy was wiped instead of served.
	ErrPurged = errors.New("cache: key removed while it was loading")
	// ErrWiped means the key kept being wiped between lookup and use.
	ErrWiped = errors.New("cache: key wiped while in use")
	// ErrInvalidKey means a key id or key is empty, or a key is already wiped.
	ErrInvalidKey = errors.New("cache: invalid key")
	// ErrNoLoader means the cache was built without a load function.
	ErrNoLoader = errors.New("cache: no load function")
)

// Config configures a Cache. A Config is not changed after it is passed to New.
type Config struct {
	// Size is the maximum number of keys held; 0 (or less) means DefaultSize.
	Size int
	// TTL is how long a loaded key is served before it is loaded again;
	// 0 (or less) means DefaultTTL.
	TTL time.Duration
	// MaxStale is how long past TTL a key may still be served when loading
	// it again fails with an outage error (kek.Kind.IsOutage: throttled or
	// unavailable). 0 (or less) means never serve a stale key.
	MaxStale time.Duration
	// StaleRetry is how long a stale key is served without trying to load it
	// again after a failed attempt, so that an outage does not put a load on
	// every request; 0 (or less) means DefaultStaleRetry.
	StaleRetry time.Duration
	// LoadTimeout bounds one call of the load function; 0 (or less) means
	// DefaultLoadTimeout. A load that times out counts as an outage.
	LoadTimeout time.Duration
	// Now is the clock for TTL and MaxStale decisions; nil means time.Now.
	Now func() time.Time
	// OnEvict, if set, is called once for every key the cache wipes, for
	// metrics. It may run on the LRU's own goroutine with the LRU locked:
	// it must return quickly and must not call the Cache.
	OnEvict func(id string, reason EvictReason)
	// Logger receives load failures and stale serving; nil means no logs.
	// Key ids are logged, key bytes never.
	Logger *slog.Logger
}

// EvictReason says why the cache wiped a key.
type EvictReason int

// The reasons a key leaves the cache.
const (
	EvictCapacity   EvictReason = iota + 1 // the least recently used key made room
	EvictExpired                           // past TTL+MaxStale (the hard bound), or past TTL when a reload failed
	EvictReplaced                          // a reload or Put stored a newer copy
	EvictRemoved                           // Remove
	EvictLoadFailed                        // a reload failed with a non-outage error (revocation, not found, ...)
	EvictPurged                            // Purge
	EvictClosed                            // Close
)

// String returns a short lower-case name, fit for a metric attribute.
func (r EvictReason) String() string {
	switch r {
	case EvictCapacity:
		return "capacity"
	case EvictExpired:
		return "expired"
	case EvictReplaced:
		return "replaced"
	case EvictRemoved:
		return "removed"
	case EvictLoadFailed:
		return "load_failed"
	case EvictPurged:
		return "purged"
	case EvictClosed:
		return "closed"
	}
	return "unknown"
}

// Info describes how GetInfo served a key.
type Info struct {
	// Stale is true when the key is past TTL and was served because loading
	// it again failed with an outage error.
	Stale bool
	// LoadedAt is when the key was loaded or put, by Config.Now.
	LoadedAt time.Time
	// ReloadErr is the error the last reload failed with, when Stale.
	ReloadErr error
}

// Stats are cumulative counters since New.
type Stats struct {
	Hits        uint64 // served fresh from memory
	Misses      uint64 // needed a load: absent, past TTL, or wiped
	Loads       uint64 // calls of the load function
	LoadErrors  uint64 // calls of the load function that failed
	StaleServes uint64 // served past TTL because of an outage
	Evictions   uint64 // keys wiped, for any EvictReason (OnEvict calls)
}

// Cache holds master keys by id. It is safe for concurrent use.
//
// Keys handed to the cache, by the load function or by Put, belong to it from
// then on: it wipes them when they leave (eviction, expiry, replacement,
// Remove, Purge, Close). Get returns the cached *secret.Bytes itself rather
// than a copy, so that a wipe reaches every holder and a purged key is gone
// from memory, not just from the map: after Purge or Close every buffer the
// cache ever held is zero. The price is that a returned key can be wiped at
// any moment; Cache.Use does the retry for callers.
type Cache struct {
	lru   *expirable.LRU[string, *entry]
	group singleflight.Group
	load  func(ctx context.Context, id string) (*secret.Bytes, error)

	ttl, maxStale, staleRetry, loadTimeout time.Duration
	maxAge                                 time.Duration // TTL+MaxStale, the hard bound
	now                                    func() time.Time
	onEvict                                func(string, EvictReason)
	log                                    *slog.Logger

	// mu serialises changes to the LRU, so that a replaced key can be
	// found before it is overwritten, and guards inflight. Reads go
	// straight to the LRU, which has its own lock.
	mu       sync.Mutex
	inflight map[string]*flight
	closed   atomic.Bool

	hits, misses, loads, loadErrors, staleServes, evictions atomic.Uint64

	// afterLookup, when set by a test, runs in Use between the lookup and
	// the use of a key, to force the wipe race.
	afterLookup func()
}

// entry is one cached key.
type entry struct {
	key      *secret.Bytes
	loadedAt time.Time // by Config.Now
	// hardExpiry is when the LRU will drop the entry, in real time; it tells
	// an expiry from a capacity eviction in the LRU's callback.
	hardExpiry time.Time
	// reason is set just before the cache removes the entry itself.
	reason  atomic.Int32
	retired atomic.Bool
	stale   atomic.Pointer[staleState]
}

// staleState records a failed reload of an entry being served stale.
type staleState struct {
	retryAt time.Time
	err     error
}

// flight is one running load; Remove, Purge and Close cancel it so that a
// key loaded across a pause is not stored.
type flight struct{ cancelled bool }

// result is what one load hands to every caller waiting on it.
type result struct {
	e     *entry
	stale bool
	err   error // the reload error, when stale
}

// New returns a cache that loads missing or expired keys with load. load is
// called with a context that keeps the first caller's values but not its
// cancellation, bounded by Config.LoadTimeout; it must return a key the
// caller no longer uses (the cache wipes it) or an error classified with
// internal/kek, so the cache can tell an outage from a revocation.
//
// The expirable LRU runs a cleanup goroutine that, in golang-lru v2.0.7,
// cannot be stopped: Close wipes and empties the cache but the idle goroutine
// stays. Create caches once per process, not per request.
// MinHardBound is the shortest hard bound (TTL+MaxStale) the cache keeps:
// shorter settings, useful only in tests, are raised to it.
const MinHardBound = 100 * time.Millisecond

func New(cfg Config, load func(ctx context.Context, id string) (*secret.Bytes, error)) *Cache {
	c := &Cache{
		load:        load,
		ttl:         orDefault(cfg.TTL, DefaultTTL),
		maxStale:    max(cfg.MaxStale, 0),
		staleRetry:  orDefault(cfg.StaleRetry, DefaultStaleRetry),
		loadTimeout: orDefault(cfg.LoadTimeout, DefaultLoadTimeout),
		now:         cfg.Now,
		onEvict:     cfg.OnEvict,
		log:         cfg.Logger,
		inflight:    make(map[string]*flight),
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	size := cfg.Size
	if size <= 0 {
		size = DefaultSize
	}
	c.maxAge = c.ttl + c.maxStale
	if c.maxAge < c.ttl { // overflow
		c.maxAge = math.MaxInt64
	}
	// golang-lru reaps expired entries on a ticker of maxAge/100: a
	// nanosecond-scale bound would panic (a zero ticker) or spin.
	c.maxAge = max(c.maxAge, MinHardBound)
	c.lru = expirable.NewLRU(size, c.evicted, c.maxAge)
	return c
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Get returns the key id, loading it if it is absent or past TTL. The key
// belongs to the cache: do not wipe or keep it, use it at once with its Use
// method (or Bytes, clearing the copy). It may be wiped at any moment, after
// which Use reports false and Bytes returns nil; Cache.Use retries for you.
func (c *Cache) Get(ctx context.Context, id string) (*secret.Bytes, error) {
	k, _, err := c.GetInfo(ctx, id)
	return k, err
}

// GetInfo is Get that also says whether the key was served stale.
//
// A fresh key is returned without a load. A missing one is loaded once
// however many callers ask at the same time. A key past TTL is loaded again:
// on success the new copy replaces it; on an outage error it is still served,
// Stale, until TTL+MaxStale; on any other error it is wiped and the error
// returned. A caller whose ctx ends stops waiting without cancelling the load
// for the others.
func (c *Cache) GetInfo(ctx context.Context, id string) (*secret.Bytes, Info, error) {
	if id == "" {
		return nil, Info{}, fmt.Errorf("%w: empty key id", ErrInvalidKey)
	}
	if c.closed.Load() {
		return nil, Info{}, ErrClosed
	}
	if e, ok := c.lru.Get(id); ok && !e.key.Wiped() {
		if r, ok := c.servable(e, c.now()); ok {
			c.count(r)
			return r.e.key, r.info(), nil
		}
	}
	c.misses.Add(1)
	if c.load == nil {
		return nil, Info{}, fmt.Errorf("%w: key %q is not cached and cannot be loaded", ErrNoLoader, id)
	}
	ch := c.group.DoChan(id, func() (any, error) { return c.loadOnce(ctx, id) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, Info{}, r.Err
		}
		res := r.Val.(result)
		if res.stale {
			c.staleServes.Add(1)
		}
		return res.e.key, res.info(), nil
	case <-ctx.Done():
		return nil, Info{}, fmt.Errorf("cache: gave up waiting for key %q: %w", id, context.Cause(ctx))
	}
}

// servable reports whether e can be served at now without a load: fresh, or
// stale while a recent reload failure is being honoured.
func (c *Cache) servable(e *entry, now time.Time) (result, bool) {
	age := now.Sub(e.loadedAt)
	if age < c.ttl {
		return result{e: e}, true
	}
	if st := e.stale.Load(); st != nil && now.Before(st.retryAt) && age < c.maxAge {
		return result{e: e, stale: true, err: st.err}, true
	}
	return result{}, false
}

func (c *Cache) count(r result) {
	if r.stale {
		c.staleServes.Add(1)
	} else {
		c.hits.Add(1)
	}
}

func (r result) info() Info {
	return Info{Stale: r.stale, LoadedAt: r.e.loadedAt, ReloadErr: r.err}
}

// loadOnce runs in the single flight for id.
func (c *Cache) loadOnce(ctx context.Context, id string) (result, error) {
	fl := &flight{}
	c.mu.Lock()
	if c.closed.Load() {
		c.mu.Unlock()
		return result{}, ErrClosed
	}
	c.inflight[id] = fl
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.inflight[id] == fl {
			delete(c.inflight, id)
		}
		c.mu.Unlock()
	}()

	prev, hadPrev := c.lru.Peek(id)
	if hadPrev && prev.key.Wiped() {
		hadPrev = false
	}
	if hadPrev {
		// The flight before this one may have just stored it.
		if r, ok := c.servable(prev, c.now()); ok {
			return r, nil
		}
	}

	lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.loadTimeout)
	defer cancel()
	c.loads.Add(1)
	key, err := c.callLoad(lctx, id)
	if err == nil {
		switch {
		case key == nil:
			err = fmt.Errorf("%w: the load function returned no key and no error for %q", ErrInvalidKey, id)
		case key.Len() == 0 || key.Wiped():
			err = fmt.Errorf("%w: the load function returned an empty or wiped key for %q", ErrInvalidKey, id)
		}
	}
	if err != nil {
		if key != nil {
			key.Wipe()
		}
		return c.loadFailed(id, prev, hadPrev, lctx, err)
	}
	e, err := c.store(id, key, fl)
	if err != nil {
		return result{}, err
	}
	return result{e: e}, nil
}

// callLoad keeps a panicking load function from crashing the process:
// singleflight would re-panic it on a goroutine nobody can recover.
func (c *Cache) callLoad(ctx context.Context, id string) (key *secret.Bytes, err error) {
	defer func() {
		if r := recover(); r != nil {
			// Log the panic's type only (its value could be anything)
			// unless it is the runtime's own error.
			what := fmt.Sprintf("%T", r)
			if re, ok := r.(runtime.Error); ok {
				what = re.Error()
			}
			c.log.Error("cache: load function panicked", "key_id", id, "panic", what, "stack", string(debug.Stack()))
			key, err = nil, fmt.Errorf("cache: the load function panicked loading key %q; this is a bug, see the log", id)
		}
	}()
	return c.load(ctx, id)
}

func (c *Cache) loadFailed(id string, prev *entry, hadPrev bool, lctx context.Context, err error) (result, error) {
	c.loadErrors.Add(1)
	if lctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) && kek.KindOf(err) == kek.KindUnknown {
		// Our own timeout: the vault did not answer, which is an outage.
		err = fmt.Errorf("cache: loading key %q timed out after %s: %w: %w", id, c.loadTimeout, kek.ErrUnavailable, err)
	} else {
		err = fmt.Errorf("cache: loading key %q: %w", id, err)
	}
	kind := kek.KindOf(err)
	now := c.now()
	if cur, ok := c.lru.Peek(id); ok && cur != prev && !cur.key.Wiped() {
		// Put stored a key while this load ran: serve that one.
		if r, ok := c.servable(cur, now); ok {
			return r, nil
		}
	}
	if !hadPrev {
		c.log.Warn("cache: key load failed", "key_id", id, "kind", kind.String(), "err", err)
		return result{}, err
	}
	age := now.Sub(prev.loadedAt)
	if kind.IsOutage() && age < c.maxAge {
		if cur, ok := c.lru.Peek(id); ok && cur == prev && !prev.key.Wiped() {
			prev.stale.Store(&staleState{retryAt: now.Add(c.staleRetry), err: err})
			c.log.Warn("cache: reload failed with an outage; serving the key past its TTL",
				"key_id", id, "kind", kind.String(), "age", age, "max_age", c.maxAge, "err", err)
			return result{e: prev, stale: true, err: err}, nil
		}
	}
	reason := EvictLoadFailed
	if kind.IsOutage() {
		reason = EvictExpired
	}
	c.removeIf(id, prev, reason)
	c.log.Warn("cache: reload failed; key wiped", "key_id", id, "kind", kind.String(), "reason", reason.String(), "err", err)
	return result{}, err
}

// store caches key under id, replacing (and wiping) what was there.
func (c *Cache) store(id string, key *secret.Bytes, fl *flight) (*entry, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// A key discarded here was never served, but it is counted and
	// reported like any other wiped key.
	if c.closed.Load() {
		c.retire(id, &entry{key: key}, EvictClosed)
		return nil, ErrClosed
	}
	if fl != nil && fl.cancelled {
		c.retire(id, &entry{key: key}, EvictPurged)
		return nil, fmt.Errorf("%w: key %q; try again", ErrPurged, id)
	}
	e := &entry{key: key, loadedAt: c.now(), hardExpiry: time.Now().Add(c.maxAge)}
	c.addLocked(id, e)
	return e, nil
}

// addLocked adds e under id. The old entry is wiped only once it is out of
// the LRU, so no reader can get a wiped key from the cache itself.
func (c *Cache) addLocked(id string, e *entry) {
	old, ok := c.lru.Peek(id)
	if !ok && c.lru.Contains(id) {
		// Expired but not yet reaped: Add would overwrite it without the
		// eviction callback, and Peek cannot hand it to us to wipe.
		c.lru.Remove(id)
	}
	if ok {
		old.reason.Store(int32(EvictReplaced))
	}
	c.lru.Add(id, e)
	if ok {
		if old.key == e.key {
			old.retired.Store(true) // same buffer re-put: keep it
			return
		}
		c.retire(id, old, EvictReplaced)
	}
}

// removeIf removes id if it still holds e.
func (c *Cache) removeIf(id string, e *entry, reason EvictReason) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cur, ok := c.lru.Peek(id)
	if ok && cur != e {
		return
	}
	e.reason.Store(int32(reason))
	c.lru.Remove(id)
	c.retire(id, e, reason) // in case the LRU reaped it first
}

// evicted is the LRU's eviction callback, run with the LRU locked.
func (c *Cache) evicted(id string, e *entry) {
	reason := EvictReason(e.reason.Load())
	if reason == 0 {
		reason = EvictCapacity
		if !time.Now().Before(e.hardExpiry) {
			reason = EvictExpired
		}
	}
	c.retire(id, e, reason)
}

// retire wipes e's key, once.
func (c *Cache) retire(id string, e *entry, reason EvictReason) {
	if !e.retired.CompareAndSwap(false, true) {
		return
	}
	e.key.Wipe()
	collectSoon()
	c.evictions.Add(1)
	c.log.Debug("cache: key wiped", "key_id", id, "reason", reason.String())
	if c.onEvict != nil {
		c.onEvict(id, reason)
	}
}

// Use looks up id as Get does and calls f with the key bytes in place. f must
// not keep or modify the slice, must return quickly (evictions wait for it)
// and must not call the Cache. If the key is wiped between lookup and use,
// Use looks it up again, a few times, then fails with ErrWiped.
func (c *Cache) Use(ctx context.Context, id string, f func(key []byte)) (Info, error) {
	const attempts = 3
	for range attempts {
		k, info, err := c.GetInfo(ctx, id)
		if err != nil {
			return Info{}, err
		}
		if c.afterLookup != nil {
			c.afterLookup()
		}
		if k.Use(f) {
			return info, nil
		}
	}
	return Info{}, fmt.Errorf("%w: key %q was wiped %d times between lookup and use (purged or evicted under load); retry", ErrWiped, id, attempts)
}

// Put stores key under id, replacing and wiping any key cached there, for a
// key the caller has just created and persisted (a new master-key version).
// The cache owns key from the call on, even when Put fails: it is then wiped.
// The same *secret.Bytes must not be put under two ids.
func (c *Cache) Put(id string, key *secret.Bytes) error {
	// Wiped is checked on its own: secret.Bytes.Len keeps the length after a wipe.
	if key == nil || key.Len() == 0 || key.Wiped() {
		return fmt.Errorf("%w: Put(%q) needs a non-empty, unwiped key", ErrInvalidKey, id)
	}
	if id == "" {
		key.Wipe()
		return fmt.Errorf("%w: empty key id", ErrInvalidKey)
	}
	_, err := c.store(id, key, nil)
	return err
}

// Remove wipes and forgets the key id, and makes a load of it that is under
// way fail with ErrPurged rather than store it. It reports whether a key was
// cached.
func (c *Cache) Remove(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if fl := c.inflight[id]; fl != nil {
		fl.cancelled = true
	}
	if e, ok := c.lru.Peek(id); ok {
		e.reason.Store(int32(EvictRemoved))
	}
	return c.lru.Remove(id)
}

// Purge wipes and forgets every key, and makes loads under way fail with
// ErrPurged: what the broker does when it pauses. The cache stays usable.
func (c *Cache) Purge() { c.purge(EvictPurged, false) }

// Close wipes and forgets every key; later calls fail with ErrClosed. It is
// safe to call more than once.
func (c *Cache) Close() { c.purge(EvictClosed, true) }

func (c *Cache) purge(reason EvictReason, closing bool) {
	// After the keys are wiped and the lock released: collect, so that
	// temporaries allocated under runtime/secret are erased now.
	defer collect()
	c.mu.Lock()
	defer c.mu.Unlock()
	if closing {
		c.closed.Store(true)
	}
	for _, fl := range c.inflight {
		fl.cancelled = true
	}
	for _, id := range c.lru.Keys() {
		if e, ok := c.lru.Peek(id); ok {
			e.reason.Store(int32(reason))
		}
	}
	c.lru.Purge()
}

// Len returns the number of keys held, expired ones not yet reaped included.
func (c *Cache) Len() int { return c.lru.Len() }

// Keys returns the ids of the keys held and not past the hard bound, least
// recently used first.
func (c *Cache) Keys() []string {
	keys := c.lru.Keys()
	out := keys[:0]
	for _, id := range keys {
		if _, ok := c.lru.Peek(id); ok {
			out = append(out, id)
		}
	}
	return out
}

// Stats returns a snapshot of the counters.
func (c *Cache) Stats() Stats {
	return Stats{
		Hits:        c.hits.Load(),
		Misses:      c.misses.Load(),
		Loads:       c.loads.Load(),
		LoadErrors:  c.loadErrors.Load(),
		StaleServes: c.staleServes.Load(),
		Evictions:   c.evictions.Load(),
	}
}

// UseAttached is Use for state derived from the key (an AEAD): derive makes
// it once per cached key, it is wiped with the key, and f gets it under the
// key's read lock. derive's error is returned as is.
func (c *Cache) UseAttached(ctx context.Context, id string, derive func(key []byte) (secret.Attachment, error), f func(secret.Attachment)) (Info, error) {
	const attempts = 3
	for range attempts {
		k, info, err := c.GetInfo(ctx, id)
		if err != nil {
			return Info{}, err
		}
		if c.afterLookup != nil {
			c.afterLookup()
		}
		ok, err := k.UseAttached(derive, f)
		if err != nil {
			return Info{}, err
		}
		if ok {
			return info, nil
		}
	}
	return Info{}, fmt.Errorf("%w: key %q was wiped %d times between lookup and use (purged or evicted under load); retry", ErrWiped, id, attempts)
}
