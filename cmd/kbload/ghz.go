package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// ghzModFile is the module that pins ghz, relative to the repository root.
// ghz's dependencies clash with ours, so it is run as a CLI, never imported.
const ghzModFile = "tools/ghz/go.mod"

// Bounds on ghz child processes.
const (
	ghzBuildTimeout = 10 * time.Minute // a cold module cache on 2 cores
	ghzSlack        = 60 * time.Second // start-up, reflection, and waiting for in-flight calls
	maxGhzStderr    = 4 << 10
)

// ghzReport is the part of ghz's JSON report (--format json) kbload reads.
type ghzReport struct {
	Count          uint64              `json:"count"`
	Total          time.Duration       `json:"total"`
	Rps            float64             `json:"rps"`
	EndReason      string              `json:"endReason"`
	ErrorDist      map[string]int      `json:"errorDistribution"`
	StatusCodeDist map[string]int      `json:"statusCodeDistribution"`
	Latencies      []latencyPercentile `json:"latencyDistribution"`
}

// latencyPercentile is one entry of ghz's latencyDistribution; Latency is
// in nanoseconds on the wire.
type latencyPercentile struct {
	Percentage int           `json:"percentage"`
	Latency    time.Duration `json:"latency"`
}

// parseGhzReport reads a ghz JSON report and rejects one no ghz run could
// have produced, so a wrong file fails loudly instead of reading as zeros.
func parseGhzReport(b []byte) (ghzReport, error) {
	var r ghzReport
	if err := json.Unmarshal(b, &r); err != nil {
		return ghzReport{}, fmt.Errorf("ghz report is not valid JSON (%v): was ghz run with --format json?", err)
	}
	if math.IsNaN(r.Rps) || math.IsInf(r.Rps, 0) || r.Rps < 0 {
		return ghzReport{}, fmt.Errorf("ghz report has rps %v, want a finite number >= 0", r.Rps)
	}
	if r.Total < 0 {
		return ghzReport{}, fmt.Errorf("ghz report has a negative total %v", r.Total)
	}
	var statuses uint64
	for code, n := range r.StatusCodeDist {
		if n < 0 {
			return ghzReport{}, fmt.Errorf("ghz report has a negative count %d for status %q", n, truncate(code, 40))
		}
		statuses += uint64(n)
	}
	for _, n := range r.ErrorDist {
		if n < 0 {
			return ghzReport{}, fmt.Errorf("ghz report has a negative error count %d", n)
		}
	}
	if len(r.StatusCodeDist) > 0 && statuses != r.Count {
		return ghzReport{}, fmt.Errorf("ghz report counts %d calls but its status codes add up to %d", r.Count, statuses)
	}
	for _, l := range r.Latencies {
		if l.Percentage < 0 || l.Percentage > 100 || l.Latency < 0 {
			return ghzReport{}, fmt.Errorf("ghz report has a bad latency percentile {%d%%, %v}", l.Percentage, l.Latency)
		}
	}
	return r, nil
}

// percentile returns the latency ghz reported for pct (10, 25, 50, 75, 90,
// 95 or 99); false when the report has none (no successful call).
func (r ghzReport) percentile(pct int) (time.Duration, bool) {
	for _, l := range r.Latencies {
		if l.Percentage == pct && l.Latency > 0 {
			return l.Latency, true
		}
	}
	return 0, false
}

// errorCount is the number of calls that did not end OK. ghz puts every
// failed call in both distributions; the larger is taken in case a future
// ghz leaves one out.
func (r ghzReport) errorCount() uint64 {
	var notOK, errs uint64
	for code, n := range r.StatusCodeDist {
		if code != "OK" {
			notOK += uint64(n)
		}
	}
	for _, n := range r.ErrorDist {
		errs += uint64(n)
	}
	return max(notOK, errs)
}

// compactReport drops the per-call details from a raw ghz report: up to a
// million entries that would make a benchmark's reports hundreds of MB,
// while the summary fields keep everything kbload and a reader use.
func compactReport(raw []byte) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("ghz report is not a JSON object: %v", err)
	}
	delete(m, "details")
	return json.MarshalIndent(m, "", "  ")
}

// ghzRun runs ghz with one shared TLS identity and load shape, so every
// call is measured the same way. It is safe for concurrent use, though
// benchmarks run one at a time.
type ghzRun struct {
	bin                string // the ghz binary
	addr               string // broker host:port
	ca, cert, key      string
	concurrency, conns int
	stderr             io.Writer // ghz's own messages; nil = discard
	extraArgs          []string  // more ghz flags, for scenarios beyond bench
}

