package failover

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// Causes of an attempt's cancellation, to tell apart what it says about the
// region.
var (
	errRegionTimeout = errors.New("failover: region timed out")
	errHedgeLost     = errors.New("failover: another region answered first")
	errCallOver      = errors.New("failover: call over")
)

// opSpec describes one operation for run.
type opSpec[T any] struct {
	op   string // kek.Error.Op: wrap, unwrap, get
	call func(ctx context.Context, kw KeyWrapper) (T, error)
	// judge, optional, inspects a successful answer: it returns the key
	// identifier it shows, and an error when the answer counts as a
	// failure after all (a disabled key).
	judge func(region int, v T) (keyID string, err error)
	// discard, optional, clears an answer nobody will use (a hedging
	// loser's plaintext key).
	discard func(T)
}

// outcome is what one region did in a call.
type outcome struct {
	tried      bool
	err        error         // tried: the classified failure
	judged     any           // tried: the answer judged a failure, if any
	why        string        // not tried: the reason
	retryAfter time.Duration // not tried because throttled: time left
	deadline   bool          // not tried for lack of time
}

type result[T any] struct {
	idx     int
	seq     int64
	val     T
	err     error
	judged  any
	neutral bool // the outcome says nothing about the region
}

// run calls the regions cands (in priority order) as described in the
// package documentation. It returns the first success, or ok false and
// what each region did; err is set only when ctx ended.
func run[T any](ctx context.Context, w *Wrapper, cands []int, s opSpec[T]) (val T, ok bool, outs map[int]*outcome, err error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, false, nil, err
	}
	callCtx, cancelCall := context.WithCancelCause(ctx)
	defer cancelCall(errCallOver)
	var winner atomic.Int64
	winner.Store(math.MaxInt64)
	results := make(chan result[T])
	outs = map[int]*outcome{}
	attempts := 0
	maxAttempts := w.maxAttempts
	if maxAttempts == 0 {
		maxAttempts = len(cands)
	}
	var seq int64

	for round := 1; ; round++ {
		w.mu.Lock()
		order, skips := w.planLocked(cands, w.now())
		hedge := w.hedgeDelayLocked()
		w.mu.Unlock()
		for _, sk := range skips {
			if o := outs[sk.idx]; o == nil || !o.tried {
				outs[sk.idx] = &outcome{why: sk.why, retryAfter: sk.retryAfter}
			}
		}

		next, inflight, started := 0, 0, 0
		var hedgeC chan struct{}
		stopHedge := func() bool { return false }
		// start starts the next region of order that may be called, and
		// arms the hedge timer for the one after it.
		start := func() {
			stopHedge()
			hedgeC = nil
			for next < len(order) {
				i := order[next]
				next++
				if attempts >= maxAttempts {
					if o := outs[i]; o == nil || !o.tried {
						outs[i] = &outcome{why: "not tried: attempt budget spent"}
					}
					continue
				}
				if !w.canFinish(ctx, i) {
					if o := outs[i]; o == nil || !o.tried {
						outs[i] = &outcome{why: "not tried: too close to the caller's deadline", deadline: true}
					}
					continue
				}
				attempts++
				started++
				inflight++
				seq++
				go attempt(ctx, callCtx, w, i, seq, &winner, s, results)
				if hedge > 0 && next < len(order) {
					c := make(chan struct{})
					hedgeC = c
					stopHedge = w.afterFunc(hedge, func() { close(c) })
				}
				return
			}
		}
		start()
		for inflight > 0 {
			select {
			case r := <-results:
				inflight--
				if r.neutral {
					continue
				}
				if r.err == nil {
					stopHedge()
					if err := ctx.Err(); err != nil {
						if s.discard != nil {
							s.discard(r.val)
						}
						return zero, false, nil, err
					}
					winner.Store(r.seq)
					cancelCall(errHedgeLost)
					return r.val, true, nil, nil
				}
				outs[r.idx] = &outcome{tried: true, err: r.err, judged: r.judged}
				start()
			case <-hedgeC:
				hedgeC = nil
				start()
			case <-ctx.Done():
				stopHedge()
				return zero, false, nil, ctx.Err()
			}
		}
		stopHedge()
		if err := ctx.Err(); err != nil {
			return zero, false, nil, err
		}
		if started == 0 || attempts >= maxAttempts || !anyOutage(outs) {
			return zero, false, outs, nil
		}
		d := w.backoff(round)
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
			return zero, false, outs, nil
		}
		fired := make(chan struct{})
		stop := w.afterFunc(d, func() { close(fired) })
		select {
		case <-fired:
		case <-ctx.Done():
			stop()
			return zero, false, nil, ctx.Err()
		}
	}
}

