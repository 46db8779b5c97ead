package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// outageIntervals is how many validity intervals each outage lasts in
// TestRevocationOutageNeverPauses: a few in `make test`, many in
// `make test-revocation-long`.
var outageIntervals = flag.Int("outage-intervals", 4, "validity intervals each outage of TestRevocationOutageNeverPauses lasts")

// The validity interval of these tests (the configuration allows no less),
// and how long "within one interval" may take on real time on a busy
// 2-core machine: the interval, a check, and generous slack.
const (
	revInterval = time.Second
	revSlack    = 5 * time.Second
)

// newRevocationHarness is newHarness with a short validity interval and,
// when tokenTTL is set, Entra tokens that live that long, so that a change
// of the credential (an expired secret, a token endpoint down) shows at the
// next token request instead of 15 minutes later.
func newRevocationHarness(t *testing.T, tokenTTL time.Duration) *harness {
	t.Helper()
	h := startHarness(t, akvemu.Config{Ephemeral: true, TokenTTL: tokenTTL,
		Keys: []akvemu.KeySpec{{Vault: akvemu.DefaultVaultHost, Name: "cmk", Size: 2048}}})
	yaml := devConfig(h.dir, "127.0.0.1:0", h.files, h.info)
	yaml = strings.Replace(yaml, "  key_id:", "  timeout: 3s\n  max_retries: 1\n  key_id:", 1)
	yaml = strings.Replace(yaml, "log:\n", fmt.Sprintf("validation:\n  interval: %s\nlog:\n", revInterval), 1)
	if err := h.writeConfig([]byte(yaml)); err != nil {
		t.Fatalf("config.Parse(test config) err = %v, want nil", err)
	}
	if h.cfg.Validation.Interval.D() != revInterval {
		t.Fatalf("validation.interval = %v, want %v", h.cfg.Validation.Interval.D(), revInterval)
	}
	h.initKeystore()
	return h
}

// events streams WatchKeyState into a channel; the first event, CURRENT,
// is checked to be want.
func (h *harness) events(ctx context.Context, want keybrokerv1.State) <-chan *keybrokerv1.KeyStateEvent {
	h.t.Helper()
	stream, err := h.engine().WatchKeyState(ctx, &keybrokerv1.WatchKeyStateRequest{})
	if err != nil {
		h.t.Fatalf("WatchKeyState err = %v", err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetEvent().GetKind() != keybrokerv1.KeyStateEvent_KIND_CURRENT || first.GetEvent().GetState() != want {
		h.t.Fatalf("WatchKeyState first event = %v (%v), want CURRENT %v", first.GetEvent(), err, want)
	}
	ch := make(chan *keybrokerv1.KeyStateEvent, 64)
	go func() {
		defer close(ch)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			ch <- m.GetEvent()
		}
	}()
	return ch
}

// waitEvent returns the next event of kind, failing on a PAUSE that is
// not wanted and on none within limit. It returns how long it waited.
func waitEvent(t *testing.T, ch <-chan *keybrokerv1.KeyStateEvent, kind keybrokerv1.KeyStateEvent_Kind, limit time.Duration) (*keybrokerv1.KeyStateEvent, time.Duration) {
	t.Helper()
	start := time.Now()
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				t.Fatalf("the watch stream ended while waiting for %v", kind)
			}
			if ev.GetKind() == kind {
				return ev, time.Since(start)
			}
			if ev.GetKind() == keybrokerv1.KeyStateEvent_KIND_PAUSE {
				t.Fatalf("watch event %v (%s) while waiting for %v", ev.GetKind(), ev.GetReason(), kind)
			}
		case <-timer.C:
			t.Fatalf("no %v event within %v", kind, limit)
			return nil, 0
		}
	}
}

