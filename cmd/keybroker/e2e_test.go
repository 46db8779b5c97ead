package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/mtls"
	"github.com/keybroker/keybroker/internal/pki"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// harness runs the real broker (serve) against an in-process Key Vault
// emulator, with a real dev PKI, on a loopback port and a unix socket.
type harness struct {
	t       testing.TB
	dir     string
	emu     *akvemu.Server
	info    akvemu.Info
	files   pki.Files
	cfgPath string
	cfg     *config.Config

	mu     sync.Mutex
	at     listening
	cancel context.CancelFunc
	done   chan error
}

// newHarness starts an emulator, writes the dev PKI and a configuration,
// and inits the keystore. extraAzure lines are added to the azure section.
func newHarness(t testing.TB, extraAzure string) *harness {
	t.Helper()
	h := startHarness(t, akvemu.Config{Ephemeral: true, Keys: []akvemu.KeySpec{{Vault: akvemu.DefaultVaultHost, Name: "cmk", Size: 2048}}})
	yaml := devConfig(h.dir, "127.0.0.1:0", h.files, h.info)
	yaml = strings.Replace(yaml, "  key_id:", "  timeout: 3s\n  max_retries: 1\n"+extraAzure+"  key_id:", 1)
	yaml = strings.Replace(yaml, "log:\n  level: info", "log:\n  level: debug", 1)
	if err := h.writeConfig([]byte(yaml)); err != nil {
		t.Fatalf("config.Parse(test config) err = %v, want nil", err)
	}
	h.initKeystore()
	return h
}

// startHarness starts an emulator made with emu and writes the dev PKI:
// the start of every harness, before its configuration.
func startHarness(t testing.TB, emu akvemu.Config) *harness {
	t.Helper()
	dir := t.TempDir()
	srv, err := akvemu.Start(context.Background(), emu)
	if err != nil {
		t.Fatalf("akvemu.Start err = %v, want nil", err)
	}
	t.Cleanup(func() { srv.Close() })
	files, err := pki.WriteDevPKI(filepath.Join(dir, devPKIDir), pki.Options{})
	if err != nil {
		t.Fatalf("WriteDevPKI err = %v, want nil", err)
	}
	return &harness{t: t, dir: dir, emu: srv, info: srv.Info(), files: files}
}

// writeConfig writes yaml as the configuration file, as an operator would,
// and parses it into h.cfg; it returns config.Parse's error.
func (h *harness) writeConfig(yaml []byte) error {
	h.t.Helper()
	if h.cfgPath == "" {
		h.cfgPath = filepath.Join(h.dir, devConfigFile)
	}
	if err := os.WriteFile(h.cfgPath, yaml, 0o600); err != nil {
		h.t.Fatal(err)
	}
	cfg, err := config.Parse(h.cfgPath, yaml, nil)
	if err != nil {
		return err
	}
	h.cfg = cfg
	return nil
}

// initKeystore creates the keystore h.cfg names.
func (h *harness) initKeystore() {
	h.t.Helper()
	if _, err := initKeystore(context.Background(), h.cfg, testLogger(h.t), false); err != nil {
		h.t.Fatalf("initKeystore err = %v, want nil", err)
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// start runs serve until stop; it returns once the broker listens.
func (h *harness) start() {
	h.t.Helper()
	h.startWith(testLogger(h.t))
}

// startWith is start with the broker logging to logger.
func (h *harness) startWith(logger *slog.Logger) {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan listening, 1)
	done := make(chan error, 1)
	go func() { done <- serve(ctx, h.cfg, logger, func(at listening) { ready <- at }) }()
	select {
	case at := <-ready:
		h.mu.Lock()
		h.at, h.cancel, h.done = at, cancel, done
		h.mu.Unlock()
	case err := <-done:
		cancel()
		h.t.Fatalf("serve returned before listening: %v", err)
	case <-time.After(60 * time.Second):
		cancel()
		h.t.Fatal("serve did not start listening within 60s")
	}
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	h.mu.Lock()
	cancel, done := h.cancel, h.done
	h.cancel, h.done = nil, nil
	h.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			h.t.Errorf("serve returned %v after shutdown, want nil", err)
		}
	case <-time.After(30 * time.Second):
		h.t.Error("serve did not stop within 30s of cancel")
	}
}

