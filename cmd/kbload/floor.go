package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/internal/config"
)

// floorPkg is the bare grpc-go server bench measures the broker against.
const floorPkg = "./cmd/kbfloor"

// floorServer is a kbfloor child process: grpc.health.v1 only, over the
// broker's certificates and TLS settings, in its own process group.
type floorServer struct {
	addr     string
	pid      int
	protoset string // grpc.health.v1 for ghz: the floor has no reflection
	cmd      *exec.Cmd
	done     chan struct{}
}

// buildFloor builds kbfloor from the repository into dir, once, before
// anything is measured.
func buildFloor(ctx context.Context, dir string) (string, error) {
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "kbfloor")
	ctx, cancel := context.WithTimeout(ctx, ghzBuildTimeout)
	defer cancel()
	stderr := &capped{max: maxGhzStderr}
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, floorPkg)
	cmd.Dir = root
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building %s: %v: %s", floorPkg, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return bin, nil
}

// floorTLSFiles reads the server certificate, key and client CA from the
// dev broker's configuration file, so the floor serves with exactly the
// broker's.
func floorTLSFiles(configFile string) (cert, key, ca string, err error) {
	data, err := os.ReadFile(configFile)
	if err != nil {
		return "", "", "", fmt.Errorf("the dev broker's configuration: %w", err)
	}
	cfg, err := config.Parse(configFile, data, func(string) string { return "" })
	if err != nil {
		return "", "", "", fmt.Errorf("the dev broker's configuration: %w", err)
	}
	return cfg.TLS.CertFile, cfg.TLS.KeyFile, cfg.TLS.ClientCAFile, nil
}

// startFloor runs bin on a loopback port and returns once it serves.
func startFloor(ctx context.Context, bin, cert, key, ca string, logw io.Writer) (*floorServer, error) {
	lines := &firstLine{ch: make(chan []byte, 1), rest: logw}
	cmd := exec.Command(bin, "--addr", "127.0.0.1:0", "--cert", cert, "--key", key, "--client-ca", ca)
	cmd.Stdout = lines
	cmd.Stderr = logw
	cmd.WaitDelay = devStopTimeout
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the floor server %s: %w", bin, err)
	}
	f := &floorServer{cmd: cmd, done: make(chan struct{})}
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(f.done) }()
	timer := time.NewTimer(devStartTimeout)
	defer timer.Stop()
	var line []byte
	select {
	case line = <-lines.ch:
	case <-f.done:
		return nil, fmt.Errorf("the floor server exited before serving (%v): see its log", waitErr)
	case <-timer.C:
		f.Stop()
		return nil, fmt.Errorf("the floor server printed no JSON line within %v", devStartTimeout)
	case <-ctx.Done():
		f.Stop()
		return nil, ctx.Err()
	}
	var info struct {
		Address string `json:"address"`
	}
	if err := json.Unmarshal(bytes.TrimSpace(line), &info); err != nil {
		f.Stop()
		return nil, fmt.Errorf("the floor server's JSON line: %v", err)
	}
	if ap, err := netip.ParseAddrPort(info.Address); err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
		f.Stop()
		return nil, fmt.Errorf("the floor server reported address %q, want a loopback IP:port", truncate(info.Address, 80))
	}
	f.addr, f.pid = info.Address, cmd.Process.Pid
	return f, nil
}

// Stop ends the floor server: SIGTERM, then SIGKILL. Safe to call again.
func (f *floorServer) Stop() {
	select {
	case <-f.done:
		return
	default:
	}
	_ = signalGroup(f.cmd.Process, syscall.SIGTERM)
	select {
	case <-f.done:
	case <-time.After(devStopTimeout):
		_ = signalGroup(f.cmd.Process, syscall.SIGKILL)
		<-f.done
	}
}