func keystoreHash(t *testing.T, dir string) [32]byte {
	t.Helper()
	h := sha256.New()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() || strings.HasSuffix(e.Name(), ".lock") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s:%d:", e.Name(), len(b))
		h.Write(b)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

// TestRevocationEndToEnd: each way a customer withdraws the key, done
// through the emulator against the real broker, pauses it within one
// validity interval: watchers see PAUSE, every key RPC is refused with a
// message naming the region, the Azure code and the way out, health is
// NOT_SERVING, the buffers that held keys are zero and the keystore is
// untouched. Undoing it resumes, on schedule or through Revalidate.
func TestRevocationEndToEnd(t *testing.T) {
	emuClient := akvemu.DefaultClientID
	tests := []struct {
		name     string
		tokenTTL time.Duration
		revoke   func(ctx context.Context, c *akvemu.Control) error
		restore  func(ctx context.Context, c *akvemu.Control) error
		code     string
		// resume: "schedule" or "revalidate".
		resume string
	}{
		{
			name: "access revoked",
			revoke: func(ctx context.Context, c *akvemu.Control) error {
				return c.RevokeAccess(ctx, "", "", akvemu.CodeForbiddenByRbac)
			},
			restore: func(ctx context.Context, c *akvemu.Control) error { return c.GrantAccess(ctx, "", "") },
			code:    "ForbiddenByRbac", resume: "schedule",
		},
		{
			name: "key disabled",
			revoke: func(ctx context.Context, c *akvemu.Control) error {
				return c.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", false)
			},
			restore: func(ctx context.Context, c *akvemu.Control) error {
				return c.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", true)
			},
			code: "KeyDisabled", resume: "revalidate",
		},
		{
			name: "key deleted",
			revoke: func(ctx context.Context, c *akvemu.Control) error {
				return c.DeleteKey(ctx, akvemu.DefaultVaultHost, "cmk")
			},
			restore: func(ctx context.Context, c *akvemu.Control) error {
				return c.RecoverKey(ctx, akvemu.DefaultVaultHost, "cmk")
			},
			code: "KeyNotFound", resume: "schedule",
		},
		{
			name: "client secret expired", tokenTTL: 2 * time.Second,
			revoke:  func(ctx context.Context, c *akvemu.Control) error { return c.ExpireClientSecret(ctx, emuClient) },
			restore: func(ctx context.Context, c *akvemu.Control) error { return c.RotateClientSecret(ctx, emuClient) },
			// The renewed secret is written to the secret file, which the
			// broker follows: Try Again resumes without a restart.
			code: "AADSTS7000222", resume: "revalidate",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := newRevocationHarness(t, tc.tokenTTL)
			h.start()
			ctx := ctxT(t, 2*time.Minute)
			eng, adm, ctl := h.engine(), h.admin(), h.emu.Control()
			events := h.events(ctx, keybrokerv1.State_STATE_SERVING)
			before, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
			if err != nil {
				t.Fatalf("GetMasterKey err = %v", err)
			}
			blob, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("a data key")})
			if err != nil {
				t.Fatalf("WrapDEK err = %v", err)
			}
			held := h.at.Broker.HeldKeys(ctx)
			if len(held) != 1 {
				t.Fatalf("HeldKeys() = %d buffers, want 1", len(held))
			}
			storeHash := keystoreHash(t, h.cfg.Keystore.Dir)

			if err := tc.revoke(ctx, ctl); err != nil {
				t.Fatal(err)
			}
			// Tokens in hand stay valid until they expire, in Azure too.
			limit := revInterval + tc.tokenTTL + revSlack
			ev, took := waitEvent(t, events, keybrokerv1.KeyStateEvent_KIND_PAUSE, limit)
			t.Logf("PAUSE %v after revoking", took.Round(time.Millisecond))
			for _, want := range []string{tc.code, "region primary", "Revalidate"} {
				if !strings.Contains(ev.GetReason(), want) {
					t.Errorf("PAUSE reason = %q, want it to contain %q", ev.GetReason(), want)
				}
			}
			calls := []struct {
				name string
				call func() error
			}{
				{"GetMasterKey", func() error { _, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); return err }},
				{"WrapDEK", func() error { _, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte{1}}); return err }},
				{"UnwrapDEK", func() error {
					_, err := eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: blob.GetWrappedDek()})
					return err
				}},
				{"RotateDEK", func() error { _, err := adm.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); return err }},
			}
			for _, c := range calls {
				err := c.call()
				wantCode(t, c.name+" while PAUSED", err, codes.FailedPrecondition)
				msg := status.Convert(err).Message()
				for _, want := range []string{tc.code, "region primary", "Revalidate"} {
					if !strings.Contains(msg, want) {
						t.Errorf("%s while PAUSED message = %q, want it to contain %q", c.name, msg, want)
					}
				}
				if bytes.Contains([]byte(msg), before.GetKey()) {
					t.Fatalf("%s message carries the key", c.name)
				}
			}
			hc, err := healthpb.NewHealthClient(h.conn(h.files.EngineCert, h.files.EngineKey, false)).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil || hc.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
				t.Fatalf("Health/Check while PAUSED = %v (%v), want NOT_SERVING", hc.GetStatus(), err)
			}
			for i, c := range held[0].Raw() {
				if c != 0 {
					t.Fatalf("byte %d of the buffer that held the key = %#x while PAUSED, want 0", i, c)
				}
			}
			if n := len(h.at.Broker.HeldKeys(ctx)); n != 0 {
				t.Fatalf("HeldKeys() = %d buffers while PAUSED, want 0", n)
			}
			if keystoreHash(t, h.cfg.Keystore.Dir) != storeHash {
				t.Fatal("the keystore changed on disk while pausing, want it untouched")
			}

			if err := tc.restore(ctx, ctl); err != nil {
				t.Fatal(err)
			}
			switch tc.resume {
			case "schedule":
				waitEvent(t, events, keybrokerv1.KeyStateEvent_KIND_RESUMED, revInterval+revSlack)
			case "revalidate":
				rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
				if err != nil || !rv.GetOk() || rv.GetState() != keybrokerv1.State_STATE_SERVING {
					t.Fatalf("Revalidate after restoring = %v (%v), want ok SERVING", rv, err)
				}
				waitEvent(t, events, keybrokerv1.KeyStateEvent_KIND_RESUMED, revSlack)
			}
			after, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
			if err != nil || !bytes.Equal(after.GetKey(), before.GetKey()) {
				t.Fatalf("GetMasterKey after resuming = (%v), want the same key as before the pause", err)
			}
		})
	}
}

