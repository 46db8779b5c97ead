package failover

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// BreakerState is the state of a region's circuit breaker.
type BreakerState int

// The breaker states.
const (
	StateClosed   BreakerState = iota // calls go through
	StateOpen                         // calls skip the region until a probe succeeds
	StateHalfOpen                     // a probe is testing the region
)

// String returns closed, open or half-open.
func (s BreakerState) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateOpen:
		return "open"
	case StateHalfOpen:
		return "half-open"
	}
	return "unknown"
}

// RegionStatus is a snapshot of one region, for GetStatus.
type RegionStatus struct {
	Name string
	// KeyID is the last key identifier, with version, the region reported
	// (or the configured one); empty until known.
	KeyID string
	// Healthy reports a closed circuit, no revocation evidence and no
	// pending Retry-After.
	Healthy bool
	State   BreakerState
	// LastErrorKind and LastError describe the region's latest failure;
	// a success clears them (LastError is then empty).
	LastErrorKind kek.Kind
	LastError     string
	// LastLatency is the duration of the region's latest completed call.
	LastLatency time.Duration
	Preferred   bool // the first configured region
	Active      bool // the region calls go to first
	// Switches counts the times the region became the active one.
	Switches int
	// Revoked reports that the region's latest answer was revocation
	// evidence.
	Revoked bool
	// ThrottledUntil is when a Retry-After received from the region ends;
	// zero when none is pending.
	ThrottledUntil time.Time
}

// EventKind says what an Event reports.
type EventKind int

// The event kinds.
const (
	EventSwitch                   EventKind = iota + 1 // the active region changed, from From to Region
	EventRegionDown                                    // a region's circuit opened, or it gave revocation evidence
	EventRegionUp                                      // a region is healthy again
	EventPartialRevocation                             // some but not all regions give revocation evidence
	EventPartialRevocationCleared                      // no longer so
)

// String returns a short name fit for a metric attribute.
func (k EventKind) String() string {
	switch k {
	case EventSwitch:
		return "switch"
	case EventRegionDown:
		return "region_down"
	case EventRegionUp:
		return "region_up"
	case EventPartialRevocation:
		return "partial_revocation"
	case EventPartialRevocationCleared:
		return "partial_revocation_cleared"
	}
	return "unknown"
}

// Event reports a change of the wrapper's health to Config.OnEvent.
type Event struct {
	Kind    EventKind
	Time    time.Time
	Region  string   // the region concerned; for EventSwitch the new active one
	From    string   // EventSwitch: the region previously active
	ErrKind kek.Kind // EventRegionDown: the kind of the error that took it down
	Reason  string   // a short explanation, for logs; no error text
}

// region is one region and its health; the mutable fields are guarded by
// Wrapper.mu.
type region struct {
	idx     int
	name    string
	kw      KeyWrapper
	timeout time.Duration
	cfgKey  string // versionless key from Region.KeyID, or ""

	keyID          string // latest full key identifier seen
	learnedKey     string // versionless key learned from answers
	state          BreakerState
	fails          int       // consecutive outage failures
	opens          int       // consecutive opens, for the backoff
	retryAt        time.Time // open: when the next probe may run
	throttledUntil time.Time
	revoked        bool
	lastKind       kek.Kind
	lastErr        string
	lastLatency    time.Duration
	lat            latencies
	probeOK        int       // consecutive successful probes
	nextProbe      time.Time // closed regions under watch
	probing        bool
	switches       int
}

func (r *region) groupKey() string {
	if r.cfgKey != "" {
		return r.cfgKey
	}
	return r.learnedKey
}

// usable reports whether the region can be the active one.
func (r *region) usable() bool { return r.state == StateClosed && !r.revoked }

func (r *region) throttled(now time.Time) bool { return r.throttledUntil.After(now) }

// latencies keeps the latest successful call durations of a region.
type latencies struct {
	buf  [32]time.Duration
	n    int
	next int
}

func (l *latencies) add(d time.Duration) {
	l.buf[l.next] = d
	l.next = (l.next + 1) % len(l.buf)
	l.n = min(l.n+1, len(l.buf))
}

