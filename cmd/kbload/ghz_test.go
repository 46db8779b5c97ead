package main

import (
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseGhzReport(t *testing.T) {
	tests := []struct {
		name       string
		in         []byte
		wantErr    string // substring; "" = no error
		wantCount  uint64
		wantRPS    float64
		wantErrors uint64
		wantP50    time.Duration
		wantP99    time.Duration
	}{
		{
			name: "all OK", in: readTestdata(t, "ghz-ok.json"),
			wantCount: 13859, wantRPS: 13859.73992993564, wantErrors: 0,
			wantP50: 215199 * time.Nanosecond, wantP99: 1044068 * time.Nanosecond,
		},
		{
			name: "server killed mid-run", in: readTestdata(t, "ghz-errors.json"),
			wantCount: 127305, wantRPS: 63636.84823081182, wantErrors: 118994,
			wantP50: 361386 * time.Nanosecond, wantP99: 1956261 * time.Nanosecond,
		},
		{name: "summary format, not JSON", in: []byte("Summary:\n  Count: 10\n"), wantErr: "--format json"},
		{name: "empty", in: nil, wantErr: "not valid JSON"},
		{name: "array", in: []byte(`[1,2]`), wantErr: "not valid JSON"},
		{name: "negative rps", in: []byte(`{"count":1,"rps":-3}`), wantErr: "rps"},
		{name: "negative total", in: []byte(`{"count":1,"rps":3,"total":-5}`), wantErr: "negative total"},
		{name: "statuses do not add up", in: []byte(`{"count":5,"rps":3,"statusCodeDistribution":{"OK":4}}`), wantErr: "add up"},
		{name: "negative status count", in: []byte(`{"count":0,"rps":3,"statusCodeDistribution":{"OK":-1}}`), wantErr: "negative count"},
		{name: "negative error count", in: []byte(`{"count":0,"rps":3,"errorDistribution":{"x":-1}}`), wantErr: "negative error"},
		{name: "percentile out of range", in: []byte(`{"count":1,"rps":3,"latencyDistribution":[{"percentage":101,"latency":5}]}`), wantErr: "percentile"},
		{name: "negative latency", in: []byte(`{"count":1,"rps":3,"latencyDistribution":[{"percentage":50,"latency":-5}]}`), wantErr: "percentile"},
		{name: "no calls at all", in: []byte(`{"count":0,"rps":0,"latencyDistribution":null}`), wantCount: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := parseGhzReport(tc.in)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("parseGhzReport() err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseGhzReport() err = %v, want nil", err)
			}
			if r.Count != tc.wantCount || r.Rps != tc.wantRPS {
				t.Errorf("parseGhzReport() count, rps = %d, %v, want %d, %v", r.Count, r.Rps, tc.wantCount, tc.wantRPS)
			}
			if got := r.errorCount(); got != tc.wantErrors {
				t.Errorf("errorCount() = %d, want %d", got, tc.wantErrors)
			}
			if got, _ := r.percentile(50); got != tc.wantP50 {
				t.Errorf("percentile(50) = %v, want %v", got, tc.wantP50)
			}
			if got, _ := r.percentile(99); got != tc.wantP99 {
				t.Errorf("percentile(99) = %v, want %v", got, tc.wantP99)
			}
		})
	}
}

func TestPercentileMissing(t *testing.T) {
	r, err := parseGhzReport([]byte(`{"count":3,"rps":1,"statusCodeDistribution":{"Unavailable":3},"latencyDistribution":[{"percentage":0,"latency":0}]}`))
	if err != nil {
		t.Fatalf("parseGhzReport() err = %v, want nil", err)
	}
	if d, ok := r.percentile(99); ok {
		t.Errorf("percentile(99) = %v, true, want 0, false for a run with no successful call", d)
	}
}