// TestRevocationOutageNeverPauses: every kind of outage, held for many
// validity intervals, degrades the broker and never pauses it; keys in
// memory keep being served, and it serves again once the outage ends.
func TestRevocationOutageNeverPauses(t *testing.T) {
	window := time.Duration(*outageIntervals) * revInterval
	tests := []struct {
		name  string
		fault akvemu.Fault
	}{
		{"HTTP 503", akvemu.Fault{Status: 503}},
		{"HTTP 500 on unwrap", akvemu.Fault{Op: akvemu.OpUnwrapKey, Status: 500}},
		{"HTTP 429", akvemu.Fault{Status: 429, RetryAfter: 1}},
		{"connection reset", akvemu.Fault{Reset: true}},
		{"black hole", akvemu.Fault{Blackhole: true}},
		{"token endpoint reset", akvemu.Fault{Host: akvemu.HostLogin, Reset: true}},
		{"token endpoint 503", akvemu.Fault{Host: akvemu.HostLogin, Status: 503}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// Two-second tokens: the token endpoint is asked during the outage.
			h := newRevocationHarness(t, 2*time.Second)
			h.start()
			ctx := ctxT(t, 2*time.Minute)
			eng, ctl := h.engine(), h.emu.Control()
			events := h.events(ctx, keybrokerv1.State_STATE_SERVING)
			want, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if err := ctl.InjectFault(ctx, tc.fault); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			end := time.NewTimer(window)
			served := 0
			for done := false; !done; {
				select {
				case ev, ok := <-events:
					if !ok {
						t.Fatal("the watch stream ended during the outage")
					}
					if ev.GetState() == keybrokerv1.State_STATE_PAUSED {
						t.Fatalf("PAUSE %v into a %s outage (%s), want never", time.Since(start).Round(time.Millisecond), tc.name, ev.GetReason())
					}
				case <-time.After(revInterval / 2):
					got, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
					if err != nil || !bytes.Equal(got.GetKey(), want.GetKey()) {
						t.Fatalf("GetMasterKey %v into a %s outage err = %v, want the key held in memory", time.Since(start).Round(time.Millisecond), tc.name, err)
					}
					served++
				case <-end.C:
					done = true
				}
			}
			st, err := eng.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
			if err != nil {
				t.Fatal(err)
			}
			// The checks ran and failed: the outage was seen, not missed.
			if st.GetState() != keybrokerv1.State_STATE_DEGRADED || st.GetLastValidationOk() || st.GetLastValidation().AsTime().Before(start) {
				t.Fatalf("GetStatus after a %v %s outage = %v, last validation %v ok=%v; want DEGRADED with a failed check since the outage began",
					window, tc.name, st.GetState(), st.GetLastValidation().AsTime(), st.GetLastValidationOk())
			}
			if err := ctl.ClearFaults(ctx); err != nil {
				t.Fatal(err)
			}
			waitEvent(t, events, keybrokerv1.KeyStateEvent_KIND_SERVING, revInterval+revSlack)
			t.Logf("%s: %d keys served from memory in %v, never PAUSED", tc.name, served, window)
		})
	}
}

