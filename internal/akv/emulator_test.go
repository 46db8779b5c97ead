package akv

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
)

// emu is an in-process Key Vault emulator with the real azkeys and
// azidentity clients pointed at it over HTTPS.
type emu struct {
	srv  *akvemu.Server
	info akvemu.Info
	ctl  *akvemu.Control
	env  Environment
}

func startEmu(t *testing.T) *emu {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := akvemu.Start(ctx, akvemu.Config{
		Ephemeral: true,
		Keys:      []akvemu.KeySpec{{Vault: akvemu.DefaultVaultHost, Name: akvemu.DefaultKeyName, Size: 2048}},
	})
	if err != nil {
		t.Fatalf("akvemu.Start() err = %v, want nil", err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	info := srv.Info()
	return &emu{
		srv:  srv,
		info: info,
		ctl:  srv.Control(),
		env: Environment{
			Name:          EnvCustom,
			AuthorityHost: info.AuthorityHost,
			VaultSuffix:   "vault.keybroker.test",
			CAFile:        info.CAFile,
			ConnectTo:     info.Endpoint,
		},
	}
}

func (e *emu) keyID(t *testing.T) string {
	t.Helper()
	if len(e.info.KeyIDs) == 0 {
		t.Fatal("emulator reports no key")
	}
	return e.info.KeyIDs[0]
}

func (e *emu) secretCred(t *testing.T) CredentialConfig {
	return CredentialConfig{Kind: CredClientSecret, TenantID: e.info.TenantID, ClientID: e.info.ClientID, ClientSecretFile: e.info.ClientSecretFile, MaxRetries: -1, Timeout: 5 * time.Second}
}

// wrapper builds a fresh credential and Wrapper (fresh: no cached token).
func (e *emu) wrapper(t *testing.T, cc CredentialConfig, mod func(*Config)) *Wrapper {
	t.Helper()
	cred, err := NewCredential(cc, e.env)
	if err != nil {
		t.Fatalf("NewCredential(%s) err = %v, want nil", cc.Kind, err)
	}
	cfg := Config{KeyID: e.keyID(t), Region: "emu", Environment: e.env, Credential: cred, Timeout: 5 * time.Second, MaxRetries: -1, RetryDelay: 10 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatalf("New() err = %v, want nil", err)
	}
	// Connections dialled but never used stay "new" to the emulator, whose
	// Close would wait 5s for them.
	t.Cleanup(func() {
		if w.hc != nil {
			w.hc.CloseIdleConnections()
		}
	})
	return w
}

func roundTrip(t *testing.T, w *Wrapper) []kek.Wrapped {
	t.Helper()
	ctx := context.Background()
	copies, err := w.WrapKey(ctx, testKey)
	if err != nil {
		t.Fatalf("WrapKey() err = %v, want nil", err)
	}
	got, err := w.UnwrapKey(ctx, copies)
	if err != nil || !bytes.Equal(got, testKey) {
		t.Fatalf("UnwrapKey() = %x, %v; want the key", got, err)
	}
	return copies
}

// TestEmulatorCredentials obtains a token with each credential kind from
// the emulator's Entra ID and managed identity endpoints. Not parallel:
// managed identity reads IDENTITY_ENDPOINT and IDENTITY_HEADER.
func TestEmulatorCredentials(t *testing.T) {
	e := startEmu(t)
	i := e.info
	tests := []struct {
		name   string
		cfg    CredentialConfig
		setenv bool
	}{
		{"client secret", CredentialConfig{Kind: CredClientSecret, TenantID: i.TenantID, ClientID: i.ClientID, ClientSecretFile: i.ClientSecretFile}, false},
		{"client certificate", CredentialConfig{Kind: CredClientCertificate, TenantID: i.TenantID, ClientID: i.ClientID, CertificateFile: i.ClientCertFile}, false},
		{"workload identity", CredentialConfig{Kind: CredWorkloadIdentity, TenantID: i.TenantID, ClientID: i.ClientID, FederatedTokenFile: i.FederatedTokenFile}, false},
		{"managed identity system-assigned", CredentialConfig{Kind: CredManagedIdentity}, true},
		{"managed identity user-assigned", CredentialConfig{Kind: CredManagedIdentity, ManagedIdentityClientID: i.ClientID}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setenv {
				t.Setenv("IDENTITY_ENDPOINT", i.IdentityEndpoint)
				t.Setenv("IDENTITY_HEADER", i.IdentityHeader)
			}
			tc.cfg.MaxRetries = -1
			w := e.wrapper(t, tc.cfg, nil)
			copies := roundTrip(t, w)
			if copies[0].KeyID != e.keyID(t) || copies[0].Algorithm != "RSA-OAEP-256" {
				t.Errorf("WrapKey() copy = %s %s, want %s RSA-OAEP-256", copies[0].KeyID, copies[0].Algorithm, e.keyID(t))
			}
			info, err := w.KeyInfo(context.Background())
			if err != nil || !info.Enabled || info.KeyID != e.keyID(t) {
				t.Errorf("KeyInfo() = %+v, %v; want enabled %s", info, err, e.keyID(t))
			}
		})
	}
}

// TestEmulatorErrors produces every error kind through the emulator's
// control API and checks the classification. The cases share one emulator
// and undo their change before the next.
func TestEmulatorErrors(t *testing.T) {
	e := startEmu(t)
	ctx := context.Background()
	vault := akvemu.DefaultVaultHost
	name := akvemu.DefaultKeyName
	secret, err := os.ReadFile(e.info.ClientSecretFile)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		do       func(t *testing.T) error // the change
		undo     func(t *testing.T) error
		cred     func(t *testing.T) CredentialConfig // nil = the secret file
		timeout  time.Duration
		wantKind kek.Kind
		wantCode string // "" = any
		wantRA   time.Duration
		check    func(t *testing.T, err error)
	}{
		{name: "revoke rbac", wantKind: kek.KindRevoked, wantCode: "ForbiddenByRbac",
			do:   func(*testing.T) error { return e.ctl.RevokeAccess(ctx, "", vault, akvemu.CodeForbiddenByRbac) },
			undo: func(*testing.T) error { return e.ctl.GrantAccess(ctx, "", vault) }},
		{name: "revoke policy", wantKind: kek.KindRevoked, wantCode: "ForbiddenByPolicy",
			do:   func(*testing.T) error { return e.ctl.RevokeAccess(ctx, "", vault, akvemu.CodeForbiddenByPolicy) },
			undo: func(*testing.T) error { return e.ctl.GrantAccess(ctx, "", vault) }},
		{name: "revoke firewall", wantKind: kek.KindRevoked, wantCode: "ForbiddenByFirewall",
			do:   func(*testing.T) error { return e.ctl.RevokeAccess(ctx, "", vault, akvemu.CodeForbiddenByFirewall) },
			undo: func(*testing.T) error { return e.ctl.GrantAccess(ctx, "", vault) }},
		{name: "disable key", wantKind: kek.KindRevoked, wantCode: "KeyDisabled",
			do:   func(*testing.T) error { return e.ctl.SetKeyEnabled(ctx, vault, name, false) },
			undo: func(*testing.T) error { return e.ctl.SetKeyEnabled(ctx, vault, name, true) }},
		{name: "delete key", wantKind: kek.KindNotFound, wantCode: "KeyNotFound",
			do:   func(*testing.T) error { return e.ctl.DeleteKey(ctx, vault, name) },
			undo: func(*testing.T) error { return e.ctl.RecoverKey(ctx, vault, name) }},
		{name: "expired secret", wantKind: kek.KindRevoked, wantCode: "AADSTS7000222",
			do: func(*testing.T) error { return e.ctl.ExpireClientSecret(ctx, e.info.ClientID) },
			// Rotating is how an expired secret is renewed.
			undo: func(*testing.T) error { return e.ctl.RotateClientSecret(ctx, e.info.ClientID) }},
		{name: "rotated secret", wantKind: kek.KindRevoked, wantCode: "AADSTS7000215",
			do:   func(*testing.T) error { return e.ctl.RotateClientSecret(ctx, e.info.ClientID) },
			undo: func(*testing.T) error { return nil },
			cred: func(*testing.T) CredentialConfig {
				c := e.secretCred(t)
				c.ClientSecretFile, c.ClientSecret = "", strings.TrimSpace(string(secret)) // the old one
				return c
			}},
		{name: "throttled", wantKind: kek.KindThrottled, wantCode: "", wantRA: 2 * time.Second,
			do: func(*testing.T) error {
				return e.ctl.InjectFault(ctx, akvemu.Fault{Host: vault, Op: akvemu.OpWrapKey, Status: 429, RetryAfter: 2})
			},
			undo: func(*testing.T) error { return e.ctl.ClearFaults(ctx) }},
		{name: "503", wantKind: kek.KindUnavailable,
			do: func(*testing.T) error {
				return e.ctl.InjectFault(ctx, akvemu.Fault{Host: vault, Op: akvemu.OpWrapKey, Status: 503})
			},
			undo: func(*testing.T) error { return e.ctl.ClearFaults(ctx) }},
		{name: "reset", wantKind: kek.KindUnavailable, wantCode: "ConnectionReset",
			do: func(*testing.T) error {
				return e.ctl.InjectFault(ctx, akvemu.Fault{Host: vault, Op: akvemu.OpWrapKey, Reset: true})
			},
			undo: func(*testing.T) error { return e.ctl.ClearFaults(ctx) }},
		{name: "blackhole", wantKind: kek.KindUnavailable, wantCode: "Timeout", timeout: 300 * time.Millisecond,
			do: func(*testing.T) error {
				return e.ctl.InjectFault(ctx, akvemu.Fault{Host: vault, Op: akvemu.OpWrapKey, Blackhole: true})
			},
			undo: func(*testing.T) error { return e.ctl.ClearFaults(ctx) },
			check: func(t *testing.T, err error) {
				if !errors.Is(err, ErrAttemptTimeout) || errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("WrapKey() err = %v, want ErrAttemptTimeout and not the caller's context.DeadlineExceeded", err)
				}
			}},
		{name: "token endpoint down", wantKind: kek.KindUnavailable,
			do: func(*testing.T) error {
				return e.ctl.InjectFault(ctx, akvemu.Fault{Host: akvemu.HostLogin, Reset: true})
			},
			undo: func(*testing.T) error { return e.ctl.ClearFaults(ctx) }},
		{name: "token endpoint 503", wantKind: kek.KindUnavailable,
			do: func(*testing.T) error {
				return e.ctl.InjectFault(ctx, akvemu.Fault{Host: akvemu.HostLogin, Op: akvemu.OpToken, Status: 503})
			},
			undo: func(*testing.T) error { return e.ctl.ClearFaults(ctx) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := e.secretCred(t)
			if tc.cred != nil {
				cc = tc.cred(t)
			}
			if err := tc.do(t); err != nil {
				t.Fatalf("control: %v", err)
			}
			t.Cleanup(func() {
				if err := tc.undo(t); err != nil {
					t.Errorf("control undo: %v", err)
				}
			})
			w := e.wrapper(t, cc, func(c *Config) {
				if tc.timeout > 0 {
					c.Timeout = tc.timeout
				}
			})
			_, err := w.WrapKey(ctx, testKey)
			if err == nil {
				t.Fatalf("WrapKey() err = nil, want %v", tc.wantKind)
			}
			var ke *kek.Error
			if !errors.As(err, &ke) {
				t.Fatalf("WrapKey() err = %v (%T), want a *kek.Error", err, err)
			}
			t.Logf("WrapKey() err = %v", err)
			if ke.Kind != tc.wantKind || (tc.wantCode != "" && ke.Code != tc.wantCode) || ke.RetryAfter != tc.wantRA {
				t.Errorf("WrapKey() err = {Kind: %v, Code: %q, RetryAfter: %v}, want {%v, %q, %v}", ke.Kind, ke.Code, ke.RetryAfter, tc.wantKind, tc.wantCode, tc.wantRA)
			}
			if ke.Region != "emu" || !strings.Contains(err.Error(), "/keys/"+name) {
				t.Errorf("WrapKey() err = %v, want it to name region emu and key %s", err, name)
			}
			checkErrorHygiene(t, err)
			if strings.Contains(err.Error(), strings.TrimSpace(string(secret))) {
				t.Errorf("WrapKey() err reveals the client secret")
			}
			if tc.check != nil {
				tc.check(t, err)
			}
		})
	}
	t.Run("recovered", func(t *testing.T) {
		roundTrip(t, e.wrapper(t, e.secretCred(t), nil))
	})
}

