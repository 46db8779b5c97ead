package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
	"github.com/keybroker/keybroker/internal/keystore"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// rotSetKeyID rewrites azure.key_id in the harness's configuration file and
// reloads it. The broker must be stopped.
func rotSetKeyID(t *testing.T, h *harness, keyID string) {
	t.Helper()
	data, err := os.ReadFile(h.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	q, _ := json.Marshal(keyID)
	data = regexp.MustCompile(`(?m)^  key_id: .*$`).ReplaceAll(data, append([]byte("  key_id: "), q...))
	if err := os.WriteFile(h.cfgPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if h.cfg, err = config.Parse(h.cfgPath, data, nil); err != nil {
		t.Fatalf("config.Parse(key_id %s) err = %v, want nil", keyID, err)
	}
}

// rotDisableVersion disables one version of a key through the real azkeys
// client, as a customer would in the portal (the control API disables
// whole keys only).
func rotDisableVersion(t *testing.T, h *harness, name, version string) {
	t.Helper()
	pem, err := os.ReadFile(h.info.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	var d net.Dialer
	hc := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", h.info.Endpoint)
		},
	}}
	opts := azcore.ClientOptions{
		Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: h.info.AuthorityHost, Services: map[cloud.ServiceName]cloud.ServiceConfiguration{}},
		Transport: hc,
	}
	secret, err := os.ReadFile(h.info.ClientSecretFile)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := azidentity.NewClientSecretCredential(h.info.TenantID, h.info.ClientID, string(secret),
		&azidentity.ClientSecretCredentialOptions{ClientOptions: opts, DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatal(err)
	}
	kc, err := azkeys.NewClient("https://"+akvemu.DefaultVaultHost+"/", cred, &azkeys.ClientOptions{ClientOptions: opts, DisableChallengeResourceVerification: true})
	if err != nil {
		t.Fatal(err)
	}
	off := false
	if _, err := kc.UpdateKey(ctxT(t, time.Minute), name, version, azkeys.UpdateKeyParameters{KeyAttributes: &azkeys.KeyAttributes{Enabled: &off}}, nil); err != nil {
		t.Fatalf("UpdateKey(%s/%s, enabled=false) err = %v, want nil", name, version, err)
	}
}

// rotCopies returns the CMK identifiers of every version's copies, read
// from the keystore on disk (the broker stopped).
func rotCopies(t *testing.T, h *harness) map[string][]string {
	t.Helper()
	store, err := keystore.Open(h.cfg.Keystore.Dir, keystore.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("keystore.Open err = %v, want nil", err)
	}
	defer store.Close()
	out := map[string][]string{}
	for _, k := range store.Keys() {
		for _, v := range k.Versions {
			for _, c := range v.Copies {
				out[v.ID] = append(out[v.ID], c.KeyID)
			}
		}
	}
	return out
}

func versionless(kid string) string { return kid[:strings.LastIndexByte(kid, '/')] }

// rotRestore checks what a restore needs, on a cold broker: every master-key
// version by id, with the key it had, and the old blob.
func rotRestore(t *testing.T, h *harness, keys map[string][]byte, blob []byte, wantCMK string) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	eng := h.engine()
	for v, want := range keys {
		mk, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: v})
		if err != nil || !bytes.Equal(mk.GetKey(), want) {
			t.Fatalf("GetMasterKey(version %s) = %v, want the key it had", v, err)
		}
		if mk.GetCmkKeyId() != wantCMK {
			t.Errorf("GetMasterKey(version %s) cmk_key_id = %s, want %s", v, mk.GetCmkKeyId(), wantCMK)
		}
	}
	u, err := eng.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: blob, AssociatedData: []byte("db=orders")})
	if err != nil || string(u.GetDek()) != "data key" {
		t.Fatalf("UnwrapDEK(old blob) = %v, want the data key", err)
	}
	rv, err := h.admin().Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || !rv.GetOk() || rv.GetState() != keybrokerv1.State_STATE_SERVING {
		t.Fatalf("Revalidate = %v (%v), want ok SERVING", rv, err)
	}
}

// rotSetup serves two master-key versions and a blob under the first, and
// returns the keys by version.
func rotSetup(t *testing.T, h *harness) (map[string][]byte, []byte) {
	t.Helper()
	ctx := ctxT(t, time.Minute)
	eng := h.engine()
	keys := map[string][]byte{}
	first, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	keys[first.GetVersion()] = first.GetKey()
	w, err := eng.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("data key"), AssociatedData: []byte("db=orders")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.admin().RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); err != nil {
		t.Fatal(err)
	}
	second, err := eng.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	keys[second.GetVersion()] = second.GetKey()
	return keys, w.GetWrappedDek()
}