// TestRevocationPartialTwoRegions: access revoked in one of two regions is
// DEGRADED with the REVOCATION_PARTIAL alert in GetStatus and the log, not
// PAUSED; revoked in both, PAUSED.
func TestRevocationPartialTwoRegions(t *testing.T) {
	h := newRegionsHarness(t, regionsOpts{regions: []string{"east", "west"}})
	h.cfg.Validation.Interval = config.Duration(revInterval)
	logs := h.startLogged()
	ctx := ctxT(t, 2*time.Minute)
	eng, adm, ctl := h.engine(), h.admin(), h.emu.Control()
	events := h.events(ctx, keybrokerv1.State_STATE_SERVING)
	want, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}

	if err := ctl.RevokeAccess(ctx, "", westHost, akvemu.CodeForbiddenByRbac); err != nil {
		t.Fatal(err)
	}
	ev, _ := waitEvent(t, events, keybrokerv1.KeyStateEvent_KIND_DEGRADED, revInterval+revSlack)
	if !strings.Contains(ev.GetReason(), "region west (revoked, ForbiddenByRbac") {
		t.Errorf("DEGRADED reason = %q, want it to name region west and ForbiddenByRbac", ev.GetReason())
	}
	// Several more checks: still not paused, the key still served.
	deadline := time.NewTimer(3 * revInterval)
	for done := false; !done; {
		select {
		case ev := <-events:
			if ev.GetState() == keybrokerv1.State_STATE_PAUSED {
				t.Fatalf("PAUSE with access revoked in one region of two (%s), want DEGRADED", ev.GetReason())
			}
		case <-deadline.C:
			done = true
		}
	}
	st, err := eng.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var alert *keybrokerv1.Alert
	for _, a := range st.GetAlerts() {
		if a.GetCode() == "REVOCATION_PARTIAL" {
			alert = a
		}
	}
	if st.GetState() != keybrokerv1.State_STATE_DEGRADED || alert == nil || !strings.Contains(alert.GetMessage(), "region west") {
		t.Fatalf("GetStatus with west revoked = %v, alerts %v; want DEGRADED with REVOCATION_PARTIAL naming west", st.GetState(), st.GetAlerts())
	}
	if n := logs.count("partial revocation", nil); n == 0 {
		t.Error("the broker logged no \"partial revocation\" error, want one per check")
	}
	got, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil || !bytes.Equal(got.GetKey(), want.GetKey()) {
		t.Fatalf("GetMasterKey with west revoked = (%v), want the key", err)
	}

	if err := ctl.RevokeAccess(ctx, "", eastHost, akvemu.CodeForbiddenByPolicy); err != nil {
		t.Fatal(err)
	}
	ev, _ = waitEvent(t, events, keybrokerv1.KeyStateEvent_KIND_PAUSE, revInterval+revSlack)
	for _, s := range []string{"region east (revoked, ForbiddenByPolicy", "region west (revoked, ForbiddenByRbac"} {
		if !strings.Contains(ev.GetReason(), s) {
			t.Errorf("PAUSE reason = %q, want it to contain %q", ev.GetReason(), s)
		}
	}
	if err := ctl.GrantAccess(ctx, "", ""); err != nil {
		t.Fatal(err)
	}
	rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || !rv.GetOk() || rv.GetState() != keybrokerv1.State_STATE_SERVING {
		t.Fatalf("Revalidate after granting access again = %v (%v), want ok SERVING", rv, err)
	}
	waitEvent(t, events, keybrokerv1.KeyStateEvent_KIND_RESUMED, revSlack)
}

