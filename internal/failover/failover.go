// Package failover makes one key wrapper out of several regional ones, in
// priority order, with per-region health, circuit breaking, hedging and
// automatic fail-back. It is itself a key wrapper, so the broker cannot tell
// one vault from many (as tink-go's envelope AEAD wraps an AEAD).
//
// # Calls
//
// Every call goes first to the active region (the preferred one, the first
// configured, unless failed over), then to the others in priority order.
// When a region fails, the next is tried at once; when it has not answered
// within the hedge delay, the next is tried as well and the first success
// wins, the others being cancelled. Regions whose circuit is open are left
// out unless nothing else is left; a region that answered 429 with
// Retry-After is left out until then. No attempt starts that cannot finish
// before the caller's deadline, and a call returns as soon as the caller's
// context ends, with the context's error.
//
// UnwrapKey gives each region the whole slice of copies (a regional wrapper
// picks the copies of its own key), skipping regions whose key is known and
// matches none of the copies. KeyInfo asks the regions in the same order.
//
// WrapKey writes one copy per configured key: it wraps in every group of
// regions sharing one key (the same key identifier without version), with
// failover inside a group, and fails with a KindUnavailable error naming the
// regions it could not reach rather than return copies that miss a
// configured key. A master key persisted without a copy for one of the keys
// would become unreadable the day only that key's region is reachable; a
// failed rotation, by contrast, is retried later with nothing lost.
//
// # Outage is never revocation
//
// A call that no region answers successfully returns:
//   - the revocation error (KindRevoked or KindNotFound) of the first
//     region, when every region that answered gave revocation evidence;
//     regions not asked in this call (circuit open, throttled, no time left
//     before the deadline) are not counted, so that a region that has been
//     down for a while cannot veto a revocation for ever;
//   - a KindUnavailable error matching ErrPartialRevocation when some
//     regions gave revocation evidence and others failed for another reason:
//     the broker stays DEGRADED and raises an alert, PartialRevocation
//     reports true;
//   - a KindInvalidInput error when every region asked said the request was
//     malformed (for UnwrapKey: holds no copy of its key) and none was left
//     out;
//   - otherwise a KindUnavailable error (KindThrottled when every region
//     was throttled) naming every region and the kind of its last error.
//
// A KeyInfo answer with Enabled false counts as revocation evidence from
// that region; when every region that answered says so, KeyInfo returns
// the first such answer with a nil error, as a single vault would.
//
// # Health and fail-back
//
// Each region has a circuit breaker: closed, open after BreakerThreshold
// consecutive outage failures, half-open while a probe (a KeyInfo call)
// tests it after an exponential backoff with jitter, closed again when the
// probe succeeds. When the active region's circuit opens, or it answers
// with revocation evidence, the next usable region becomes active. A
// background prober also asks regions that gave revocation evidence, and
// regions preferred over the active one, every ProbeInterval; the wrapper
// fails back to a preferred region once it has answered FailBackAfter probes
// in a row. To keep a flapping region from making the wrapper switch back
// and forth, each failure of a region within ten probe intervals of failing
// back to it doubles the probes required next time (up to 32 times).
package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// KeyWrapper wraps and unwraps keys with key-encryption keys held in a key
// vault. It is the broker's interface, restated here for the regions and
// implemented by Wrapper. Implementations are safe for concurrent use.
type KeyWrapper interface {
	// WrapKey returns one copy of key per configured key-encryption key.
	WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error)
	// UnwrapKey unwraps the copies it can; the caller clears the result.
	UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error)
	// KeyInfo reports the key as the vault sees it now.
	KeyInfo(ctx context.Context) (kek.KeyInfo, error)
}

var _ KeyWrapper = (*Wrapper)(nil)

// Defaults for the zero values of Config and Region.
const (
	DefaultTimeout          = 10 * time.Second
	DefaultMinHedge         = 25 * time.Millisecond
	DefaultMaxHedge         = 2 * time.Second
	DefaultInitialHedge     = 250 * time.Millisecond // hedge delay before any latency is known, within [MinHedge, MaxHedge]
	DefaultFailBackAfter    = 3
	DefaultProbeInterval    = 30 * time.Second
	DefaultBreakerThreshold = 3
	DefaultBaseBackoff      = time.Second
)

