package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// TestFleetShort is bench-fleet's short version for make test: 100 broker
// cores against the throttled emulator. Steady state: exactly one unwrap
// per node per interval (validation.interval 1m simulated as 5s, the
// vault's limit scaled by 12), no throttling, no pause. The cold start's
// backoff is covered with a fake clock in internal/broker
// (TestWarmUntilLoaded); its figures belong to make bench-fleet.
func TestFleetShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 100 broker cores and an emulator")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, err := startFleetEnv(ctx, t.TempDir(), 2048, false)
	if err != nil {
		t.Fatalf("startFleetEnv err = %v", err)
	}
	defer f.close()
	s := fleetSettings{Interval: time.Minute, Scale: 12, Intervals: 2, KeySize: 2048}

	r, err := runSteady(ctx, f, 100, s)
	if err != nil {
		t.Fatalf("runSteady err = %v", err)
	}
	var judged bytes.Buffer
	if !checkSteady(&judged, r, s) {
		t.Errorf("steady state missed its targets:\n%s", judged.String())
	}
	if r.MaxInOneInterval != 1 || r.Pauses != 0 || r.Throttled != 0 || r.Unwraps < 100*(s.Intervals-1) {
		t.Errorf("steady state = %+v, want 1 call per node per interval, no pause, no 429", r)
	}
}

func TestParseFleetFlags(t *testing.T) {
	tests := []struct {
		nodes, key string
		ok         bool
	}{
		{"100,500,2000", "3072-hsm", true},
		{"100", "2048", true},
		{"0", "2048", false},
		{"100,", "2048", false},
		{"100", "1024", false},
		{"100", "3072-HSM", false},
		{"100", "-hsm", false},
	}
	for _, tc := range tests {
		_, errN := parseNodes(tc.nodes)
		_, _, errK := parseKeySpec(tc.key)
		if ok := errN == nil && errK == nil; ok != tc.ok {
			t.Errorf("parseNodes(%q), parseKeySpec(%q) = %v, %v; want ok=%v", tc.nodes, tc.key, errN, errK, tc.ok)
		}
	}
}

func TestMaxInWindow(t *testing.T) {
	at := func(s ...float64) []time.Time {
		var out []time.Time
		for _, x := range s {
			out = append(out, time.Unix(0, 0).Add(time.Duration(x*float64(time.Second))))
		}
		return out
	}
	tests := []struct {
		ts   []time.Time
		want int
	}{
		{nil, 0},
		{at(0, 10, 20), 1},
		{at(0, 5, 10, 20), 2},
		{at(0, 1, 2, 30), 3},
	}
	for _, tc := range tests {
		if got := maxInWindow(tc.ts, 10*time.Second); got != tc.want {
			t.Errorf("maxInWindow(%v, 10s) = %d, want %d", tc.ts, got, tc.want)
		}
	}
}

// FuzzParseFleetFlags: the fleet sizes and key parsers accept only what
// they promise.
func FuzzParseFleetFlags(f *testing.F) {
	for _, s := range []string{"100,500", "2000", "3072-hsm", "4096", "-1", ",", "1e3", "3072-hsm-hsm"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ns, err := parseNodes(s); err == nil {
			if len(ns) == 0 || len(ns) != strings.Count(s, ",")+1 {
				t.Fatalf("parseNodes(%q) = %v: wrong count", s, ns)
			}
			for _, n := range ns {
				if n < 1 || n > 100000 {
					t.Fatalf("parseNodes(%q) = %v: out of range", s, ns)
				}
			}
		}
		if size, _, err := parseKeySpec(s); err == nil && size != 2048 && size != 3072 && size != 4096 {
			t.Fatalf("parseKeySpec(%q) size = %d", s, size)
		}
	})
}
