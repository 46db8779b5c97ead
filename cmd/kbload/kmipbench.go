package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"

	"github.com/keybroker/keybroker/internal/akvemu"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// bench-kmip targets (issue 11).
const (
	kmipPeerMinRatio = 20.0 // keybroker / pykmip-server, every figure
	kmipGRPCMinRatio = 0.8  // KMIP Get at N connections / gRPC GetMasterKey at N
	kmipOpTimeout    = 10 * time.Second
	kmipPeerStart    = 90 * time.Second
)

type kmipBenchFlags struct {
	keybroker, ghz, peer, python, out string
	duration, warmup                  time.Duration
	conns                             int
	noFail                            bool
}

func runBenchKMIP(ctx context.Context, e *env, args []string) error {
	var f kmipBenchFlags
	fs := newFlagSet(e, "bench-kmip", "[--keybroker bin/keybroker] [--duration 5s] [--conns 20] [--peer /usr/bin/pykmip-server]")
	fs.StringVar(&f.keybroker, "keybroker", "bin/keybroker", "keybroker binary to measure (build it with: go build -o bin/ ./cmd/keybroker)")
	fs.StringVar(&f.ghz, "ghz", "", "ghz binary for the gRPC GetMasterKey figure; empty builds the one pinned in "+ghzModFile)
	fs.StringVar(&f.peer, "peer", "/usr/bin/pykmip-server", "PyKMIP's server (Debian python3-pykmip), the peer measured in the same run")
	fs.StringVar(&f.python, "python", "/usr/bin/python3", "the Python that imports PyKMIP (Debian's)")
	fs.StringVar(&f.out, "out", "", "directory for the summary and logs; empty: a new one under bench-results/")
	fs.DurationVar(&f.duration, "duration", 5*time.Second, "measured time of each figure on each server")
	fs.DurationVar(&f.warmup, "warmup", 2*time.Second, "unmeasured Get load on keybroker before the Key Vault counters are reset")
	fs.IntVar(&f.conns, "conns", 20, "concurrent connections (and workers) of the concurrent figures, and ghz's concurrency and connections")
	fs.BoolVar(&f.noFail, "no-fail", false, "exit 0 even when a target is missed (the report still says FAIL)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case f.duration < time.Second:
		return usageErrorf("--duration %v: want at least 1s", f.duration)
	case f.conns < 1 || f.conns > 200:
		return usageErrorf("--conns %d: want 1 to 200", f.conns)
	}
	return f.run(ctx, e)
}

// kmipServer is one KMIP server under load: where it is, the CA that
// verifies it, and an engine client certificate+key PEM.
type kmipServer struct {
	name, addr, ca, pem string
	uid                 string      // an Active AES-256 key made for the run
	tls                 *tls.Config // read once, so dialing costs the load generator no file reads or parsing
	pid                 int         // the server process, whose CPU time is read around each figure
}

func (s *kmipServer) dial(ctx context.Context) (*kmipclient.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, kmipOpTimeout)
	defer cancel()
	// mongod speaks 1.2 without Discover Versions; no TLS session cache, so
	// every new connection is a full handshake, as a fresh mongod poll is.
	return kmipclient.DialContext(ctx, s.addr, kmipclient.WithTlsConfig(s.tls.Clone()), kmipclient.EnforceVersion(kmip.V1_2))
}

// loadTLS reads the CA and the client certificate+key PEM.
func (s *kmipServer) loadTLS() error {
	ca, err := os.ReadFile(s.ca)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return fmt.Errorf("%s: no CA certificate", s.ca)
	}
	cert, err := tls.LoadX509KeyPair(s.pem, s.pem)
	if err != nil {
		return fmt.Errorf("%s: %w", s.pem, err)
	}
	// X25519 and P-256 only, as the OpenSSL of today's engines offers: no
	// post-quantum hybrid key share, which Go would add by default.
	s.tls = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool, Certificates: []tls.Certificate{cert}, ServerName: serverName,
		CurvePreferences: []tls.CurveID{tls.X25519, tls.CurveP256}}
	return nil
}

