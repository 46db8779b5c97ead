//go:build !linux

package main

import (
	"errors"
	"time"
)

// processCPU needs /proc: elsewhere the bench reports no CPU per call.
func processCPU(pid int) (time.Duration, error) {
	return 0, errors.New("CPU per call needs /proc (Linux)")
}