// conn dials the broker over TCP (or the unix socket) with a client cert.
func (h *harness) conn(certFile, keyFile string, unix bool) *grpc.ClientConn {
	h.t.Helper()
	tlsCfg, err := mtls.ClientTLS(mtls.ClientConfig{CAFile: h.files.CA, CertFile: certFile, KeyFile: keyFile, ServerName: "127.0.0.1"})
	if err != nil {
		h.t.Fatalf("ClientTLS err = %v", err)
	}
	target := h.at.Address
	if unix {
		target = "unix://" + h.at.Unix
		tlsCfg.ServerName = "localhost"
	}
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		h.t.Fatalf("grpc.NewClient err = %v", err)
	}
	h.t.Cleanup(func() { cc.Close() })
	return cc
}

func (h *harness) engine() keybrokerv1.KeyBrokerServiceClient {
	return keybrokerv1.NewKeyBrokerServiceClient(h.conn(h.files.EngineCert, h.files.EngineKey, false))
}

func (h *harness) admin() keybrokerv1.KeyBrokerServiceClient {
	return keybrokerv1.NewKeyBrokerServiceClient(h.conn(h.files.AdminCert, h.files.AdminKey, false))
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func wantCode(t *testing.T, what string, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: code = %v (%v), want %v", what, got, err, want)
	}
}

func TestBrokerEndToEnd(t *testing.T) {
	h := newHarness(t, "")
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	eng, adm := h.engine(), h.admin()

	mk, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatalf("GetMasterKey err = %v, want nil", err)
	}
	if len(mk.GetKey()) != 32 || mk.GetVersion() == "" || !strings.HasPrefix(mk.GetCmkKeyId(), "https://"+akvemu.DefaultVaultHost+"/keys/cmk/") {
		t.Fatalf("GetMasterKey = %d bytes, version %q, cmk %q; want 32 bytes, a version, the emulator key", len(mk.GetKey()), mk.GetVersion(), mk.GetCmkKeyId())
	}

	// The same key over the unix socket, with the same mTLS.
	viaUnix := keybrokerv1.NewKeyBrokerServiceClient(h.conn(h.files.EngineCert, h.files.EngineKey, true))
	mk2, err := viaUnix.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil || !bytes.Equal(mk2.GetKey(), mk.GetKey()) {
		t.Fatalf("GetMasterKey over unix socket = (%v), want the same key as over TCP", err)
	}

	// WrapDEK / UnwrapDEK round trip with associated data.
	dek := bytes.Repeat([]byte{7}, 32)
	aad := []byte("db=orders")
	w, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: dek, AssociatedData: aad})
	if err != nil {
		t.Fatalf("WrapDEK err = %v, want nil", err)
	}
	u, err := eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek(), AssociatedData: aad})
	if err != nil || !bytes.Equal(u.GetDek(), dek) || u.GetRewrapRecommended() {
		t.Fatalf("UnwrapDEK = (%v, rewrap %v), want the DEK back and no rewrap", err, u.GetRewrapRecommended())
	}
	_, err = eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek(), AssociatedData: []byte("db=other")})
	wantCode(t, "UnwrapDEK with other associated data", err, codes.InvalidArgument)

	// RotateDEK: new version served by default, old one by id; old blobs
	// still unwrap and say a rewrap is due.
	rot, err := adm.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{})
	if err != nil {
		t.Fatalf("RotateDEK err = %v, want nil", err)
	}
	if rot.GetPreviousVersion() != mk.GetVersion() || rot.GetVersion() == mk.GetVersion() {
		t.Fatalf("RotateDEK = %v -> %v, want a new version after %v", rot.GetPreviousVersion(), rot.GetVersion(), mk.GetVersion())
	}
	cur, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil || cur.GetVersion() != rot.GetVersion() || bytes.Equal(cur.GetKey(), mk.GetKey()) {
		t.Fatalf("GetMasterKey after rotate = (%v, %v), want the new version with a new key", cur.GetVersion(), err)
	}
	old, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: mk.GetVersion()})
	if err != nil || !bytes.Equal(old.GetKey(), mk.GetKey()) {
		t.Fatalf("GetMasterKey(old version) = %v, want the original key", err)
	}
	u, err = eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek(), AssociatedData: aad})
	if err != nil || !bytes.Equal(u.GetDek(), dek) || !u.GetRewrapRecommended() || u.GetVersion() != mk.GetVersion() {
		t.Fatalf("UnwrapDEK(old blob) = (%v, rewrap %v), want the DEK and rewrap_recommended", err, u.GetRewrapRecommended())
	}

	st, err := eng.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
	if err != nil || st.GetState() != keybrokerv1.State_STATE_SERVING || len(st.GetKeys()) != 1 || len(st.GetKeys()[0].GetVersions()) != 2 || !st.GetKeys()[0].GetLoaded() {
		t.Fatalf("GetStatus = %v (%v), want SERVING with one loaded key of 2 versions", st, err)
	}

	hc, err := healthpb.NewHealthClient(h.conn(h.files.EngineCert, h.files.EngineKey, false)).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Health/Check = %v (%v), want SERVING", hc.GetStatus(), err)
	}

	rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || !rv.GetOk() || rv.GetState() != keybrokerv1.State_STATE_SERVING {
		t.Fatalf("Revalidate = %v (%v), want ok SERVING", rv, err)
	}

	watch, err := eng.WatchKeyState(ctx, &keybrokerv1.WatchKeyStateRequest{})
	if err != nil {
		t.Fatalf("WatchKeyState err = %v", err)
	}
	first, err := watch.Recv()
	if err != nil || first.GetEvent().GetKind() != keybrokerv1.KeyStateEvent_KIND_CURRENT || first.GetEvent().GetState() != keybrokerv1.State_STATE_SERVING {
		t.Fatalf("WatchKeyState first event = %v (%v), want CURRENT SERVING", first, err)
	}
}