// maxFlaps caps the fail-back damping: FailBackAfter << maxFlaps probes.
const maxFlaps = 5

// Region is one regional key wrapper.
type Region struct {
	// Name names the region in errors, logs, events and Status; required
	// and unique.
	Name string
	// Wrapper is the region's key wrapper, e.g. an *akv.Wrapper; required.
	Wrapper KeyWrapper
	// Timeout bounds each call to the region; 0 means DefaultTimeout.
	Timeout time.Duration
	// KeyID, optional, is the region's key identifier (the version is
	// ignored). Regions with the same key share one wrapped copy. When
	// empty, the wrapper learns the key from the region's answers, and
	// until then treats the region as holding a key of its own.
	KeyID string
}

// Config configures a Wrapper. Zero values mean the documented defaults. It
// must not be changed after it is passed to New.
type Config struct {
	// Regions are the regional wrappers, most preferred first; at least one.
	Regions []Region
	// HedgeDelay is how long a call waits for a region before trying the
	// next one as well. 0 derives it from the active region's recent
	// successful latencies (their 90th percentile, clamped to [MinHedge,
	// MaxHedge], DefaultInitialHedge before any is known); negative
	// disables hedging.
	HedgeDelay time.Duration
	// MinHedge and MaxHedge clamp the derived hedge delay; 0 means
	// DefaultMinHedge and DefaultMaxHedge.
	MinHedge, MaxHedge time.Duration
	// FailBackAfter is how many probes in a row a preferred region must
	// answer before the wrapper fails back to it; 0 means
	// DefaultFailBackAfter.
	FailBackAfter int
	// ProbeInterval is how often regions that gave revocation evidence, and
	// regions preferred over the active one, are probed; 0 means
	// DefaultProbeInterval.
	ProbeInterval time.Duration
	// BreakerThreshold is how many consecutive outage failures open a
	// region's circuit; 0 means DefaultBreakerThreshold.
	BreakerThreshold int
	// BaseBackoff and MaxBackoff bound the jittered exponential backoff
	// before an open circuit is probed, and between retry rounds; 0 means
	// DefaultBaseBackoff and ProbeInterval.
	BaseBackoff, MaxBackoff time.Duration
	// MaxAttempts bounds the region calls of one operation (for WrapKey,
	// of each group of regions sharing a key), hedges included; 0 means
	// one per region. More than that allows further rounds after a
	// backoff, while the caller's deadline allows.
	MaxAttempts int
	// Now returns the current time; nil means time.Now. Health, backoff
	// and Retry-After use it. Callers' context deadlines are on the real
	// clock, as the context package keeps them.
	Now func() time.Time
	// AfterFunc replaces time.AfterFunc for every timer the wrapper starts
	// (hedges, per-region timeouts, probes, backoff); nil means
	// time.AfterFunc. stop reports whether it stopped the timer.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// Logger receives switches, regions going down or up and partial
	// revocations; nil discards them.
	Logger *slog.Logger
	// OnEvent, when set, is called with every Event, for metrics. It is
	// called without locks held, possibly from several goroutines, and
	// must return quickly.
	OnEvent func(Event)
}

// ErrInvalidConfig is returned by New for a configuration it cannot use.
var ErrInvalidConfig = errors.New("failover: invalid configuration")

// Errors matched with errors.Is on the *kek.Error a failed call returns.
var (
	// ErrAllRegionsFailed: no region could serve the call.
	ErrAllRegionsFailed = errors.New("failover: every region failed")
	// ErrPartialRevocation: some regions gave revocation evidence, others
	// failed for another reason.
	ErrPartialRevocation = errors.New("failover: revocation evidence from some regions only")
	// ErrMissingCopy: WrapKey could not write a copy for every configured key.
	ErrMissingCopy = errors.New("failover: no copy for every configured key")
	// ErrNoMatchingCopy: UnwrapKey was given no copy of a configured key.
	ErrNoMatchingCopy = errors.New("failover: no copy of a configured key")
)

