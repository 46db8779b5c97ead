package main

// The crash test: a real keybroker process, killed with SIGKILL at random
// instants of init, RotateDEK, automatic rotation and the CMK rewrap, and
// after each kill the keystore must load with the old or the new state, and
// everything acknowledged before the kill must still be there.
//
// Why a test rather than a kbload subcommand: the process killed is this
// test binary run again as `keybroker init` or `keybroker serve`
// (TestCrashHelper), so it is the real command code with no separate build
// step, `go test` runs the short version with the rest of the package (20
// kills, under a minute), and `make crashtest` the long one (200 kills) with
// KEYBROKER_CRASHTEST_KILLS. KEYBROKER_CRASHTEST_SEED replays a run.

import (
	"bufio"
	"bytes"
	"context"
	cryptorand "crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/envelope"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/mtls"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

const (
	crashHelperEnv = "KEYBROKER_CRASH_HELPER" // init or serve: run as the process to kill
	crashConfigEnv = "KEYBROKER_CRASH_CONFIG"
	crashReady     = "KEYBROKER_CRASH_READY "
	// crashRotateEvery is the helper's master_key_interval: several
	// automatic rotations per run.
	crashRotateEvery = 150 * time.Millisecond
	// Per serve run, at most this many RotateDEK and WrapDEK calls, so that
	// the keystore and the checks after each kill stay small.
	crashRotations = 6
	crashBlobs     = 100
	// crashRunsPerKeystore serve runs share a keystore; then a new one is
	// made with init, itself killed once.
	crashRunsPerKeystore = 5
)

// TestCrashHelper is not a test: it is the process TestCrashRotation
// starts and kills.
func TestCrashHelper(t *testing.T) {
	mode := os.Getenv(crashHelperEnv)
	if mode == "" {
		t.Skip("the process TestCrashRotation kills; not a test on its own")
	}
	path := os.Getenv(crashConfigEnv)
	e := &env{stdout: os.Stdout, stderr: os.Stderr, getenv: func(string) string { return "" }}
	ctx := context.Background()
	var err error
	switch mode {
	case "init":
		err = run(ctx, e, []string{"init", "--config", path})
	case "serve":
		var cfg *config.Config
		if cfg, err = loadConfig(path, e); err == nil {
			// Shorter than the configuration allows: rotate several times
			// per run, and let the scheduled check see new CMK versions.
			cfg.Rotation.MasterKeyInterval = config.Duration(crashRotateEvery)
			cfg.Validation.Interval = config.Duration(200 * time.Millisecond)
			logger, _ := newLogger(os.Stderr, cfg.Log)
			err = serve(ctx, cfg, logger, func(at listening) { fmt.Println(crashReady + at.Address + " " + at.KMIP) })
		}
	default:
		err = fmt.Errorf("unknown %s %q", crashHelperEnv, mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "crash helper:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// crashBlob is a WrapDEK answer the broker acknowledged.
type crashBlob struct {
	blob, dek, aad []byte
}

// crashState is what survived every kill so far, and what was proven.
type crashState struct {
	mu       sync.Mutex
	rotated  []string            // RotateDEK versions acknowledged
	blobs    []crashBlob         // WrapDEK blobs acknowledged
	keys     map[string][]byte   // master key per version, once unwrapped
	verified map[[32]byte]string // copies already unwrapped: hash -> version
	objects  map[string][]byte   // KMIP Register acknowledged: id -> bytes
}

func (s *crashState) addObject(id string, key []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.objects == nil {
		s.objects = map[string][]byte{}
	}
	s.objects[id] = key
}

func (s *crashState) addRotated(v string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rotated = append(s.rotated, v)
}

func (s *crashState) addBlob(b crashBlob) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blobs = append(s.blobs, b)
}

// crashChild is one helper process. Its methods are called from the test
// goroutine only.
type crashChild struct {
	cmd    *exec.Cmd
	ready  chan string // the address, once serving
	exited chan error  // the process's end, once
	stderr *lockedBuffer

	gone bool
	err  error // how it ended, once gone
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 {
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.b.String()
	if len(s) > 4000 {
		s = "..." + s[len(s)-4000:]
	}
	return s
}

func startCrashChild(t *testing.T, mode, cfgPath string) *crashChild {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashHelperEnv+"="+mode, crashConfigEnv+"="+cfgPath)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	c := &crashChild{cmd: cmd, ready: make(chan string, 1), exited: make(chan error, 1), stderr: &lockedBuffer{}}
	cmd.Stderr = c.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting the helper process: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if addr, ok := strings.CutPrefix(sc.Text(), crashReady); ok {
				c.ready <- addr
			}
		}
		c.exited <- cmd.Wait()
	}()
	t.Cleanup(func() { c.kill() })
	return c
}

// ended records how the process ended.
func (c *crashChild) ended(err error) {
	c.gone, c.err = true, err
}

// kill sends SIGKILL and waits for the process to be gone; it reports
// whether the kill landed on a running process.
func (c *crashChild) kill() bool {
	if c.gone {
		return false
	}
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	c.ended(<-c.exited)
	var ee *exec.ExitError
	if errors.As(c.err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
			return ws.Signaled() && ws.Signal() == syscall.SIGKILL
		}
	}
	return false
}

