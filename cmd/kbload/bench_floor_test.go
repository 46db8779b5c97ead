package main

import (
	"slices"
	"testing"
)

func TestWithFloor(t *testing.T) {
	c := withFloor(benchCalls([]byte("dek"), []byte("aad"), []byte("blob")), &floorServer{addr: "127.0.0.1:9", pid: 11, protoset: "h.protoset"}, 22)
	if len(c) != 5 || c[0].server != serverFloor || c[0].call != healthCheck || c[0].addr != "127.0.0.1:9" || c[0].pid != 11 || c[0].minRatio != 0 || c[0].maxP99 != 0 {
		t.Fatalf("withFloor()[0] = %+v, want the floor's Health/Check as the baseline", c[0])
	}
	want := map[string]float64{healthCheck: 0.95, "keybroker.v1.KeyBrokerService/GetMasterKey": 0.90,
		"keybroker.v1.KeyBrokerService/WrapDEK": 0.85, "keybroker.v1.KeyBrokerService/UnwrapDEK": 0.85}
	for _, bc := range c[1:] {
		if bc.server != "" || bc.addr != "" || bc.pid != 22 || bc.minRatio != want[bc.call] || bc.maxP99 != 1.2 {
			t.Errorf("withFloor() broker call %+v, want server \"\", pid 22, min ratio %v, max p99 1.2", bc, want[bc.call])
		}
	}
	if g := c[0].ghz(ghzRun{addr: "broker"}); g.addr != "127.0.0.1:9" || !slices.Equal(g.extraArgs, []string{"--protoset", "h.protoset"}) {
		t.Errorf("floor call's ghz addr, args = %q, %q, want the floor's and its protoset", g.addr, g.extraArgs)
	}
	if g := c[1].ghz(ghzRun{addr: "broker"}); g.addr != "broker" || len(g.extraArgs) != 0 {
		t.Errorf("broker call's ghz addr, args = %q, %q, want the broker's, no protoset", g.addr, g.extraArgs)
	}
}

// floorCalls is a floor baseline and the broker's four calls, p50s, p99s.
func floorCalls(rps [5]float64, p99 [5]float64) []callSummary {
	c := []callSummary{{Call: healthCheck, Server: serverFloor, RPS: rps[0], P99: p99[0], Count: 100}}
	mins := []float64{0.95, 0.90, 0.85, 0.85}
	for i, call := range []string{healthCheck, "keybroker.v1.KeyBrokerService/GetMasterKey", "keybroker.v1.KeyBrokerService/WrapDEK", "keybroker.v1.KeyBrokerService/UnwrapDEK"} {
		c = append(c, callSummary{Call: call, RPS: rps[i+1], P99: p99[i+1], MinRatio: mins[i], MaxP99Ratio: 1.2, Count: 100})
	}
	setRatios(c)
	return c
}

func TestJudgeAgainstFloor(t *testing.T) {
	tests := []struct {
		name     string
		calls    []callSummary
		wantFail []string
	}{
		{"all met", floorCalls([5]float64{10000, 9500, 9000, 8500, 8500}, [5]float64{2, 2.4, 2.4, 2, 1}), nil},
		{"broker Health/Check below 0.95", floorCalls([5]float64{10000, 9499, 9000, 8500, 8500}, [5]float64{2, 2, 2, 2, 2}),
			[]string{"Health/Check RPS vs floor Health/Check"}},
		{"p99 above 1.2x", floorCalls([5]float64{10000, 9500, 9000, 8500, 8500}, [5]float64{2, 2, 2.41, 2, 2}),
			[]string{"GetMasterKey p99 vs floor Health/Check"}},
		{"no floor p99", floorCalls([5]float64{10000, 9500, 9000, 8500, 8500}, [5]float64{0, 1, 1, 1, 1}),
			[]string{"Health/Check p99 vs floor Health/Check", "GetMasterKey p99 vs floor Health/Check", "WrapDEK p99 vs floor Health/Check", "UnwrapDEK p99 vs floor Health/Check"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checks, pass := judge(tc.calls, newAKVCalls(nil, serving), serving)
			var failed []string
			for _, c := range checks {
				if !c.Pass {
					failed = append(failed, c.Name)
				}
			}
			if pass != (len(tc.wantFail) == 0) || !slices.Equal(failed, tc.wantFail) {
				t.Errorf("judge() pass %v, failed %q, want %q", pass, failed, tc.wantFail)
			}
		})
	}
}

func TestSummarizeCallCPU(t *testing.T) {
	rounds := []roundResult{
		{report: ghzReport{Count: 1000}, cpu: 30e6, cpuKnown: true}, // 30ms / 1000 = 30µs
		{report: ghzReport{Count: 2000}, cpu: 40e6, cpuKnown: true}, // 20µs
		{report: ghzReport{Count: 1000}, cpu: 50e6, cpuKnown: true}, // 50µs
		{report: ghzReport{Count: 1000}},                            // unknown: left out
	}
	s := summarizeCall(healthCheck, 0, rounds)
	if !slices.Equal(s.RoundCPU, []float64{30, 20, 50}) || s.CPUPerCall != 30 {
		t.Errorf("summarizeCall() CPU per round %v, median %v; want [30 20 50], 30", s.RoundCPU, s.CPUPerCall)
	}
}
