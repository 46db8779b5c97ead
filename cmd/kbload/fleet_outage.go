package main

import (
	"context"
	"time"

	"github.com/keybroker/keybroker/internal/akvemu"
)

// outageResult is scenario (c) for one N: two vaults, the primary answers
// 503 for a while, then recovers.
type outageResult struct {
	N    int
	Down time.Duration // simulated
	// Key Vault calls per node while the primary was down, per region.
	PrimaryDuring, SecondaryDuring float64
	// ... and from its recovery until the last node failed back.
	PrimaryAfter, SecondaryAfter float64
	// Time from the primary's recovery until each node's calls go to it
	// again (simulated time).
	BackP50, BackMax time.Duration
	NotBack          int // nodes still on the secondary at the end
	Pauses           int64
}

// runOutage is scenario (c): N nodes with two regions (each vault holds a
// key of its own; every node a copy under each), one interval of steady
// state, the primary answering 503 for Outage, then recovered; time runs
// Scale times faster, limits Scale times higher, as in (a).
func runOutage(ctx context.Context, f *fleetEnv, n int, s fleetSettings) (outageResult, error) {
	r := outageResult{N: n, Down: s.Outage}
	iv := s.scaled(s.Interval)
	if err := f.emu.SetThrottle(akvemu.Throttle{Enabled: true, Scale: f.throttleScale(s.Scale)}); err != nil {
		return r, err
	}
	nodes, err := f.buildNodes(ctx, n, nodeOpts{regions: 2, keyInfoInterval: s.scaled(time.Hour), cacheTTL: s.scaled(time.Hour),
		probeInterval: s.scaled(30 * time.Second), failBackAfter: 3})
	if err != nil {
		return r, err
	}
	defer f.removeNodes(nodes)
	ctl := f.emu.Control()
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	start := time.Now()
	wait := runNodes(rctx, nodes, iv, iv/2, start)
	defer wait()
	defer cancel()
	sleepCtx(ctx, iv+iv/10)
	down := time.Now()
	if err := ctl.InjectFault(ctx, akvemu.Fault{Host: fleetPrimary, Status: 503}); err != nil {
		return r, err
	}
	sleepCtx(ctx, s.scaled(s.Outage))
	if err := ctl.ClearFaults(ctx); err != nil {
		return r, err
	}
	up := time.Now()
	back := make([]time.Duration, n)
	deadline := up.Add(3*iv + 10*s.scaled(30*time.Second))
	for left := n; left > 0 && time.Now().Before(deadline) && ctx.Err() == nil; {
		left = 0
		for i, nd := range nodes {
			if back[i] != 0 {
				continue
			}
			if nd.fo.Active() == "primary" {
				back[i] = max(1, time.Since(up))
			} else {
				left++
			}
		}
		sleepCtx(ctx, 100*time.Millisecond)
	}
	end := time.Now()
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	var times []time.Duration
	for i, nd := range nodes {
		calls := func(reg int, from, to time.Time) int {
			return len(nd.logs[reg].between(from, to)) + len(nd.logs[reg].getsBetween(from, to))
		}
		r.PrimaryDuring += float64(calls(0, down, up))
		r.SecondaryDuring += float64(calls(1, down, up))
		r.PrimaryAfter += float64(calls(0, up, end))
		r.SecondaryAfter += float64(calls(1, up, end))
		if back[i] == 0 {
			r.NotBack++
		} else {
			times = append(times, time.Duration(float64(back[i])*s.Scale))
		}
		r.Pauses += nd.pauses.Load()
	}
	for _, p := range []*float64{&r.PrimaryDuring, &r.SecondaryDuring, &r.PrimaryAfter, &r.SecondaryAfter} {
		*p /= float64(n)
	}
	sorted := sortedDurations(times)
	r.BackP50 = quantile(sorted, 0.5)
	if len(sorted) > 0 {
		r.BackMax = sorted[len(sorted)-1]
	}
	return r, nil
}