// clients dials the helper at addr with the engine and admin certificates;
// close drops both connections.
func (ct *crashTest) clients(addr string) (eng, adm keybrokerv1.KeyBrokerServiceClient, close func()) {
	t := ct.t
	t.Helper()
	var conns []*grpc.ClientConn
	for _, id := range [][2]string{{ct.h.files.EngineCert, ct.h.files.EngineKey}, {ct.h.files.AdminCert, ct.h.files.AdminKey}} {
		tlsCfg, err := mtls.ClientTLS(mtls.ClientConfig{CAFile: ct.h.files.CA, CertFile: id[0], KeyFile: id[1], ServerName: "127.0.0.1"})
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, cc)
	}
	return keybrokerv1.NewKeyBrokerServiceClient(conns[0]), keybrokerv1.NewKeyBrokerServiceClient(conns[1]), func() {
		for _, cc := range conns {
			cc.Close()
		}
	}
}

// crashConfig writes a configuration for keystore dir: the harness's, with
// a versionless key id so that new CMK versions are followed.
func crashConfig(t *testing.T, h *harness, dir string) (string, *config.Config) {
	t.Helper()
	data, err := os.ReadFile(h.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	data = regexp.MustCompile(`(?m)^  dir: .*$`).ReplaceAll(data, []byte(fmt.Sprintf("  dir: %q", dir)))
	data = regexp.MustCompile(`(?m)^  key_id: .*$`).ReplaceAll(data, []byte(fmt.Sprintf("  key_id: %q", versionless(h.info.KeyIDs[0]))))
	data = regexp.MustCompile(`(?m)^  level: debug$`).ReplaceAll(data, []byte("  level: error"))
	data = append(data, "kmip:\n  address: \"127.0.0.1:0\"\n"...) // KMIP objects are killed mid-Register too
	path := dir + ".yaml"
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(path, data, nil)
	if err != nil {
		t.Fatalf("config.Parse(crash config) err = %v", err)
	}
	return path, cfg
}

func TestCrashRotation(t *testing.T) {
	kills := 20
	if s := os.Getenv("KEYBROKER_CRASHTEST_KILLS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("KEYBROKER_CRASHTEST_KILLS=%q: want a positive number", s)
		}
		kills = n
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("KEYBROKER_CRASHTEST_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("KEYBROKER_CRASHTEST_SEED=%q: want a number", s)
		}
		seed = n
	}
	t.Logf("%d kills, seed %d (KEYBROKER_CRASHTEST_SEED=%d replays the choices)", kills, seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed))

	h := newHarness(t, "")
	ct := &crashTest{t: t, h: h, rng: rng}
	ct.initWindow = ct.calibrateInit()
	for epoch := 0; ct.landed < kills; epoch++ {
		ct.newKeystore(epoch)
		for run := 0; run < crashRunsPerKeystore && ct.landed < kills; run++ {
			ct.serveAndKill()
		}
		ct.finalCheck()
	}
	t.Logf("%d kills landed (%d on init; %d runs killed around a CMK rewrap) in %d attempts", ct.landed, ct.initKills, ct.rewrapRuns, ct.attempts)
	t.Logf("checked after the kills: %d acknowledged RotateDEK versions, %d acknowledged blobs, up to %d versions per keystore, %d keystores left half rewrapped", ct.rotations, ct.blobs, ct.maxVersions, ct.halfRewrapped)
	t.Logf("and %d acknowledged KMIP Registers (their bytes unwrapped after each kill, and Get over KMIP at the end)", ct.objects)
}

