//go:build linux

package main

import (
	"os"
	"testing"
	"time"
)

func TestParseProcStatCPU(t *testing.T) {
	// A command name with a space and a parenthesis, utime 1234, stime 56.
	stat := "4242 (key broker) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 9 0 100 1000 10 0 0\n"
	got, err := parseProcStatCPU(stat)
	if err != nil || got != 1290*10*time.Millisecond {
		t.Errorf("parseProcStatCPU() = %v, %v, want 12.9s, nil", got, err)
	}
	for _, bad := range []string{"", "4242 (kb) S 1 2", "4242 (kb) S 1 4242 4242 0 -1 4194560 100 0 0 0 x 56 0"} {
		if _, err := parseProcStatCPU(bad); err == nil {
			t.Errorf("parseProcStatCPU(%q) err = nil, want an error", bad)
		}
	}
}

func TestProcessCPUSelf(t *testing.T) {
	before, err := processCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// Burn CPU until the counter moves: it must, or the reading is wrong.
	deadline := time.Now().Add(5 * time.Second)
	x := 0
	for time.Now().Before(deadline) {
		for i := range 1_000_000 {
			x += i
		}
		if after, _ := processCPU(os.Getpid()); after > before {
			return
		}
	}
	t.Errorf("processCPU(self) stayed at %v after 5s of busy loop (%d)", before, x)
}