// quantile returns the q-quantile (0..1) of the samples, false if none.
func (l *latencies) quantile(q float64) (time.Duration, bool) {
	if l.n == 0 {
		return 0, false
	}
	s := slices.Clone(l.buf[:l.n])
	slices.Sort(s)
	i := int(q*float64(l.n)+0.999999) - 1 // nearest rank
	return s[max(0, min(i, l.n-1))], true
}

// hedgeDelayLocked returns the hedge delay for a call now, <0 for none.
func (w *Wrapper) hedgeDelayLocked() time.Duration {
	if w.hedge != 0 {
		return w.hedge
	}
	d, ok := w.regions[w.active].lat.quantile(0.9)
	if !ok {
		d = DefaultInitialHedge
	}
	return max(w.minHedge, min(d, w.maxHedge))
}

// backoff returns the jittered delay after n consecutive failures (n >= 1):
// half of the exponential delay plus a random part of the other half, so
// that brokers on many nodes do not probe in step.
func (w *Wrapper) backoff(n int) time.Duration {
	d := w.baseBackoff
	for i := 1; i < n && d < w.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, w.maxBackoff)
	half := d / 2
	return half + rand.N(d-half+1)
}

// skip is a region left out of a call, and why.
type skip struct {
	idx        int
	why        string
	retryAfter time.Duration // throttled: how long is left
}

// planLocked orders cands for a call: the active region first, then the
// others by priority, those with revocation evidence last; regions whose
// circuit is not closed only when nothing else is left; throttled regions
// never.
func (w *Wrapper) planLocked(cands []int, now time.Time) (order []int, skips []skip) {
	var good, revoked, down []int
	for _, i := range cands {
		r := w.regions[i]
		switch {
		case r.throttled(now):
			skips = append(skips, skip{idx: i, why: "throttled, Retry-After pending", retryAfter: r.throttledUntil.Sub(now)})
		case r.state != StateClosed:
			down = append(down, i)
		case r.revoked:
			revoked = append(revoked, i)
		case i == w.active:
			good = append([]int{i}, good...)
		default:
			good = append(good, i)
		}
	}
	order = append(good, revoked...)
	if len(order) == 0 {
		return down, skips
	}
	for _, i := range down {
		skips = append(skips, skip{idx: i, why: "circuit open"})
	}
	return order, skips
}

// recordSuccess notes a success of region i; probe says a prober made it.
func (w *Wrapper) recordSuccess(i int, lat time.Duration, keyID string, probe bool) {
	w.mu.Lock()
	now := w.now()
	r := w.regions[i]
	wasHealthy := r.usable()
	r.lastLatency = lat
	r.lat.add(lat)
	r.fails = 0
	r.lastKind, r.lastErr = kek.KindUnknown, ""
	r.learn(keyID)
	changed := r.state != StateClosed || r.revoked
	r.state, r.opens, r.revoked = StateClosed, 0, false
	if probe {
		r.probeOK++
	}
	var evs []Event
	if !wasHealthy {
		evs = append(evs, Event{Kind: EventRegionUp, Time: now, Region: r.name, Reason: "answered again"})
	}
	evs = append(evs, w.reconsiderLocked(now)...)
	w.mu.Unlock()
	w.emit(evs)
	if changed || probe {
		w.wake()
	}
}

// recordFailure notes a failure of region i: err is classified, never a
// cancellation by the caller.
func (w *Wrapper) recordFailure(i int, err error, keyID string) {
	kind := kek.KindOf(err)
	var ke *kek.Error
	if keyID == "" && errors.As(err, &ke) {
		keyID = ke.KeyID // adapters name the key they failed on
	}
	w.mu.Lock()
	now := w.now()
	r := w.regions[i]
	wasHealthy := r.usable()
	r.learn(keyID)
	r.probeOK = 0
	var evs []Event
	changed := false
	switch {
	case kind == kek.KindInvalidInput:
		// The region answered; the request was at fault, not the region.
		if r.state != StateClosed {
			r.state, r.opens, changed = StateClosed, 0, true
		}
	case kind.IsRevocation():
		r.lastKind, r.lastErr = kind, err.Error()
		r.fails = 0
		if r.state != StateClosed {
			r.state, r.opens = StateClosed, 0 // it answered: the path to it works
		}
		changed = !r.revoked
		r.revoked = true
	default: // outage, or an error nobody classified: never revocation
		r.lastKind, r.lastErr = kind, err.Error()
		r.fails++
		if ke != nil && ke.RetryAfter > 0 {
			r.throttledUntil = now.Add(ke.RetryAfter)
		}
		switch r.state {
		case StateHalfOpen:
			r.state, changed = StateOpen, true
			r.opens++
			r.retryAt = now.Add(w.backoff(r.opens))
		case StateClosed:
			if r.fails >= w.threshold {
				r.state, changed = StateOpen, true
				r.opens = 1
				r.retryAt = now.Add(w.backoff(r.opens))
			}
		}
	}
	if wasHealthy && !r.usable() {
		evs = append(evs, Event{Kind: EventRegionDown, Time: now, Region: r.name, ErrKind: kind, Reason: downReason(r)})
	} else if !wasHealthy && r.usable() {
		evs = append(evs, Event{Kind: EventRegionUp, Time: now, Region: r.name, Reason: "answered again"})
	}
	evs = append(evs, w.reconsiderLocked(now)...)
	w.mu.Unlock()
	w.emit(evs)
	if changed {
		w.wake()
	}
}

