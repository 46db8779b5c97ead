package main

import (
	"os"
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
	in := startIntegration(t, "load and soak against a real keybroker dev", 10*time.Minute, true)

	t.Run("load", func(t *testing.T) {
		out := t.TempDir()
		stdout, stderr, err := in.kbload(
			"load", "--keybroker", in.keybroker, "--ghz", in.ghz, "--scenarios-dir", filepath.Join(in.root, "load"),
			"--duration", "1s", "--out", out,
		)
		t.Logf("kbload load:\n%s", stdout)
		if err != nil {
			t.Fatalf("kbload load err = %v, want nil (every check passed)\nstderr:\n%s", err, stderr)
		}
		s := readSummary[loadSummary](t, out)
		if len(s.Scenarios) != 4 || !s.Pass {
			t.Fatalf("summary.json = %d scenarios, pass %v, want 4 passing", len(s.Scenarios), s.Pass)
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
		stdout, stderr, err := in.kbload(
			"soak", "--keybroker", in.keybroker, "--ghz", in.ghz, "--duration", "15s", "--warmup", "3s",
			"--sample", "500ms", "--chunk", "5s", "--concurrency", "10", "--connections", "2", "--out", out, "--no-fail",
		)
		t.Logf("kbload soak:\n%s", stdout)
		if err != nil {
			t.Fatalf("kbload soak err = %v, want nil\nstderr:\n%s", err, stderr)
		}
		s := readSummary[soakSummary](t, out)
		if s.Calls == 0 || s.Errors != 0 || len(s.Samples) < minGrowthSamples || len(s.ScrapeErrors) != 0 {
			t.Fatalf("summary.json: %d calls, %d errors, %d samples, scrape errors %v; want calls, no error, samples",
				s.Calls, s.Errors, len(s.Samples), s.ScrapeErrors)
		}
		if _, err := os.Stat(filepath.Join(out, "samples.csv")); err != nil {
			t.Errorf("samples.csv: %v", err)
		}
	})
}
