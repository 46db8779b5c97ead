package main

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"
)

// Soak targets. Growth is judged on medians of the first and last thirds
// of the samples after warm-up, so one GC cycle or one reconnection burst
// does not read as a trend, while a leak that lasts the run does.
const (
	defaultMaxRSSMiB   = 64
	rssGrowthFraction  = 0.10    // of the first third's median
	rssGrowthFloor     = 4 << 20 // bytes: below this, growth is noise
	goroutineFraction  = 0.10
	goroutineFloor     = 10
	minGrowthSamples   = 6
	maxWarmup          = 2 * time.Minute
	soakCall           = "keybroker.v1.KeyBrokerService/GetMasterKey"
	soakChunkMin       = time.Second
	defaultSoakChunk   = 30 * time.Second
	defaultSoakSamples = 5 * time.Second
)

// soakFlags are the soak subcommand's flags.
type soakFlags struct {
	keybroker, ghz        string
	duration, warmup      time.Duration
	sample, chunk         time.Duration
	concurrency, connects int
	maxRSSMiB             float64
	out                   string
	noFail                bool
}

func (f *soakFlags) validate() error {
	switch {
	case f.duration < 10*time.Second:
		return usageErrorf("--duration %v: want at least 10s (make soak DURATION=10m; CI runs 1m)", f.duration)
	case f.warmup < 0 || f.warmup >= f.duration:
		return usageErrorf("--warmup %v: want 0 (automatic) up to less than --duration (%v)", f.warmup, f.duration)
	case f.sample < 0 || (f.sample > 0 && f.sample < 100*time.Millisecond):
		return usageErrorf("--sample %v: want 0 (automatic) or at least 100ms", f.sample)
	case f.chunk < soakChunkMin:
		return usageErrorf("--chunk %v: want at least %v", f.chunk, soakChunkMin)
	case f.concurrency < 1:
		return usageErrorf("--concurrency %d: want at least 1", f.concurrency)
	case f.connects < 1 || f.connects > f.concurrency:
		return usageErrorf("--connections %d: want 1 to --concurrency (%d)", f.connects, f.concurrency)
	case f.maxRSSMiB <= 0:
		return usageErrorf("--max-rss-mib %v: want a positive size in MiB", f.maxRSSMiB)
	}
	return nil
}

// defaults fills the automatic warm-up (a quarter of the run, at most
// 2m) and sampling interval (about 60 samples, 1s to 5s apart).
func (f *soakFlags) defaults() {
	if f.warmup == 0 {
		f.warmup = min(f.duration/4, maxWarmup)
	}
	if f.sample == 0 {
		f.sample = min(max(f.duration/60, time.Second), defaultSoakSamples)
	}
}