func downReason(r *region) string {
	if r.revoked {
		return "revocation evidence"
	}
	return "circuit opened"
}

func (r *region) learn(keyID string) {
	if keyID != "" {
		r.keyID = keyID
		r.learnedKey = keyBase(keyID)
	}
}

// reconsiderLocked moves the active region: away from it when it is no
// longer usable, back to a preferred region that has answered enough
// probes in a row.
func (w *Wrapper) reconsiderLocked(now time.Time) []Event {
	if !w.regions[w.active].usable() {
		for i, r := range w.regions {
			if i != w.active && r.usable() {
				return w.switchLocked(now, i, false)
			}
		}
		return nil
	}
	need := w.failBackAfter << w.flaps
	for i := range w.active {
		r := w.regions[i]
		if r.usable() && !r.throttled(now) && r.probeOK >= need {
			return w.switchLocked(now, i, true)
		}
	}
	return nil
}

func (w *Wrapper) switchLocked(now time.Time, to int, failBack bool) []Event {
	from := w.active
	reason := "failed back after " + strconv.Itoa(w.regions[to].probeOK) + " probes in a row"
	if failBack {
		w.lastFailBack = now
	} else {
		reason = "region " + w.regions[from].name + " is down"
		if w.regions[from].revoked {
			reason = "region " + w.regions[from].name + " gave revocation evidence"
		}
		// A region that fails soon after we failed back to it is flapping:
		// ask for more probes before trusting it again.
		if to > from {
			if !w.lastFailBack.IsZero() && now.Sub(w.lastFailBack) < 10*w.probeEvery {
				w.flaps = min(w.flaps+1, maxFlaps)
			} else {
				w.flaps = 0
			}
		}
	}
	w.active = to
	w.regions[to].switches++
	return []Event{{Kind: EventSwitch, Time: now, Region: w.regions[to].name, From: w.regions[from].name, Reason: reason}}
}

// notePartial updates whether some but not all regions give revocation
// evidence. It runs once a call or probe is over, not after each region's
// answer, so that a revocation seen by every region does not flash a
// partial revocation while the regions answer one by one.
func (w *Wrapper) notePartial() {
	w.mu.Lock()
	evs := w.partialLocked(w.now())
	w.mu.Unlock()
	w.emit(evs)
}

func (w *Wrapper) partialLocked(now time.Time) []Event {
	revoked := 0
	for _, r := range w.regions {
		if r.revoked {
			revoked++
		}
	}
	p := revoked > 0 && revoked < len(w.regions)
	if p == w.partial {
		return nil
	}
	w.partial = p
	if p {
		return []Event{{Kind: EventPartialRevocation, Time: now, Reason: "some regions report the key revoked, others do not"}}
	}
	return []Event{{Kind: EventPartialRevocationCleared, Time: now}}
}

func (w *Wrapper) emit(evs []Event) {
	for _, e := range evs {
		attrs := []any{slog.String("event", e.Kind.String())}
		if e.Region != "" {
			attrs = append(attrs, slog.String("region", e.Region))
		}
		if e.From != "" {
			attrs = append(attrs, slog.String("from", e.From))
		}
		if e.Kind == EventRegionDown {
			attrs = append(attrs, slog.String("error_kind", e.ErrKind.String()))
		}
		if e.Reason != "" {
			attrs = append(attrs, slog.String("reason", e.Reason))
		}
		level := slog.LevelInfo
		switch e.Kind {
		case EventRegionDown:
			level = slog.LevelWarn
		case EventPartialRevocation:
			level = slog.LevelError
		}
		w.log.Log(context.Background(), level, "key vault failover", attrs...)
		if w.onEvent != nil {
			w.onEvent(e)
		}
	}
}

