package failover

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// CheckRegions runs a validity check in every region at once, where the
// other calls stop at the first region that answers: a revocation in one
// region must be seen while another still serves. In each region it asks
// for the key (KeyInfo) and, when the key is enabled, unwraps each set of
// copies with it, clearing the plaintext at once. Every region is asked,
// open circuits included (the check doubles as their probe), except those
// with a Retry-After pending, which are reported throttled without a call.
// The outcomes feed each region's health as calls do, so Status and
// PartialRevocation reflect the check.
//
// report is called once per region, in priority order, from the calling
// goroutine, once every region is done: with the key as the region reported
// it and a nil error when the key is enabled and every set unwrapped; else
// with a *kek.Error naming the region (a disabled key: KindRevoked, code
// KeyDisabled, with the info). A region that had not answered when ctx
// ended is reported KindUnavailable with ctx's error in the chain.
func (w *Wrapper) CheckRegions(ctx context.Context, sets [][]kek.Wrapped, report func(region string, info kek.KeyInfo, err error)) {
	w.checkRegions(ctx, sets, true, report)
}

// CheckRegionsUnwrap is CheckRegions without the KeyInfo call when there
// are copies to unwrap: an unwrap proves the key exists, is enabled (a
// disabled key answers 403 KeyDisabled) and is usable, so a scheduled
// check costs one Key Vault call per set per region. The info reported is
// then empty.
func (w *Wrapper) CheckRegionsUnwrap(ctx context.Context, sets [][]kek.Wrapped, report func(region string, info kek.KeyInfo, err error)) {
	w.checkRegions(ctx, sets, len(sets) == 0, report)
}

func (w *Wrapper) checkRegions(ctx context.Context, sets [][]kek.Wrapped, withInfo bool, report func(region string, info kek.KeyInfo, err error)) {
	type outcome struct {
		info kek.KeyInfo
		err  error
	}
	outs := make([]outcome, len(w.regions))
	var wg sync.WaitGroup
	for i := range w.regions {
		wg.Go(func() {
			info, err := w.checkRegion(ctx, i, sets, withInfo)
			outs[i] = outcome{info, err}
		})
	}
	wg.Wait()
	w.notePartial()
	for i, o := range outs {
		report(w.regions[i].name, o.info, o.err)
	}
}

// checkRegion checks region i and records the outcome in its health.
func (w *Wrapper) checkRegion(ctx context.Context, i int, sets [][]kek.Wrapped, withInfo bool) (kek.KeyInfo, error) {
	r := w.regions[i]
	w.mu.Lock()
	now := w.now()
	throttled, left := r.throttled(now), r.throttledUntil.Sub(now)
	w.mu.Unlock()
	if throttled {
		return kek.KeyInfo{}, &kek.Error{Kind: kek.KindThrottled, Op: "get", Region: r.name, RetryAfter: left,
			Err: fmt.Errorf("failover: not asked: the region asked for no calls for another %v (Retry-After)", left.Round(time.Millisecond))}
	}

	start := w.now()
	var info kek.KeyInfo
	var err error
	if withInfo {
		info, err = checkCall(ctx, w, r, "get", func(ctx context.Context, kw KeyWrapper) (kek.KeyInfo, error) { return kw.KeyInfo(ctx) })
		if err == nil {
			_, err = w.judgeInfo(i, info)
		}
	}
	lat := w.now().Sub(start)
	for _, copies := range sets {
		if err != nil {
			break
		}
		var key []byte
		key, err = checkCall(ctx, w, r, "unwrap", func(ctx context.Context, kw KeyWrapper) ([]byte, error) { return kw.UnwrapKey(ctx, copies) })
		clear(key)
	}
	if !withInfo && len(sets) > 0 {
		lat = w.now().Sub(start) / time.Duration(len(sets)) // the unwraps' latency, for hedging
	}
	switch {
	case err == nil:
		w.recordSuccess(i, lat, info.KeyID, false)
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		// The check's own deadline: nothing learned about the region.
	default:
		w.recordFailure(i, err, info.KeyID)
	}
	return info, err
}

// checkCall makes one call to region r within its timeout, as attempt does
// for the other calls, and returns a *kek.Error naming the region.
func checkCall[T any](ctx context.Context, w *Wrapper, r *region, op string, f func(context.Context, KeyWrapper) (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, noAnswer(op, r, err)
	}
	actx, cancel := context.WithCancelCause(ctx)
	stop := w.afterFunc(r.timeout, func() { cancel(errRegionTimeout) })
	v, err := protect(actx, op, r, f)
	stop()
	cause := context.Cause(actx)
	cancel(nil)
	switch {
	case err == nil:
		return v, nil
	case ctx.Err() != nil:
		return zero, noAnswer(op, r, ctx.Err())
	case errors.Is(cause, errRegionTimeout):
		return zero, timeoutError(op, r)
	}
	err = asKekError(err, op, r.name)
	var ke *kek.Error
	if errors.As(err, &ke) && ke.Region == "" {
		named := *ke
		named.Region = r.name
		err = &named
	}
	return zero, err
}

func noAnswer(op string, r *region, ctxErr error) error {
	return &kek.Error{Kind: kek.KindUnavailable, Op: op, Region: r.name,
		Err: fmt.Errorf("failover: no answer before the check's deadline: %w", ctxErr)}
}
