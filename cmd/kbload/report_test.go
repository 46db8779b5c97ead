package main

import (
	"bytes"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want float64
	}{
		{"empty", nil, 0},
		{"one", []float64{7}, 7},
		{"odd, unsorted", []float64{9, 1, 5}, 5},
		{"even: mean of the middle two", []float64{4, 1, 3, 2}, 2.5},
		{"an outlier does not move it", []float64{100, 101, 5, 99, 102}, 100},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.in)
			if got := median(in); got != tc.want {
				t.Errorf("median(%v) = %v, want %v", tc.in, got, tc.want)
			}
			if !slices.Equal(in, tc.in) {
				t.Errorf("median(%v) reordered its argument to %v", tc.in, in)
			}
		})
	}
}

func TestRatio(t *testing.T) {
	tests := []struct {
		x, base, want float64
	}{
		{900, 1000, 0.9},
		{1000, 1000, 1},
		{1200, 1000, 1.2},
		{5, 0, 0},
		{5, -1, 0},
		{0, 1000, 0},
	}
	for _, tc := range tests {
		if got := ratio(tc.x, tc.base); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("ratio(%v, %v) = %v, want %v", tc.x, tc.base, got, tc.want)
		}
	}
}

// rep makes a ghz report with the given rps, p50 and p99 (ms) and errors.
func rep(rps, p50, p99 float64, errs int) ghzReport {
	d := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	r := ghzReport{
		Count: 1000, Rps: rps,
		StatusCodeDist: map[string]int{"OK": 1000 - errs},
		Latencies:      []latencyPercentile{{50, d(p50)}, {90, d(p50 * 2)}, {99, d(p99)}},
	}
	if errs > 0 {
		r.StatusCodeDist["Unavailable"] = errs
		r.ErrorDist = map[string]int{"rpc error: code = Unavailable desc = no": errs}
	}
	return r
}

func TestSummarizeCall(t *testing.T) {
	rounds := []roundResult{
		{report: rep(1000, 1.0, 5.0, 0), file: "round1.json"},
		{report: rep(3000, 3.0, 9.0, 2), file: "round2.json"},
		{report: rep(2000, 2.0, 7.0, 1), file: "round3.json"},
	}
	s := summarizeCall("keybroker.v1.KeyBrokerService/WrapDEK", 0.85, rounds)
	if s.RPS != 2000 || math.Abs(s.P50-2.0) > 1e-9 || math.Abs(s.P99-7.0) > 1e-9 {
		t.Errorf("summarizeCall() rps, p50, p99 = %v, %v, %v, want the medians 2000, 2, 7", s.RPS, s.P50, s.P99)
	}
	if !slices.Equal(s.RoundRPS, []float64{1000, 3000, 2000}) {
		t.Errorf("summarizeCall().RoundRPS = %v, want them in round order", s.RoundRPS)
	}
	if s.Count != 3000 || s.Errors != 3 {
		t.Errorf("summarizeCall() count, errors = %d, %d, want 3000, 3 (sums over rounds)", s.Count, s.Errors)
	}
	if n := s.ErrorDist["rpc error: code = Unavailable desc = no"]; n != 3 {
		t.Errorf("summarizeCall().ErrorDist = %v, want the message counted 3 times", s.ErrorDist)
	}
	if len(s.Reports) != 3 || s.MinRatio != 0.85 {
		t.Errorf("summarizeCall() reports, min ratio = %v, %v, want 3 files and 0.85", s.Reports, s.MinRatio)
	}

	// From a real ghz report too.
	r, err := parseGhzReport(readTestdata(t, "ghz-ok.json"))
	if err != nil {
		t.Fatalf("parseGhzReport() err = %v, want nil", err)
	}
	s = summarizeCall("grpc.health.v1.Health/Check", 0, []roundResult{{report: r}})
	if math.Abs(s.P99-1.044068) > 1e-9 {
		t.Errorf("summarizeCall(ghz-ok.json).P99 = %vms, want 1.044068ms", s.P99)
	}
}

// calls builds the bench's four calls with the given median RPS and errors.
func calls(health, gmk, wrap, unwrap float64, errs uint64) []callSummary {
	c := []callSummary{
		{Call: "grpc.health.v1.Health/Check", RPS: health, Count: 100},
		{Call: "keybroker.v1.KeyBrokerService/GetMasterKey", RPS: gmk, MinRatio: 0.90, Count: 100},
		{Call: "keybroker.v1.KeyBrokerService/WrapDEK", RPS: wrap, MinRatio: 0.85, Count: 100},
		{Call: "keybroker.v1.KeyBrokerService/UnwrapDEK", RPS: unwrap, MinRatio: 0.85, Count: 100, Errors: errs},
	}
	setRatios(c)
	return c
}