func TestBrokerErrorCodes(t *testing.T) {
	h := newHarness(t, "")
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	eng, adm := h.engine(), h.admin()
	ctl := h.emu.Control()

	first, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatalf("GetMasterKey err = %v", err)
	}
	if _, err := adm.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); err != nil {
		t.Fatalf("RotateDEK err = %v", err)
	}
	// Restart so the first version is cold (only the current is warmed).
	h.stop()
	h.start()
	eng, adm = h.engine(), h.admin()

	huge := make([]byte, 2000)
	tests := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"empty dek", func() error {
			_, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{})
			return err
		}, codes.InvalidArgument},
		{"oversize dek", func() error {
			_, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: huge})
			return err
		}, codes.InvalidArgument},
		{"garbage blob", func() error {
			_, err := eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: []byte("not a blob")})
			return err
		}, codes.InvalidArgument},
		{"unknown version", func() error {
			_, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: "no-such-version"})
			return err
		}, codes.NotFound},
		{"unknown key", func() error {
			_, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{KeyName: "nope"})
			return err
		}, codes.NotFound},
		{"engine may not rotate", func() error {
			_, err := eng.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{})
			return err
		}, codes.PermissionDenied},
		{"engine may not revalidate", func() error {
			_, err := eng.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
			return err
		}, codes.PermissionDenied},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.name, tc.call(), tc.want) })
	}

	oldVersion := &keybrokerv1.GetMasterKeyRequest{Version: first.GetVersion()}
	t.Run("cold request while the vault is down", func(t *testing.T) {
		if err := ctl.InjectFault(ctx, akvemu.Fault{Op: akvemu.OpUnwrapKey, Status: 503}); err != nil {
			t.Fatal(err)
		}
		defer ctl.ClearFaults(ctx)
		_, err := eng.GetMasterKey(ctx, oldVersion)
		wantCode(t, "GetMasterKey(cold) with unwrapkey 503", err, codes.Unavailable)
		// The warm version is still served from memory.
		if _, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); err != nil {
			t.Fatalf("GetMasterKey(warm) during outage err = %v, want nil", err)
		}
	})
	t.Run("cold request while throttled", func(t *testing.T) {
		if err := ctl.InjectFault(ctx, akvemu.Fault{Op: akvemu.OpUnwrapKey, Status: 429, RetryAfter: 1}); err != nil {
			t.Fatal(err)
		}
		defer ctl.ClearFaults(ctx)
		_, err := eng.GetMasterKey(ctx, oldVersion)
		wantCode(t, "GetMasterKey(cold) with unwrapkey 429", err, codes.ResourceExhausted)
	})
	t.Run("cold request past its deadline", func(t *testing.T) {
		if err := ctl.InjectFault(ctx, akvemu.Fault{Op: akvemu.OpUnwrapKey, Blackhole: true}); err != nil {
			t.Fatal(err)
		}
		defer ctl.ClearFaults(ctx)
		dctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		_, err := eng.GetMasterKey(dctx, oldVersion)
		wantCode(t, "GetMasterKey(cold) with a black-holed vault", err, codes.DeadlineExceeded)
	})
	t.Run("revoked key pauses", func(t *testing.T) {
		if err := ctl.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", false); err != nil {
			t.Fatal(err)
		}
		rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
		if err != nil || rv.GetOk() || rv.GetState() != keybrokerv1.State_STATE_PAUSED {
			t.Fatalf("Revalidate with the key disabled = %v (%v), want not ok, PAUSED", rv, err)
		}
		_, err = eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
		wantCode(t, "GetMasterKey while PAUSED", err, codes.FailedPrecondition)
		if !strings.Contains(status.Convert(err).Message(), "KeyDisabled") {
			t.Errorf("PAUSED message %q does not name the Azure error code", status.Convert(err).Message())
		}
		_, err = eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte{1}})
		wantCode(t, "WrapDEK while PAUSED", err, codes.FailedPrecondition)
		hc, err := healthpb.NewHealthClient(h.conn(h.files.EngineCert, h.files.EngineKey, false)).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Fatalf("Health/Check while PAUSED = %v (%v), want NOT_SERVING", hc.GetStatus(), err)
		}

		if err := ctl.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", true); err != nil {
			t.Fatal(err)
		}
		rv, err = adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
		if err != nil || !rv.GetOk() || rv.GetState() != keybrokerv1.State_STATE_SERVING {
			t.Fatalf("Revalidate after re-enabling = %v (%v), want ok, SERVING", rv, err)
		}
		if _, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); err != nil {
			t.Fatalf("GetMasterKey after resume err = %v, want nil", err)
		}
	})
}

