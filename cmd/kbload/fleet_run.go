package main

import (
	"context"
	"fmt"
	"time"

	"github.com/keybroker/keybroker/internal/akvemu"
)

// fleetSettings are one bench-fleet run's parameters.
type fleetSettings struct {
	Interval  time.Duration // the production validation.interval simulated
	Scale     float64       // steady state and outage: time runs Scale times faster, limits Scale times higher
	Intervals int           // steady-state intervals measured
	KeySize   int
	HSM       bool
	Outage    time.Duration // scenario c: primary down this long (simulated time)
}

// scaled returns d in the simulation's time.
func (s fleetSettings) scaled(d time.Duration) time.Duration {
	return time.Duration(float64(d) / s.Scale)
}

// steadyResult is scenario (a) for one N.
type steadyResult struct {
	N                int
	Unwraps, Gets    int     // in the measured window, all nodes
	GetsExpected     float64 // N × window / KeyInfoInterval
	PerInterval      float64 // unwraps per node per interval
	MinPerNode       int     // fewest unwraps a node made in the window
	MaxPerNode       int
	MaxInOneInterval int   // most unwraps a node made within any one interval (start-up excluded)
	Throttled        int64 // 429s answered by the vault in the windows measured (start-up left out)
	Pauses, Degraded int64
	FailedChecks     int64 // validity checks that failed (timeouts on an overloaded machine, 429s)
	NotServing       int
	FirstError       string // a start-up error of a node that never served
}

// runSteady is scenario (a): N nodes for 4.1 + Intervals intervals; the
// first 4.1 (start-up loads spread over two intervals, each node's first
// check one to two intervals after its load) are left out of the window
// measured.
func runSteady(ctx context.Context, f *fleetEnv, n int, s fleetSettings) (steadyResult, error) {
	iv := s.scaled(s.Interval)
	if err := f.emu.SetThrottle(akvemu.Throttle{Enabled: true, Scale: f.throttleScale(s.Scale)}); err != nil {
		return steadyResult{}, err
	}
	nodes, err := f.buildNodes(ctx, n, nodeOpts{regions: 1, keyInfoInterval: s.scaled(time.Hour), cacheTTL: s.scaled(time.Hour)})
	if err != nil {
		return steadyResult{}, err
	}
	defer f.removeNodes(nodes)
	f.emu.Control().ResetThrottleCounters(ctx) //nolint:errcheck // in-process: cannot fail but by a closed emulator
	rctx, cancel := context.WithCancel(ctx)
	start := time.Now()
	// Steady state, not a cold start: the nodes start spread over two
	// intervals, at half the rate of their checks (scenario b starts them
	// at once). A node's first check comes one to two intervals after its
	// start-up load, so every node is in its steady rhythm four intervals
	// after the start.
	wait := runNodes(rctx, nodes, iv, 2*iv, start)
	from := start.Add(4*iv + iv/10)
	to := from.Add(time.Duration(s.Intervals) * iv)
	sleepCtx(ctx, time.Until(to)+iv/20)
	cancel()
	wait()
	if ctx.Err() != nil {
		return steadyResult{}, ctx.Err()
	}
	r := steadyResult{N: n, MinPerNode: 1 << 30}
	for _, nd := range nodes {
		in := nd.logs[0].between(from, to)
		r.Unwraps += len(in)
		r.MinPerNode = min(r.MinPerNode, len(in))
		r.MaxPerNode = max(r.MaxPerNode, len(in))
		// After the node served: its start-up load (retried when the
		// machine was too slow) is not a check.
		served := start.Add(time.Duration(nd.servedAt.Load()))
		if nd.servedAt.Load() == 0 {
			r.NotServing++
			served = to
			if e, ok := nd.warmErr.Load().(string); ok && r.FirstError == "" {
				r.FirstError = e
			}
		}
		after := nd.logs[0].between(served.Add(time.Millisecond), to.Add(iv))
		r.MaxInOneInterval = max(r.MaxInOneInterval, maxInWindow(after, iv*95/100))
		r.FailedChecks += nd.failed.Load()
		r.Gets += len(nd.logs[0].getsBetween(from, to))
		r.Pauses += nd.pauses.Load()
		r.Degraded += nd.degraded.Load()
	}
	r.PerInterval = float64(r.Unwraps) / float64(n*s.Intervals)
	r.GetsExpected = float64(n) * float64(to.Sub(from)) / float64(s.scaled(time.Hour))
	for _, w := range f.emu.ThrottleCounters() {
		if !w.Start.Before(from.Truncate(akvemu.ThrottleWindow)) && w.Start.Before(to) {
			r.Throttled += w.Throttled
		}
	}
	return r, nil
}