// serving is a broker that was SERVING at every poll and ran no check.
var serving = brokerActivity{ActiveKeys: 1, States: map[string]int{"STATE_SERVING": 30}}

func TestJudge(t *testing.T) {
	vault := "keybroker-dev.vault.keybroker.test"
	tests := []struct {
		name     string
		calls    []callSummary
		counters map[string]map[string]int64
		broker   brokerActivity
		wantPass bool
		wantFail []string // names of the failing checks
	}{
		{name: "all targets met", calls: calls(10000, 9500, 9000, 8600, 0), broker: serving, wantPass: true},
		{name: "exactly at the targets", calls: calls(10000, 9000, 8500, 8500, 0), broker: serving, wantPass: true},
		{name: "GetMasterKey too slow", calls: calls(10000, 8999, 9000, 9000, 0), broker: serving, wantFail: []string{"GetMasterKey RPS vs Health/Check"}},
		{name: "WrapDEK and UnwrapDEK too slow", calls: calls(10000, 9500, 8000, 8499, 0), broker: serving,
			wantFail: []string{"WrapDEK RPS vs Health/Check", "UnwrapDEK RPS vs Health/Check"}},
		{name: "faster than the baseline is fine", calls: calls(10000, 12000, 11000, 10500, 0), broker: serving, wantPass: true},
		{name: "key operations after warm-up", calls: calls(10000, 9500, 9000, 9000, 0), broker: serving,
			counters: map[string]map[string]int64{vault: {"unwrapkey": 1}}, wantFail: []string{"Key Vault calls on the hot path"}},
		{name: "a token request after warm-up", calls: calls(10000, 9500, 9000, 9000, 0), broker: serving,
			counters: map[string]map[string]int64{"login": {"token": 1}}, wantFail: []string{"Key Vault calls on the hot path"}},
		{name: "other emulator operations do not count", calls: calls(10000, 9500, 9000, 9000, 0), broker: serving,
			counters: map[string]map[string]int64{vault: {"list": 3, "discovery": 1}}, wantPass: true},
		{name: "two scheduled checks account for their calls", calls: calls(10000, 9500, 9000, 9000, 0),
			broker:   brokerActivity{Checks: 2, ActiveKeys: 1, States: map[string]int{"STATE_SERVING": 90}},
			counters: map[string]map[string]int64{vault: {"get": 2, "unwrapkey": 2}}, wantPass: true},
		{name: "calls beyond the scheduled checks", calls: calls(10000, 9500, 9000, 9000, 0),
			broker:   brokerActivity{Checks: 1, ActiveKeys: 1, States: map[string]int{"STATE_SERVING": 90}},
			counters: map[string]map[string]int64{vault: {"get": 1, "unwrapkey": 2}}, wantFail: []string{"Key Vault calls on the hot path"}},
		{name: "a check never excuses a wrap", calls: calls(10000, 9500, 9000, 9000, 0),
			broker:   brokerActivity{Checks: 3, ActiveKeys: 1, States: map[string]int{"STATE_SERVING": 90}},
			counters: map[string]map[string]int64{vault: {"wrapkey": 1}}, wantFail: []string{"Key Vault calls on the hot path"}},
		{name: "degraded while measured", calls: calls(10000, 9500, 9000, 9000, 0),
			broker:   brokerActivity{ActiveKeys: 1, States: map[string]int{"STATE_SERVING": 20, "STATE_DEGRADED": 1}},
			wantFail: []string{"broker state while measured"}},
		{name: "status not followed", calls: calls(10000, 9500, 9000, 9000, 0),
			broker:   brokerActivity{ActiveKeys: 1, States: map[string]int{"STATE_SERVING": 20}, PollErrors: 1},
			wantFail: []string{"broker state while measured"}},
		{name: "never polled", calls: calls(10000, 9500, 9000, 9000, 0), wantFail: []string{"broker state while measured"}},
		{name: "errors", calls: calls(10000, 9500, 9000, 9000, 1), broker: serving, wantFail: []string{"errors"}},
		{name: "no baseline RPS fails every ratio", calls: calls(0, 9500, 9000, 9000, 0), broker: serving,
			wantFail: []string{"GetMasterKey RPS vs Health/Check", "WrapDEK RPS vs Health/Check", "UnwrapDEK RPS vs Health/Check"}},
		{name: "nothing measured", calls: nil, broker: serving, wantFail: []string{"calls measured"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checks, pass := judge(tc.calls, newAKVCalls(tc.counters, tc.broker), tc.broker)
			if pass != tc.wantPass {
				t.Errorf("judge() pass = %v, want %v; checks: %+v", pass, tc.wantPass, checks)
			}
			var failed []string
			for _, c := range checks {
				if !c.Pass {
					failed = append(failed, c.Name)
				}
			}
			if !slices.Equal(failed, tc.wantFail) {
				t.Errorf("judge() failed checks = %q, want %q", failed, tc.wantFail)
			}
		})
	}
}