// watchRun is `keybroker watch` running in-process, its output line by line.
type watchRun struct {
	stdout, stderr chan string
	done           chan struct{} // closed when the command has returned
	err            error         // what it returned, once done is closed
	cancel         context.CancelFunc
}

// wait waits for the command to return and gives its error.
func (w *watchRun) wait(t *testing.T) error {
	t.Helper()
	select {
	case <-w.done:
		return w.err
	case <-time.After(30 * time.Second):
		t.Fatal("keybroker watch did not return within 30s")
		return nil
	}
}

func startWatch(t *testing.T, args ...string) *watchRun {
	t.Helper()
	outR, outW := io.Pipe()
	errR, errW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	w := &watchRun{stdout: make(chan string, 64), stderr: make(chan string, 256), done: make(chan struct{}), cancel: cancel}
	lines := func(r io.Reader, ch chan<- string) {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
		close(ch)
	}
	go lines(outR, w.stdout)
	go lines(errR, w.stderr)
	go func() {
		e := &env{stdout: outW, stderr: errW, getenv: func(string) string { return "" }}
		w.err = run(ctx, e, append([]string{"watch"}, args...))
		outW.Close()
		errW.Close()
		close(w.done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-w.done:
		case <-time.After(30 * time.Second):
			t.Error("keybroker watch did not stop within 30s of cancel")
		}
	})
	return w
}

// line waits for the next JSON line and checks its kind and state.
func (w *watchRun) line(t *testing.T, kind, state string) watchLine {
	t.Helper()
	select {
	case s, ok := <-w.stdout:
		if !ok {
			t.Fatalf("keybroker watch ended (%v) while waiting for %s %s", w.wait(t), kind, state)
		}
		var fields map[string]any
		if err := json.Unmarshal([]byte(s), &fields); err != nil || len(fields) != 4 {
			t.Fatalf("watch line %q: want a JSON object with kind, state, reason and time (err %v)", s, err)
		}
		var l watchLine
		if err := json.Unmarshal([]byte(s), &l); err != nil {
			t.Fatal(err)
		}
		if _, err := time.Parse(time.RFC3339Nano, l.Time); err != nil {
			t.Errorf("watch line time %q: %v", l.Time, err)
		}
		if l.Kind != kind || l.State != state {
			t.Fatalf("watch line = %s, want kind %s state %s", s, kind, state)
		}
		return l
	case <-time.After(30 * time.Second):
		t.Fatalf("no %s %s line from keybroker watch within 30s", kind, state)
		return watchLine{}
	}
}