// Wrapper is a KeyWrapper over several regions. It is safe for concurrent
// use. Close stops its prober.
type Wrapper struct {
	regions       []*region
	hedge         time.Duration // fixed delay, <0 disabled, 0 adaptive
	minHedge      time.Duration
	maxHedge      time.Duration
	failBackAfter int
	probeEvery    time.Duration
	threshold     int
	baseBackoff   time.Duration
	maxBackoff    time.Duration
	maxAttempts   int // 0: one per candidate region
	now           func() time.Time
	afterFunc     func(time.Duration, func()) func() bool
	log           *slog.Logger
	onEvent       func(Event)

	mu           sync.Mutex
	active       int
	flaps        int       // fail-back damping level
	lastFailBack time.Time // when the wrapper last failed back
	partial      bool

	kick        chan struct{} // wakes the prober when its schedule may have changed
	stop        chan struct{}
	stopOnce    sync.Once
	loopDone    chan struct{}
	probeCtx    context.Context
	probeCancel context.CancelFunc
	probes      sync.WaitGroup
}

// New checks cfg and returns a Wrapper whose prober runs until Close.
func New(cfg Config) (*Wrapper, error) {
	if len(cfg.Regions) == 0 {
		return nil, fmt.Errorf("%w: no regions; configure at least one regional key wrapper", ErrInvalidConfig)
	}
	durations := []struct {
		name string
		d    time.Duration
	}{
		{"MinHedge", cfg.MinHedge}, {"MaxHedge", cfg.MaxHedge}, {"ProbeInterval", cfg.ProbeInterval},
		{"BaseBackoff", cfg.BaseBackoff}, {"MaxBackoff", cfg.MaxBackoff},
	}
	for _, d := range durations {
		if d.d < 0 {
			return nil, fmt.Errorf("%w: %s is %v; want 0 (the default) or more", ErrInvalidConfig, d.name, d.d)
		}
	}
	for _, n := range []struct {
		name string
		n    int
	}{{"FailBackAfter", cfg.FailBackAfter}, {"BreakerThreshold", cfg.BreakerThreshold}, {"MaxAttempts", cfg.MaxAttempts}} {
		if n.n < 0 {
			return nil, fmt.Errorf("%w: %s is %d; want 0 (the default) or more", ErrInvalidConfig, n.name, n.n)
		}
	}
	w := &Wrapper{
		hedge:         cfg.HedgeDelay,
		minHedge:      or(cfg.MinHedge, DefaultMinHedge),
		maxHedge:      or(cfg.MaxHedge, DefaultMaxHedge),
		failBackAfter: or(cfg.FailBackAfter, DefaultFailBackAfter),
		probeEvery:    or(cfg.ProbeInterval, DefaultProbeInterval),
		threshold:     or(cfg.BreakerThreshold, DefaultBreakerThreshold),
		baseBackoff:   or(cfg.BaseBackoff, DefaultBaseBackoff),
		maxAttempts:   cfg.MaxAttempts,
		now:           cfg.Now,
		afterFunc:     cfg.AfterFunc,
		log:           cfg.Logger,
		onEvent:       cfg.OnEvent,
		kick:          make(chan struct{}, 1),
		stop:          make(chan struct{}),
		loopDone:      make(chan struct{}),
	}
	w.maxBackoff = or(cfg.MaxBackoff, w.probeEvery)
	if w.minHedge > w.maxHedge {
		return nil, fmt.Errorf("%w: MinHedge %v is above MaxHedge %v", ErrInvalidConfig, w.minHedge, w.maxHedge)
	}
	if w.baseBackoff > w.maxBackoff {
		return nil, fmt.Errorf("%w: BaseBackoff %v is above MaxBackoff %v", ErrInvalidConfig, w.baseBackoff, w.maxBackoff)
	}
	if w.now == nil {
		w.now = time.Now
	}
	if w.afterFunc == nil {
		w.afterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	seen := map[string]bool{}
	for i, r := range cfg.Regions {
		switch {
		case r.Name == "":
			return nil, fmt.Errorf("%w: region %d has no Name", ErrInvalidConfig, i)
		case seen[r.Name]:
			return nil, fmt.Errorf("%w: region name %q appears twice; names must be unique", ErrInvalidConfig, r.Name)
		case r.Wrapper == nil:
			return nil, fmt.Errorf("%w: region %q has no Wrapper", ErrInvalidConfig, r.Name)
		case r.Timeout < 0:
			return nil, fmt.Errorf("%w: region %q Timeout is %v; want 0 (the default) or more", ErrInvalidConfig, r.Name, r.Timeout)
		}
		seen[r.Name] = true
		reg := &region{
			idx:     i,
			name:    r.Name,
			kw:      r.Wrapper,
			timeout: or(r.Timeout, DefaultTimeout),
		}
		if r.KeyID != "" {
			reg.cfgKey = keyBase(r.KeyID)
			reg.keyID = r.KeyID
		}
		w.regions = append(w.regions, reg)
	}
	w.probeCtx, w.probeCancel = context.WithCancel(context.Background())
	go w.loop()
	return w, nil
}

func or[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// Close stops the prober and waits for probes in flight, which it cancels.
// Calls made after Close still work, but unhealthy regions are no longer
// probed. Close is safe to call more than once; it returns nil.
func (w *Wrapper) Close() error {
	w.stopOnce.Do(func() {
		close(w.stop)
		w.probeCancel()
	})
	<-w.loopDone
	w.probes.Wait()
	return nil
}

// WrapKey wraps key in every configured key and returns one copy per key,
// or an error and no copies; see the package documentation.
func (w *Wrapper) WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
	if len(key) == 0 {
		return nil, &kek.Error{Kind: kek.KindInvalidInput, Op: "wrap", Err: errors.New("failover: the key to wrap is empty")}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	groups := w.groups()
	type groupResult struct {
		copies []kek.Wrapped
		ok     bool
		outs   map[int]*outcome
		err    error
	}
	res := make([]groupResult, len(groups))
	spec := opSpec[[]kek.Wrapped]{
		op:    "wrap",
		call:  func(ctx context.Context, kw KeyWrapper) ([]kek.Wrapped, error) { return kw.WrapKey(ctx, key) },
		judge: w.judgeCopies,
	}
	var wg sync.WaitGroup
	for gi, g := range groups {
		wg.Go(func() {
			r := &res[gi]
			r.copies, r.ok, r.outs, r.err = run(ctx, w, g, spec)
		})
	}
	wg.Wait()
	w.notePartial()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var (
		copies  []kek.Wrapped
		seen    = map[string]bool{}
		failed  []int
		allOuts = map[int]*outcome{}
		anyOK   bool
	)
	for gi, r := range res {
		if r.err != nil {
			return nil, r.err
		}
		if !r.ok {
			failed = append(failed, groups[gi]...)
			for i, o := range r.outs {
				allOuts[i] = o
			}
			continue
		}
		anyOK = true
		for _, c := range r.copies {
			if b := keyBase(c.KeyID); !seen[b] {
				seen[b] = true
				copies = append(copies, c)
			}
		}
	}
	if len(failed) == 0 {
		return copies, nil
	}
	if !anyOK {
		_, err := w.aggregate("wrap", failed, allOuts)
		return nil, err
	}
	parts, revoked := describe(w, failed, allOuts)
	err := fmt.Errorf("%w: no copy from %s; refusing to return copies that miss a configured key: retry when those regions answer, or remove them from the configuration",
		ErrMissingCopy, parts)
	if revoked {
		err = fmt.Errorf("%w (%w)", err, ErrPartialRevocation)
	}
	return nil, &kek.Error{Kind: kek.KindUnavailable, Op: "wrap", Err: err}
}

// judgeCopies refuses an answer without a usable copy: persisting it would
// lose the key.
func (w *Wrapper) judgeCopies(i int, copies []kek.Wrapped) (string, error) {
	if len(copies) == 0 || copies[0].KeyID == "" || len(copies[0].Ciphertext) == 0 {
		return "", &kek.Error{Kind: kek.KindUnknown, Op: "wrap", Region: w.regions[i].name,
			Err: errors.New("failover: the region returned no usable wrapped copy; this is a bug in its key wrapper")}
	}
	return copies[0].KeyID, nil
}

// UnwrapKey unwraps the first copy a region can, trying regions in order.
// The caller clears the result.
func (w *Wrapper) UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error) {
	if len(copies) == 0 {
		return nil, &kek.Error{Kind: kek.KindInvalidInput, Op: "unwrap",
			Err: fmt.Errorf("%w: no wrapped copies given; pass the copies WrapKey returned", ErrNoMatchingCopy)}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	cands, known := w.unwrapCandidates(copies)
	if len(cands) == 0 {
		return nil, &kek.Error{Kind: kek.KindInvalidInput, Op: "unwrap",
			Err: fmt.Errorf("%w: none of the %d copies is wrapped by a configured key (%s); unwrap them with a broker configured for their key",
				ErrNoMatchingCopy, len(copies), known)}
	}
	defer w.notePartial()
	key, ok, outs, err := run(ctx, w, cands, opSpec[[]byte]{
		op:      "unwrap",
		call:    func(ctx context.Context, kw KeyWrapper) ([]byte, error) { return kw.UnwrapKey(ctx, copies) },
		discard: func(b []byte) { clear(b) },
	})
	if err != nil {
		return nil, err
	}
	if ok {
		return key, nil
	}
	_, err = w.aggregate("unwrap", cands, outs)
	return nil, err
}

// KeyInfo reports the key as the first region that answers sees it.
func (w *Wrapper) KeyInfo(ctx context.Context) (kek.KeyInfo, error) {
	if err := ctx.Err(); err != nil {
		return kek.KeyInfo{}, err
	}
	cands := make([]int, len(w.regions))
	for i := range cands {
		cands[i] = i
	}
	defer w.notePartial()
	info, ok, outs, err := run(ctx, w, cands, opSpec[kek.KeyInfo]{
		op:    "get",
		call:  func(ctx context.Context, kw KeyWrapper) (kek.KeyInfo, error) { return kw.KeyInfo(ctx) },
		judge: w.judgeInfo,
	})
	if err != nil {
		return kek.KeyInfo{}, err
	}
	if ok {
		return info, nil
	}
	judged, err := w.aggregate("get", cands, outs)
	if ji, ok := judged.(kek.KeyInfo); ok && err == nil {
		return ji, nil
	}
	return kek.KeyInfo{}, err
}

// judgeInfo turns a disabled key into revocation evidence, so that the
// next region is asked: its key may be another, still enabled.
func (w *Wrapper) judgeInfo(i int, info kek.KeyInfo) (string, error) {
	if !info.Enabled {
		return info.KeyID, &kek.Error{Kind: kek.KindRevoked, Op: "get", Region: w.regions[i].name, KeyID: info.KeyID,
			Code: "KeyDisabled", Err: errors.New("failover: the vault reports the key disabled")}
	}
	return info.KeyID, nil
}

// groups returns the regions grouped by key, in priority order.
func (w *Wrapper) groups() [][]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out [][]int
	at := map[string]int{}
	for i, r := range w.regions {
		k := r.groupKey()
		if k == "" {
			k = "\x00region:" + r.name
		}
		if g, ok := at[k]; ok {
			out[g] = append(out[g], i)
			continue
		}
		at[k] = len(out)
		out = append(out, []int{i})
	}
	return out
}

// unwrapCandidates returns the regions that may hold a key of copies: those
// whose key is unknown or matches a copy. known lists the configured keys
// for an error message.
func (w *Wrapper) unwrapCandidates(copies []kek.Wrapped) (cands []int, known string) {
	bases := map[string]bool{}
	for _, c := range copies {
		bases[keyBase(c.KeyID)] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var keys []string
	for i, r := range w.regions {
		k := r.groupKey()
		if k == "" || bases[k] {
			cands = append(cands, i)
		}
		keys = append(keys, r.name+": "+k)
	}
	return cands, strings.Join(keys, ", ")
}