// crashTest is one TestCrashRotation run.
type crashTest struct {
	t   *testing.T
	h   *harness
	rng *rand.Rand

	initWindow time.Duration // how long an unkilled init process lives
	readyIn    time.Duration // how long serve took to listen, last time

	dir      string
	cfgPath  string
	kmipAddr string // the helper's KMIP listener, once serving
	cfg      *config.Config
	wrapper  interface {
		UnwrapKey(context.Context, []kek.Wrapped) ([]byte, error)
	}
	state *crashState

	landed, attempts, initKills, rewrapRuns int
	// What the kills caught: acknowledged RotateDEK calls and blobs, the
	// most versions a keystore held, and keystores left half rewrapped
	// (some versions with two copies, some with one).
	rotations, blobs, maxVersions, halfRewrapped int
	objects                                      int // KMIP objects acknowledged and checked
	kmip                                         *kmipclient.Client
}

// calibrateInit times one init process that is not killed.
func (ct *crashTest) calibrateInit() time.Duration {
	t := ct.t
	dir := filepath.Join(ct.h.dir, "crash-calibrate")
	path, _ := crashConfig(t, ct.h, dir)
	start := time.Now()
	c := startCrashChild(t, "init", path)
	select {
	case err := <-c.exited:
		c.ended(err)
		if err != nil {
			t.Fatalf("init helper: %v\n%s", err, c.stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("init helper did not finish within 60s")
	}
	return time.Since(start)
}

// newKeystore makes a fresh keystore with an init killed at a random
// instant, checks what the kill left, and completes the init.
func (ct *crashTest) newKeystore(epoch int) {
	t := ct.t
	ct.dir = filepath.Join(ct.h.dir, fmt.Sprintf("crash-%03d", epoch))
	ct.cfgPath, ct.cfg = crashConfig(t, ct.h, ct.dir)
	ct.state = &crashState{keys: map[string][]byte{}, verified: map[[32]byte]string{}}

	c := startCrashChild(t, "init", ct.cfgPath)
	// Half the kills anywhere in the process's life, half near its end,
	// where the keystore is written (process start and Key Vault calls
	// take most of it).
	from, span := time.Duration(0), ct.initWindow
	if ct.rng.IntN(2) == 0 {
		from, span = ct.initWindow*8/10, ct.initWindow*3/10
	}
	ct.killAfter(c, from+time.Duration(ct.rng.Int64N(int64(span)+1)), nil)
	if c.gone && c.err == nil {
		t.Logf("init %d finished before its kill", epoch)
	} else {
		ct.initKills++
	}
	found, err := keystore.Exists(ct.dir)
	if err != nil {
		t.Fatalf("after killing init: keystore.Exists err = %v, want a keystore or none", err)
	}
	if found {
		s, err := keystore.Open(ct.dir, keystore.Options{})
		if err != nil {
			t.Fatalf("after killing init: keystore.Open err = %v, want it to load", err)
		}
		if n := len(s.Keys()); n > 1 {
			t.Fatalf("after killing init: %d keys, want 0 or 1", n)
		}
		s.Close()
	}
	// A second init finishes what the first began.
	if _, err := initKeystore(ctxT(t, time.Minute), ct.cfg, slog.New(slog.DiscardHandler), true); err != nil {
		t.Fatalf("init after a killed init err = %v, want nil", err)
	}
	w, closeW, err := buildWrapper(ct.cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeW)
	ct.wrapper = w
	ct.verify("after init")
}

// killAfter kills c after d (or at once if it exits first) and counts a
// landed kill. during, if set, runs meanwhile.
func (ct *crashTest) killAfter(c *crashChild, d time.Duration, during func(ctx context.Context)) {
	ct.attempts++
	timer := time.NewTimer(d)
	defer timer.Stop()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	if during != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			during(ctx)
		}()
	}
	select {
	case <-timer.C:
	case err := <-c.exited:
		c.ended(err)
	}
	if c.kill() {
		ct.landed++
	}
	cancel()
	wg.Wait()
}