// prepare makes and activates the key the figures read, and reads it once.
func (s *kmipServer) prepare(ctx context.Context) error {
	if err := s.loadTLS(); err != nil {
		return fmt.Errorf("%s: %w", s.name, err)
	}
	c, err := s.dial(ctx)
	if err != nil {
		return fmt.Errorf("%s: connecting: %w", s.name, err)
	}
	defer c.Close()
	cr, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).ExecContext(ctx)
	if err != nil {
		return fmt.Errorf("%s: Create: %w", s.name, err)
	}
	s.uid = cr.UniqueIdentifier
	if _, err := c.Activate(s.uid).ExecContext(ctx); err != nil {
		return fmt.Errorf("%s: Activate: %w", s.name, err)
	}
	return kmipGet(ctx, c, s.uid)
}

func kmipGet(ctx context.Context, c *kmipclient.Client, uid string) error {
	r, err := c.Get(uid).ExecContext(ctx)
	if err != nil {
		return err
	}
	if r.Object == nil {
		return errors.New("the Get response holds no object")
	}
	return nil
}

func kmipState(ctx context.Context, c *kmipclient.Client, uid string) error {
	r, err := c.GetAttributes(uid, kmip.AttributeNameState).ExecContext(ctx)
	if err != nil {
		return err
	}
	n := 0
	for _, a := range r.Attribute {
		if a.AttributeName == kmip.AttributeNameState {
			n++
			if a.AttributeValue != kmip.StateActive {
				return fmt.Errorf("the State is %v, want Active", a.AttributeValue)
			}
		}
	}
	if n != 1 {
		return fmt.Errorf("%d State attributes, want 1", n)
	}
	return nil
}