// TestRotationVersionlessCMK: with a versionless key id the broker follows
// a new version made in the vault (through the emulator's control API):
// the validity check sees it and every version is rewrapped. The old
// version disabled before finalize: keys still served, old snapshots still
// restore. Then rotate-cmk --finalize drops the old copies.
func TestRotationVersionlessCMK(t *testing.T) {
	h := newHarness(t, "")
	ctx := ctxT(t, 3*time.Minute)
	oldKID := h.info.KeyIDs[0]
	rotSetKeyID(t, h, versionless(oldKID))
	h.start()
	keys, blob := rotSetup(t, h)

	newKID, err := h.emu.Control().RotateKey(ctx, akvemu.DefaultVaultHost, "cmk")
	if err != nil {
		t.Fatal(err)
	}
	rv, err := h.admin().Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || !rv.GetOk() {
		t.Fatalf("Revalidate after the CMK rotation = %v (%v), want ok", rv, err)
	}
	st, err := h.engine().GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
	if err != nil || !slices.Equal(st.GetKeys()[0].GetCmkKeyIds(), []string{newKID, oldKID}) {
		t.Fatalf("GetStatus cmk_key_ids = %v (%v), want [%s %s]", st.GetKeys()[0].GetCmkKeyIds(), err, newKID, oldKID)
	}
	// RewrapDEK over real mTLS with the engine role.
	rw, err := h.engine().RewrapDEK(ctx, &keybrokerv1.RewrapDEKRequest{WrappedDek: blob, AssociatedData: []byte("db=orders")})
	if err != nil || rw.GetVersion() == rw.GetPreviousVersion() {
		t.Fatalf("RewrapDEK(old blob) = %v (%v), want it moved to the newest version", rw, err)
	}

	// The customer disables the old version after the change deployed,
	// before finalize: a cold broker still serves everything.
	h.stop()
	for v, ids := range rotCopies(t, h) {
		if !slices.Equal(ids, []string{newKID, oldKID}) {
			t.Fatalf("version %s copies = %v, want [%s %s]", v, ids, newKID, oldKID)
		}
	}
	rotDisableVersion(t, h, "cmk", oldKID[strings.LastIndexByte(oldKID, '/')+1:])
	h.start()
	rotRestore(t, h, keys, blob, newKID)

	h.stop()
	out, errOut, code := runCLI(t, "rotate-cmk", "--config", h.cfgPath, "--finalize")
	if code != exitOK || !strings.Contains(out, "dropped the copies wrapped by "+oldKID+" from 2 versions") {
		t.Fatalf("rotate-cmk --finalize = %d, %q, %q; want 0 and the old key dropped from 2 versions", code, out, errOut)
	}
	for v, ids := range rotCopies(t, h) {
		if !slices.Equal(ids, []string{newKID}) {
			t.Fatalf("version %s copies after finalize = %v, want [%s]", v, ids, newKID)
		}
	}
	h.start()
	rotRestore(t, h, keys, blob, newKID)
}

// TestRotationNewKeyInConfig: the configuration names another key of the
// same vault. serve rewraps at start, through the previous key it finds in
// the keystore; the old key can then be disabled entirely.
func TestRotationNewKeyInConfig(t *testing.T) {
	h := newHarness(t, "")
	ctx := ctxT(t, 3*time.Minute)
	oldKID := h.info.KeyIDs[0]
	h.start()
	keys, blob := rotSetup(t, h)
	h.stop()

	newKID, err := h.emu.Control().CreateKey(ctx, akvemu.DefaultVaultHost, "cmk2", 2048)
	if err != nil {
		t.Fatal(err)
	}
	rotSetKeyID(t, h, newKID)
	h.start()
	st, err := h.engine().GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
	if err != nil || !slices.Equal(st.GetKeys()[0].GetCmkKeyIds(), []string{newKID, oldKID}) {
		t.Fatalf("GetStatus cmk_key_ids after a restart on the new key = %v (%v), want [%s %s]", st.GetKeys()[0].GetCmkKeyIds(), err, newKID, oldKID)
	}
	h.stop()

	if err := h.emu.Control().SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", false); err != nil {
		t.Fatal(err)
	}
	h.start()
	rotRestore(t, h, keys, blob, newKID)
	h.stop()
	if _, _, code := runCLI(t, "rotate-cmk", "--config", h.cfgPath, "--finalize"); code != exitOK {
		t.Fatalf("rotate-cmk --finalize with the old key disabled exit = %d, want 0", code)
	}
	for v, ids := range rotCopies(t, h) {
		if !slices.Equal(ids, []string{newKID}) {
			t.Fatalf("version %s copies after finalize = %v, want [%s]", v, ids, newKID)
		}
	}
}

