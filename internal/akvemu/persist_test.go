package akvemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

// TestPersistenceAcrossRestart changes every kind of state, restarts the
// emulator on the same directory and checks that all of it came back.
func TestPersistenceAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	cfg.Ephemeral, cfg.Dir = false, dir
	ctx := ctxT(t)

	e1 := startEnv(t, cfg)
	ctl := e1.srv.Control()
	kc := e1.keys(t, e1.secretCred(t, 0), testVault, 0)
	rot, err := kc.RotateKey(ctx, "cmk", nil)
	must(t, err)
	wrapped, err := kc.WrapKey(ctx, "cmk", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: []byte("dek")}, nil)
	must(t, err)
	_, err = kc.UpdateKey(ctx, "cmk", rot.Key.KID.Version(), azkeys.UpdateKeyParameters{
		KeyOps: []*azkeys.KeyOperation{to.Ptr(azkeys.KeyOperationUnwrapKey)}, Tags: map[string]*string{"k": to.Ptr("v")},
	}, nil)
	must(t, err)
	_, err = ctl.CreateKey(ctx, testVault, "doomed", 2048)
	must(t, err)
	must(t, ctl.DeleteKey(ctx, testVault, "doomed"))
	must(t, ctl.SetKeyEnabled(ctx, testWest, "cmk", false))
	must(t, ctl.RevokeAccess(ctx, "", testWest, CodeForbiddenByPolicy))
	must(t, ctl.RotateClientSecret(ctx, e1.info.ClientID))
	added, err := ctl.AddClient(ctx, "second-app")
	must(t, err)
	var versions1 []string
	for p := kc.NewListKeyPropertiesVersionsPager("cmk", nil); p.More(); {
		page, err := p.NextPage(ctx)
		must(t, err)
		for _, v := range page.Value {
			versions1 = append(versions1, v.KID.Version())
		}
	}
	secret1 := e1.secret(t, e1.info.ClientSecretFile)
	ca1, err := os.ReadFile(e1.info.CAFile)
	must(t, err)
	priv1, err := e1.srv.PrivateKey(testVault, "cmk", "")
	must(t, err)
	e1.tr.CloseIdleConnections()
	must(t, e1.srv.Close())

	e2 := startEnv(t, cfg)
	if e2.info.CAFile != e1.info.CAFile {
		t.Errorf("CA file moved: %s, then %s", e1.info.CAFile, e2.info.CAFile)
	}
	if ca2, _ := os.ReadFile(e2.info.CAFile); string(ca2) != string(ca1) {
		t.Errorf("CA regenerated across a restart, want it reused")
	}
	if s2 := e2.secret(t, e2.info.ClientSecretFile); s2 != secret1 {
		t.Errorf("client secret file changed across a restart")
	}
	kc2 := e2.keys(t, e2.secretCred(t, -1), testVault, -1)
	var versions2 []string
	for p := kc2.NewListKeyPropertiesVersionsPager("cmk", nil); p.More(); {
		page, err := p.NextPage(ctx)
		must(t, err)
		for _, v := range page.Value {
			versions2 = append(versions2, v.KID.Version())
		}
	}
	if !slices.Equal(versions1, versions2) || len(versions2) != 2 {
		t.Errorf("versions after restart = %v, want %v", versions2, versions1)
	}
	latest, err := kc2.GetKey(ctx, "cmk", "", nil)
	must(t, err)
	if len(latest.Key.KeyOps) != 1 || *latest.Key.KeyOps[0] != azkeys.KeyOperationUnwrapKey || *latest.Tags["k"] != "v" {
		t.Errorf("latest cmk after restart: key_ops %v tags %v, want [unwrapKey] k=v", latest.Key.KeyOps, latest.Tags)
	}
	priv2, err := e2.srv.PrivateKey(testVault, "cmk", "")
	must(t, err)
	if !priv1.Equal(priv2) {
		t.Errorf("key material changed across a restart")
	}
	un, err := kc2.UnwrapKey(ctx, "cmk", wrapped.KID.Version(), azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: wrapped.Result}, nil)
	if err != nil || string(un.Result) != "dek" {
		t.Errorf("UnwrapKey(pre-restart wrap) = %q, %v, want dek", un.Result, err)
	}
	if _, err := kc2.GetDeletedKey(ctx, "doomed", nil); err != nil {
		t.Errorf("GetDeletedKey(doomed) after restart err = %v, want nil", err)
	}
	west := e2.keys(t, e2.secretCred(t, -1), testWest, -1)
	_, err = west.GetKey(ctx, "cmk", "", nil)
	if status, _, inner := responseError(t, err); status != 403 || inner != CodeForbiddenByPolicy {
		t.Errorf("GetKey(west cmk) after restart = %d %s, want 403 %s (revocation persisted)", status, inner, CodeForbiddenByPolicy)
	}
	must(t, e2.srv.Control().GrantAccess(ctx, "", testWest))
	_, err = west.GetKey(ctx, "cmk", "", nil)
	if status, _, inner := responseError(t, err); status != 403 || inner != "KeyDisabled" {
		t.Errorf("GetKey(west cmk) after grant = %d %s, want 403 KeyDisabled (disabled persisted)", status, inner)
	}
	if _, err := os.Stat(added.ClientSecretFile); err != nil {
		t.Errorf("added client's secret file: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, stateFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file: %v, mode %v, want 0600", err, fi.Mode().Perm())
	}
}