func TestNewAKVCalls(t *testing.T) {
	counters := map[string]map[string]int64{
		"vault-a.vault.keybroker.test": {"wrapkey": 1, "unwrapkey": 2, "get": 3, "list": 100},
		"vault-b.vault.keybroker.test": {"encrypt": 4, "decrypt": 5, "token": 100},
		"login":                        {"token": 6, "discovery": 100},
	}
	tests := []struct {
		name                           string
		broker                         brokerActivity
		wantKeyOps, wantCheck, wantHot int64
	}{
		{"no check", brokerActivity{ActiveKeys: 1}, 15, 0, 15},
		{"one check, one key", brokerActivity{Checks: 1, ActiveKeys: 1}, 15, 2, 13},
		{"two checks, one key", brokerActivity{Checks: 2, ActiveKeys: 1}, 15, 4, 11},
		{"more checks than calls", brokerActivity{Checks: 10, ActiveKeys: 2}, 15, 5, 10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newAKVCalls(counters, tc.broker)
			if a.KeyOps != tc.wantKeyOps || a.CheckOps != tc.wantCheck || a.HotPath != tc.wantHot || a.Tokens != 106 {
				t.Errorf("newAKVCalls() key ops, check ops, hot path, tokens = %d, %d, %d, %d, want %d, %d, %d, 106",
					a.KeyOps, a.CheckOps, a.HotPath, a.Tokens, tc.wantKeyOps, tc.wantCheck, tc.wantHot)
			}
		})
	}
}

func TestShortName(t *testing.T) {
	for in, want := range map[string]string{
		"grpc.health.v1.Health/Check":                "Health/Check",
		"keybroker.v1.KeyBrokerService/GetMasterKey": "GetMasterKey",
		"keybroker.v1.KeyBrokerService/UnwrapDEK":    "UnwrapDEK",
		"Plain/Call": "Plain/Call",
		"nothing":    "nothing",
	} {
		if got := shortName(in); got != want {
			t.Errorf("shortName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPrintReport(t *testing.T) {
	tests := []struct {
		name  string
		calls []callSummary
		akv   akvCalls
		want  []string
	}{
		{
			name: "pass", calls: calls(10000, 9500, 9000, 8600, 0),
			want: []string{"PASS  GetMasterKey RPS vs Health/Check", "0.95x", "0 key operations", "result: PASS"},
		},
		{
			name: "fail", calls: calls(10000, 5000, 9000, 8600, 2), akv: akvCalls{KeyOps: 4, CheckOps: 2, HotPath: 2, Tokens: 1},
			want: []string{"FAIL  GetMasterKey RPS vs Health/Check", "0.50x", "4 key operations", "2 by 0 scheduled", "2 on the hot path", "1 token requests", "FAIL  errors", "result: FAIL"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := summary{
				Settings: benchSettings{Duration: "5s", Warmup: "2s", Rounds: 3, Concurrency: 20, Connections: 4},
				Machine:  machine{CPUs: 2, CPUModel: "Test CPU", GoVersion: "go1.26.8", BrokerGoVersion: "go1.26.8", OSArch: "linux/amd64"},
				Calls:    tc.calls,
				AKV:      tc.akv,
				Broker:   serving,
				OutDir:   "load/reports/x",
			}
			s.Checks, s.Pass = judge(s.Calls, s.AKV, s.Broker)
			var b bytes.Buffer
			if err := printReport(&b, s); err != nil {
				t.Fatalf("printReport() err = %v, want nil", err)
			}
			out := b.String()
			for _, w := range append(tc.want, "Test CPU", "2 CPU(s)", "keybroker.v1.KeyBrokerService/UnwrapDEK") {
				if !strings.Contains(out, w) {
					t.Errorf("printReport() output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestBenchCalls(t *testing.T) {
	c := benchCalls([]byte("0123456789abcdef0123456789abcdef"), []byte("aad"), []byte("blob"))
	if len(c) != 4 || c[0].call != "grpc.health.v1.Health/Check" || c[0].minRatio != 0 {
		t.Fatalf("benchCalls() = %+v, want Health/Check first as the baseline, then 3 key calls", c)
	}
	wantData := map[string]string{
		"keybroker.v1.KeyBrokerService/WrapDEK":   `{"associated_data":"YWFk","dek":"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}`,
		"keybroker.v1.KeyBrokerService/UnwrapDEK": `{"associated_data":"YWFk","wrapped_dek":"YmxvYg=="}`,
	}
	for _, bc := range c {
		if w, ok := wantData[bc.call]; ok && bc.data != w {
			t.Errorf("benchCalls() data for %s = %s, want %s", bc.call, bc.data, w)
		}
	}
}
