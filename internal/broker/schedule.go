package broker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// A fleet of brokers shares one vault, which Azure throttles per vault in
// 10-second windows (docs/capacity.md). What keeps a fleet under the limit:
// scheduled checks at a random phase of the interval, one unwrap per key per
// region per check (the key's info on a slower cadence), and start-up
// retries spread by jittered, growing backoff.
const (
	// DefaultKeyInfoInterval is how often a scheduled check also asks for
	// the key's info when Config.KeyInfoInterval is zero.
	DefaultKeyInfoInterval = time.Hour
	// startBackoff is the spread of the first start-up retry: one
	// throttling window, so that nodes throttled together come back spread
	// over the next window rather than all at its start.
	startBackoff = 10 * time.Second
	// startBackoffFactor grows the spread per failed attempt: a fleet too
	// large for one window spreads over three, then nine.
	startBackoffFactor = 3
	// maxStartBackoff caps the spread.
	maxStartBackoff = 5 * time.Minute
)

// unwrapChecker is implemented by multi-region wrappers (internal/failover)
// that can check every region with unwraps only, leaving out the key-info
// call: see RegionChecker.
type unwrapChecker interface {
	CheckRegionsUnwrap(ctx context.Context, sets [][]kek.Wrapped, report func(region string, info kek.KeyInfo, err error))
}

// schedule is the validity checks' and start-up's timing state. Safe for
// concurrent use.
type schedule struct {
	keyInfoEvery time.Duration
	rand         func(time.Duration) time.Duration

	mu       sync.Mutex
	lastInfo time.Time              // last check that got a key's info (at start: a random point of the interval before)
	infos    map[string]kek.KeyInfo // the latest info by region, for alerts between info calls
	starting bool                   // WarmUntilLoaded is retrying
	held     bool                   // ... after a throttled attempt: scheduled checks stand aside
	retryAt  time.Time              // its next attempt
	loadedAt time.Time              // the last successful Warm
	why      string                 // what its last attempt met, for messages
}

func newSchedule(cfg Config) *schedule {
	s := &schedule{keyInfoEvery: cfg.KeyInfoInterval, rand: cfg.Rand, infos: map[string]kek.KeyInfo{}}
	if s.keyInfoEvery <= 0 {
		s.keyInfoEvery = DefaultKeyInfoInterval
	}
	if s.rand == nil {
		s.rand = func(n time.Duration) time.Duration {
			if n <= 0 {
				return 0
			}
			return rand.N(n)
		}
	}
	// The first key-info call comes at a random point of the first
	// KeyInfoInterval, so a fleet started together spreads those too.
	now := time.Now
	if cfg.Now != nil {
		now = cfg.Now
	}
	s.lastInfo = now().Add(-s.rand(s.keyInfoEvery))
	return s
}

// infoDue reports whether the next scheduled check should ask for the
// key's info too: the last one is KeyInfoInterval old.
func (s *schedule) infoDue(now time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return now.Sub(s.lastInfo) >= s.keyInfoEvery
}

// rememberInfo keeps the info of the regions that reported one and gives
// the latest known info to those that did not (an unwrap-only check), so
// expiry alerts persist between info calls.
func (s *schedule) rememberInfo(ok []regionResult, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range ok {
		if ok[i].info.KeyID != "" {
			s.infos[ok[i].region] = ok[i].info
			s.lastInfo = now
		} else if info, found := s.infos[ok[i].region]; found {
			ok[i].info = info
		}
	}
}

// firstWait is the delay to the first scheduled check: a random point of
// the first interval, in (0, interval], so a fleet started together spreads.
func (s *schedule) firstWait(interval time.Duration) time.Duration {
	return interval - s.rand(interval)
}

// nextWait is the delay to the next scheduled check after one that ended
// with err: the interval, or after a throttled check the longer of the
// interval and Retry-After plus up to half an interval of jitter, so nodes
// throttled together come back apart. Never sooner: throttling is answered
// with fewer calls, not more.
func (s *schedule) nextWait(interval time.Duration, err error) time.Duration {
	if kek.KindOf(err) != kek.KindThrottled {
		return interval
	}
	return max(interval, retryAfterOf(err)) + s.rand(interval/2)
}

// retryAfterOf is the Retry-After hint carried by err, 0 when none.
func retryAfterOf(err error) time.Duration {
	var e *kek.Error
	if errors.As(err, &e) {
		return e.RetryAfter
	}
	return 0
}

// loaded records a successful start-up load: it proved the key as a check
// would.
func (s *schedule) loaded(now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.loadedAt = now
}

// sinceLoad is how long before an interval has passed since the last
// successful start-up load (0 when none, or when it is an interval old).
// The load proved the key as a check would, so a scheduled check that
// comes sooner is moved to one interval after the load, less up to a tenth
// of an interval of jitter: nodes of a fleet restarting at once leave the
// vault's budget to those still loading, and no node goes longer than an
// interval without proof of access (the revocation bound).
func (s *schedule) sinceLoad(now time.Time, interval time.Duration) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.loadedAt.IsZero() {
		return 0
	}
	left := interval - now.Sub(s.loadedAt) - s.rand(interval/10)
	return max(left, 0)
}