func TestErrorCount(t *testing.T) {
	tests := []struct {
		name string
		r    ghzReport
		want uint64
	}{
		{"none", ghzReport{StatusCodeDist: map[string]int{"OK": 10}}, 0},
		{"status only", ghzReport{StatusCodeDist: map[string]int{"OK": 10, "Unavailable": 2, "FailedPrecondition": 1}}, 3},
		{"errors only", ghzReport{ErrorDist: map[string]int{"a": 2, "b": 5}}, 7},
		{"both agree", ghzReport{StatusCodeDist: map[string]int{"OK": 1, "Internal": 4}, ErrorDist: map[string]int{"boom": 4}}, 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.r.errorCount(); got != tc.want {
				t.Errorf("errorCount() = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestCompactReport(t *testing.T) {
	raw := readTestdata(t, "ghz-ok.json")
	out, err := compactReport(raw)
	if err != nil {
		t.Fatalf("compactReport() err = %v, want nil", err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatalf("compactReport() wrote invalid JSON: %v", err)
	}
	if _, ok := m["details"]; ok {
		t.Errorf("compactReport() kept details")
	}
	for _, k := range []string{"rps", "count", "latencyDistribution", "statusCodeDistribution", "options", "histogram"} {
		if _, ok := m[k]; !ok {
			t.Errorf("compactReport() dropped %q", k)
		}
	}
	// What kbload reads must survive the round trip.
	a, _ := parseGhzReport(raw)
	b, err := parseGhzReport(out)
	if err != nil {
		t.Fatalf("parseGhzReport(compactReport()) err = %v, want nil", err)
	}
	if a.Count != b.Count || a.Rps != b.Rps || !slices.Equal(a.Latencies, b.Latencies) {
		t.Errorf("compactReport() changed the report: %+v, want %+v", b, a)
	}
	if _, err := compactReport([]byte("nope")); err == nil {
		t.Errorf("compactReport(%q) err = nil, want an error", "nope")
	}
}

func TestGhzRunArgs(t *testing.T) {
	g := ghzRun{bin: "ghz", addr: "127.0.0.1:7443", ca: "ca.pem", cert: "c.pem", key: "k.pem", concurrency: 20, conns: 4}
	args := g.args("keybroker.v1.KeyBrokerService/GetMasterKey", "{}", 5*time.Second)
	want := map[string]string{
		"--cacert": "ca.pem", "--cert": "c.pem", "--key": "k.pem", "--cname": "127.0.0.1",
		"--call": "keybroker.v1.KeyBrokerService/GetMasterKey", "--data": "{}",
		"--concurrency": "20", "--connections": "4", "--duration": "5s",
		"--duration-stop": "wait", "--format": "json",
	}
	for flag, v := range want {
		i := slices.Index(args, flag)
		if i < 0 || i+1 >= len(args) || args[i+1] != v {
			t.Errorf("args() = %q, want %s %s", args, flag, v)
		}
	}
	if last := args[len(args)-1]; last != "127.0.0.1:7443" {
		t.Errorf("args() ends with %q, want the broker address", last)
	}
}

func FuzzParseGhzReport(f *testing.F) {
	f.Add(readTestdata(f, "ghz-ok.json"))
	f.Add(readTestdata(f, "ghz-errors.json"))
	f.Add([]byte(`{"count":1,"rps":1e308,"statusCodeDistribution":{"OK":1}}`))
	f.Add([]byte(`{"count":18446744073709551615,"statusCodeDistribution":{"OK":9223372036854775807,"X":9223372036854775807}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseGhzReport(b)
		if err != nil {
			return
		}
		if r.Rps < 0 || r.Total < 0 {
			t.Fatalf("parseGhzReport(%q) = %+v, nil: accepted a negative rps or total", b, r)
		}
		_ = r.errorCount()
		for _, p := range []int{50, 99} {
			if d, ok := r.percentile(p); ok && d <= 0 {
				t.Fatalf("percentile(%d) = %v, true: want a positive latency", p, d)
			}
		}
		s := summarizeCall("x/y", 0.9, []roundResult{{report: r}})
		if s.Count != r.Count {
			t.Fatalf("summarizeCall().Count = %d, want %d", s.Count, r.Count)
		}
	})
}