func TestCorruptState(t *testing.T) {
	tests := []struct {
		name    string
		content string
	}{
		{"not JSON", "{"},
		{"wrong format", `{"format":"other","version":1}`},
		{"future version", `{"format":"akvemu-state","version":9}`},
		{"unknown field", `{"format":"akvemu-state","version":1,"extra":true}`},
		{"bad key", `{"format":"akvemu-state","version":1,"vaults":{"v.test":{"keys":{"k":{"versions":[{"id":"00000000000000000000000000000000","pkcs8":"AAAA"}]}}}}}`},
		{"empty key", `{"format":"akvemu-state","version":1,"vaults":{"v.test":{"keys":{"k":{"versions":[]}}}}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			must(t, os.WriteFile(filepath.Join(dir, stateFile), []byte(tc.content), 0o600))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			srv, err := Start(ctx, Config{Dir: dir, Keys: []KeySpec{}})
			if err == nil {
				srv.Close()
				t.Fatalf("Start(corrupt state) err = nil, want ErrCorruptState")
			}
			if !errors.Is(err, ErrCorruptState) {
				t.Errorf("Start(corrupt state) err = %v, want ErrCorruptState", err)
			}
		})
	}
}

func TestStartConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no dir", Config{}},
		{"cert without key", Config{Ephemeral: true, CertFile: "x.pem"}},
		{"IP vault host", Config{Ephemeral: true, Vaults: []VaultSpec{{Host: "127.0.0.1"}}}},
		{"single-label host", Config{Ephemeral: true, Vaults: []VaultSpec{{Host: "login"}}}},
		{"duplicate host", Config{Ephemeral: true, Vaults: []VaultSpec{{Host: "a.test", Aliases: []string{"a.test"}}}}},
		{"bad host char", Config{Ephemeral: true, Vaults: []VaultSpec{{Host: "a_b.test"}}}},
		{"key in unknown vault", Config{Ephemeral: true, Keys: []KeySpec{{Vault: "other.test", Name: "k", Size: 2048}}}},
		{"bad key size", Config{Ephemeral: true, Keys: []KeySpec{{Vault: DefaultVaultHost, Name: "k", Size: 1024}}}},
		{"bad key name", Config{Ephemeral: true, Keys: []KeySpec{{Vault: DefaultVaultHost, Name: "a/b", Size: 2048}}}},
		{"public control address", Config{Ephemeral: true, Keys: []KeySpec{}, ControlAddr: "0.0.0.0:0"}},
		{"negative TTL", Config{Ephemeral: true, TokenTTL: -time.Second}},
		{"bad tenant", Config{Ephemeral: true, TenantID: "../etc"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			srv, err := Start(ctx, tc.cfg)
			if err == nil {
				srv.Close()
				t.Fatalf("Start(%s) err = nil, want ErrConfig", tc.name)
			}
			if !errors.Is(err, ErrConfig) {
				t.Errorf("Start(%s) err = %v, want ErrConfig", tc.name, err)
			}
		})
	}
}

func TestEphemeralCleansUp(t *testing.T) {
	srv, err := Start(context.Background(), Config{Ephemeral: true, Keys: []KeySpec{}})
	if err != nil {
		t.Fatalf("Start() err = %v, want nil", err)
	}
	info := srv.Info()
	dir := filepath.Dir(info.CAFile)
	if _, err := os.Stat(filepath.Join(dir, stateFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ephemeral emulator wrote a state file (stat err = %v)", err)
	}
	must(t, srv.Close())
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ephemeral directory %s still exists after Close (stat err = %v)", dir, err)
	}
	if len(info.KeyIDs) != 0 || len(info.VaultURLs) != 1 || info.VaultURLs[0] != "https://"+DefaultVaultHost+"/" {
		t.Errorf("Info() = keys %v vaults %v, want none and the default vault", info.KeyIDs, info.VaultURLs)
	}
}

// TestGivenCertificate serves with a caller's certificate instead of the
// generated ones.
func TestGivenCertificate(t *testing.T) {
	// Borrow a CA and server certificate from a first emulator's directory.
	dir := t.TempDir()
	first, err := Start(context.Background(), Config{Dir: dir, Keys: []KeySpec{}})
	must(t, err)
	must(t, first.Close())
	cfg := testConfig()
	cfg.Keys = []KeySpec{}
	cfg.Vaults = nil
	cfg.CertFile, cfg.KeyFile, cfg.CAFile = filepath.Join(dir, serverCertFile), filepath.Join(dir, serverKeyFile), filepath.Join(dir, caCertFile)
	e := startEnv(t, cfg)
	if e.info.CAFile != cfg.CAFile {
		t.Errorf("Info().CAFile = %s, want %s", e.info.CAFile, cfg.CAFile)
	}
	if _, err := e.keys(t, e.secretCred(t, -1), DefaultVaultHost, -1).GetKey(ctxT(t), "none", "", nil); err == nil {
		t.Errorf("GetKey(none) err = nil, want 404")
	} else if status, _, _ := responseError(t, err); status != 404 {
		t.Errorf("GetKey(none) = %d, want 404 over the given certificate", status)
	}
}