// serveAndKill runs serve under load and kills it at a random instant:
// during start (Warm, the start rewrap), during RotateDEK calls and
// automatic rotations, or during a CMK rewrap.
func (ct *crashTest) serveAndKill() {
	t := ct.t
	defer ct.closeKMIP()
	start := time.Now()
	c := startCrashChild(t, "serve", ct.cfgPath)
	mode := ct.rng.IntN(3)
	if mode == 0 && ct.readyIn > 0 {
		// During start: before or just after listening.
		ct.killAfter(c, time.Duration(ct.rng.Int64N(int64(ct.readyIn+100*time.Millisecond))), nil)
		ct.verify("after a kill during start")
		return
	}
	addr := ct.waitReady(c, "serve")
	ct.readyIn = time.Since(start)
	eng, adm, closeConns := ct.clients(addr)
	defer closeConns()
	load := func(ctx context.Context) { ct.load(ctx, eng, adm) }
	if mode == 2 {
		// During a CMK rewrap: a new version in the vault, then Revalidate,
		// which rewraps every version before it answers.
		if _, err := ct.h.emu.Control().RotateKey(ctxT(t, time.Minute), akvemu.DefaultVaultHost, "cmk"); err != nil {
			t.Fatal(err)
		}
		ct.rewrapRuns++
		ct.killAfter(c, time.Duration(ct.rng.Int64N(int64(150*time.Millisecond))), func(ctx context.Context) {
			_, _ = adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
		})
		ct.verify("after a kill during a CMK rewrap")
		return
	}
	ct.killAfter(c, time.Duration(ct.rng.Int64N(int64(400*time.Millisecond))), load)
	ct.verify("after a kill during rotations")
}

// load wraps data keys and rotates until ctx ends or the broker dies,
// recording what the broker acknowledged.
func (ct *crashTest) load(ctx context.Context, eng, adm keybrokerv1.KeyBrokerServiceClient) {
	rotations := 0
	for i := 0; i < crashBlobs; i++ {
		dek := []byte(fmt.Sprintf("dek %d %d", ct.attempts, i))
		aad := []byte(fmt.Sprintf("db=%d", i))
		w, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: dek, AssociatedData: aad})
		if err != nil {
			return
		}
		ct.state.addBlob(crashBlob{blob: w.GetWrappedDek(), dek: dek, aad: aad})
		if i%10 == 5 && !ct.registerObject(ctx) {
			return
		}
		if i%4 == 3 && rotations < crashRotations {
			r, err := adm.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{})
			if err != nil {
				return
			}
			rotations++
			ct.state.addRotated(r.GetVersion())
		}
	}
	<-ctx.Done()
}

// registerObject registers a fresh AES-256 key over KMIP and records it
// once acknowledged; false when the broker is gone.
func (ct *crashTest) registerObject(ctx context.Context) bool {
	if ct.kmip == nil {
		c, err := kmipclient.DialContext(ctx, ct.kmipAddr, kmipclient.WithRootCAFile(ct.h.files.CA),
			kmipclient.WithClientCertFiles(ct.h.files.EngineCert, ct.h.files.EngineKey), kmipclient.EnforceVersion(kmip.V1_2))
		if err != nil {
			return false
		}
		ct.kmip = c
	}
	key := make([]byte, 32)
	cryptorand.Read(key)
	r, err := ct.kmip.Register().SymmetricKey(kmip.CryptographicAlgorithmAES, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt, bytes.Clone(key)).ExecContext(ctx)
	if err != nil {
		return false
	}
	ct.state.addObject(r.UniqueIdentifier, key)
	return true
}