// kmipRate is one figure on one server.
type kmipRate struct {
	Ops     int64   `json:"ops"`
	Errors  int64   `json:"errors"`
	Seconds float64 `json:"seconds"`
	PerSec  float64 `json:"per_sec"`
	// ServerCPUus is the server process's CPU time per successful
	// operation, in µs (0 when it could not be read).
	ServerCPUus float64 `json:"server_cpu_us_per_op"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	FirstErr    string  `json:"first_error,omitempty"`
}

// kmipFigures are the three figures of one server.
type kmipFigures struct {
	GetOne  kmipRate `json:"get_one_connection"`
	GetConc kmipRate `json:"get_concurrent"`
	Polls   kmipRate `json:"new_connection_state_polls"`
	// Handshakes is TLS connections opened and closed with no KMIP
	// request: what a new-connection poll costs before any KMIP work.
	Handshakes kmipRate `json:"tls_handshakes_only"`
}

// load runs workers workers for d; each opens a client with open (nil:
// none, op dials itself) and repeats op. It counts successes, errors and
// latencies.
func kmipLoad(ctx context.Context, d time.Duration, workers int, open func(context.Context) (*kmipclient.Client, error), op func(context.Context, *kmipclient.Client) error) (kmipRate, error) {
	clients := make([]*kmipclient.Client, workers)
	if open != nil {
		for i := range clients {
			c, err := open(ctx)
			if err != nil {
				for _, c := range clients[:i] {
					c.Close()
				}
				return kmipRate{}, fmt.Errorf("opening connection %d of %d: %w", i+1, workers, err)
			}
			clients[i] = c
		}
		defer func() {
			for _, c := range clients {
				c.Close()
			}
		}()
	}
	var (
		ops, errs atomic.Int64
		mu        sync.Mutex
		lat       []time.Duration
		firstErr  string
		wg        sync.WaitGroup
	)
	start := time.Now()
	stop := start.Add(d)
	for i := range workers {
		wg.Go(func() {
			mine := make([]time.Duration, 0, 4096)
			for time.Now().Before(stop) && ctx.Err() == nil {
				octx, cancel := context.WithTimeout(ctx, kmipOpTimeout)
				t0 := time.Now()
				err := op(octx, clients[i])
				el := time.Since(t0)
				cancel()
				if err != nil {
					if errs.Add(1) == 1 {
						mu.Lock()
						firstErr = truncate(err.Error(), 200)
						mu.Unlock()
					}
					continue
				}
				ops.Add(1)
				mine = append(mine, el)
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
	}
	wg.Wait()
	el := time.Since(start).Seconds()
	r := kmipRate{Ops: ops.Load(), Errors: errs.Load(), Seconds: el, PerSec: float64(ops.Load()) / el, FirstErr: firstErr}
	if len(lat) > 0 {
		slices.Sort(lat)
		pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / 1e6 }
		r.P50Ms, r.P99Ms = pct(0.50), pct(0.99)
	}
	return r, ctx.Err()
}

// measured runs kmipLoad and adds the server's CPU time per operation.
func (s *kmipServer) measured(ctx context.Context, d time.Duration, workers int, open func(context.Context) (*kmipclient.Client, error), op func(context.Context, *kmipclient.Client) error) (kmipRate, error) {
	before, cpuErr := processCPU(s.pid)
	r, err := kmipLoad(ctx, d, workers, open, op)
	if after, err2 := processCPU(s.pid); cpuErr == nil && err2 == nil && r.Ops > 0 {
		r.ServerCPUus = float64(after-before) / float64(time.Microsecond) / float64(r.Ops)
	}
	return r, err
}

// figures measures Get on one connection, Get on conns connections, and
// State polls each on a new connection by conns workers.
func (s *kmipServer) figures(ctx context.Context, d time.Duration, conns int, progress io.Writer) (kmipFigures, error) {
	var f kmipFigures
	var err error
	get := func(ctx context.Context, c *kmipclient.Client) error { return kmipGet(ctx, c, s.uid) }
	fmt.Fprintf(progress, "kbload: %s: Get on 1 connection for %v ...\n", s.name, d)
	if f.GetOne, err = s.measured(ctx, d, 1, s.dial, get); err != nil {
		return f, err
	}
	fmt.Fprintf(progress, "kbload: %s: Get on %d connections for %v ...\n", s.name, conns, d)
	if f.GetConc, err = s.measured(ctx, d, conns, s.dial, get); err != nil {
		return f, err
	}
	fmt.Fprintf(progress, "kbload: %s: State polls on new connections (%d workers) for %v ...\n", s.name, conns, d)
	f.Polls, err = s.measured(ctx, d, conns, nil, func(ctx context.Context, _ *kmipclient.Client) error {
		c, err := s.dial(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		return kmipState(ctx, c, s.uid)
	})
	if err != nil {
		return f, err
	}
	fmt.Fprintf(progress, "kbload: %s: TLS handshakes only (%d workers) for %v ...\n", s.name, conns, d)
	f.Handshakes, err = s.measured(ctx, d, conns, nil, func(ctx context.Context, _ *kmipclient.Client) error {
		c, err := (&tls.Dialer{Config: s.tls.Clone()}).DialContext(ctx, "tcp", s.addr)
		if err != nil {
			return err
		}
		return c.Close()
	})
	return f, err
}

// kmipDevInfo is the KMIP part of keybroker dev's JSON line.
type kmipDevInfo struct {
	KMIPAddress     string `json:"kmip_address"`
	KMIPCA          string `json:"kmip_ca"`
	KMIPEnginePEM   string `json:"kmip_engine_pem"`
	MasterKeyKMIPID string `json:"master_key_kmip_id"`
}

// startKMIPDev is startDevBroker with KMIP on a free loopback port; it
// also returns the KMIP part of the JSON line.
func startKMIPDev(ctx context.Context, bin, dir string, logw io.Writer) (*devBroker, kmipDevInfo, error) {
	var ki kmipDevInfo
	lines := &firstLine{ch: make(chan []byte, 1), rest: logw}
	cmd := exec.Command(bin, "dev", "--dir", dir, "--addr", "127.0.0.1:0", "--kmip-addr", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = lines, logw
	cmd.WaitDelay = devStopTimeout
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, ki, fmt.Errorf("starting %s dev: %w", bin, err)
	}
	b := &devBroker{cmd: cmd, exited: make(chan struct{}), stopTimeout: devStopTimeout}
	go func() {
		b.waitErr = cmd.Wait()
		close(b.exited)
	}()
	var line []byte
	select {
	case line = <-lines.ch:
	case <-b.exited:
		return nil, ki, fmt.Errorf("%s dev exited before serving (%v): see its log", bin, b.waitErr)
	case <-time.After(devStartTimeout):
		b.Stop()
		return nil, ki, fmt.Errorf("%s dev printed no JSON line within %v: see its log", bin, devStartTimeout)
	case <-ctx.Done():
		b.Stop()
		return nil, ki, ctx.Err()
	}
	info, err := parseDevInfo(line)
	if err == nil {
		err = json.Unmarshal(line, &ki)
	}
	if err == nil {
		if _, perr := checkLoopbackAddr(ki.KMIPAddress); perr != nil || ki.KMIPEnginePEM == "" {
			err = fmt.Errorf("keybroker dev reported kmip_address %q and kmip_engine_pem %q: is --keybroker a build with KMIP?", truncate(ki.KMIPAddress, 80), truncate(ki.KMIPEnginePEM, 80))
		}
	}
	if err != nil {
		b.Stop()
		return nil, ki, err
	}
	b.info = info
	b.ctl = akvemu.NewControl(info.ControlURL, nil)
	return b, ki, nil
}

func checkLoopbackAddr(addr string) (string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return "", fmt.Errorf("%q is not a loopback address", addr)
	}
	return host, nil
}

// pykmipServer is pykmip-server in its own process group, with the dev
// PKI (an ECDSA server certificate, so TLS 1.2 with AES-GCM, one of the
// suites PyKMIP's TLS1.2 profile allows).
type pykmipServer struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func startPyKMIP(ctx context.Context, f kmipBenchFlags, dir string, pki devInfo, logw io.Writer) (*pykmipServer, string, error) {
	if err := os.MkdirAll(filepath.Join(dir, "policies"), 0o700); err != nil {
		return nil, "", err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, "", err
	}
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	serverKey := filepath.Join(filepath.Dir(pki.CA), "server-key.pem")
	serverCert := filepath.Join(filepath.Dir(pki.CA), "server.pem")
	conf := fmt.Sprintf(`[server]
hostname=127.0.0.1
port=%s
certificate_path=%s
key_path=%s
ca_path=%s
auth_suite=TLS1.2
policy_path=%s
enable_tls_client_auth=True
logging_level=WARNING
database_path=%s
`, port, serverCert, serverKey, pki.CA, filepath.Join(dir, "policies"), filepath.Join(dir, "pykmip.db"))
	confPath := filepath.Join(dir, "server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, "", err
	}
	cmd := exec.Command(f.python, f.peer, "-f", confPath, "-l", filepath.Join(dir, "server.log"))
	cmd.Stdout, cmd.Stderr = logw, logw
	cmd.WaitDelay = devStopTimeout
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		return nil, "", fmt.Errorf("starting %s: %w (Debian python3-pykmip; make deps installs it)", f.peer, err)
	}
	p := &pykmipServer{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(kmipPeerStart)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return p, addr, nil
		}
		select {
		case <-p.exited:
			return nil, "", fmt.Errorf("%s exited before listening: see %s", f.peer, filepath.Join(dir, "server.log"))
		case <-ctx.Done():
			p.Stop()
			return nil, "", ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.Stop()
			return nil, "", fmt.Errorf("%s did not listen on %s within %v", f.peer, addr, kmipPeerStart)
		}
	}
}

// Stop ends pykmip-server: SIGTERM to its group, then SIGKILL.
func (p *pykmipServer) Stop() {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		select {
		case <-p.exited:
			return
		default:
		}
		_ = signalGroup(p.cmd.Process, sig)
		select {
		case <-p.exited:
			return
		case <-time.After(devStopTimeout):
		}
	}
}

// kmipSummary is bench-kmip's report.
type kmipSummary struct {
	Started   time.Time   `json:"started"`
	Settings  any         `json:"settings"`
	Machine   machine     `json:"machine"`
	Keybroker kmipFigures `json:"keybroker"`
	Peer      kmipFigures `json:"pykmip_server"`
	GRPC      kmipRate    `json:"grpc_get_master_key"`
	AKV       akvCalls    `json:"key_vault_calls"`
	Checks    []check     `json:"checks"`
	Pass      bool        `json:"pass"`
	OutDir    string      `json:"out_dir"`
}

func (f kmipBenchFlags) run(ctx context.Context, e *env) error {
	if err := checkKeybroker(f.keybroker); err != nil {
		return err
	}
	for _, p := range []string{f.peer, f.python} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("%s: %w (Debian package python3-pykmip; `make deps` installs it)", p, err)
		}
	}
	sess, err := newSession(ctx, e, sessionConfig{report: "bench-kmip", tmpPrefix: "kbload-kmip-", out: f.out, ghz: f.ghz})
	if err != nil {
		return err
	}
	defer sess.Close()
	logw, _, err := sess.openLog("keybroker.log", os.O_TRUNC)
	if err != nil {
		return err
	}
	defer logw.Close()
	b, ki, err := startKMIPDev(ctx, f.keybroker, filepath.Join(sess.tmp, "dev"), logw)
	if err != nil {
		return err
	}
	defer b.Stop()
	peerLog, _, err := sess.openLog("pykmip-server.log", os.O_TRUNC)
	if err != nil {
		return err
	}
	defer peerLog.Close()
	fmt.Fprintln(e.stderr, "kbload: starting pykmip-server ...")
	peerProc, peerAddr, err := startPyKMIP(ctx, f, filepath.Join(sess.tmp, "pykmip"), b.info, peerLog)
	if err != nil {
		return err
	}
	defer peerProc.Stop()

	kb := &kmipServer{name: "keybroker", addr: ki.KMIPAddress, ca: ki.KMIPCA, pem: ki.KMIPEnginePEM, pid: b.cmd.Process.Pid}
	peer := &kmipServer{name: "pykmip-server", addr: peerAddr, ca: b.info.CA, pem: ki.KMIPEnginePEM, pid: peerProc.cmd.Process.Pid}
	for _, s := range []*kmipServer{kb, peer} {
		if err := s.prepare(ctx); err != nil {
			return err
		}
	}

	conn, err := b.dialEngine()
	if err != nil {
		return fmt.Errorf("connecting to the broker: %w", err)
	}
	defer conn.Close()
	grpcClient := keybrokerv1.NewKeyBrokerServiceClient(conn)
	g := ghzRun{
		bin: sess.ghz, addr: b.info.Address, ca: b.info.CA, cert: b.info.EngineCert, key: b.info.EngineKey,
		concurrency: f.conns, conns: f.conns, stderr: e.stderr,
	}
	// Warm-up: keys loaded, caches filled; then Key Vault calls are counted.
	if _, err := kmipLoad(ctx, f.warmup, f.conns, kb.dial, func(ctx context.Context, c *kmipclient.Client) error { return kmipGet(ctx, c, kb.uid) }); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	if _, _, err := g.run(ctx, "keybroker.v1.KeyBrokerService/GetMasterKey", "{}", f.warmup); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}
	watcher := watchStatus(ctx, grpcClient)
	defer watcher.cancel()
	if err := b.ctl.ResetCounters(ctx); err != nil {
		return fmt.Errorf("resetting the emulator's counters: %w", err)
	}

	s := kmipSummary{Started: sess.started, Machine: describeMachine(f.keybroker), OutDir: sess.out,
		Settings: map[string]any{"duration": f.duration.String(), "warmup": f.warmup.String(), "conns": f.conns, "kmip_version": "1.2"}}
	if s.Keybroker, err = kb.figures(ctx, f.duration, f.conns, e.stderr); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "kbload: gRPC GetMasterKey, %d concurrent over %d connections, for %v ...\n", f.conns, f.conns, f.duration)
	rep, _, err := g.run(ctx, "keybroker.v1.KeyBrokerService/GetMasterKey", "{}", f.duration)
	if err != nil {
		return err
	}
	s.GRPC = kmipRate{Ops: int64(rep.Count) - int64(rep.errorCount()), Errors: int64(rep.errorCount()), Seconds: rep.Total.Seconds(), PerSec: rep.Rps}
	if p, ok := rep.percentile(50); ok {
		s.GRPC.P50Ms = float64(p) / 1e6
	}
	if p, ok := rep.percentile(99); ok {
		s.GRPC.P99Ms = float64(p) / 1e6
	}
	counters, err := b.ctl.Counters(ctx)
	if err != nil {
		return fmt.Errorf("reading the emulator's counters: %w", err)
	}
	activity := watcher.stop(ctx)
	s.AKV = newAKVCalls(counters, activity)
	if s.Peer, err = peer.figures(ctx, f.duration, f.conns, e.stderr); err != nil {
		return err
	}

	s.Checks, s.Pass = kmipJudge(s, f.conns)
	if err := sess.writeSummary(s); err != nil {
		return err
	}
	printKMIPReport(e.stdout, s, f.conns)
	if err := b.Stop(); err != nil {
		return err
	}
	return verdict(s.Pass, f.noFail)
}

func kmipRatio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func kmipJudge(s kmipSummary, conns int) ([]check, bool) {
	var cs []check
	for _, fig := range []struct {
		name     string
		kb, peer kmipRate
	}{
		{"Get, 1 connection", s.Keybroker.GetOne, s.Peer.GetOne},
		{fmt.Sprintf("Get, %d connections", conns), s.Keybroker.GetConc, s.Peer.GetConc},
		{"State polls, new connection each", s.Keybroker.Polls, s.Peer.Polls},
	} {
		r := kmipRatio(fig.kb.PerSec, fig.peer.PerSec)
		cs = append(cs, check{Name: fig.name + ": keybroker / pykmip-server", Want: fmt.Sprintf(">= %.0fx", kmipPeerMinRatio), Got: fmt.Sprintf("%.1fx", r), Pass: r >= kmipPeerMinRatio})
		cs = append(cs, check{Name: fig.name + ": keybroker errors", Want: "0", Got: fmt.Sprint(fig.kb.Errors), Pass: fig.kb.Errors == 0})
	}
	r := kmipRatio(s.Keybroker.GetConc.PerSec, s.GRPC.PerSec)
	cs = append(cs, check{Name: fmt.Sprintf("KMIP Get / gRPC GetMasterKey, %d connections", conns), Want: fmt.Sprintf(">= %.1fx", kmipGRPCMinRatio), Got: fmt.Sprintf("%.2fx", r), Pass: r >= kmipGRPCMinRatio})
	cs = append(cs, check{Name: "gRPC GetMasterKey errors", Want: "0", Got: fmt.Sprint(s.GRPC.Errors), Pass: s.GRPC.Errors == 0})
	cs = append(cs, check{Name: "Key Vault calls after warm-up (beyond scheduled checks)", Want: "0", Got: fmt.Sprintf("%d (of %d key calls; %d from checks)", s.AKV.HotPath, s.AKV.KeyOps, s.AKV.CheckOps), Pass: s.AKV.HotPath == 0})
	return cs, allPass(cs)
}

func printKMIPReport(w io.Writer, s kmipSummary, conns int) {
	fmt.Fprintf(w, "kbload bench-kmip: KMIP 1.2 with kmip-go's client; %v per figure; %s, %d CPUs (load generator on the same machine)\n\n",
		s.Settings.(map[string]any)["duration"], s.Machine.CPUModel, s.Machine.CPUs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "figure\tkeybroker /s\tp50 ms\tp99 ms\terrors\tCPU µs/op\tpykmip-server /s\tp50 ms\tp99 ms\terrors\tCPU µs/op\tratio\t")
	row := func(name string, kb, peer kmipRate) {
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f\t%.2f\t%d\t%.0f\t%.1f\t%.2f\t%.2f\t%d\t%.0f\t%.1fx\t\n", name, kb.PerSec, kb.P50Ms, kb.P99Ms, kb.Errors, kb.ServerCPUus, peer.PerSec, peer.P50Ms, peer.P99Ms, peer.Errors, peer.ServerCPUus, kmipRatio(kb.PerSec, peer.PerSec))
	}
	row("Get, 1 connection", s.Keybroker.GetOne, s.Peer.GetOne)
	row(fmt.Sprintf("Get, %d connections", conns), s.Keybroker.GetConc, s.Peer.GetConc)
	row(fmt.Sprintf("State poll, new conn (%d workers)", conns), s.Keybroker.Polls, s.Peer.Polls)
	row(fmt.Sprintf("TLS handshake only (%d workers)*", conns), s.Keybroker.Handshakes, s.Peer.Handshakes)
	fmt.Fprintf(tw, "gRPC GetMasterKey, %d conns\t%.0f\t%.2f\t%.2f\t%d\t\t\t\t\t\t\t%.2fx KMIP/gRPC\t\n", conns, s.GRPC.PerSec, s.GRPC.P50Ms, s.GRPC.P99Ms, s.GRPC.Errors, kmipRatio(s.Keybroker.GetConc.PerSec, s.GRPC.PerSec))
	tw.Flush()
	fmt.Fprintf(w, "* not judged: the TLS handshake alone, the floor under a new-connection poll.\nCPU µs/op: the server process's user+system CPU per successful operation (/proc, 10 ms ticks).\n\n")
	for _, r := range []struct {
		n string
		r kmipRate
	}{{"keybroker Get 1", s.Keybroker.GetOne}, {"keybroker Get N", s.Keybroker.GetConc}, {"keybroker polls", s.Keybroker.Polls}, {"peer Get 1", s.Peer.GetOne}, {"peer Get N", s.Peer.GetConc}, {"peer polls", s.Peer.Polls}} {
		if r.r.FirstErr != "" {
			fmt.Fprintf(w, "first error (%s): %s\n", r.n, r.r.FirstErr)
		}
	}
	for _, c := range s.Checks {
		v := "PASS"
		if !c.Pass {
			v = "FAIL"
		}
		fmt.Fprintf(w, "%s  %s: want %s, got %s\n", v, c.Name, c.Want, c.Got)
	}
	fmt.Fprintf(w, "\nsummary and logs: %s\n", s.OutDir)
}