// stderrLine waits for a stderr line containing s.
func (w *watchRun) stderrLine(t *testing.T, s string) {
	t.Helper()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	for {
		select {
		case l, ok := <-w.stderr:
			if !ok {
				t.Fatalf("keybroker watch ended while waiting for %q on stderr", s)
			}
			if strings.Contains(l, s) {
				return
			}
		case <-timer.C:
			t.Fatalf("no %q on the stderr of keybroker watch within 30s", s)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return string(b)
}

// TestWatchCommand runs `keybroker watch` against the real broker: one JSON
// line per event, the hooks run with the event in their environment, and
// it reconnects across broker restarts, a CURRENT line first each time, a
// pause seen only at reconnection running --on-pause too.
func TestWatchCommand(t *testing.T) {
	h := newHarness(t, "")
	h.start()
	ctx := ctxT(t, 2*time.Minute)
	adm, ctl := h.admin(), h.emu.Control()
	out := t.TempDir()
	hook := `printf '%s %s %s' "$KEYBROKER_EVENT" "$KEYBROKER_STATE" "$KEYBROKER_REASON" > ` + out + `/`
	w := startWatch(t, "--addr", "unix:"+h.at.Unix, "--ca", h.files.CA, "--cert", h.files.EngineCert, "--key", h.files.EngineKey,
		"--max-backoff", "500ms", "--on-pause", hook+"paused", "--on-resume", hook+"resumed")
	revalidate := func(wantOK bool) {
		t.Helper()
		rv, err := adm.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
		if err != nil || rv.GetOk() != wantOK {
			t.Fatalf("Revalidate = %v (%v), want ok %v", rv, err, wantOK)
		}
	}

	w.line(t, "CURRENT", "SERVING")
	if err := ctl.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", false); err != nil {
		t.Fatal(err)
	}
	revalidate(false)
	if l := w.line(t, "PAUSE", "PAUSED"); !strings.Contains(l.Reason, "KeyDisabled") {
		t.Errorf("PAUSE line reason = %q, want it to name KeyDisabled", l.Reason)
	}
	w.stderrLine(t, "--on-pause command for PAUSE finished")
	if got := readFile(t, filepath.Join(out, "paused")); !strings.HasPrefix(got, "PAUSE PAUSED ") || !strings.Contains(got, "KeyDisabled") {
		t.Errorf("--on-pause wrote %q, want \"PAUSE PAUSED <reason naming KeyDisabled>\"", got)
	}
	if err := ctl.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", true); err != nil {
		t.Fatal(err)
	}
	revalidate(true)
	w.line(t, "RESUMED", "SERVING")
	w.stderrLine(t, "--on-resume command for RESUMED finished")
	if got := readFile(t, filepath.Join(out, "resumed")); !strings.HasPrefix(got, "RESUMED SERVING ") {
		t.Errorf("--on-resume wrote %q, want \"RESUMED SERVING <reason>\"", got)
	}

	// A broker restart: the watch reconnects and says where things stand.
	h.stop()
	w.stderrLine(t, "reconnecting in")
	h.start()
	w.line(t, "CURRENT", "SERVING")

	// Revoked while the broker is down: the restarted broker is PAUSED,
	// which the watch learns from the CURRENT line, and --on-pause runs.
	os.Remove(filepath.Join(out, "paused"))
	h.stop()
	if err := ctl.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", false); err != nil {
		t.Fatal(err)
	}
	h.start()
	adm = h.admin()
	w.line(t, "CURRENT", "PAUSED")
	w.stderrLine(t, "--on-pause command for CURRENT finished")
	if got := readFile(t, filepath.Join(out, "paused")); !strings.HasPrefix(got, "CURRENT PAUSED ") {
		t.Errorf("--on-pause after reconnecting wrote %q, want \"CURRENT PAUSED <reason>\"", got)
	}
	if err := ctl.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", true); err != nil {
		t.Fatal(err)
	}
	revalidate(true)
	w.line(t, "RESUMED", "SERVING")

	w.cancel()
	if err := w.wait(t); err != nil {
		t.Fatalf("keybroker watch after cancel returned %v, want nil", err)
	}
}

