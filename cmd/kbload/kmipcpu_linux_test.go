package main

import (
	"os"
	"testing"
	"time"
)

func TestProcessCPU(t *testing.T) {
	before, err := processCPU(os.Getpid())
	if err != nil {
		t.Fatalf("processCPU(self) err = %v, want nil", err)
	}
	// Burn CPU until three clock ticks show; a shared machine may give this
	// process only a slice of a core, hence the generous deadline.
	x, grew := 0, time.Duration(0)
	for deadline := time.Now().Add(20 * time.Second); grew < 30*time.Millisecond; {
		if time.Now().After(deadline) {
			t.Fatalf("processCPU grew by %v in 20s of busy loop (x=%d), want 30ms", grew, x)
		}
		for i := range 1000000 {
			x += i
		}
		after, err := processCPU(os.Getpid())
		if err != nil {
			t.Fatalf("processCPU(self) err = %v, want nil", err)
		}
		if after < before {
			t.Fatalf("processCPU went back from %v to %v", before, after)
		}
		grew = after - before
	}
	if _, err := processCPU(-1); err == nil {
		t.Fatal("processCPU(-1) err = nil, want an error")
	}
}
