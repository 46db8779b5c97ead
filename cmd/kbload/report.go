package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// keyOps are the emulator operations that count as Key Vault calls: the
// broker's hot path must make none of them once the key is in memory.
var keyOps = []string{"wrapkey", "unwrapkey", "encrypt", "decrypt", "get"}

// tokenOp is the emulator's name for Entra ID token requests.
const tokenOp = "token"

// servingState is GetStatus's state while all is well.
var servingState = keybrokerv1.State_STATE_SERVING.String()

// summary is everything a bench run found; it is also written as
// summary.json.
type summary struct {
	Started  time.Time      `json:"started"`
	Settings benchSettings  `json:"settings"`
	Machine  machine        `json:"machine"`
	Calls    []callSummary  `json:"calls"`
	AKV      akvCalls       `json:"akv"`
	Broker   brokerActivity `json:"broker"`
	Checks   []check        `json:"checks"`
	Pass     bool           `json:"pass"`
	OutDir   string         `json:"out_dir"`
}

// benchSettings is the load shape every call was measured with.
type benchSettings struct {
	Duration    string `json:"duration"`
	Warmup      string `json:"warmup"`
	Rounds      int    `json:"rounds"`
	Concurrency int    `json:"concurrency"`
	Connections int    `json:"connections"`
}

// machine describes where the numbers were taken: they mean little without it.
type machine struct {
	CPUs            int    `json:"cpus"`
	CPUModel        string `json:"cpu_model"`
	GoVersion       string `json:"go_version"`        // kbload's toolchain
	BrokerGoVersion string `json:"broker_go_version"` // the measured binary's
	OSArch          string `json:"os_arch"`
}

// callSummary is one call's results across rounds.
type callSummary struct {
	Call      string         `json:"call"`
	RoundRPS  []float64      `json:"round_rps"`
	RoundP50  []float64      `json:"round_p50_ms"`
	RoundP99  []float64      `json:"round_p99_ms"`
	RPS       float64        `json:"rps"`    // median of RoundRPS
	P50       float64        `json:"p50_ms"` // median of RoundP50
	P99       float64        `json:"p99_ms"` // median of RoundP99
	Count     uint64         `json:"count"`
	Errors    uint64         `json:"errors"`
	ErrorDist map[string]int `json:"error_distribution,omitempty"`
	Ratio     float64        `json:"ratio"`     // RPS / baseline RPS; 0 when the baseline has none
	MinRatio  float64        `json:"min_ratio"` // the target; 0 = no target (the baseline)
	Reports   []string       `json:"reports"`   // raw ghz reports, relative to the out dir

	// Server is "floor" for the bare grpc-go server, "" for the broker.
	Server string `json:"server,omitempty"`
	// RoundCPU is the server's CPU time per call in each round (µs; utime +
	// stime from /proc/PID/stat over the run, divided by the calls ghz
	// completed), CPUPerCall their median; 0 when unknown.
	RoundCPU    []float64 `json:"round_cpu_us_per_call,omitempty"`
	CPUPerCall  float64   `json:"cpu_us_per_call"`
	P99Ratio    float64   `json:"p99_ratio"`     // P99 / the baseline's P99
	MaxP99Ratio float64   `json:"max_p99_ratio"` // the target; 0 = none
}

// name is the call as checks and tables name it.
func (c callSummary) name() string { return serverLabel(c.Server, c.Call) }

// akvCalls are the Key Vault emulator's counters over the measured part.
type akvCalls struct {
	KeyOps   int64                       `json:"key_ops"`   // all of keyOps
	CheckOps int64                       `json:"check_ops"` // those the scheduled validity checks account for
	HotPath  int64                       `json:"hot_path"`  // KeyOps - CheckOps: must be 0
	Tokens   int64                       `json:"tokens"`
	Counters map[string]map[string]int64 `json:"counters"`
}

// newAKVCalls sums the counters (host -> operation -> count) over hosts and
// sets aside what the broker's scheduled validity checks cost: each is one
// get of the customer key and one unwrapkey per active key. Only calls
// beyond that are the hot path's.
func newAKVCalls(counters map[string]map[string]int64, b brokerActivity) akvCalls {
	a := akvCalls{Counters: counters}
	total := map[string]int64{}
	for _, ops := range counters {
		for _, op := range keyOps {
			total[op] += ops[op]
			a.KeyOps += ops[op]
		}
		a.Tokens += ops[tokenOp]
	}
	checks := int64(b.Checks)
	a.CheckOps = min(total["get"], checks) + min(total["unwrapkey"], checks*int64(b.ActiveKeys))
	a.HotPath = a.KeyOps - a.CheckOps
	return a
}

