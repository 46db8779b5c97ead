package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
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
	if testing.Short() || os.Getenv("KBLOAD_INTEGRATION") != "1" {
		t.Skip("set KBLOAD_INTEGRATION=1 (and no -short) to run the bench against a real keybroker dev")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/keybroker")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/keybroker: %v\n%s", err, out)
	}
	ghz, err := buildGhz(ctx, root, bin)
	if err != nil {
		t.Fatal(err)
	}

	out := t.TempDir()
	var stdout, stderr bytes.Buffer
	err = run(ctx, &env{stdout: &stdout, stderr: &stderr}, []string{
		"bench", "--keybroker", filepath.Join(bin, "keybroker"), "--ghz", ghz,
		"--duration", "1s", "--warmup", "1s", "--rounds", "1", "--concurrency", "4", "--connections", "2",
		"--out", out, "--no-fail",
	})
	if err != nil {
		t.Fatalf("kbload bench err = %v, want nil\nstderr:\n%s", err, stderr.String())
	}
	t.Logf("kbload bench:\n%s", stdout.String())

	b, err := os.ReadFile(filepath.Join(out, "summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	var s summary
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("summary.json: %v", err)
	}
	if len(s.Calls) != 4 {
		t.Fatalf("summary.json has %d calls, want 4", len(s.Calls))
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
	if !strings.Contains(stdout.String(), "result: ") {
		t.Errorf("kbload bench printed no result line:\n%s", stdout.String())
	}
	if log, err := os.ReadFile(filepath.Join(out, "keybroker.log")); err != nil || len(log) == 0 {
		t.Errorf("keybroker.log: %v (%d bytes), want the broker's log", err, len(log))
	}
}
