package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os/exec"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/mtls"
)

// Bounds on the child broker's life.
const (
	devStartTimeout = 90 * time.Second // dev PKI, RSA keys and keystore init on a busy 2-core machine
	devStopTimeout  = 10 * time.Second // SIGTERM to exit; then SIGKILL
	maxDevLine      = 64 << 10
)

// devInfo is the part of the JSON line `keybroker dev` prints once serving
// that kbload uses.
type devInfo struct {
	Address    string `json:"address"`
	UnixSocket string `json:"unix_socket"`
	Config     string `json:"config"`
	CA         string `json:"ca"`
	EngineCert string `json:"engine_cert"`
	EngineKey  string `json:"engine_key"`
	AdminCert  string `json:"admin_cert"`
	AdminKey   string `json:"admin_key"`
	KeyID      string `json:"key_id"`
	ControlURL string `json:"control_url"`
	AdminURL   string `json:"admin_url"` // the admin listener (/metrics); checked by checkAdminURL where used
}

// parseDevInfo reads the JSON line of `keybroker dev`. It insists on
// loopback addresses because kbload must never send load, or emulator
// control requests, anywhere else.
func parseDevInfo(line []byte) (devInfo, error) {
	var info devInfo
	if err := json.Unmarshal(bytes.TrimSpace(line), &info); err != nil {
		return devInfo{}, fmt.Errorf("the JSON line of keybroker dev is not valid JSON (%v): is --keybroker a keybroker binary of this tree?", err)
	}
	ap, err := netip.ParseAddrPort(info.Address)
	if err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
		return devInfo{}, fmt.Errorf("keybroker dev reported address %q, want a loopback IP:port", truncate(info.Address, 80))
	}
	u, err := url.Parse(info.ControlURL)
	if err != nil || u.Scheme != "http" || u.Port() == "" {
		return devInfo{}, fmt.Errorf("keybroker dev reported control_url %q, want http://127.0.0.1:PORT", truncate(info.ControlURL, 80))
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err != nil || !ip.IsLoopback() {
		return devInfo{}, fmt.Errorf("keybroker dev reported control_url %q, want a loopback host", truncate(info.ControlURL, 80))
	}
	for name, v := range map[string]string{"ca": info.CA, "engine_cert": info.EngineCert, "engine_key": info.EngineKey} {
		if v == "" {
			return devInfo{}, fmt.Errorf("keybroker dev reported no %s file: is --keybroker a keybroker binary of this tree?", name)
		}
	}
	return info, nil
}

// devBroker is a `keybroker dev` child process in its own process group.
// Stop may be called from any goroutine, more than once; the rest is for
// the goroutine that started it.
type devBroker struct {
	info devInfo
	ctl  *akvemu.Control
	cmd  *exec.Cmd

	exited      chan struct{} // closed once the process has been waited for
	waitErr     error         // valid once exited is closed
	stopTimeout time.Duration // from SIGTERM to SIGKILL, and from SIGKILL to giving up
	stop        sync.Once
	stopErr     error
}

// startDevBroker runs `bin dev --dir dir --addr 127.0.0.1:0` and returns
// once it has printed its JSON line. The broker's stderr (its logs) goes to
// logw. The context bounds start-up only: call Stop to end the broker.
func startDevBroker(ctx context.Context, bin, dir string, logw io.Writer) (*devBroker, error) {
	lines := &firstLine{ch: make(chan []byte, 1), rest: logw}
	cmd := exec.Command(bin, "dev", "--dir", dir, "--addr", "127.0.0.1:0")
	cmd.Stdout = lines
	cmd.Stderr = logw
	// A grandchild holding the pipes must not keep Wait waiting for ever.
	cmd.WaitDelay = devStopTimeout
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s dev: %w", bin, err)
	}
	b := &devBroker{cmd: cmd, exited: make(chan struct{}), stopTimeout: devStopTimeout}
	go func() {
		b.waitErr = cmd.Wait()
		close(b.exited)
	}()

	timer := time.NewTimer(devStartTimeout)
	defer timer.Stop()
	var line []byte
	select {
	case line = <-lines.ch:
	case <-b.exited:
		return nil, fmt.Errorf("%s dev exited before serving (%v): see its log", bin, b.waitErr)
	case <-timer.C:
		b.Stop()
		return nil, fmt.Errorf("%s dev printed no JSON line within %v: see its log", bin, devStartTimeout)
	case <-ctx.Done():
		b.Stop()
		return nil, ctx.Err()
	}
	info, err := parseDevInfo(line)
	if err != nil {
		b.Stop()
		return nil, err
	}
	b.info = info
	b.ctl = akvemu.NewControl(info.ControlURL, nil)
	return b, nil
}

// Stop ends the broker: SIGTERM to its process group (so it wipes its keys),
// then SIGKILL if it is still there after stopTimeout.
func (b *devBroker) Stop() error {
	b.stop.Do(func() {
		select {
		case <-b.exited:
			return
		default:
		}
		_ = signalGroup(b.cmd.Process, syscall.SIGTERM)
		select {
		case <-b.exited:
			return
		case <-time.After(b.stopTimeout):
		}
		_ = signalGroup(b.cmd.Process, syscall.SIGKILL)
		select {
		case <-b.exited:
		case <-time.After(b.stopTimeout):
			b.stopErr = fmt.Errorf("keybroker dev (pid %d) did not exit after SIGKILL", b.cmd.Process.Pid)
		}
	})
	return b.stopErr
}

// dialEngine connects to the broker with the engine client certificate.
func (b *devBroker) dialEngine() (*grpc.ClientConn, error) {
	tlsCfg, err := mtls.ClientTLS(mtls.ClientConfig{
		CAFile: b.info.CA, CertFile: b.info.EngineCert, KeyFile: b.info.EngineKey, ServerName: serverName,
	})
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(b.info.Address, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
}

// serverName is the name the dev server certificate is verified against.
const serverName = "127.0.0.1"

// firstLine is the child's stdout: it hands the first line that looks like
// JSON to ch and passes everything else (the human hint) to rest.
type firstLine struct {
	mu   sync.Mutex
	buf  []byte
	done bool
	ch   chan []byte
	rest io.Writer
}

func (f *firstLine) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return f.rest.Write(p)
	}
	f.buf = append(f.buf, p...)
	for !f.done {
		i := bytes.IndexByte(f.buf, '\n')
		if i < 0 {
			if len(f.buf) > maxDevLine {
				return 0, errors.New("keybroker dev wrote a line longer than 64 KiB on stdout")
			}
			return len(p), nil
		}
		line := f.buf[:i+1]
		f.buf = f.buf[i+1:]
		if bytes.HasPrefix(bytes.TrimSpace(line), []byte("{")) {
			f.done = true
			f.ch <- bytes.Clone(line)
			if len(f.buf) > 0 {
				_, _ = f.rest.Write(f.buf)
			}
			f.buf = nil
		} else {
			_, _ = f.rest.Write(line)
		}
	}
	return len(p), nil
}

// truncate shortens s to at most n bytes (and "...") for a message,
// without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