func runSoak(ctx context.Context, e *env, args []string) error {
	var f soakFlags
	fs := newFlagSet(e, "soak", "[--duration 10m] [--concurrency 50] [--connections 10] [--out DIR]")
	fs.StringVar(&f.keybroker, "keybroker", "bin/keybroker", "keybroker binary to soak (build it with: go build -o bin/ ./cmd/keybroker)")
	fs.StringVar(&f.ghz, "ghz", "", "ghz binary; empty builds the one pinned in "+ghzModFile+" into a temporary directory")
	fs.DurationVar(&f.duration, "duration", 10*time.Minute, "how long to keep the load on")
	fs.DurationVar(&f.warmup, "warmup", 0, "samples before this are not judged for growth (0: a quarter of --duration, at most 2m)")
	fs.DurationVar(&f.sample, "sample", 0, "interval between scrapes of /metrics (0: --duration/60, between 1s and 5s)")
	fs.DurationVar(&f.chunk, "chunk", defaultSoakChunk, "length of each ghz run; the load is a series of them, so ghz's per-call records stay small")
	fs.IntVar(&f.concurrency, "concurrency", 50, "concurrent clients (ghz workers)")
	fs.IntVar(&f.connects, "connections", 10, "gRPC connections the clients share")
	fs.Float64Var(&f.maxRSSMiB, "max-rss-mib", defaultMaxRSSMiB, "resident memory the broker must stay under after warm-up, in MiB")
	fs.StringVar(&f.out, "out", "", "directory for samples.csv, summary.json, the ghz reports and the broker's log (default load/reports/soak-TIMESTAMP)")
	fs.BoolVar(&f.noFail, "no-fail", false, "only report: exit 0 even when a check fails")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	f.defaults()
	if err := f.validate(); err != nil {
		return err
	}
	if err := checkKeybroker(f.keybroker); err != nil {
		return err
	}
	sess, err := newSession(ctx, e, sessionConfig{report: "soak", tmpPrefix: "kbload-soak-", out: f.out, ghz: f.ghz})
	if err != nil {
		return err
	}
	defer sess.Close()

	b, err := sess.startDev(ctx, f.keybroker, filepath.Join(sess.tmp, "dev"), "keybroker.log", os.O_TRUNC)
	if err != nil {
		return err
	}
	defer b.Stop()
	if err := checkAdminURL(b.info.AdminURL); err != nil {
		return err
	}
	if _, err := prepareBroker(ctx, b); err != nil {
		return err
	}
	if err := b.ctl.ResetCounters(ctx); err != nil {
		return fmt.Errorf("resetting the emulator's counters: %w", err)
	}

	// The clock of the soak starts with the load, not with the builds and
	// the broker's start-up.
	loadStart := time.Now()
	hc := &http.Client{}
	smp := startSampler(ctx, hc, b.info.AdminURL, f.sample)
	g := ghzRun{
		bin: sess.ghz, addr: b.info.Address, ca: b.info.CA, cert: b.info.EngineCert, key: b.info.EngineKey,
		concurrency: f.concurrency, conns: f.connects, stderr: e.stderr,
	}
	chunks, loadErr := soakLoad(ctx, e.stderr, g, f, loadStart)
	samples, scrapeErrs := smp.Stop()
	if loadErr != nil {
		return loadErr
	}
	counters, err := b.ctl.Counters(ctx)
	if err != nil {
		return fmt.Errorf("reading the emulator's counters: %w", err)
	}

	s := soakSummary{
		Started: sess.started, Duration: f.duration.String(), Warmup: f.warmup.String(), Sample: f.sample.String(),
		Concurrency: f.concurrency, Connections: f.connects, Machine: describeMachine(f.keybroker),
		AKV: sumAKV(counters), Chunks: chunks, ScrapeErrors: scrapeErrs, OutDir: sess.out,
	}
	for i, c := range chunks {
		s.Calls += c.Count
		s.Errors += c.Errors
		file := fmt.Sprintf("chunk%03d-GetMasterKey.json", i+1)
		if err := writeReport(filepath.Join(sess.out, file), c.raw); err != nil {
			return err
		}
	}
	s.Samples = samples
	s.Checks, s.Pass = judgeSoak(samples, scrapeErrs, s.Errors, loadStart.Add(f.warmup), f.maxRSSMiB)
	s.fillFigures(loadStart.Add(f.warmup))
	if n := len(samples); n > 0 {
		s.ValidityChecks = samples[n-1].Checks - samples[0].Checks
	}
	if err := writeSamplesCSV(filepath.Join(sess.out, "samples.csv"), samples, loadStart); err != nil {
		return err
	}
	if err := sess.writeSummary(s); err != nil {
		return err
	}
	if err := printSoakReport(e.stdout, s); err != nil {
		return err
	}
	if err := b.Stop(); err != nil {
		return err
	}
	return verdict(s.Pass, f.noFail)
}

// soakChunk is one ghz run of the soak.
type soakChunk struct {
	Start     time.Time      `json:"start"`
	Count     uint64         `json:"count"`
	RPS       float64        `json:"rps"`
	P99       float64        `json:"p99_ms"`
	Errors    uint64         `json:"errors"`
	ErrorDist map[string]int `json:"error_distribution,omitempty"`
	raw       []byte
}

// soakLoad keeps GetMasterKey load on until the soak's end, in ghz runs of
// --chunk: one ghz run of ten minutes would hold a record of every call,
// millions of them, in ghz's memory and report.
func soakLoad(ctx context.Context, log io.Writer, g ghzRun, f soakFlags, started time.Time) ([]soakChunk, error) {
	end := started.Add(f.duration)
	var chunks []soakChunk
	for {
		left := time.Until(end)
		if left < soakChunkMin {
			return chunks, nil
		}
		d := min(f.chunk, left)
		c := soakChunk{Start: time.Now()}
		rep, raw, err := g.run(ctx, soakCall, "{}", d)
		if err != nil {
			return nil, fmt.Errorf("soak chunk %d: %w", len(chunks)+1, err)
		}
		p99, _ := rep.percentile(99)
		c.Count, c.RPS, c.P99, c.Errors, c.ErrorDist, c.raw = rep.Count, rep.Rps, ms(p99), rep.errorCount(), rep.ErrorDist, raw
		chunks = append(chunks, c)
		fmt.Fprintf(log, "kbload: soak %5.0fs/%.0fs  %8.0f RPS  p99 %6.2fms  %d error(s)\n",
			time.Since(started).Seconds(), f.duration.Seconds(), c.RPS, c.P99, c.Errors)
	}
}

