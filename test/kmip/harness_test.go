// Package kmip_test drives keybroker's KMIP front-end with PyKMIP, a KMIP
// implementation nobody on this project wrote, the way mongod Enterprise,
// Percona Server for MongoDB and libmongocrypt drive it (testdata/kmipflow.py).
// It builds keybroker from this tree, runs `keybroker dev` for the client
// flows, and `keybroker serve` with a short validation.interval and a second
// engine identity for ownership and revocation.
package kmip_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// python is Debian's interpreter: PyKMIP (python3-pykmip) imports only there.
const python = "/usr/bin/python3"

const (
	startTimeout = 120 * time.Second // dev PKI, emulator keys and keystore init on a busy 2-core machine
	flowTimeout  = 60 * time.Second  // one kmipflow.py run
	stopTimeout  = 10 * time.Second  // SIGTERM to exit, then SIGKILL
)

var (
	keybrokerBin string // built by TestMain
	flowScript   string // testdata/kmipflow.py, absolute
	workDir      string // removed by TestMain

	devOnce sync.Once
	dev     *devBroker
	devErr  error
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if out, err := exec.Command(python, "-c", "import kmip.core.messages, kmip.core.factories.secrets").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "test/kmip: PyKMIP is missing: %s cannot import kmip (%v: %s).\n"+
			"Run `make deps` (as root), which installs python3-pykmip (the Makefile's APT_PACKAGES); make test runs it first.\n",
			python, err, bytes.TrimSpace(out))
		return 1
	}
	var err error
	if workDir, err = os.MkdirTemp("", "kmip-test-"); err != nil {
		fmt.Fprintln(os.Stderr, "test/kmip:", err)
		return 1
	}
	defer os.RemoveAll(workDir)
	if flowScript, err = filepath.Abs(filepath.Join("testdata", "kmipflow.py")); err != nil {
		fmt.Fprintln(os.Stderr, "test/kmip:", err)
		return 1
	}
	keybrokerBin = filepath.Join(workDir, "keybroker")
	build := exec.Command("go", "build", "-o", keybrokerBin, "../../cmd/keybroker")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "test/kmip: go build ./cmd/keybroker: %v\n%s", err, out)
		return 1
	}
	code := m.Run()
	if dev != nil {
		if err := dev.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "test/kmip: stopping keybroker dev:", err)
			code = 1
		}
	}
	return code
}

// devInfo is the part of `keybroker dev`'s ready JSON line the tests use.
type devInfo struct {
	Address         string `json:"address"`
	CA              string `json:"ca"`
	AdminCert       string `json:"admin_cert"`
	AdminKey        string `json:"admin_key"`
	ControlURL      string `json:"control_url"`
	KMIPAddress     string `json:"kmip_address"`
	KMIPCA          string `json:"kmip_ca"`
	KMIPEnginePEM   string `json:"kmip_engine_pem"`
	KMIPAdminPEM    string `json:"kmip_admin_pem"`
	MasterKeyKMIPID string `json:"master_key_kmip_id"`
}

// process is a keybroker child in its own process group, with its output
// kept for failure messages.
type process struct {
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
	once   sync.Once
	err    error
}

func startProcess(name string, args ...string) (*process, io.Reader, error) {
	cmd := exec.Command(name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = stopTimeout
	p := &process{cmd: cmd, out: &lockedBuffer{}, exited: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stdout = io.MultiWriter(p.out, pw)
	cmd.Stderr = io.MultiWriter(p.out, pw)
	if err := cmd.Start(); err != nil {
		return nil, nil, err
	}
	go func() {
		_ = cmd.Wait()
		pw.Close()
		close(p.exited)
	}()
	return p, pr, nil
}

// stop sends SIGTERM to the process group, then SIGKILL.
func (p *process) stop() error {
	p.once.Do(func() {
		for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
			select {
			case <-p.exited:
				return
			default:
			}
			_ = syscall.Kill(-p.cmd.Process.Pid, sig)
			select {
			case <-p.exited:
				return
			case <-time.After(stopTimeout):
			}
		}
		p.err = fmt.Errorf("pid %d did not exit after SIGKILL", p.cmd.Process.Pid)
	})
	return p.err
}

type devBroker struct {
	*process
	info devInfo
}

// startDev runs `keybroker dev` in dir and waits for its ready JSON line.
func startDev(dir string) (*devBroker, error) {
	p, out, err := startProcess(keybrokerBin, "dev", "--dir", dir, "--addr", "127.0.0.1:0", "--kmip-addr", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	lines := make(chan []byte, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		sent := false
		for sc.Scan() {
			if !sent && bytes.HasPrefix(sc.Bytes(), []byte(`{"address"`)) {
				lines <- bytes.Clone(sc.Bytes())
				sent = true
			}
		}
		io.Copy(io.Discard, out)
	}()
	select {
	case line := <-lines:
		b := &devBroker{process: p}
		if err := json.Unmarshal(line, &b.info); err != nil {
			p.stop()
			return nil, fmt.Errorf("keybroker dev's JSON line: %v: %s", err, line)
		}
		if err := checkLoopback(b.info.KMIPAddress); err != nil {
			p.stop()
			return nil, fmt.Errorf("keybroker dev's kmip_address: %v (line: %s)", err, line)
		}
		for name, v := range map[string]string{"kmip_ca": b.info.KMIPCA, "kmip_engine_pem": b.info.KMIPEnginePEM, "kmip_admin_pem": b.info.KMIPAdminPEM, "master_key_kmip_id": b.info.MasterKeyKMIPID} {
			if v == "" {
				p.stop()
				return nil, fmt.Errorf("keybroker dev's JSON line has no %s: %s", name, line)
			}
		}
		return b, nil
	case <-p.exited:
		return nil, fmt.Errorf("keybroker dev exited before it was ready:\n%s", p.out.String())
	case <-time.After(startTimeout):
		p.stop()
		return nil, fmt.Errorf("keybroker dev printed no ready line within %v:\n%s", startTimeout, p.out.String())
	}
}

// sharedDev is the `keybroker dev` every client-flow test uses; TestMain
// stops it.
func sharedDev(t *testing.T) *devBroker {
	t.Helper()
	devOnce.Do(func() { dev, devErr = startDev(filepath.Join(workDir, "dev")) })
	if devErr != nil {
		t.Fatalf("starting keybroker dev: %v", devErr)
	}
	return dev
}

func checkLoopback(addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
		return fmt.Errorf("%q is not a loopback IP:port", addr)
	}
	return nil
}

// endpoint is what a KMIP client needs: the server, its CA, and a client
// certificate+key PEM.
type endpoint struct {
	addr, ca, pem string
}

// flow runs kmipflow.py FLOW against ep and decodes its JSON answer into
// out. A flow that cannot talk KMIP (exit 2) fails the test.
func flow(t *testing.T, ep endpoint, out any, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), flowTimeout)
	defer cancel()
	argv := append([]string{flowScript, name, "--addr", ep.addr, "--ca", ep.ca, "--pem", ep.pem}, args...)
	cmd := exec.CommandContext(ctx, python, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		t.Fatalf("kmipflow.py %s %s: %v\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	if err := json.Unmarshal(stdout.Bytes(), out); err != nil {
		t.Fatalf("kmipflow.py %s: output is not the JSON expected (%v): %s", name, err, stdout.Bytes())
	}
}