// check is one PASS/FAIL line of the judgement.
type check struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Pass bool   `json:"pass"`
}

// allPass reports whether every check passed.
func allPass(checks []check) bool {
	for _, c := range checks {
		if !c.Pass {
			return false
		}
	}
	return true
}

// passFail is a verdict as the reports print it.
func passFail(pass bool) string {
	if pass {
		return "PASS"
	}
	return "FAIL"
}

// printChecks writes the checks of a report under their heading, the names
// and wants padded to the widths given so the columns line up.
func printChecks(w io.Writer, checks []check, nameWidth, wantWidth int) {
	fmt.Fprintln(w, "\nchecks:")
	for _, c := range checks {
		fmt.Fprintf(w, "  %s  %-*s want %-*s got %s\n", passFail(c.Pass), nameWidth, c.Name, wantWidth, c.Want, c.Got)
	}
}

// roundResult is one ghz run of one call in one round.
type roundResult struct {
	report   ghzReport
	file     string
	cpu      time.Duration // the server's CPU time over the run
	cpuKnown bool
}

// summarizeCall reduces one call's rounds to medians. Medians, not means:
// one round hit by a noisy neighbour must not move the result.
func summarizeCall(call string, minRatio float64, rounds []roundResult) callSummary {
	c := callSummary{Call: call, MinRatio: minRatio}
	for _, r := range rounds {
		c.RoundRPS = append(c.RoundRPS, r.report.Rps)
		p50, _ := r.report.percentile(50)
		p99, _ := r.report.percentile(99)
		c.RoundP50 = append(c.RoundP50, ms(p50))
		c.RoundP99 = append(c.RoundP99, ms(p99))
		c.Count += r.report.Count
		c.Errors += r.report.errorCount()
		for msg, n := range r.report.ErrorDist {
			if c.ErrorDist == nil {
				c.ErrorDist = map[string]int{}
			}
			c.ErrorDist[msg] += n
		}
		c.Reports = append(c.Reports, r.file)
		if us, ok := r.cpuPerCall(); ok {
			c.RoundCPU = append(c.RoundCPU, us)
		}
	}
	c.CPUPerCall = median(c.RoundCPU)
	c.RPS = median(c.RoundRPS)
	c.P50 = median(c.RoundP50)
	c.P99 = median(c.RoundP99)
	return c
}

// setRatios fills Ratio for every call against calls[0], the baseline.
func setRatios(calls []callSummary) {
	if len(calls) == 0 {
		return
	}
	base := calls[0].RPS
	for i := range calls {
		calls[i].Ratio = ratio(calls[i].RPS, base)
		calls[i].P99Ratio = ratio(calls[i].P99, calls[0].P99)
	}
}

// judge returns the checks of a bench run and whether all passed. The
// first call is the baseline; every call with a MinRatio must reach it.
func judge(calls []callSummary, akv akvCalls, b brokerActivity) ([]check, bool) {
	var checks []check
	if len(calls) == 0 {
		return []check{{Name: "calls measured", Want: ">= 1", Got: "0"}}, false
	}
	base := calls[0]
	for _, c := range calls[1:] {
		if c.MinRatio == 0 {
			continue
		}
		got := "no baseline RPS"
		if base.RPS > 0 {
			got = fmt.Sprintf("%.2fx", c.Ratio)
		}
		checks = append(checks, check{
			Name: fmt.Sprintf("%s RPS vs %s", c.name(), base.name()),
			Want: fmt.Sprintf(">= %.2fx", c.MinRatio),
			Got:  got,
			Pass: base.RPS > 0 && c.Ratio >= c.MinRatio,
		})
	}
	for _, c := range calls[1:] {
		if c.MaxP99Ratio == 0 {
			continue
		}
		got := "no baseline p99"
		if base.P99 > 0 {
			got = fmt.Sprintf("%.2fx (%.2fms vs %.2fms)", c.P99Ratio, c.P99, base.P99)
		}
		checks = append(checks, check{
			Name: fmt.Sprintf("%s p99 vs %s", c.name(), base.name()),
			Want: fmt.Sprintf("<= %.2fx", c.MaxP99Ratio),
			Got:  got,
			Pass: base.P99 > 0 && c.P99 > 0 && c.P99Ratio <= c.MaxP99Ratio,
		})
	}
	checks = append(checks, check{
		Name: "Key Vault calls on the hot path",
		Want: "0",
		Got: fmt.Sprintf("%d (%d key operations, %d of them by %d scheduled validity check(s); %d token requests)",
			akv.HotPath+akv.Tokens, akv.KeyOps, akv.CheckOps, b.Checks, akv.Tokens),
		Pass: akv.HotPath == 0 && akv.Tokens == 0,
	})
	polls, serving := 0, b.States[servingState]
	for _, n := range b.States {
		polls += n
	}
	checks = append(checks, check{
		Name: "broker state while measured",
		Want: "SERVING",
		Got:  fmt.Sprintf("SERVING in %d of %d GetStatus polls, %d poll(s) failed", serving, polls, b.PollErrors),
		Pass: polls > 0 && serving == polls && b.PollErrors == 0,
	})
	var errs, count uint64
	for _, c := range calls {
		errs += c.Errors
		count += c.Count
	}
	checks = append(checks, check{
		Name: "errors",
		Want: "0",
		Got:  fmt.Sprintf("%d of %d calls", errs, count),
		Pass: errs == 0,
	})
	return checks, allPass(checks)
}