// wake tells the prober its schedule may have changed.
func (w *Wrapper) wake() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// dueLocked returns the regions to probe now, marking them as being
// probed, and how long until the next one is due.
func (w *Wrapper) dueLocked(now time.Time) (due []int, wait time.Duration) {
	wait = w.probeEvery
	for i, r := range w.regions {
		if r.probing {
			continue
		}
		var at time.Time
		switch {
		case r.state != StateClosed:
			at = r.retryAt
		case r.revoked || i < w.active:
			if r.nextProbe.IsZero() {
				r.nextProbe = now.Add(w.probeEvery)
			}
			at = r.nextProbe
		default:
			r.nextProbe = time.Time{}
			continue
		}
		if !at.After(now) {
			r.probing = true
			if r.state == StateOpen {
				r.state = StateHalfOpen
			}
			due = append(due, i)
			continue
		}
		wait = min(wait, at.Sub(now))
	}
	return due, wait
}

// loop runs the prober until Close.
func (w *Wrapper) loop() {
	defer close(w.loopDone)
	for {
		w.mu.Lock()
		due, wait := w.dueLocked(w.now())
		w.mu.Unlock()
		for _, i := range due {
			w.probes.Go(func() { w.probe(i) })
		}
		fired := make(chan struct{})
		stop := w.afterFunc(wait, func() { close(fired) })
		select {
		case <-fired:
		case <-w.kick:
			stop()
		case <-w.stop:
			stop()
			return
		}
	}
}

// probe asks region i for its key, as the half-open test of an open
// circuit or to watch a region we are not using.
func (w *Wrapper) probe(i int) {
	r := w.regions[i]
	ctx, cancel := context.WithCancelCause(w.probeCtx)
	stop := w.afterFunc(r.timeout, func() { cancel(errRegionTimeout) })
	start := w.now()
	info, err := protect(ctx, "get", r, func(ctx context.Context, kw KeyWrapper) (kek.KeyInfo, error) { return kw.KeyInfo(ctx) })
	lat := w.now().Sub(start)
	stop()
	timedOut := errors.Is(context.Cause(ctx), errRegionTimeout)
	cancel(nil)

	w.mu.Lock()
	r.probing = false
	r.nextProbe = w.now().Add(w.probeEvery)
	if w.probeCtx.Err() != nil { // closing: the outcome says nothing
		if r.state == StateHalfOpen {
			r.state = StateOpen
		}
		w.mu.Unlock()
		return
	}
	w.mu.Unlock()

	if err == nil {
		var keyID string
		if keyID, err = w.judgeInfo(i, info); err == nil {
			w.recordSuccess(i, lat, keyID, true)
			w.notePartial()
			return
		}
	}
	if timedOut {
		err = timeoutError("get", r)
	}
	w.recordFailure(i, err, info.KeyID)
	w.notePartial()
	w.wake()
}

// Active returns the name of the region calls go to first.
func (w *Wrapper) Active() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.regions[w.active].name
}

// PartialRevocation reports whether some but not all regions most recently
// answered with revocation evidence: the broker should raise an alert.
func (w *Wrapper) PartialRevocation() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.partial
}

// Status returns a snapshot of every region, in priority order.
func (w *Wrapper) Status() []RegionStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := w.now()
	out := make([]RegionStatus, len(w.regions))
	for i, r := range w.regions {
		s := RegionStatus{
			Name:          r.name,
			KeyID:         r.keyID,
			Healthy:       r.usable() && !r.throttled(now),
			State:         r.state,
			LastErrorKind: r.lastKind,
			LastError:     r.lastErr,
			LastLatency:   r.lastLatency,
			Preferred:     i == 0,
			Active:        i == w.active,
			Switches:      r.switches,
			Revoked:       r.revoked,
		}
		if r.throttled(now) {
			s.ThrottledUntil = r.throttledUntil
		}
		out[i] = s
	}
	return out
}