func TestBrokerAuthorization(t *testing.T) {
	h := newHarness(t, "")
	h.start()
	ctx := ctxT(t, time.Minute)

	// A valid certificate from the broker's CA, but no role.
	noRoleCert, noRoleKey := filepath.Join(h.dir, "norole.pem"), filepath.Join(h.dir, "norole-key.pem")
	if err := pki.IssueClient(h.files.CA, h.files.CAKey, "spiffe://keybroker.dev/stranger", noRoleCert, noRoleKey, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	// A certificate from another CA.
	foreignCA, foreignCAKey := filepath.Join(h.dir, "foreign-ca.pem"), filepath.Join(h.dir, "foreign-ca-key.pem")
	if err := pki.NewCA(foreignCA, foreignCAKey, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	foreignCert, foreignKey := filepath.Join(h.dir, "foreign.pem"), filepath.Join(h.dir, "foreign-key.pem")
	if err := pki.IssueClient(foreignCA, foreignCAKey, "spiffe://keybroker.dev/engine", foreignCert, foreignKey, pki.Options{}); err != nil {
		t.Fatal(err)
	}

	_, err := keybrokerv1.NewKeyBrokerServiceClient(h.conn(noRoleCert, noRoleKey, false)).GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	wantCode(t, "GetMasterKey with a role-less certificate", err, codes.PermissionDenied)

	_, err = keybrokerv1.NewKeyBrokerServiceClient(h.conn(foreignCert, foreignKey, false)).GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err == nil {
		t.Fatal("GetMasterKey with a certificate from another CA succeeded, want refused")
	}

	// No client certificate at all.
	tlsCfg, err := mtls.ClientTLS(mtls.ClientConfig{CAFile: h.files.CA, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("ClientTLS without a certificate err = %v", err)
	}
	cc, err := grpc.NewClient(h.at.Address, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	_, err = keybrokerv1.NewKeyBrokerServiceClient(cc).GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	wantCode(t, "GetMasterKey without a client certificate", err, codes.Unauthenticated)

	// Admin may call engine RPCs too.
	if _, err := h.admin().GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); err != nil {
		t.Fatalf("GetMasterKey as admin err = %v, want nil", err)
	}
}

func TestBrokerRestartKeepsKeys(t *testing.T) {
	h := newHarness(t, "")
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	eng, adm := h.engine(), h.admin()
	before := map[string][]byte{}
	var blobs [][]byte
	for i := 0; i < 3; i++ {
		mk, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		before[mk.GetVersion()] = mk.GetKey()
		w, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte{byte(i), 1, 2, 3}})
		if err != nil {
			t.Fatal(err)
		}
		blobs = append(blobs, w.GetWrappedDek())
		if _, err := adm.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	h.stop()
	h.start()
	eng = h.engine()
	for v, key := range before {
		mk, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: v})
		if err != nil || !bytes.Equal(mk.GetKey(), key) {
			t.Fatalf("after restart GetMasterKey(%s) = (%v), want the same key as before", v, err)
		}
	}
	for i, b := range blobs {
		u, err := eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: b})
		if err != nil || !bytes.Equal(u.GetDek(), []byte{byte(i), 1, 2, 3}) {
			t.Fatalf("after restart UnwrapDEK(blob %d) = (%v), want the DEK", i, err)
		}
	}
}

