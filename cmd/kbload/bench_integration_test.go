package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBenchIntegration runs the whole bench, briefly, against a real
// `keybroker dev` built from this tree. It is slow (two builds, a broker,
// a dozen ghz runs), so it runs only with KBLOAD_INTEGRATION=1 and without
// -short. It checks correctness, never speed: the ratios are left to
// humans reading docs/bench.md.
func TestBenchIntegration(t *testing.T) {
	in := startIntegration(t, "the bench against a real keybroker dev", 10*time.Minute, true)
	out := t.TempDir()
	stdout, stderr, err := in.kbload(
		"bench", "--keybroker", in.keybroker, "--ghz", in.ghz,
		"--duration", "1s", "--warmup", "1s", "--rounds", "1", "--concurrency", "4", "--connections", "2",
		"--out", out, "--no-fail",
	)
	if err != nil {
		t.Fatalf("kbload bench err = %v, want nil\nstderr:\n%s", err, stderr)
	}
	t.Logf("kbload bench:\n%s", stdout)

	s := readSummary[summary](t, out)
	if len(s.Calls) != 5 {
		t.Fatalf("summary.json has %d calls, want 5 (the floor first)", len(s.Calls))
	}
	for _, c := range s.Calls {
		if c.Count == 0 || c.Errors != 0 || c.RPS <= 0 || c.P99 <= 0 {
			t.Errorf("%s: count %d, errors %d (%v), rps %v, p99 %vms; want calls, no errors, positive rps and p99",
				c.Call, c.Count, c.Errors, c.ErrorDist, c.RPS, c.P99)
		}
		for _, f := range c.Reports {
			raw, err := os.ReadFile(filepath.Join(out, f))
			if err != nil {
				t.Errorf("%s: raw report: %v", c.Call, err)
				continue
			}
			if _, err := parseGhzReport(raw); err != nil || bytes.Contains(raw, []byte(`"details"`)) {
				t.Errorf("%s: raw report %s: err = %v, or it kept its details", c.Call, f, err)
			}
		}
	}
	// The point of the broker: once warm, the hot path never calls Azure.
	if s.AKV.KeyOps != 0 || s.AKV.Tokens != 0 {
		t.Errorf("Key Vault calls during the measured part = %d key operations, %d tokens (%v), want 0",
			s.AKV.KeyOps, s.AKV.Tokens, s.AKV.Counters)
	}
	if !strings.Contains(stdout, "result: ") {
		t.Errorf("kbload bench printed no result line:\n%s", stdout)
	}
	if log, err := os.ReadFile(filepath.Join(out, "keybroker.log")); err != nil || len(log) == 0 {
		t.Errorf("keybroker.log: %v (%d bytes), want the broker's log", err, len(log))
	}
}