// verify opens the keystore the killed broker left and checks it: it
// loads; every acknowledged RotateDEK version is there; every copy of every
// version unwraps to the same key as before; every acknowledged blob
// unwraps to its data key.
func (ct *crashTest) verify(when string) {
	t := ct.t
	t.Helper()
	s := ct.state
	store, err := keystore.Open(ct.dir, keystore.Options{})
	if err != nil {
		t.Fatalf("%s (kill %d): keystore.Open err = %v, want the keystore to load", when, ct.landed, err)
	}
	defer store.Close()
	ctx := ctxT(t, 5*time.Minute)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.rotated {
		if _, _, err := store.FindVersion(v); err != nil {
			t.Fatalf("%s (kill %d): acknowledged RotateDEK version %s: %v", when, ct.landed, v, err)
		}
	}
	for _, k := range store.Keys() {
		ct.maxVersions = max(ct.maxVersions, len(k.Versions))
		one, more := false, false
		for _, v := range k.Versions {
			one, more = one || len(v.Copies) == 1, more || len(v.Copies) > 1
			for _, c := range v.Copies {
				h := sha256.Sum256(append([]byte(v.ID+"|"+c.KeyID+"|"), c.Ciphertext...))
				if s.verified[h] == v.ID {
					continue
				}
				raw, err := ct.wrapper.UnwrapKey(ctx, []kek.Wrapped{c})
				if err != nil {
					t.Fatalf("%s (kill %d): version %s, copy under %s: unwrap err = %v", when, ct.landed, v.ID, c.KeyID, err)
				}
				if want, ok := s.keys[v.ID]; ok && !bytes.Equal(raw, want) {
					t.Fatalf("%s (kill %d): version %s, copy under %s unwraps to another key than before", when, ct.landed, v.ID, c.KeyID)
				}
				s.keys[v.ID] = raw
				s.verified[h] = v.ID
			}
		}
		if one && more {
			ct.halfRewrapped++
		}
	}
	for id, want := range s.objects {
		k, err := store.Key(id)
		if err != nil || k.Object == nil || len(k.Versions) != 1 {
			t.Fatalf("%s (kill %d): acknowledged KMIP object %s: %+v, %v; want it with one version", when, ct.landed, id, k, err)
		}
		if got, ok := s.keys[k.Versions[0].ID]; !ok || !bytes.Equal(got, want) {
			t.Fatalf("%s (kill %d): acknowledged KMIP object %s does not unwrap to its registered bytes", when, ct.landed, id)
		}
	}
	for i, b := range s.blobs {
		hd, err := envelope.Parse(b.blob)
		if err != nil {
			t.Fatalf("%s: blob %d: %v", when, i, err)
		}
		mk, ok := s.keys[hd.VersionID]
		if !ok {
			t.Fatalf("%s (kill %d): acknowledged blob %d names version %s, which the keystore does not hold", when, ct.landed, i, hd.VersionID)
		}
		dek, err := envelope.Open(mk, b.blob, b.aad)
		if err != nil || !bytes.Equal(dek, b.dek) {
			t.Fatalf("%s (kill %d): acknowledged blob %d does not unwrap: %v", when, ct.landed, i, err)
		}
	}
}

// finalCheck starts the broker once more on this keystore, unkilled, and
// has it unwrap every acknowledged blob over gRPC.
func (ct *crashTest) finalCheck() {
	t := ct.t
	c := startCrashChild(t, "serve", ct.cfgPath)
	eng, _, closeConns := ct.clients(ct.waitReady(c, "serve after the kills"))
	defer closeConns()
	ctx := ctxT(t, 5*time.Minute)
	s := ct.state
	s.mu.Lock()
	blobs := s.blobs
	ct.rotations += len(s.rotated)
	ct.blobs += len(s.blobs)
	s.mu.Unlock()
	for i, b := range blobs {
		u, err := eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: b.blob, AssociatedData: b.aad})
		if err != nil || !bytes.Equal(u.GetDek(), b.dek) {
			t.Fatalf("after %d kills, UnwrapDEK(acknowledged blob %d) = %v, want its data key\n%s", ct.landed, i, err, c.stderr)
		}
	}
	ct.closeKMIP()
	s.mu.Lock()
	objects := s.objects
	ct.objects += len(objects)
	s.mu.Unlock()
	for id, want := range objects {
		if !ct.registerObjectCheck(ctx, id, want) {
			t.Fatalf("after %d kills, KMIP Get(acknowledged object %s) did not return its bytes\n%s", ct.landed, id, c.stderr)
		}
	}
	ct.closeKMIP()
	c.kill()
}