func TestBrokerColdStartCoalescing(t *testing.T) {
	h := newHarness(t, "")
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	first, err := h.engine().GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin().RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); err != nil {
		t.Fatal(err)
	}
	h.stop()
	h.start() // the first version is now cold
	ctl := h.emu.Control()
	// Slow the vault so every request arrives while the first load is in flight.
	if err := ctl.InjectFault(ctx, akvemu.Fault{Op: akvemu.OpUnwrapKey, Latency: 500 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if err := ctl.ResetCounters(ctx); err != nil {
		t.Fatal(err)
	}
	const clients, perClient = 10, 100
	var wg sync.WaitGroup
	errs := make(chan error, clients*perClient)
	for c := 0; c < clients; c++ {
		cl := h.engine()
		for i := 0; i < perClient; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mk, err := cl.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: first.GetVersion()})
				if err == nil && !bytes.Equal(mk.GetKey(), first.GetKey()) {
					err = errors.New("wrong key")
				}
				errs <- err
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent cold GetMasterKey err = %v, want nil", err)
		}
	}
	counters, err := ctl.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := counters[akvemu.DefaultVaultHost][akvemu.OpUnwrapKey]; got != 1 {
		t.Fatalf("1000 concurrent cold requests made %d unwrapkey calls, want 1 (counters %v)", got, counters)
	}
}

func TestInitRefusesOverwrite(t *testing.T) {
	h := newHarness(t, "")
	e := &env{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
	err := run(context.Background(), e, []string{"init", "--config", h.cfgPath})
	var ee *cli.ExitError
	if !errors.As(err, &ee) || ee.Code != exitExists {
		t.Fatalf("init over an existing keystore err = %v, want exit code %d", err, exitExists)
	}
	if err := run(context.Background(), e, []string{"init", "--config", h.cfgPath, "--if-missing"}); err != nil {
		t.Fatalf("init --if-missing over an existing keystore err = %v, want nil", err)
	}
}