func anyOutage(outs map[int]*outcome) bool {
	for _, o := range outs {
		if o.tried && !kek.KindOf(o.err).IsRevocation() && kek.KindOf(o.err) != kek.KindInvalidInput {
			return true
		}
	}
	return false
}

// canFinish reports whether an attempt on region i can finish before ctx's
// deadline, judging by the region's median recent latency.
func (w *Wrapper) canFinish(ctx context.Context, i int) bool {
	dl, ok := ctx.Deadline()
	if !ok {
		return true
	}
	w.mu.Lock()
	est, _ := w.regions[i].lat.quantile(0.5)
	w.mu.Unlock()
	return time.Until(dl) > est
}

// attempt makes one call to region i, records its outcome and hands it to
// run, or clears it when run no longer listens.
func attempt[T any](ctx, callCtx context.Context, w *Wrapper, i int, seq int64, winner *atomic.Int64, s opSpec[T], results chan<- result[T]) {
	r := w.regions[i]
	actx, cancel := context.WithCancelCause(callCtx)
	stop := w.afterFunc(r.timeout, func() { cancel(errRegionTimeout) })
	start := w.now()
	v, err := protect(actx, s.op, r, s.call)
	lat := w.now().Sub(start)
	stop()
	cause := context.Cause(actx)
	cancel(nil)

	res := result[T]{idx: i, seq: seq}
	var keyID string
	if err == nil {
		if s.judge != nil {
			keyID, err = s.judge(i, v)
		}
		if err == nil {
			res.val = v
			w.recordSuccess(i, lat, keyID, false)
			deliver(callCtx, results, res, s.discard)
			return
		}
		res.judged = v
	}
	// The region's own timeout and a lost hedging race are judged before
	// the caller's context: a caller usually returns as soon as the winner
	// answers, long before a black-holed loser does, and that loser must
	// still be marked down.
	switch {
	case errors.Is(cause, errRegionTimeout):
		err = timeoutError(s.op, r)
	case errors.Is(cause, errHedgeLost) && seq < winner.Load():
		// It had a head start and still lost: as good as no answer.
		err = &kek.Error{Kind: kek.KindUnavailable, Op: s.op, Region: r.name,
			Err: errors.New("failover: no answer before another region answered")}
	case ctx.Err() != nil:
		res.neutral = true // the caller gave up; the region is not to blame
	case actx.Err() == nil || cause == nil:
		// A real answer: err is the region's own.
	default:
		res.neutral = true // started after the winner: it had no fair chance
	}
	res.err = err
	if !res.neutral {
		w.recordFailure(i, err, keyID)
	}
	deliver(callCtx, results, res, nil)
}

func deliver[T any](callCtx context.Context, results chan<- result[T], res result[T], discard func(T)) {
	select {
	case results <- res:
	case <-callCtx.Done():
		if res.err == nil && discard != nil {
			discard(res.val)
		}
	}
}

func timeoutError(op string, r *region) error {
	return &kek.Error{Kind: kek.KindUnavailable, Op: op, Region: r.name,
		Err: fmt.Errorf("failover: no answer within %v", r.timeout)}
}

// protect calls f, turning a panic in a regional wrapper into an error:
// one buggy region must not bring the broker down.
func protect[T any](ctx context.Context, op string, r *region, f func(context.Context, KeyWrapper) (T, error)) (v T, err error) {
	defer func() {
		if p := recover(); p != nil {
			var zero T
			v = zero
			err = &kek.Error{Kind: kek.KindUnknown, Op: op, Region: r.name,
				Err: errors.New("failover: the region's key wrapper panicked; this is a bug in it")}
		}
	}()
	return f(ctx, r.kw)
}

