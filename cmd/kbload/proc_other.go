//go:build !linux

package main

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcessGroup does nothing here: kbload's benchmarks are meant for
// Linux, elsewhere only the child itself is signalled.
func setProcessGroup(cmd *exec.Cmd) {}

// signalGroup sends sig to p, killing it where sig cannot be delivered.
func signalGroup(p *os.Process, sig syscall.Signal) error {
	if sig == syscall.SIGKILL {
		return p.Kill()
	}
	if err := p.Signal(sig); err != nil {
		return p.Kill()
	}
	return nil
}