// args is the ghz command line for one run of call with request data.
func (g ghzRun) args(call, data string, d time.Duration) []string {
	a := []string{
		"--cacert", g.ca, "--cert", g.cert, "--key", g.key, "--cname", serverName,
		"--call", call,
		"--data", data,
		"--concurrency", strconv.Itoa(g.concurrency),
		"--connections", strconv.Itoa(g.conns),
		"--duration", d.String(),
		// "wait" lets in-flight calls finish: the default "close" cancels
		// them and reports each as an error that the broker never made.
		"--duration-stop", "wait",
		// The data is constant: skip ghz's per-call template work, which
		// competes with the broker for the same cores.
		"--disable-template-functions", "--disable-template-data",
		"--format", "json",
	}
	a = append(a, g.extraArgs...)
	return append(a, g.addr)
}

// run runs ghz for d and returns its parsed report and the raw JSON.
func (g ghzRun) run(ctx context.Context, call, data string, d time.Duration) (ghzReport, []byte, error) {
	rep, raw, err := runGhz(ctx, g.bin, g.args(call, data, d), "ghz "+call, d+ghzSlack, g.stderr)
	if err == nil && rep.Count == 0 {
		return ghzReport{}, nil, fmt.Errorf("ghz %s made no call in %v: is the broker serving?", call, d)
	}
	return rep, raw, err
}

// runGhz runs bin with args in a process group of its own, killed when it
// takes longer than limit, and returns its parsed report and the raw JSON.
// name starts its error messages; ghz's own stderr is copied to stderrOut
// (nil: discarded).
func runGhz(ctx context.Context, bin string, args []string, name string, limit time.Duration, stderrOut io.Writer) (ghzReport, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	var stdout bytes.Buffer
	stderr := &capped{max: maxGhzStderr}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout = &stdout
	cmd.Stderr = stderr
	setProcessGroup(cmd)
	cmd.Cancel = func() error { return signalGroup(cmd.Process, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if stderrOut != nil && stderr.Len() > 0 {
		_, _ = stderrOut.Write(stderr.Bytes())
	}
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return ghzReport{}, nil, fmt.Errorf("%s did not finish within %v", name, limit)
		}
		return ghzReport{}, nil, ctx.Err()
	}
	if err != nil {
		return ghzReport{}, nil, fmt.Errorf("%s: %v: %s", name, err, bytes.TrimSpace(stderr.Bytes()))
	}
	rep, err := parseGhzReport(stdout.Bytes())
	if err != nil {
		return ghzReport{}, nil, fmt.Errorf("%s: %w", name, err)
	}
	return rep, stdout.Bytes(), nil
}

// buildGhz builds the pinned ghz into dir once, so compiling is never part
// of a measurement. root is the repository root.
func buildGhz(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "ghz")
	if err := buildWithGhzModule(ctx, root, bin, "github.com/bojand/ghz/cmd/ghz"); err != nil {
		return "", fmt.Errorf("building ghz from %s: %w", filepath.Join(root, ghzModFile), err)
	}
	return bin, nil
}

// buildWithGhzModule builds pkg into bin in root against ghz's own module,
// whose dependencies clash with ours.
func buildWithGhzModule(ctx context.Context, root, bin, pkg string) error {
	ctx, cancel := context.WithTimeout(ctx, ghzBuildTimeout)
	defer cancel()
	stderr := &capped{max: maxGhzStderr}
	cmd := exec.CommandContext(ctx, "go", "build", "-modfile="+ghzModFile, "-o", bin, pkg)
	cmd.Dir = root
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%v: %s", err, bytes.TrimSpace(stderr.Bytes()))
	}
	return nil
}

// repoRoot finds the repository root (the directory holding
// tools/ghz/go.mod) from the working directory up.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, ghzModFile)); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no %s in the working directory or above: run kbload from the keybroker repository, or pass --ghz PATH", ghzModFile)
		}
		dir = parent
	}
}

// capped keeps the first max bytes written to it: enough of a child's
// stderr to explain a failure, never an unbounded buffer.
type capped struct {
	bytes.Buffer
	max int
}

func (c *capped) Write(p []byte) (int, error) {
	if room := c.max - c.Len(); room > 0 {
		c.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}
