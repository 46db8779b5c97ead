package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// series makes samples one second apart from t0 with the given RSS (MiB)
// and goroutines, all SERVING, with errs failed RPCs at the end.
func series(t0 time.Time, rss []float64, goroutines []float64, errs float64) []metricsSample {
	var out []metricsSample
	for i := range rss {
		m := metricsSample{At: t0.Add(time.Duration(i) * time.Second), RSS: rss[i] * (1 << 20), Goroutines: goroutines[i], State: "SERVING",
			RPCs: map[string]float64{"OK": float64(1000 * i)}}
		if i == len(rss)-1 && errs > 0 {
			m.RPCs["UNAVAILABLE"] = errs
		}
		out = append(out, m)
	}
	return out
}

func repeat(v float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func ramp(from, step float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = from + step*float64(i)
	}
	return out
}

func TestJudgeSoak(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	warm := t0.Add(5 * time.Second)
	flat := append(ramp(10, 4, 5), repeat(30, 25)...) // warm-up climb, then flat
	noisy := append(repeat(20, 5), 30, 31, 29, 33, 30, 28, 31, 30, 29, 32, 30, 31, 29, 30, 33, 30, 28, 31, 30, 32, 29, 30, 31, 30, 29)
	tests := []struct {
		name       string
		samples    []metricsSample
		scrapeErrs []string
		ghzErrors  uint64
		failed     []string
	}{
		{"flat", series(t0, flat, repeat(40, 30), 0), nil, 0, nil},
		{"noisy but flat", series(t0, noisy, append(repeat(40, 25), 45, 38, 41, 44, 39), 0), nil, 0, nil},
		{"memory leak", series(t0, append(repeat(20, 5), ramp(20, 0.5, 25)...), repeat(40, 30), 0), nil, 0, []string{"resident memory growth"}},
		{"goroutine leak", series(t0, flat, append(repeat(40, 5), ramp(40, 2, 25)...), 0), nil, 0, []string{"goroutine growth"}},
		{"over the memory target", series(t0, repeat(70, 30), repeat(40, 30), 0), nil, 0, []string{"peak resident memory after warm-up"}},
		{"ghz saw errors", series(t0, flat, repeat(40, 30), 0), nil, 3, []string{"failed calls"}},
		{"broker counted errors", series(t0, flat, repeat(40, 30), 2), nil, 0, []string{"failed calls"}},
		{"a scrape failed", series(t0, flat, repeat(40, 30), 0), []string{"connection refused"}, 0, []string{"failed scrapes of /metrics"}},
		{"too few samples", series(t0, repeat(30, 8), repeat(40, 8), 0), nil, 0, []string{"samples after warm-up"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checks, pass := judgeSoak(tc.samples, tc.scrapeErrs, tc.ghzErrors, warm, 64)
			if pass != (len(tc.failed) == 0) {
				t.Errorf("judgeSoak pass = %v, want %v: %+v", pass, len(tc.failed) == 0, checks)
			}
			for _, c := range checks {
				wantFail := false
				for _, n := range tc.failed {
					wantFail = wantFail || c.Name == n
				}
				if c.Pass == wantFail {
					t.Errorf("check %q pass = %v (got %s), want %v", c.Name, c.Pass, c.Got, !wantFail)
				}
			}
		})
	}

	paused := series(t0, flat, repeat(40, 30), 0)
	paused[20].State = "PAUSED"
	checks, pass := judgeSoak(paused, nil, 0, warm, 64)
	if pass || checks[2].Name != "broker state" || checks[2].Pass || checks[2].Got != "SERVING>PAUSED>SERVING" {
		t.Errorf("judgeSoak(a pause in the middle) = %+v, want the state check to fail with SERVING>PAUSED>SERVING", checks[2])
	}
}