// TestWatchExitOnPause: with --exit-on-pause the command exits with its
// documented code once the broker pauses, after --on-pause has run.
func TestWatchExitOnPause(t *testing.T) {
	h := newHarness(t, "")
	h.start()
	ctx := ctxT(t, time.Minute)
	marker := filepath.Join(t.TempDir(), "stopped")
	w := startWatch(t, "--addr", h.at.Address, "--ca", h.files.CA, "--cert", h.files.EngineCert, "--key", h.files.EngineKey,
		"--exit-on-pause", "--on-pause", "sleep 0.2; echo stopped > "+marker)
	w.line(t, "CURRENT", "SERVING")
	if err := h.emu.Control().SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", false); err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin().Revalidate(ctx, &keybrokerv1.RevalidateRequest{}); err != nil {
		t.Fatal(err)
	}
	w.line(t, "PAUSE", "PAUSED")
	var ee *cli.ExitError
	if err := w.wait(t); !errors.As(err, &ee) || ee.Code != exitPaused {
		t.Fatalf("keybroker watch --exit-on-pause returned %v, want exit code %d", err, exitPaused)
	}
	if got := strings.TrimSpace(readFile(t, marker)); got != "stopped" {
		t.Fatalf("--on-pause output = %q, want \"stopped\": the command must finish before the exit", got)
	}
}

func TestWatchBackoff(t *testing.T) {
	const base, max = 250 * time.Millisecond, 8 * time.Second
	lowest := func(n int64) int64 { return 0 }
	highest := func(n int64) int64 { return n - 1 }
	tests := []struct {
		attempt  int
		min, max time.Duration
	}{
		{1, 125 * time.Millisecond, 250 * time.Millisecond},
		{2, 250 * time.Millisecond, 500 * time.Millisecond},
		{5, 2 * time.Second, 4 * time.Second},
		{6, 4 * time.Second, 8 * time.Second},
		{7, 4 * time.Second, 8 * time.Second},
		{1000, 4 * time.Second, 8 * time.Second}, // no overflow, capped
	}
	for _, tc := range tests {
		lo, hi := backoffDelay(tc.attempt, base, max, lowest), backoffDelay(tc.attempt, base, max, highest)
		if lo != tc.min || hi != tc.max {
			t.Errorf("backoffDelay(%d) spans [%v, %v], want [%v, %v]", tc.attempt, lo, hi, tc.min, tc.max)
		}
	}
}

func TestWatchHookFor(t *testing.T) {
	const (
		none     = keybrokerv1.State_STATE_UNSPECIFIED
		serving  = keybrokerv1.State_STATE_SERVING
		degraded = keybrokerv1.State_STATE_DEGRADED
		paused   = keybrokerv1.State_STATE_PAUSED
	)
	tests := []struct {
		prev, next keybrokerv1.State
		hook       string
	}{
		{none, serving, ""},        // first connection, all well
		{none, paused, "on-pause"}, // first connection to a paused broker
		{serving, degraded, ""},    // outage: not a pause
		{degraded, paused, "on-pause"},
		{paused, paused, ""}, // reconnected, still paused: already run
		{paused, serving, "on-resume"},
		{paused, degraded, "on-resume"}, // resumed while a region still fails
		{degraded, serving, ""},
	}
	for _, tc := range tests {
		hook, entering := hookFor(tc.prev, tc.next)
		if hook != tc.hook || entering != (tc.hook == "on-pause") {
			t.Errorf("hookFor(%v, %v) = %q, %v; want %q", tc.prev, tc.next, hook, entering, tc.hook)
		}
	}
}

func TestWatchUsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want int
	}{
		{"no certificates", []string{"watch"}, exitUsage},
		{"short backoff", []string{"watch", "--max-backoff", "1ms", "--dev", dir}, exitUsage},
		{"no hook timeout", []string{"watch", "--hook-timeout", "0s", "--dev", dir}, exitUsage},
		{"unreadable dev PKI", []string{"watch", "--dev", dir}, exitUsage},
		{"stray argument", []string{"watch", "now"}, exitUsage},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, stderr, code := runCLI(t, tc.args...); code != tc.want {
				t.Fatalf("keybroker %v exit code = %d (%s), want %d", tc.args, code, stderr, tc.want)
			}
		})
	}
}