// startDelay is the wait before start-up's attempt number attempt+1 after
// an attempt that failed with err: the server's Retry-After, plus a random
// part of a spread that starts at one throttling window and triples per
// failed attempt, up to 5 minutes.
func (s *schedule) startDelay(attempt int, err error) time.Duration {
	spread := startBackoff
	for i := 1; i < attempt && spread < maxStartBackoff; i++ {
		spread *= startBackoffFactor
	}
	spread = min(spread, maxStartBackoff)
	return retryAfterOf(err) + time.Second + s.rand(spread)
}

// warming reports whether start-up is retrying after a throttled attempt:
// a scheduled check would be throttled too, and its attempts say as much.
// After other failures the checks run, so revocation in the regions that
// answer still pauses.
func (s *schedule) warming() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.starting && s.held
}

func (s *schedule) setWarming(on bool, retryAt time.Time, why string, throttled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.starting, s.retryAt, s.why, s.held = on, retryAt, why, on && throttled
}

// gate refuses an on-demand key load while start-up waits for its next
// attempt: the engine's retries must not add Key Vault calls to a vault
// that is throttling the fleet. The error maps to UNAVAILABLE.
func (s *schedule) gate(now time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.starting || !now.Before(s.retryAt) {
		return nil
	}
	return &kek.Error{Kind: kek.KindUnavailable, Op: "unwrap", Err: fmt.Errorf(
		"broker: starting: the master key is not loaded yet (%s); the broker retries by itself, next in %v, until Key Vault answers: retry this call later",
		s.why, s.retryAt.Sub(now).Round(time.Second))}
}

// StartWarming runs WarmUntilLoaded(ctx, first) in a goroutine after a
// first attempt that failed with first, and returns a channel closed when
// it returns. The broker counts as starting from the call on: its gate
// and state apply before the caller goes on to listen.
func (b *Broker) StartWarming(ctx context.Context, first error) <-chan struct{} {
	b.checks.sched.setWarming(true, time.Time{}, "", kek.KindOf(first) == kek.KindThrottled)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.WarmUntilLoaded(ctx, first)
	}()
	return done
}

// WarmUntilLoaded loads the keys as Warm does and, while that fails for
// any reason but revocation, keeps retrying with jittered backoff that
// honours Retry-After (startDelay), until the keys load or ctx ends. It
// never gives up by itself. first is the error of an attempt already made
// (nil: make one now). Meanwhile the state is DEGRADED with the reason,
// watchers hear of it, engines asking for a key get UNAVAILABLE saying
// when the next attempt is (no Key Vault call of theirs), and scheduled
// checks stand aside while the vault throttles. Revocation evidence, or a
// pause, ends the retries: the validity check decides, and resuming loads
// the keys. It returns nil once the keys are loaded, else the last error.
func (b *Broker) WarmUntilLoaded(ctx context.Context, first error) error {
	err := first
	if err == nil {
		if err = b.Warm(ctx); err == nil {
			return nil
		}
	}
	s := b.checks.sched
	defer s.setWarming(false, time.Time{}, "", false)
	for attempt := 1; ; attempt++ {
		if kek.KindOf(err).IsRevocation() {
			return err // Warm's observe started the validity check that decides
		}
		if b.hub.current().State == StatePaused {
			return err // a validity check paused; resuming loads the keys again
		}
		delay := s.startDelay(attempt, err)
		why, throttled := "Key Vault unreachable", kek.KindOf(err) == kek.KindThrottled
		if throttled {
			why = "Key Vault is throttling this vault's calls (429)"
		}
		s.setWarming(true, b.now().Add(delay), why, throttled)
		b.transition(StateDegraded, fmt.Sprintf("starting: no key is held in memory yet, so key requests fail with UNAVAILABLE until Key Vault answers (%s); attempt %d failed, retrying in %v until it succeeds",
			why, attempt, delay.Round(time.Millisecond)), nil)
		b.log.Warn("start-up: keys not loaded, retrying", "attempt", attempt, "retry_in", delay, "err", err)
		fired := make(chan struct{})
		stop := b.afterFunc(delay, func() { close(fired) })
		select {
		case <-ctx.Done():
			stop()
			return ctx.Err()
		case <-fired:
		}
		s.setWarming(true, time.Time{}, why, throttled) // the gate opens for this attempt
		actx, cancel := context.WithTimeout(ctx, checkTimeout)
		err = b.Warm(actx)
		cancel()
		if err == nil {
			b.transition(StateServing, fmt.Sprintf("keys loaded through Key Vault at start-up attempt %d", attempt+1), func(prev State) bool {
				return prev == StateDegraded
			})
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