// TestRotateCMKCommand: the offline command, step by step, with its exit
// codes and messages.
func TestRotateCMKCommand(t *testing.T) {
	h := newHarness(t, "")
	oldKID := h.info.KeyIDs[0]
	rotSetKeyID(t, h, versionless(oldKID))
	var newKID string
	steps := []struct {
		name    string
		before  func()
		args    []string
		code    int
		wantOut string // in stdout, or stderr when code != 0
	}{
		{"no config", nil, []string{"rotate-cmk"}, exitUsage, "--config is required"},
		{"nothing to do", nil, []string{"rotate-cmk", "--config", h.cfgPath}, exitOK, "0 versions rewrapped, 1 already wrapped by " + oldKID},
		{"broker running", h.start, []string{"rotate-cmk", "--config", h.cfgPath}, exitFailure, "in use"},
		{"finalize before the rewrap", func() {
			h.stop()
			var err error
			if newKID, err = h.emu.Control().RotateKey(ctxT(t, time.Minute), akvemu.DefaultVaultHost, "cmk"); err != nil {
				t.Fatal(err)
			}
		}, []string{"rotate-cmk", "--config", h.cfgPath, "--finalize"}, exitFailure, "nothing was dropped"},
		{"rewrap", nil, []string{"rotate-cmk", "--config", h.cfgPath}, exitOK, "1 versions rewrapped"},
		{"finalize", nil, []string{"rotate-cmk", "--config", h.cfgPath, "--finalize"}, exitOK, "from 1 versions"},
		{"finalize again", nil, []string{"rotate-cmk", "--config", h.cfgPath, "--finalize"}, exitOK, "nothing to drop"},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		out, errOut, code := runCLI(t, s.args...)
		where := out
		if s.code != exitOK {
			where = errOut
		}
		if code != s.code || !strings.Contains(where, s.wantOut) {
			t.Fatalf("%s: %v = exit %d, stdout %q, stderr %q; want exit %d and %q", s.name, s.args, code, out, errOut, s.code, s.wantOut)
		}
	}
	if ids := rotCopies(t, h); len(ids) != 1 {
		t.Fatalf("keystore versions = %v, want 1", ids)
	} else {
		for _, c := range ids {
			if !slices.Equal(c, []string{newKID}) {
				t.Fatalf("copies after finalize = %v, want [%s]", c, newKID)
			}
		}
	}
}

// TestPreviousKeysUnwrap: the previous key is asked only when the
// configured one holds none of the copies; any other failure stands.
func TestPreviousKeysUnwrap(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	configured, previous := kektest.NewFake("east", "cmk2"), kektest.NewFake("east", "cmk")
	key := bytes.Repeat([]byte{7}, 32)
	oldCopies, err := previous.WrapKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	newCopies, err := configured.WrapKey(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	p := previousKeys{KeyWrapper: configured, previous: []broker.KeyWrapper{previous}}
	tests := []struct {
		name     string
		copies   []kek.Wrapped
		setup    func()
		wantKind kek.Kind // KindUnknown: success
		prevUsed int      // unwrap calls the previous key got
	}{
		{"configured key's copy", append(slices.Clone(newCopies), oldCopies...), nil, kek.KindUnknown, 0},
		{"previous key's copy only", oldCopies, nil, kek.KindUnknown, 1},
		{"configured key revoked", append(slices.Clone(newCopies), oldCopies...), configured.Disable, kek.KindRevoked, 0},
		{"no key's copy", []kek.Wrapped{{KeyID: "https://other.vault.keybroker.test/keys/x/0123", Algorithm: "A256GCM", Ciphertext: []byte{1}}}, configured.Enable, kek.KindInvalidInput, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			before := previous.Calls(kektest.OpUnwrap)
			got, err := p.UnwrapKey(ctx, tc.copies)
			if kind := kek.KindOf(err); kind != tc.wantKind || (err == nil && !bytes.Equal(got, key)) {
				t.Fatalf("UnwrapKey(%s) = kind %v (%v), want kind %v and the key", tc.name, kind, err, tc.wantKind)
			}
			if n := previous.Calls(kektest.OpUnwrap) - before; n != tc.prevUsed {
				t.Fatalf("UnwrapKey(%s) asked the previous key %d times, want %d", tc.name, n, tc.prevUsed)
			}
		})
	}
	if p.Region() != "east" || p.RegionStatus() != nil || p.PartialRevocation() {
		t.Fatalf("previousKeys over one region = %q, %v, %v; want the configured wrapper's answers", p.Region(), p.RegionStatus(), p.PartialRevocation())
	}
}
