package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestLoadAndSoakIntegration runs `kbload load` (briefly, every scenario)
// and a 15-second `kbload soak` against a real `keybroker dev` built from
// this tree. Like TestBenchIntegration it is slow and runs only with
// KBLOAD_INTEGRATION=1 and without -short; it checks that the runs work and
// the brokers answer without error, never speed.
func TestLoadAndSoakIntegration(t *testing.T) {
	if testing.Short() || os.Getenv("KBLOAD_INTEGRATION") != "1" {
		t.Skip("set KBLOAD_INTEGRATION=1 (and no -short) to run load and soak against a real keybroker dev")
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
	keybroker := filepath.Join(bin, "keybroker")

	t.Run("load", func(t *testing.T) {
		out := t.TempDir()
		var stdout, stderr bytes.Buffer
		err := run(ctx, &env{stdout: &stdout, stderr: &stderr}, []string{
			"load", "--keybroker", keybroker, "--ghz", ghz, "--scenarios-dir", filepath.Join(root, "load"),
			"--duration", "1s", "--out", out,
		})
		t.Logf("kbload load:\n%s", stdout.String())
		if err != nil {
			t.Fatalf("kbload load err = %v, want nil (every check passed)\nstderr:\n%s", err, stderr.String())
		}
		var s loadSummary
		b, err := os.ReadFile(filepath.Join(out, "summary.json"))
		if err == nil {
			err = json.Unmarshal(b, &s)
		}
		if err != nil || len(s.Scenarios) != 4 || !s.Pass {
			t.Fatalf("summary.json = %d scenarios, pass %v (%v), want 4 passing", len(s.Scenarios), s.Pass, err)
		}
		for _, sc := range s.Scenarios {
			for _, r := range sc.Runs {
				if r.Count == 0 || r.Errors != 0 || r.HTML == "" {
					t.Errorf("%s/%s: %d calls, %d errors, HTML %q; want calls, no error, an HTML report", sc.Name, r.Name, r.Count, r.Errors, r.HTML)
				}
				if fi, err := os.Stat(filepath.Join(out, r.HTML)); err != nil || fi.Size() == 0 {
					t.Errorf("%s/%s: HTML report: %v", sc.Name, r.Name, err)
				}
			}
		}
	})

	t.Run("soak", func(t *testing.T) {
		out := t.TempDir()
		var stdout, stderr bytes.Buffer
		err := run(ctx, &env{stdout: &stdout, stderr: &stderr}, []string{
			"soak", "--keybroker", keybroker, "--ghz", ghz, "--duration", "15s", "--warmup", "3s",
			"--sample", "500ms", "--chunk", "5s", "--concurrency", "10", "--connections", "2", "--out", out, "--no-fail",
		})
		t.Logf("kbload soak:\n%s", stdout.String())
		if err != nil {
			t.Fatalf("kbload soak err = %v, want nil\nstderr:\n%s", err, stderr.String())
		}
		var s soakSummary
		b, err := os.ReadFile(filepath.Join(out, "summary.json"))
		if err == nil {
			err = json.Unmarshal(b, &s)
		}
		if err != nil || s.Calls == 0 || s.Errors != 0 || len(s.Samples) < minGrowthSamples || len(s.ScrapeErrors) != 0 {
			t.Fatalf("summary.json: %d calls, %d errors, %d samples, scrape errors %v (%v); want calls, no error, samples",
				s.Calls, s.Errors, len(s.Samples), s.ScrapeErrors, err)
		}
		if _, err := os.Stat(filepath.Join(out, "samples.csv")); err != nil {
			t.Errorf("samples.csv: %v", err)
		}
	})
}