// outcome is one response batch item's result, as kmipflow.py reports it.
type outcome struct {
	Operation string  `json:"operation"`
	Status    string  `json:"status"`
	Reason    *string `json:"reason"`
	Message   *string `json:"message"`
}

func (o outcome) String() string {
	s := o.Operation + " " + o.Status
	if o.Reason != nil {
		s += " " + *o.Reason
	}
	if o.Message != nil {
		s += ": " + *o.Message
	}
	return s
}

func (o outcome) reason() string {
	if o.Reason == nil {
		return ""
	}
	return *o.Reason
}

// wantSuccess fails unless the operation op succeeded.
func (o outcome) wantSuccess(t *testing.T, op string) {
	t.Helper()
	if o.Operation != op || o.Status != "SUCCESS" {
		t.Fatalf("%s: got %v, want %s SUCCESS", op, o, op)
	}
}

// wantFailure fails unless op failed with reason and a Result Message.
func (o outcome) wantFailure(t *testing.T, op, reason string) {
	t.Helper()
	if o.Operation != op || o.Status != "OPERATION_FAILED" || o.reason() != reason || o.Message == nil || *o.Message == "" {
		t.Fatalf("%s: got %v, want %s OPERATION_FAILED %s with a Result Message", op, o, op, reason)
	}
}

type stateReport struct {
	outcome
	States []string `json:"states"`
	State  *string  `json:"state"`
}

// wantState fails unless Get Attributes(State) succeeded with exactly one
// State attribute equal to want.
func (s stateReport) wantState(t *testing.T, want string) {
	t.Helper()
	s.wantSuccess(t, "GET_ATTRIBUTES")
	if len(s.States) != 1 || s.States[0] != want {
		t.Fatalf("Get Attributes(State): State attributes %q, want exactly one %s", s.States, want)
	}
}

type keyReport struct {
	outcome
	UID            string  `json:"uid"`
	ObjectType     string  `json:"object_type"`
	KeyFormat      string  `json:"key_format"`
	Algorithm      *string `json:"algorithm"`
	Length         *int    `json:"length"`
	Wrapped        bool    `json:"wrapped"`
	KeyHex         string  `json:"key_hex"`
	SecretDataType string  `json:"secret_data_type"`
	Equal          *bool   `json:"equal"`
}

// wantAES256 fails unless Get returned a raw, unwrapped AES-256 symmetric
// key of 32 bytes named uid.
func (k keyReport) wantAES256(t *testing.T, uid string) {
	t.Helper()
	k.wantSuccess(t, "GET")
	alg, length := "<none>", 0
	if k.Algorithm != nil {
		alg = *k.Algorithm
	}
	if k.Length != nil {
		length = *k.Length
	}
	if k.UID != uid || k.ObjectType != "SYMMETRIC_KEY" || k.KeyFormat != "RAW" || alg != "AES" || length != 256 || k.Wrapped || len(k.KeyHex) != 64 {
		t.Fatalf("Get(%s) = uid %s, %s, format %s, %s %d, wrapped %v, %d key bytes; want %s, SYMMETRIC_KEY, RAW, AES 256, not wrapped, 32 bytes",
			uid, k.UID, k.ObjectType, k.KeyFormat, alg, length, k.Wrapped, len(k.KeyHex)/2, uid)
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writes and reads.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	const max = 16 << 10
	s := l.b.String()
	if len(s) > max {
		s = "...\n" + s[len(s)-max:]
	}
	return s
}
