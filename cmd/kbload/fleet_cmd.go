package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keybroker/keybroker/internal/akvemu"
)

// runBenchFleet is `kbload bench-fleet` (docs/capacity.md).
func runBenchFleet(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "bench-fleet", "[flags]")
	nodesFlag := fs.String("nodes", "100,500,1000,2000", "fleet `sizes` to simulate, comma-separated")
	s := fleetSettings{}
	fs.DurationVar(&s.Interval, "interval", time.Minute, "the validation.interval simulated")
	fs.Float64Var(&s.Scale, "scale", 6, "steady state: run time this `factor` faster and scale the vault's limits by it (the cold start always runs at Azure's limits and 10 s windows)")
	fs.IntVar(&s.Intervals, "intervals", 3, "steady-state intervals measured (after 4.1 intervals of start-up)")
	key := fs.String("key", "3072-hsm", "the customer key: `SIZE[-hsm]`, SIZE 2048, 3072 or 4096")
	scenarios := fs.String("scenarios", "steady,cold,outage", "scenarios to run: steady, cold, outage")
	outageNodes := fs.String("outage-nodes", "100,500", "fleet `sizes` for the outage scenario, comma-separated")
	fs.DurationVar(&s.Outage, "outage", 5*time.Minute, "outage scenario: how long the primary vault answers 503 (simulated time)")
	reports := fs.String("reports", filepath.Join("load", "reports", "fleet"), "`directory` for the SVG plot of the largest cold start")
	noFail := fs.Bool("no-fail", false, "report missed targets without failing")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ns, err := parseNodes(*nodesFlag)
	if err != nil {
		return usageErrorf("--nodes: %v", err)
	}
	ons, err := parseNodes(*outageNodes)
	if err != nil {
		return usageErrorf("--outage-nodes: %v", err)
	}
	if s.Scale <= 0 || s.Intervals < 1 || s.Interval <= 0 || s.Outage <= 0 {
		return usageErrorf("--scale, --intervals and --interval must be positive")
	}
	if s.KeySize, s.HSM, err = parseKeySpec(*key); err != nil {
		return usageErrorf("--key: %v", err)
	}
	want := map[string]bool{}
	for _, sc := range strings.Split(*scenarios, ",") {
		if sc != "steady" && sc != "cold" && sc != "outage" {
			return usageErrorf("--scenarios: unknown scenario %q: use steady, cold, outage", sc)
		}
		want[sc] = true
	}
	dir, err := os.MkdirTemp("", "kbload-fleet-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f, err := startFleetEnv(ctx, dir, s.KeySize, s.HSM)
	if err != nil {
		return err
	}
	defer f.close()

	ok := true
	fmt.Fprintf(e.stdout, "bench-fleet: the limit of an RSA %d %s key (%d calls per 10 s), enforced by the emulator on its RSA 2048 keys (cheaper RSA for this machine, same limit); %s\n",
		s.KeySize, protection(s.HSM), f.limit, machineLine())
	if want["steady"] {
		fmt.Fprintf(e.stdout, "\n(a) steady state: validation.interval %v simulated as %v (time x%g, the vault's limits x%g); %d intervals measured after 4.1 of start-up\n",
			s.Interval, s.scaled(s.Interval), s.Scale, s.Scale, s.Intervals)
		var rs []steadyResult
		for _, n := range ns {
			r, err := runSteady(ctx, f, n, s)
			if err != nil {
				return err
			}
			rs = append(rs, r)
			ok = checkSteady(e.stderr, r, s) && ok
		}
		printSteady(e.stdout, rs, s)
	}
	if want["cold"] {
		fmt.Fprintf(e.stdout, "\n(b) cold start: every node started at once, Azure's limit (%d calls of this key per 10 s window, not scaled), checks every %v\n",
			coldLimit(s), s.Interval)
		var rs []coldResult
		for _, n := range ns {
			r, err := runCold(ctx, f, n, s)
			if err != nil {
				return err
			}
			rs = append(rs, r)
			ok = checkCold(e.stderr, r) && ok
		}
		printCold(e.stdout, rs)
		if len(rs) > 0 {
			last := rs[len(rs)-1]
			path := filepath.Join(*reports, fmt.Sprintf("cold-start-%d.svg", last.N))
			if err := writeColdPlot(path, last); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "plot: %s\n", path)
		}
	}
	if want["outage"] {
		fmt.Fprintf(e.stdout, "\n(c) region outage: two vaults, the primary answers 503 for %v then recovers; interval %v simulated as %v (time x%g, limits x%g), probe interval 30s, fail back after 3 probes; times and calls in simulated time\n",
			s.Outage, s.Interval, s.scaled(s.Interval), s.Scale, s.Scale)
		var rs []outageResult
		for _, n := range ons {
			r, err := runOutage(ctx, f, n, s)
			if err != nil {
				return err
			}
			rs = append(rs, r)
			if r.NotBack > 0 || r.Pauses > 0 {
				ok = false
				fmt.Fprintf(e.stderr, "MISS outage N=%d: %d nodes not failed back, %d pauses; want 0, 0\n", r.N, r.NotBack, r.Pauses)
			}
		}
		printOutage(e.stdout, rs)
	}
	if !ok && !*noFail {
		return errTargets
	}
	return nil
}

func coldLimit(s fleetSettings) int { return akvemu.CallLimit(s.HSM, s.KeySize, 1) }

func protection(hsm bool) string {
	if hsm {
		return "HSM"
	}
	return "software"
}