// aggregate turns what the regions cands did into the call's error, per the
// rules in the package documentation. judged is the answer to return with
// a nil error instead, when the verdict is revocation and the first
// revoking region answered with one (KeyInfo of a disabled key).
func (w *Wrapper) aggregate(op string, cands []int, outs map[int]*outcome) (judged any, err error) {
	var revoked, other, invalid, skipped []int
	allThrottled, anyDeadline := true, false
	minRetry := time.Duration(math.MaxInt64)
	for _, i := range cands {
		o := outs[i]
		if o == nil {
			o = &outcome{why: "not tried"}
			outs[i] = o
		}
		if !o.tried {
			skipped = append(skipped, i)
			if o.retryAfter > 0 {
				minRetry = min(minRetry, o.retryAfter)
			} else {
				allThrottled = false
			}
			anyDeadline = anyDeadline || o.deadline
			continue
		}
		switch k := kek.KindOf(o.err); {
		case k.IsRevocation():
			revoked = append(revoked, i)
		case k == kek.KindInvalidInput:
			invalid = append(invalid, i)
		default:
			other = append(other, i)
			var ke *kek.Error
			if k == kek.KindThrottled && errors.As(o.err, &ke) && ke.RetryAfter > 0 {
				minRetry = min(minRetry, ke.RetryAfter)
			} else {
				allThrottled = false
			}
		}
	}
	parts, _ := describe(w, cands, outs)
	switch {
	case len(revoked) > 0 && len(other) == 0:
		first := outs[revoked[0]]
		if first.judged != nil {
			return first.judged, nil
		}
		return nil, asKekError(first.err, op, w.regions[revoked[0]].name)
	case len(revoked) > 0:
		return nil, &kek.Error{Kind: kek.KindUnavailable, Op: op, Err: fmt.Errorf(
			"%w: %s; check the key's state and access policy in every region: keys in memory keep being served meanwhile",
			ErrPartialRevocation, parts)}
	case len(other) == 0 && len(skipped) == 0 && len(invalid) > 0:
		return nil, asKekError(outs[invalid[0]].err, op, w.regions[invalid[0]].name)
	case allThrottled && minRetry < math.MaxInt64 && len(invalid) == 0:
		return nil, &kek.Error{Kind: kek.KindThrottled, Op: op, RetryAfter: minRetry, Err: fmt.Errorf(
			"%w: %s; every region is throttling requests: retry after %v", ErrAllRegionsFailed, parts, minRetry)}
	case anyDeadline && len(revoked)+len(other)+len(invalid) == 0:
		return nil, &kek.Error{Kind: kek.KindUnavailable, Op: op, Err: fmt.Errorf(
			"%w: %s; give the call a longer deadline (%w)", ErrAllRegionsFailed, parts, context.DeadlineExceeded)}
	}
	return nil, &kek.Error{Kind: kek.KindUnavailable, Op: op, Err: fmt.Errorf(
		"%w: %s; check network access to the key vaults and their health: keys in memory keep being served meanwhile",
		ErrAllRegionsFailed, parts)}
}

// describe lists, for an error message, each region of idx with the kind
// of its failure and a short detail (code, HTTP status, reason; never the
// underlying error text, which may be long). revoked reports revocation
// evidence among them.
func describe(w *Wrapper, idx []int, outs map[int]*outcome) (parts string, revoked bool) {
	var b strings.Builder
	for n, i := range idx {
		if n > 0 {
			b.WriteString(", ")
		}
		b.WriteString(w.regions[i].name)
		b.WriteString(": ")
		o := outs[i]
		switch {
		case o == nil:
			b.WriteString("not tried")
		case !o.tried:
			b.WriteString(o.why)
		default:
			k := kek.KindOf(o.err)
			revoked = revoked || k.IsRevocation()
			b.WriteString(k.String())
			if d := detail(o.err); d != "" {
				b.WriteString(" (" + d + ")")
			}
		}
	}
	return b.String(), revoked
}

func detail(err error) string {
	var ke *kek.Error
	if !errors.As(err, &ke) {
		return "unclassified error"
	}
	var d []string
	if ke.Code != "" {
		d = append(d, ke.Code)
	}
	if ke.Status != 0 {
		d = append(d, fmt.Sprintf("HTTP %d", ke.Status))
	}
	if ke.RetryAfter > 0 {
		d = append(d, fmt.Sprintf("retry after %v", ke.RetryAfter))
	}
	if len(d) == 0 && ke.Err != nil && strings.HasPrefix(ke.Err.Error(), "failover: ") {
		d = append(d, strings.TrimPrefix(ke.Err.Error(), "failover: "))
	}
	return strings.Join(d, ", ")
}

// asKekError makes sure a region's error reaches the broker as a *kek.Error.
func asKekError(err error, op, region string) error {
	var ke *kek.Error
	if errors.As(err, &ke) {
		return err
	}
	return &kek.Error{Kind: kek.KindOf(err), Op: op, Region: region, Err: err}
}
