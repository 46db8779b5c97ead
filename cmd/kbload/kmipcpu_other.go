//go:build !linux

package main

import (
	"errors"
	"time"
)

func processCPU(pid int) (time.Duration, error) {
	return 0, errors.New("process CPU time is read from /proc on Linux only")
}