// maxInWindow is the most times within any span shorter than w.
func maxInWindow(ts []time.Time, w time.Duration) int {
	best, j := 0, 0
	for i := range ts {
		for ts[i].Sub(ts[j]) >= w {
			j++
		}
		best = max(best, i-j+1)
	}
	return best
}

// coldResult is scenario (b) for one N.
type coldResult struct {
	N                 int
	Limit             int           // calls per 10 s window
	T                 time.Duration // N calls at the vault's rate
	Target            time.Duration // 1.5 T + 5 s
	P50, P99, Max     time.Duration
	NotServing        int     // nodes without their key at the end (gave up or too slow)
	Calls429          int     // 429s the nodes got
	CallsMean         float64 // every Key Vault call per node until all served, checks included
	CallsMax          int
	StartMean         float64 // start-up loads per node (attempts until served)
	StartMax          int
	Pauses            int64
	Series            []servingPoint // nodes serving over time
	Windows           []akvemu.ThrottleCounts
	Start             time.Time
	ChecksDuringStart int // scheduled-check calls among them
}

type servingPoint struct {
	At      time.Duration
	Serving int
}

// runCold is scenario (b): N nodes started at once against the vault's
// real limits (no scaling: the windows are Azure's 10 s), with the
// production interval for their checks.
func runCold(ctx context.Context, f *fleetEnv, n int, s fleetSettings) (coldResult, error) {
	if err := f.emu.SetThrottle(akvemu.Throttle{Enabled: true, Scale: f.throttleScale(1)}); err != nil {
		return coldResult{}, err
	}
	limit := f.limit
	r := coldResult{N: n, Limit: limit}
	r.T = time.Duration(float64(n) / (float64(limit) / 10) * float64(time.Second))
	r.Target = r.T*3/2 + 5*time.Second
	nodes, err := f.buildNodes(ctx, n, nodeOpts{regions: 1, keyInfoInterval: time.Hour, cacheTTL: time.Hour})
	if err != nil {
		return r, err
	}
	defer f.removeNodes(nodes)
	f.emu.Control().ResetThrottleCounters(ctx) //nolint:errcheck // in-process
	rctx, cancel := context.WithCancel(ctx)
	r.Start = time.Now()
	wait := runNodes(rctx, nodes, s.Interval, 0, r.Start)
	deadline := r.Start.Add(r.Target + 30*time.Second)
	tick := time.NewTicker(250 * time.Millisecond)
	for {
		c := servingCount(nodes)
		r.Series = append(r.Series, servingPoint{At: time.Since(r.Start), Serving: c})
		if c == n || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
		}
	}
	tick.Stop()
	end := time.Now()
	cancel()
	wait()
	if ctx.Err() != nil {
		return r, ctx.Err()
	}
	var served []time.Duration
	total, startTotal := 0, 0
	for _, nd := range nodes {
		if at := nd.servedAt.Load(); at != 0 {
			served = append(served, time.Duration(at))
		} else {
			r.NotServing++
		}
		c := len(nd.logs[0].between(r.Start, end)) + len(nd.logs[0].getsBetween(r.Start, end))
		total += c
		r.CallsMax = max(r.CallsMax, c)
		r.Calls429 += nd.logs[0].throttledCalls()
		r.Pauses += nd.pauses.Load()
		servedAt := end
		if at := nd.servedAt.Load(); at != 0 {
			servedAt = r.Start.Add(time.Duration(at))
		}
		// A node's start-up loads begin before it serves (the unwrap that
		// loaded it too); what follows is scheduled checks.
		st := len(nd.logs[0].between(r.Start, servedAt))
		startTotal += st
		r.StartMax = max(r.StartMax, st)
		r.ChecksDuringStart += c - st
	}
	r.CallsMean = float64(total) / float64(n)
	r.StartMean = float64(startTotal) / float64(n)
	sorted := sortedDurations(served)
	r.P50, r.P99 = quantile(sorted, 0.5), quantile(sorted, 0.99)
	if len(sorted) > 0 {
		r.Max = sorted[len(sorted)-1]
	}
	r.Windows = f.emu.ThrottleCounters()
	return r, nil
}

// sleepCtx sleeps for d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// fmtDur prints a duration in seconds with one decimal.
func fmtDur(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }
