package main

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"
)

// foSummary is everything a bench-failover run found; it is also written
// as summary.json.
type foSummary struct {
	Started     time.Time       `json:"started"`
	Settings    foSettings      `json:"settings"`
	Duration    string          `json:"duration_per_phase"`
	Concurrency int             `json:"concurrency"`
	Connections int             `json:"connections"`
	Machine     machine         `json:"machine"`
	Phases      []foPhaseResult `json:"phases"`
	Checks      []check         `json:"checks"`
	Pass        bool            `json:"pass"`
	OutDir      string          `json:"out_dir"`
}

// foPhaseResult is one phase's figures. Latencies are in milliseconds.
type foPhaseResult struct {
	Name         string         `json:"name"`
	Outage       bool           `json:"outage"` // the primary was down: the p99 target applies
	Count        uint64         `json:"count"`
	Errors       uint64         `json:"errors"` // calls that did not end OK
	ErrorDist    map[string]int `json:"error_distribution,omitempty"`
	LoadFailures int64          `json:"load_failures"` // cache loads that failed (served stale or as errors)
	RPS          float64        `json:"rps"`
	P50          float64        `json:"p50_ms"`
	P99          float64        `json:"p99_ms"`
	// SecondaryP50 is the median of kbload's own unwraps straight to the
	// secondary during the phase: its latency on this machine, under this
	// load.
	SecondaryP50     float64 `json:"secondary_p50_ms"`
	SecondarySamples int     `json:"secondary_samples"`
	TargetP99        float64 `json:"target_p99_ms,omitempty"` // hedge + 2 x SecondaryP50; 0 when no target
	PrimaryUnwraps   int64   `json:"primary_unwraps"`         // unwrapkey requests the emulator saw, faulted ones included
	SecondaryUnwraps int64   `json:"secondary_unwraps"`
	ActiveAfter      string  `json:"active_after"` // the region the broker called first at the end of the phase
	// FailBackMs is how long after the primary healed the broker called
	// it first again; -1 when it did not within the limit, 0 after a
	// phase without an outage.
	FailBackMs float64 `json:"fail_back_ms,omitempty"`
	Report     string  `json:"report"` // the raw ghz report, relative to the out dir
}

// newFoPhaseResult reduces a phase's ghz report and secondary samples.
func newFoPhaseResult(ph foPhase, rep ghzReport, samples []time.Duration, s foSettings) foPhaseResult {
	r := foPhaseResult{Name: ph.name, Outage: ph.target, Count: rep.Count, Errors: rep.errorCount(), RPS: rep.Rps, SecondarySamples: len(samples)}
	if len(rep.ErrorDist) > 0 {
		r.ErrorDist = maps.Clone(rep.ErrorDist)
	}
	p50, _ := rep.percentile(50)
	p99, _ := rep.percentile(99)
	r.P50, r.P99 = ms(p50), ms(p99)
	var xs []float64
	for _, d := range samples {
		xs = append(xs, ms(d))
	}
	r.SecondaryP50 = median(xs)
	if ph.target && len(samples) > 0 {
		r.TargetP99 = ms(s.Hedge) + 2*r.SecondaryP50
	}
	return r
}

// foJudge returns the checks of a run and whether all passed: no error
// while a region is up (an error or a failed load: the cache's stale
// serving would hide the latter), the p99 target during each outage, the
// secondary doing the work then, and the broker back on the primary after.
func foJudge(s foSummary) ([]check, bool) {
	if len(s.Phases) == 0 {
		return []check{{Name: "phases measured", Want: ">= 1", Got: "0"}}, false
	}
	var checks []check
	for _, p := range s.Phases {
		checks = append(checks, check{
			Name: p.Name + ": errors",
			Want: "0",
			Got:  fmt.Sprintf("%d of %d calls, %d failed loads", p.Errors, p.Count, p.LoadFailures),
			Pass: p.Errors == 0 && p.LoadFailures == 0 && p.Count > 0,
		})
		if !p.Outage {
			continue
		}
		got := fmt.Sprintf("%.1fms", p.P99)
		if p.SecondarySamples == 0 {
			got += " (no secondary latency sample)"
		}
		checks = append(checks, check{
			Name: p.Name + ": p99",
			Want: fmt.Sprintf("<= %.1fms (hedge %v + 2 x secondary %.1fms)", p.TargetP99, s.Settings.Hedge, p.SecondaryP50),
			Got:  got,
			Pass: p.SecondarySamples > 0 && p.P99 > 0 && p.P99 <= p.TargetP99,
		})
		checks = append(checks, check{
			Name: p.Name + ": served by the secondary",
			Want: "> 0 unwraps",
			Got:  fmt.Sprintf("%d unwraps (primary: %d requests)", p.SecondaryUnwraps, p.PrimaryUnwraps),
			Pass: p.SecondaryUnwraps > 0,
		})
		back := "not within " + foFailBackLimit.String()
		if p.FailBackMs > 0 {
			back = fmt.Sprintf("%.1fs", p.FailBackMs/1000)
		}
		checks = append(checks, check{
			Name: p.Name + ": fail-back to the primary once healed",
			Want: "within " + foFailBackLimit.String(),
			Got:  back,
			Pass: p.FailBackMs > 0,
		})
	}
	return checks, allPass(checks)
}

// printFoReport writes the human-readable result of a run.
func printFoReport(w io.Writer, s foSummary) error {
	bw := bufio.NewWriter(w)
	st := s.Settings
	fmt.Fprintf(bw, "kbload bench-failover: GetMasterKey on the cold path (cache.ttl %v), %s per phase, concurrency %d over %d connection(s)\n",
		st.TTL, s.Duration, s.Concurrency, s.Connections)
	fmt.Fprintf(bw, "regions: primary, secondary (+%v per request); hedge_delay %v, probe_interval %v, fail_back_after %d\n\n",
		st.SecondaryLatency, st.Hedge, st.ProbeInterval, st.FailBackAfter)

	tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "phase\tcalls\tRPS\terrors\tfailed loads\tp50\tp99\tp99 target\tsecondary p50\tunwraps primary/secondary\tactive after\tfail-back\n")
	for _, p := range s.Phases {
		target, back := "-", "-"
		if p.TargetP99 > 0 {
			target = fmt.Sprintf("%.1fms", p.TargetP99)
		}
		switch {
		case p.FailBackMs > 0:
			back = fmt.Sprintf("%.1fs", p.FailBackMs/1000)
		case p.FailBackMs < 0:
			back = "none"
		}
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%d\t%d\t%.1fms\t%.1fms\t%s\t%.1fms\t%d/%d\t%s\t%s\n",
			p.Name, p.Count, p.RPS, p.Errors, p.LoadFailures, p.P50, p.P99, target, p.SecondaryP50,
			p.PrimaryUnwraps, p.SecondaryUnwraps, p.ActiveAfter, back)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	m := s.Machine
	fmt.Fprintf(bw, "\nmachine: %d CPU(s), %s, %s; broker built with %s, kbload with %s\n",
		m.CPUs, m.CPUModel, m.OSArch, m.BrokerGoVersion, m.GoVersion)
	for _, p := range s.Phases {
		for _, msg := range slices.Sorted(maps.Keys(p.ErrorDist)) {
			fmt.Fprintf(bw, "error: %s: %d x %s\n", p.Name, p.ErrorDist[msg], truncate(msg, 200))
		}
	}
	printChecks(bw, s.Checks, 58, 48)
	fmt.Fprintf(bw, "\nresult: %s (reports in %s)\n", passFail(s.Pass), s.OutDir)
	return bw.Flush()
}