// waitReady waits for the helper to listen and returns its address.
func (ct *crashTest) waitReady(c *crashChild, what string) string {
	t := ct.t
	t.Helper()
	select {
	case addr := <-c.ready:
		addr, ct.kmipAddr, _ = strings.Cut(addr, " ")
		return addr
	case err := <-c.exited:
		c.ended(err)
		t.Fatalf("%s exited before listening: %v\n%s", what, err, c.stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not listen within 60s\n%s", what, c.stderr)
	}
	return ""
}

// TestInitFinishesInterruptedInit: an init killed after it created the
// keystore but before it persisted the key leaves an empty keystore; the
// next init finishes it instead of refusing (the window is a few
// milliseconds wide, too narrow for random kills to hit reliably).
func TestInitFinishesInterruptedInit(t *testing.T) {
	h := newHarness(t, "")
	tests := []struct {
		name  string
		empty bool // an empty keystore is there before init
		args  []string
		code  int
		keys  int
	}{
		{"interrupted, init", true, []string{"init"}, exitOK, 1},
		{"interrupted, init --if-missing", true, []string{"init", "--if-missing"}, exitOK, 1},
		{"complete, init", false, []string{"init"}, exitExists, 1},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(h.dir, fmt.Sprintf("interrupted-%d", i))
			path, _ := crashConfig(t, h, dir)
			if tc.empty {
				s, err := keystore.Create(dir, keystore.Options{})
				if err != nil {
					t.Fatal(err)
				}
				s.Close()
			} else if _, _, code := runCLI(t, "init", "--config", path); code != exitOK {
				t.Fatalf("first init exit = %d, want 0", code)
			}
			_, errOut, code := runCLI(t, append(tc.args, "--config", path)...)
			if code != tc.code {
				t.Fatalf("%v over %s keystore exit = %d (%s), want %d", tc.args, tc.name, code, errOut, tc.code)
			}
			s, err := keystore.Open(dir, keystore.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if n := len(s.Keys()); n != tc.keys {
				t.Fatalf("keys after %v = %d, want %d", tc.args, n, tc.keys)
			}
		})
	}
}

// registerObjectCheck Gets object id over KMIP and compares its bytes.
func (ct *crashTest) registerObjectCheck(ctx context.Context, id string, want []byte) bool {
	if ct.kmip == nil {
		c, err := kmipclient.DialContext(ctx, ct.kmipAddr, kmipclient.WithRootCAFile(ct.h.files.CA),
			kmipclient.WithClientCertFiles(ct.h.files.EngineCert, ct.h.files.EngineKey), kmipclient.EnforceVersion(kmip.V1_2))
		if err != nil {
			return false
		}
		ct.kmip = c
	}
	g, err := ct.kmip.Get(id).ExecContext(ctx)
	if err != nil {
		return false
	}
	got, err := g.SymmetricKey()
	return err == nil && bytes.Equal(got, want)
}

// closeKMIP drops the KMIP connection of a broker that is gone or done.
func (ct *crashTest) closeKMIP() {
	if ct.kmip != nil {
		closeKMIPClient(ct.kmip)
		ct.kmip = nil
	}
}

// closeKMIPClient closes c. kmip-go v0.8.1's Client.Close dereferences a nil
// connection after a failed reconnect (the broker was killed), so that
// panic is recovered: the connection is gone either way.
func closeKMIPClient(c *kmipclient.Client) {
	defer func() { _ = recover() }()
	_ = c.Close()
}