func TestSoakFlags(t *testing.T) {
	tests := []struct {
		name                 string
		f                    soakFlags
		wantWarmup, wantSamp time.Duration
		wantErr              string
	}{
		{"ten minutes", soakFlags{duration: 10 * time.Minute, chunk: 30 * time.Second, concurrency: 50, connects: 10, maxRSSMiB: 64}, 2 * time.Minute, 5 * time.Second, ""},
		{"one minute", soakFlags{duration: time.Minute, chunk: 30 * time.Second, concurrency: 50, connects: 10, maxRSSMiB: 64}, 15 * time.Second, time.Second, ""},
		{"explicit", soakFlags{duration: time.Minute, warmup: 5 * time.Second, sample: 500 * time.Millisecond, chunk: 10 * time.Second, concurrency: 5, connects: 5, maxRSSMiB: 64}, 5 * time.Second, 500 * time.Millisecond, ""},
		{"too short", soakFlags{duration: 5 * time.Second, chunk: time.Second, concurrency: 1, connects: 1, maxRSSMiB: 64}, 0, 0, "--duration"},
		{"warm-up too long", soakFlags{duration: time.Minute, warmup: time.Minute, chunk: time.Second, concurrency: 1, connects: 1, maxRSSMiB: 64}, 0, 0, "--warmup"},
		{"connections", soakFlags{duration: time.Minute, chunk: time.Second, concurrency: 2, connects: 3, maxRSSMiB: 64}, 0, 0, "--connections"},
		{"chunk", soakFlags{duration: time.Minute, chunk: time.Millisecond, concurrency: 2, connects: 1, maxRSSMiB: 64}, 0, 0, "--chunk"},
		{"rss", soakFlags{duration: time.Minute, chunk: time.Second, concurrency: 2, connects: 1}, 0, 0, "--max-rss-mib"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := tc.f
			f.defaults()
			err := f.validate()
			if tc.wantErr != "" {
				var ee *exitError
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !errors.As(err, &ee) || ee.code != exitUsage {
					t.Fatalf("validate(%+v) err = %v, want a usage error naming %s", tc.f, err, tc.wantErr)
				}
				return
			}
			if err != nil || f.warmup != tc.wantWarmup || f.sample != tc.wantSamp {
				t.Fatalf("defaults+validate(%+v) = warm-up %v, sample %v, err %v; want %v, %v, nil", tc.f, f.warmup, f.sample, err, tc.wantWarmup, tc.wantSamp)
			}
		})
	}
}

func TestSoakReportFiles(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	samples := series(t0, append(repeat(20, 5), repeat(30, 25)...), repeat(40, 30), 0)
	s := soakSummary{Duration: "30s", Warmup: "5s", Sample: "1s", Concurrency: 50, Connections: 10, Samples: samples, OutDir: "out",
		Chunks: []soakChunk{{Count: 3000, RPS: 1000}}, Calls: 3000}
	s.Checks, s.Pass = judgeSoak(samples, nil, 0, t0.Add(5*time.Second), 64)
	s.fillFigures(t0.Add(5 * time.Second))
	if s.Figures.RSSFirstMiB != 30 || s.Figures.RSSLastMiB != 30 || s.Figures.GoroutinesMax != 40 || s.Figures.Samples != 25 || s.RPS != 1000 {
		t.Errorf("fillFigures = %+v, RPS %v; want 30 MiB -> 30 MiB, 40 goroutines, 25 samples, 1000 RPS", s.Figures, s.RPS)
	}
	var out bytes.Buffer
	if err := printSoakReport(&out, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"50 clients over 10 connection(s)", "30.0 MiB -> 30.0 MiB", "PASS  resident memory growth", "result: PASS"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printSoakReport lacks %q:\n%s", want, out.String())
		}
	}
	path := filepath.Join(t.TempDir(), "samples.csv")
	if err := writeSamplesCSV(path, samples, t0); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 31 || lines[0] != "seconds,rss_mib,goroutines,rpcs,rpc_errors,state" || lines[30] != "29.0,30.00,40,29000,0,SERVING" {
		t.Errorf("samples.csv = %d lines, header %q, last %q; want 31, the header, 29.0,30.00,40,29000,0,SERVING", len(lines), lines[0], lines[len(lines)-1])
	}
}