// soakSummary is everything a soak found; also summary.json.
type soakSummary struct {
	Started     time.Time `json:"started"`
	Duration    string    `json:"duration"`
	Warmup      string    `json:"warmup"`
	Sample      string    `json:"sample"`
	Concurrency int       `json:"concurrency"`
	Connections int       `json:"connections"`
	Machine     machine   `json:"machine"`
	Calls       uint64    `json:"calls"`
	Errors      uint64    `json:"errors"`
	RPS         float64   `json:"rps"` // calls over the time under load
	AKV         akvTotals `json:"akv"` // during the load
	// ValidityChecks ran during the load: each is a Key Vault get and an
	// unwrap per active key, the only Key Vault calls expected.
	ValidityChecks float64         `json:"validity_checks"`
	Figures        soakFigures     `json:"figures"`
	Chunks         []soakChunk     `json:"chunks"`
	Samples        []metricsSample `json:"samples"`
	ScrapeErrors   []string        `json:"scrape_errors,omitempty"`
	Checks         []check         `json:"checks"`
	Pass           bool            `json:"pass"`
	OutDir         string          `json:"out_dir"`
}

// soakFigures are the broker's resident memory and goroutines after
// warm-up: the numbers the README records.
type soakFigures struct {
	RSSFirstMiB, RSSLastMiB, RSSMaxMiB float64 // medians of the first and last thirds, and the peak
	GoroutinesFirst, GoroutinesLast    float64
	GoroutinesMax                      float64
	Samples                            int
}

func (s *soakSummary) fillFigures(after time.Time) {
	var under time.Duration
	for _, c := range s.Chunks {
		if c.RPS > 0 {
			under += time.Duration(float64(c.Count) / c.RPS * float64(time.Second))
		}
	}
	if under > 0 {
		s.RPS = float64(s.Calls) / under.Seconds()
	}
	post := judged(s.Samples, after)
	first, last := thirds(post)
	fig := soakFigures{Samples: len(post)}
	fig.RSSFirstMiB = mib(median(field(first, rssOf)))
	fig.RSSLastMiB = mib(median(field(last, rssOf)))
	fig.GoroutinesFirst = median(field(first, goroutinesOf))
	fig.GoroutinesLast = median(field(last, goroutinesOf))
	rss, gr := peak(post)
	fig.RSSMaxMiB, fig.GoroutinesMax = mib(rss), gr
	s.Figures = fig
}

func rssOf(m metricsSample) float64        { return m.RSS }
func goroutinesOf(m metricsSample) float64 { return m.Goroutines }

func field(samples []metricsSample, f func(metricsSample) float64) []float64 {
	out := make([]float64, len(samples))
	for i, m := range samples {
		out[i] = f(m)
	}
	return out
}

// judged are the samples taken at or after the end of warm-up.
func judged(samples []metricsSample, after time.Time) []metricsSample {
	var out []metricsSample
	for _, m := range samples {
		if !m.At.Before(after) {
			out = append(out, m)
		}
	}
	return out
}

// thirds returns the first and last thirds of samples (empty for fewer than 3).
func thirds(samples []metricsSample) (first, last []metricsSample) {
	n := len(samples) / 3
	return samples[:n], samples[len(samples)-n:]
}

// growth compares the median of the last third with the first's: it
// grows when the difference exceeds both the floor and the fraction of
// the first.
func growth(samples []metricsSample, f func(metricsSample) float64, fraction, floor float64) (first, last float64, grows bool) {
	a, b := thirds(samples)
	first, last = median(field(a, f)), median(field(b, f))
	return first, last, last-first > max(floor, fraction*first)
}