// printReport writes the human-readable result of a bench run.
func printReport(w io.Writer, s summary) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "kbload bench: %d round(s) x %s per call, concurrency %d over %d connection(s), after %s warm-up per call\n\n",
		s.Settings.Rounds, s.Settings.Duration, s.Settings.Concurrency, s.Settings.Connections, s.Settings.Warmup)

	tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "call\t%12s\t%s\t%9s\t%9s\t%6s\t%12s\t%s\t%9s\t%s\n", "RPS (median)", "RPS per round", "p50", "p99", "errors", "vs baseline", "target", "p99 ratio", "CPU/call")
	for _, c := range s.Calls {
		target := "baseline"
		if c.MinRatio > 0 {
			target = fmt.Sprintf(">= %.2fx", c.MinRatio)
		}
		cpu := "-"
		if c.CPUPerCall > 0 {
			cpu = fmt.Sprintf("%.1fµs", c.CPUPerCall)
		}
		call := c.Call
		if c.Server != "" {
			call = c.Server + " " + c.Call
		}
		fmt.Fprintf(tw, "%s\t%12.0f\t%s\t%7.2fms\t%7.2fms\t%6d\t%11.2fx\t%s\t%8.2fx\t%s\n",
			call, c.RPS, joinFloats(c.RoundRPS), c.P50, c.P99, c.Errors, c.Ratio, target, c.P99Ratio, cpu)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintf(bw, "\nKey Vault calls during the measured part: %d key operations (%s), %d by %d scheduled validity check(s), %d on the hot path; %d token requests\n",
		s.AKV.KeyOps, strings.Join(keyOps, "+"), s.AKV.CheckOps, s.Broker.Checks, s.AKV.HotPath, s.AKV.Tokens)
	m := s.Machine
	fmt.Fprintf(bw, "machine: %d CPU(s), %s, %s; broker built with %s, kbload with %s\n",
		m.CPUs, m.CPUModel, m.OSArch, m.BrokerGoVersion, m.GoVersion)
	for _, c := range s.Calls {
		for _, msg := range slices.Sorted(maps.Keys(c.ErrorDist)) {
			fmt.Fprintf(bw, "error: %s: %d x %s\n", shortName(c.Call), c.ErrorDist[msg], truncate(msg, 200))
		}
	}

	printChecks(bw, s.Checks, 50, 9)
	fmt.Fprintf(bw, "\nresult: %s (reports in %s)\n", passFail(s.Pass), s.OutDir)
	return bw.Flush()
}

// median of xs; 0 for none. xs is not modified.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	mid := len(s) / 2
	if len(s)%2 == 1 {
		return s[mid]
	}
	return (s[mid-1] + s[mid]) / 2
}

// ratio is x / base, or 0 when base is not positive (no baseline to
// compare with: a check on it fails rather than dividing by zero).
func ratio(x, base float64) float64 {
	if base <= 0 {
		return 0
	}
	return x / base
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// shortName is the method part of a full gRPC method name:
// "keybroker.v1.KeyBrokerService/GetMasterKey" -> "GetMasterKey", but
// "grpc.health.v1.Health/Check" -> "Health/Check" (Check alone says little).
func shortName(call string) string {
	svc, method, ok := strings.Cut(call, "/")
	if !ok {
		return call
	}
	if i := strings.LastIndexByte(svc, '.'); i >= 0 {
		svc = svc[i+1:]
	}
	if svc == "KeyBrokerService" {
		return method
	}
	return svc + "/" + method
}

func joinFloats(xs []float64) string {
	var b bytes.Buffer
	for i, x := range xs {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%.0f", x)
	}
	return b.String()
}
