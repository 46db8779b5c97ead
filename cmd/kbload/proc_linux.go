package main

import (
	"os"
	"os/exec"
	"syscall"
)

// setProcessGroup puts the child in its own process group, so a signal to
// the group reaches anything it starts, and asks the kernel to send it
// SIGTERM if kbload dies without cleaning up (SIGKILL, a crash).
func setProcessGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// signalGroup sends sig to the process group led by p.
func signalGroup(p *os.Process, sig syscall.Signal) error {
	return syscall.Kill(-p.Pid, sig)
}