// judgeSoak returns the checks of a soak: no failed call (as ghz saw them
// and as the broker counted them), the broker SERVING throughout, resident
// memory under the target and neither memory nor goroutines growing after
// warm-up.
func judgeSoak(samples []metricsSample, scrapeErrs []string, ghzErrors uint64, warmEnd time.Time, maxRSSMiB float64) ([]check, bool) {
	var checks []check
	brokerErrs := 0.0
	if len(samples) > 0 {
		brokerErrs = samples[len(samples)-1].rpcErrors() - samples[0].rpcErrors()
	}
	checks = append(checks, check{
		Name: "failed calls",
		Want: "0",
		Got:  fmt.Sprintf("%d seen by ghz, %.0f counted by the broker", ghzErrors, brokerErrs),
		Pass: ghzErrors == 0 && brokerErrs == 0,
	})
	checks = append(checks, check{
		Name: "failed scrapes of /metrics",
		Want: "0",
		Got:  strconv.Itoa(len(scrapeErrs)),
		Pass: len(scrapeErrs) == 0,
	})
	states := statesSeen(samples)
	checks = append(checks, check{
		Name: "broker state",
		Want: "SERVING throughout",
		Got:  joinStates(samples),
		Pass: len(states) == 1 && states[0] == "SERVING",
	})
	post := judged(samples, warmEnd)
	if len(post) < minGrowthSamples {
		checks = append(checks, check{
			Name: "samples after warm-up",
			Want: fmt.Sprintf(">= %d", minGrowthSamples),
			Got:  fmt.Sprintf("%d: lengthen --duration or shorten --sample", len(post)),
		})
	} else {
		rss, _ := peak(post)
		checks = append(checks, check{
			Name: "peak resident memory after warm-up",
			Want: fmt.Sprintf("<= %.0f MiB", maxRSSMiB),
			Got:  fmt.Sprintf("%.1f MiB", mib(rss)),
			Pass: mib(rss) <= maxRSSMiB,
		})
		first, last, grows := growth(post, rssOf, rssGrowthFraction, rssGrowthFloor)
		checks = append(checks, check{
			Name: "resident memory growth",
			Want: fmt.Sprintf("<= max(%.0f MiB, %.0f%%)", mib(rssGrowthFloor), rssGrowthFraction*100),
			Got:  fmt.Sprintf("%.1f -> %.1f MiB (medians of first and last thirds)", mib(first), mib(last)),
			Pass: !grows,
		})
		first, last, grows = growth(post, goroutinesOf, goroutineFraction, goroutineFloor)
		checks = append(checks, check{
			Name: "goroutine growth",
			Want: fmt.Sprintf("<= max(%d, %.0f%%)", goroutineFloor, goroutineFraction*100),
			Got:  fmt.Sprintf("%.0f -> %.0f (medians of first and last thirds)", first, last),
			Pass: !grows,
		})
	}
	return checks, allPass(checks)
}

// writeSamplesCSV writes one line per scrape, for a spreadsheet or gnuplot.
func writeSamplesCSV(path string, samples []metricsSample, started time.Time) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := csv.NewWriter(f)
	_ = w.Write([]string{"seconds", "rss_mib", "goroutines", "rpcs", "rpc_errors", "state"})
	for _, m := range samples {
		_ = w.Write([]string{
			strconv.FormatFloat(m.At.Sub(started).Seconds(), 'f', 1, 64),
			strconv.FormatFloat(mib(m.RSS), 'f', 2, 64),
			strconv.FormatFloat(m.Goroutines, 'f', 0, 64),
			strconv.FormatFloat(m.rpcTotal(), 'f', 0, 64),
			strconv.FormatFloat(m.rpcErrors(), 'f', 0, 64),
			m.State,
		})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// printSoakReport writes the human-readable result of a soak.
func printSoakReport(w io.Writer, s soakSummary) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "kbload soak: %s of %s, %d clients over %d connection(s); warm-up %s, a sample every %s\n\n",
		s.Duration, shortName(soakCall), s.Concurrency, s.Connections, s.Warmup, s.Sample)
	fig := s.Figures
	fmt.Fprintf(bw, "calls: %d, errors: %d, %.0f RPS\n", s.Calls, s.Errors, s.RPS)
	fmt.Fprintf(bw, "resident memory after warm-up: %.1f MiB -> %.1f MiB (medians of first and last thirds), peak %.1f MiB\n",
		fig.RSSFirstMiB, fig.RSSLastMiB, fig.RSSMaxMiB)
	fmt.Fprintf(bw, "goroutines after warm-up: %.0f -> %.0f, peak %.0f (%d samples judged)\n",
		fig.GoroutinesFirst, fig.GoroutinesLast, fig.GoroutinesMax, fig.Samples)
	fmt.Fprintf(bw, "Key Vault calls during the load: %d key operations, %d token requests (%.0f scheduled validity check(s))\n", s.AKV.KeyOps, s.AKV.Tokens, s.ValidityChecks)
	m := s.Machine
	fmt.Fprintf(bw, "machine: %d CPU(s), %s, %s; broker built with %s\n", m.CPUs, m.CPUModel, m.OSArch, m.BrokerGoVersion)
	for _, c := range s.Chunks {
		for _, msg := range slices.Sorted(maps.Keys(c.ErrorDist)) {
			fmt.Fprintf(bw, "error: %d x %s\n", c.ErrorDist[msg], truncate(msg, 200))
		}
	}
	for _, e := range s.ScrapeErrors {
		fmt.Fprintf(bw, "scrape: %s\n", truncate(e, 200))
	}
	printChecks(bw, s.Checks, 35, 22)
	fmt.Fprintf(bw, "\nresult: %s (samples.csv and reports in %s)\n", passFail(s.Pass), s.OutDir)
	return bw.Flush()
}