// vaultOps sums the emulator's counters for the vault host by operation.
func (e *emu) vaultOps(t *testing.T) map[string]int64 {
	t.Helper()
	c, err := e.ctl.Counters(context.Background())
	if err != nil {
		t.Fatalf("Counters() err = %v", err)
	}
	return c[akvemu.DefaultVaultHost]
}

// TestEmulatorLocalWrap checks that a local wrap is proven by one vault
// unwrap and that later wraps never reach the vault.
func TestEmulatorLocalWrap(t *testing.T) {
	e := startEmu(t)
	ctx := context.Background()
	w := e.wrapper(t, e.secretCred(t), func(c *Config) { c.LocalWrap = true })
	if err := e.ctl.ResetCounters(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := w.WrapKey(ctx, testKey)
	if err != nil {
		t.Fatalf("WrapKey() err = %v, want nil", err)
	}
	ops := e.vaultOps(t)
	if ops[akvemu.OpWrapKey] != 0 || ops[akvemu.OpUnwrapKey] < 1 || ops[akvemu.OpGet] < 1 {
		t.Fatalf("after the first local wrap: vault ops %v, want get and unwrapkey (the proof), no wrapkey", ops)
	}
	if err := e.ctl.ResetCounters(ctx); err != nil {
		t.Fatal(err)
	}
	var copies []kek.Wrapped
	for i := 0; i < 10; i++ {
		if copies, err = w.WrapKey(ctx, testKey); err != nil {
			t.Fatalf("WrapKey() #%d err = %v, want nil", i, err)
		}
	}
	for op, n := range e.vaultOps(t) {
		if n != 0 {
			t.Errorf("after 10 proven local wraps: vault saw %d %s requests, want none", n, op)
		}
	}
	for _, c := range [][]kek.Wrapped{first, copies} {
		got, err := w.UnwrapKey(ctx, c)
		if err != nil || !bytes.Equal(got, testKey) {
			t.Errorf("UnwrapKey(local copy) = %x, %v; want the key (the vault unwraps what was wrapped locally)", got, err)
		}
	}
	// A revocation seen by KeyInfo ends local wrapping.
	if err := e.ctl.RevokeAccess(ctx, "", akvemu.DefaultVaultHost, akvemu.CodeForbiddenByRbac); err != nil {
		t.Fatal(err)
	}
	if _, err := w.KeyInfo(ctx); kek.KindOf(err) != kek.KindRevoked {
		t.Fatalf("KeyInfo() after revocation err = %v, want KindRevoked", err)
	}
	if _, err := w.WrapKey(ctx, testKey); kek.KindOf(err) != kek.KindRevoked {
		t.Errorf("WrapKey() after revocation err = %v, want KindRevoked (no local wrap)", err)
	}
}

// TestEmulatorVersionless checks a versionless identifier follows RotateKey
// through KeyInfo, and old copies still unwrap.
func TestEmulatorVersionless(t *testing.T) {
	e := startEmu(t)
	ctx := context.Background()
	full := e.keyID(t)
	versionless := full[:strings.LastIndexByte(full, '/')]
	w := e.wrapper(t, e.secretCred(t), func(c *Config) { c.KeyID = versionless })
	info, err := w.KeyInfo(ctx)
	if err != nil || info.KeyID != full {
		t.Fatalf("KeyInfo() = %+v, %v; want %s", info, err, full)
	}
	old := roundTrip(t, w)
	rotated, err := e.ctl.RotateKey(ctx, akvemu.DefaultVaultHost, akvemu.DefaultKeyName)
	if err != nil {
		t.Fatalf("RotateKey() err = %v", err)
	}
	if info, err = w.KeyInfo(ctx); err != nil || info.KeyID != rotated {
		t.Fatalf("KeyInfo() after RotateKey = %+v, %v; want %s", info, err, rotated)
	}
	cur := roundTrip(t, w)
	if cur[0].KeyID != rotated || old[0].KeyID != full {
		t.Errorf("copies name %s then %s, want %s then %s", old[0].KeyID, cur[0].KeyID, full, rotated)
	}
	if got, err := w.UnwrapKey(ctx, old); err != nil || !bytes.Equal(got, testKey) {
		t.Errorf("UnwrapKey(copy of the old version) = %x, %v; want the key", got, err)
	}
	if w.KeyID() != versionless {
		t.Errorf("KeyID() = %q, want %q", w.KeyID(), versionless)
	}
}

// TestEmulatorConformance runs the shared key-wrapper suite against the
// adapter and the emulator, with vault and with local wrapping.
func TestEmulatorConformance(t *testing.T) {
	e := startEmu(t)
	for _, local := range []bool{false, true} {
		t.Run(map[bool]string{false: "remote", true: "local"}[local], func(t *testing.T) {
			kektest.RunConformance(t, func(t *testing.T) kektest.Wrapper {
				return e.wrapper(t, e.secretCred(t), func(c *Config) { c.LocalWrap = local })
			})
		})
	}
}

// TestEmulatorRetry checks the bounded SDK retries against the emulator: a
// 429 with Retry-After and a 503 are retried once and the call succeeds.
func TestEmulatorRetry(t *testing.T) {
	e := startEmu(t)
	ctx := context.Background()
	tests := []struct {
		name  string
		fault akvemu.Fault
	}{
		{"429 with Retry-After", akvemu.Fault{Host: akvemu.DefaultVaultHost, Op: akvemu.OpWrapKey, Status: 429, RetryAfter: 1, Count: 1}},
		{"503", akvemu.Fault{Host: akvemu.DefaultVaultHost, Op: akvemu.OpWrapKey, Status: 503, Count: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := e.wrapper(t, e.secretCred(t), func(c *Config) { c.MaxRetries = 2; c.MaxRetryDelay = 2 * time.Second })
			if _, err := w.KeyInfo(ctx); err != nil {
				t.Fatalf("KeyInfo() err = %v, want nil", err)
			}
			if err := e.ctl.ResetCounters(ctx); err != nil {
				t.Fatal(err)
			}
			if err := e.ctl.InjectFault(ctx, tc.fault); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = e.ctl.ClearFaults(ctx) })
			start := time.Now()
			if _, err := w.WrapKey(ctx, testKey); err != nil {
				t.Fatalf("WrapKey() err = %v, want nil after one retry", err)
			}
			if n := e.vaultOps(t)[akvemu.OpWrapKey]; n != 2 {
				t.Errorf("wrapkey requests = %d, want 2 (one fault, one retry)", n)
			}
			// Retry-After is a lower bound the SDK must honour; this checks
			// behaviour, not speed.
			if tc.fault.RetryAfter > 0 && time.Since(start) < time.Duration(tc.fault.RetryAfter)*time.Second {
				t.Errorf("WrapKey() retried after %v, before the %ds Retry-After", time.Since(start), tc.fault.RetryAfter)
			}
		})
	}
}