// parseNodes parses "100,500,2000".
func parseNodes(s string) ([]int, error) {
	var out []int
	for _, p := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(p))
		if err != nil || n < 1 || n > 100000 {
			return nil, fmt.Errorf("%q: want node counts from 1 to 100000, such as 100,500,2000", p)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseKeySpec parses SIZE[-hsm].
func parseKeySpec(s string) (int, bool, error) {
	size, hsm := strings.CutSuffix(s, "-hsm")
	n, err := strconv.Atoi(size)
	if err != nil || (n != 2048 && n != 3072 && n != 4096) {
		return 0, false, fmt.Errorf("%q: want SIZE[-hsm] with SIZE 2048, 3072 or 4096, such as 3072-hsm", s)
	}
	return n, hsm, nil
}

// checkSteady judges scenario (a) against the targets.
func checkSteady(w io.Writer, r steadyResult, s fleetSettings) bool {
	ok := true
	fail := func(format string, a ...any) {
		ok = false
		fmt.Fprintf(w, "MISS steady N=%d: "+format+"\n", append([]any{r.N}, a...)...)
	}
	if r.MaxInOneInterval > 1 {
		fail("a node made %d Key Vault calls within one interval, want 1", r.MaxInOneInterval)
	}
	if r.MinPerNode < s.Intervals-1 || r.MaxPerNode > s.Intervals+1 {
		fail("calls per node in %d intervals ranged %d-%d, want %d (±1 at the window's edges)", s.Intervals, r.MinPerNode, r.MaxPerNode, s.Intervals)
	}
	if float64(r.Gets) > 2*r.GetsExpected+3 {
		fail("%d key-info calls in the window, want about %.1f (one per node per hour)", r.Gets, r.GetsExpected)
	}
	if r.Throttled != 0 {
		fail("%d calls throttled under the vault's limit, want 0", r.Throttled)
	}
	if r.Pauses != 0 {
		fail("%d pauses, want 0", r.Pauses)
	}
	if r.NotServing != 0 {
		fail("%d nodes never loaded their key (first attempt of one: %s)", r.NotServing, r.FirstError)
	}
	return ok
}

// checkCold judges scenario (b) against the targets.
func checkCold(w io.Writer, r coldResult) bool {
	ok := true
	fail := func(format string, a ...any) {
		ok = false
		fmt.Fprintf(w, "MISS cold N=%d: "+format+"\n", append([]any{r.N}, a...)...)
	}
	if r.NotServing > 0 {
		fail("%d nodes not serving by the end", r.NotServing)
	}
	if r.Max > r.Target {
		fail("the last node served after %s, want within 1.5T+5s = %s", fmtDur(r.Max), fmtDur(r.Target))
	}
	if r.StartMax > 3 {
		fail("a node made %d start-up calls before serving, want at most 3", r.StartMax)
	}
	if r.Pauses != 0 {
		fail("%d pauses, want 0", r.Pauses)
	}
	return ok
}

func printSteady(w io.Writer, rs []steadyResult, s fleetSettings) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\tunwraps/node/interval\tmin-max per node\tmax in one interval\tkey-info calls (expected)\tcalls/node/hour at "+s.Interval.String()+"\tthrottled\tfailed checks\tpauses\tdegraded\t")
	for _, r := range rs {
		perHour := (float64(r.Unwraps+r.Gets) / float64(r.N)) * float64(time.Hour) / (float64(s.Intervals) * float64(s.Interval))
		fmt.Fprintf(tw, "%d\t%.3f\t%d-%d\t%d\t%d (%.1f)\t%.1f\t%d\t%d\t%d\t%d\t\n", r.N, r.PerInterval, r.MinPerNode, r.MaxPerNode, r.MaxInOneInterval, r.Gets, r.GetsExpected, perHour, r.Throttled, r.FailedChecks, r.Pauses, r.Degraded)
	}
	tw.Flush()
	fmt.Fprintln(w, "calls/node/hour: unwraps and key-info calls in the window; add 1 cache reload per hour (cache.ttl 1h) per key per region")
}

func printCold(w io.Writer, rs []coldResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\tT\t1.5T+5s\tp50\tp99\tmax\t429s\tstart-up calls/node mean\tmax\tall calls/node mean\tmax\tcheck calls\tpauses\tnot serving\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%d\t%.2f\t%d\t%.2f\t%d\t%d\t%d\t%d\t\n", r.N, fmtDur(r.T), fmtDur(r.Target), fmtDur(r.P50), fmtDur(r.P99), fmtDur(r.Max),
			r.Calls429, r.StartMean, r.StartMax, r.CallsMean, r.CallsMax, r.ChecksDuringStart, r.Pauses, r.NotServing)
	}
	fmt.Fprintln(w, "start-up calls: unwraps until the node served; all calls: also the scheduled checks (and key-info calls) of nodes already serving, until the last node served")
	tw.Flush()
}

func printOutage(w io.Writer, rs []outageResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "N\tdown\tcalls/node to primary while down\tto secondary\tprimary after recovery\tsecondary after\tfail back p50\tmax\tnot back\tpauses\t")
	for _, r := range rs {
		fmt.Fprintf(tw, "%d\t%v\t%.2f\t%.2f\t%.2f\t%.2f\t%s\t%s\t%d\t%d\t\n", r.N, r.Down, r.PrimaryDuring, r.SecondaryDuring, r.PrimaryAfter, r.SecondaryAfter, fmtDur(r.BackP50), fmtDur(r.BackMax), r.NotBack, r.Pauses)
	}
	tw.Flush()
}
