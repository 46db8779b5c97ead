package akvemu

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"errors"
	"hash"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

func TestSDKKeyLifecycle(t *testing.T) {
	cfg := testConfig()
	cfg.PageSize = 2 // the SDK has no page size option; small pages exercise nextLink
	e := startEnv(t, cfg)
	ctx := ctxT(t)
	kc := e.keys(t, e.secretCred(t, 0), testVault, 0)

	latest, err := kc.GetKey(ctx, "cmk", "", nil)
	if err != nil {
		t.Fatalf("GetKey(cmk, latest) err = %v, want nil", err)
	}
	if got, want := string(*latest.Key.KID), e.info.KeyIDs[0]; got != want {
		t.Errorf("GetKey(cmk).KID = %q, want %q (Info.KeyIDs[0])", got, want)
	}
	if *latest.Key.Kty != azkeys.KeyTypeRSA || len(latest.Key.N) != 256 || !bytes.Equal(latest.Key.E, []byte{1, 0, 1}) {
		t.Errorf("GetKey(cmk) kty=%v len(n)=%d e=%x, want RSA, 256, 010001", *latest.Key.Kty, len(latest.Key.N), latest.Key.E)
	}
	a := latest.Attributes
	if !*a.Enabled || a.Created == nil || a.Updated == nil || *a.RecoveryLevel != recoveryLevel || *a.RecoverableDays != 90 {
		t.Errorf("GetKey(cmk) attributes = %+v, want enabled, created, updated, %s, 90 days", a, recoveryLevel)
	}
	v1 := latest.Key.KID.Version()
	byVersion, err := kc.GetKey(ctx, "cmk", v1, nil)
	if err != nil || *byVersion.Key.KID != *latest.Key.KID {
		t.Fatalf("GetKey(cmk, %s) = %v, %v, want the same key", v1, byVersion.Key, err)
	}

	created, err := kc.CreateKey(ctx, "app", azkeys.CreateKeyParameters{
		Kty: to.Ptr(azkeys.KeyTypeRSA), KeySize: to.Ptr[int32](2048),
		KeyOps: []*azkeys.KeyOperation{to.Ptr(azkeys.KeyOperationWrapKey), to.Ptr(azkeys.KeyOperationUnwrapKey)},
		Tags:   map[string]*string{"env": to.Ptr("test")},
	}, nil)
	if err != nil {
		t.Fatalf("CreateKey(app) err = %v, want nil", err)
	}
	if ops := created.Key.KeyOps; len(ops) != 2 || *ops[0] != azkeys.KeyOperationWrapKey || *created.Tags["env"] != "test" {
		t.Errorf("CreateKey(app) key_ops = %v, tags = %v, want [wrapKey unwrapKey], env=test", ops, created.Tags)
	}

	rotated, err := kc.RotateKey(ctx, "cmk", nil)
	if err != nil {
		t.Fatalf("RotateKey(cmk) err = %v, want nil", err)
	}
	v2 := rotated.Key.KID.Version()
	if v2 == v1 || rotated.Key.KID.Name() != "cmk" {
		t.Fatalf("RotateKey(cmk).KID = %s, want a new version of cmk", *rotated.Key.KID)
	}
	if _, err := e.srv.Control().RotateKey(ctx, testVault, "cmk"); err != nil {
		t.Fatalf("Control.RotateKey(cmk) err = %v, want nil", err)
	}
	got, err := kc.GetKey(ctx, "cmk", "", nil)
	if err != nil {
		t.Fatalf("GetKey(cmk) after rotation err = %v, want nil", err)
	}
	v3 := got.Key.KID.Version()
	if v3 == v2 || v3 == v1 {
		t.Errorf("latest version after two rotations = %s, want a third version", v3)
	}

	var versions []string
	pages := 0
	for pager := kc.NewListKeyPropertiesVersionsPager("cmk", nil); pager.More(); {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("ListKeyPropertiesVersions page %d err = %v, want nil", pages, err)
		}
		pages++
		for _, p := range page.Value {
			versions = append(versions, p.KID.Version())
		}
	}
	if want := []string{v1, v2, v3}; !slices.Equal(versions, want) || pages != 2 {
		t.Errorf("versions = %v in %d pages, want %v in 2 pages", versions, pages, want)
	}

	nbf, exp := time.Unix(e.clock.Now().Unix()-60, 0), time.Unix(e.clock.Now().Unix()+3600, 0)
	upd, err := kc.UpdateKey(ctx, "cmk", v1, azkeys.UpdateKeyParameters{
		KeyAttributes: &azkeys.KeyAttributes{Enabled: to.Ptr(false), NotBefore: &nbf, Expires: &exp},
		KeyOps:        []*azkeys.KeyOperation{to.Ptr(azkeys.KeyOperationUnwrapKey)},
	}, nil)
	if err != nil {
		t.Fatalf("UpdateKey(cmk, %s) err = %v, want nil", v1, err)
	}
	if *upd.Attributes.Enabled || !upd.Attributes.NotBefore.Equal(nbf) || !upd.Attributes.Expires.Equal(exp) || len(upd.Key.KeyOps) != 1 {
		t.Errorf("UpdateKey result attributes = %+v key_ops = %v, want disabled, nbf, exp, [unwrapKey]", upd.Attributes, upd.Key.KeyOps)
	}
	if _, err := kc.GetKey(ctx, "cmk", v1, nil); err == nil {
		t.Errorf("GetKey(cmk, disabled %s) err = nil, want 403 KeyDisabled", v1)
	}
	if _, err := kc.GetKey(ctx, "cmk", v3, nil); err != nil {
		t.Errorf("GetKey(cmk, %s) err = %v, want nil: disabling one version leaves the others", v3, err)
	}

	del, err := kc.DeleteKey(ctx, "app", nil)
	if err != nil {
		t.Fatalf("DeleteKey(app) err = %v, want nil", err)
	}
	if del.RecoveryID == nil || !strings.HasSuffix(*del.RecoveryID, "/deletedkeys/app") || del.DeletedDate == nil || del.ScheduledPurgeDate == nil {
		t.Errorf("DeleteKey(app) = recoveryId %v deletedDate %v scheduledPurgeDate %v, want all set", del.RecoveryID, del.DeletedDate, del.ScheduledPurgeDate)
	}
	if _, err := kc.GetKey(ctx, "app", "", nil); err == nil {
		t.Errorf("GetKey(deleted app) err = nil, want 404")
	}
	if _, err := kc.GetDeletedKey(ctx, "app", nil); err != nil {
		t.Errorf("GetDeletedKey(app) err = %v, want nil", err)
	}
	var deleted []string
	for pager := kc.NewListDeletedKeyPropertiesPager(nil); pager.More(); {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("ListDeletedKeyProperties err = %v, want nil", err)
		}
		for _, p := range page.Value {
			deleted = append(deleted, p.KID.Name())
		}
	}
	if !slices.Equal(deleted, []string{"app"}) {
		t.Errorf("deleted keys = %v, want [app]", deleted)
	}
	if _, err := kc.CreateKey(ctx, "app", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeRSA)}, nil); err == nil {
		t.Errorf("CreateKey(deleted app) err = nil, want 409 Conflict")
	} else if status, code, _ := responseError(t, err); status != http.StatusConflict || code != "Conflict" {
		t.Errorf("CreateKey(deleted app) = %d %s, want 409 Conflict", status, code)
	}
	rec, err := kc.RecoverDeletedKey(ctx, "app", nil)
	if err != nil || rec.Key.KID.Name() != "app" {
		t.Fatalf("RecoverDeletedKey(app) = %v, %v, want the key", rec.Key, err)
	}
	if _, err := kc.GetKey(ctx, "app", "", nil); err != nil {
		t.Errorf("GetKey(recovered app) err = %v, want nil", err)
	}
	if _, err := kc.DeleteKey(ctx, "app", nil); err != nil {
		t.Fatalf("DeleteKey(app) again err = %v, want nil", err)
	}
	if _, err := kc.PurgeDeletedKey(ctx, "app", nil); err != nil {
		t.Fatalf("PurgeDeletedKey(app) err = %v, want nil", err)
	}
	if _, err := kc.GetDeletedKey(ctx, "app", nil); err == nil {
		t.Errorf("GetDeletedKey(purged app) err = nil, want 404")
	}

	var names []string
	for pager := kc.NewListKeyPropertiesPager(nil); pager.More(); {
		page, err := pager.NextPage(ctx)
		if err != nil {
			t.Fatalf("ListKeyProperties err = %v, want nil", err)
		}
		for _, p := range page.Value {
			names = append(names, p.KID.Name())
		}
	}
	if !slices.Equal(names, []string{"cmk"}) {
		t.Errorf("keys = %v, want [cmk]", names)
	}

	// An alias serves the same keys; identifiers keep naming the vault.
	alias := e.keys(t, e.secretCred(t, 0), testAlias, 0)
	viaAlias, err := alias.GetKey(ctx, "cmk", "", nil)
	if err != nil || *viaAlias.Key.KID != *got.Key.KID {
		t.Errorf("GetKey(cmk) via alias = %v, %v, want %s", viaAlias.Key, err, *got.Key.KID)
	}
	// Another vault has its own keys.
	west := e.keys(t, e.secretCred(t, 0), testWest, 0)
	wk, err := west.GetKey(ctx, "cmk", "", nil)
	if err != nil || wk.Key.KID.Version() == v3 || !strings.HasPrefix(string(*wk.Key.KID), "https://"+testWest+"/") {
		t.Errorf("GetKey(cmk) in west = %v, %v, want a different key of the west vault", wk.Key, err)
	}
}

func TestImportKey(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	kc := e.keys(t, e.secretCred(t, 0), testVault, 0)
	priv, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	imp, err := kc.ImportKey(ctx, "imported", azkeys.ImportKeyParameters{Key: &azkeys.JSONWebKey{
		Kty: to.Ptr(azkeys.KeyTypeRSA), N: priv.N.Bytes(), E: big.NewInt(int64(priv.E)).Bytes(),
		D: priv.D.Bytes(), P: priv.Primes[0].Bytes(), Q: priv.Primes[1].Bytes(),
	}}, nil)
	if err != nil {
		t.Fatalf("ImportKey() err = %v, want nil", err)
	}
	if !bytes.Equal(imp.Key.N, priv.N.Bytes()) {
		t.Errorf("ImportKey() n differs from the imported key")
	}
	wrapped, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &priv.PublicKey, []byte("imported secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	un, err := kc.UnwrapKey(ctx, "imported", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: wrapped}, nil)
	if err != nil || string(un.Result) != "imported secret" {
		t.Errorf("UnwrapKey(imported) = %q, %v, want the plaintext", un.Result, err)
	}
}

func TestCreateLargeKey(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	kid, err := e.srv.Control().CreateKey(ctx, testVault, "big", 3072)
	if err != nil {
		t.Fatalf("Control.CreateKey(big, 3072) err = %v, want nil", err)
	}
	kc := e.keys(t, e.secretCred(t, 0), testVault, 0)
	k, err := kc.GetKey(ctx, "big", "", nil)
	if err != nil {
		t.Fatalf("GetKey(big) err = %v, want nil", err)
	}
	if string(*k.Key.KID) != kid || new(big.Int).SetBytes(k.Key.N).BitLen() != 3072 {
		t.Errorf("GetKey(big) = %s with %d-bit n, want %s with 3072", *k.Key.KID, new(big.Int).SetBytes(k.Key.N).BitLen(), kid)
	}
}

func oaepHash(alg azkeys.EncryptionAlgorithm) hash.Hash {
	if alg == azkeys.EncryptionAlgorithmRSAOAEP {
		return sha1.New()
	}
	return sha256.New()
}

func TestSDKCrypto(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	kc := e.keys(t, e.secretCred(t, 0), testVault, 0)
	k, err := kc.GetKey(ctx, "cmk", "", nil)
	if err != nil {
		t.Fatalf("GetKey(cmk) err = %v, want nil", err)
	}
	version := k.Key.KID.Version()
	pub := &rsa.PublicKey{N: new(big.Int).SetBytes(k.Key.N), E: int(new(big.Int).SetBytes(k.Key.E).Int64())}
	priv, err := e.srv.PrivateKey(testVault, "cmk", version)
	if err != nil {
		t.Fatalf("PrivateKey(cmk) err = %v, want nil", err)
	}
	if priv.N.Cmp(pub.N) != 0 {
		t.Fatalf("PrivateKey(cmk) does not match GetKey's public key")
	}
	dek := make([]byte, 32)
	_, _ = rand.Read(dek)

	for _, alg := range []azkeys.EncryptionAlgorithm{azkeys.EncryptionAlgorithmRSAOAEP, azkeys.EncryptionAlgorithmRSAOAEP256} {
		t.Run(string(alg)+"/wrap-unwrap", func(t *testing.T) {
			w, err := kc.WrapKey(ctx, "cmk", version, azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: dek}, nil)
			if err != nil {
				t.Fatalf("WrapKey(%s) err = %v, want nil", alg, err)
			}
			if string(*w.KID) != string(*k.Key.KID) || len(w.Result) != 256 {
				t.Errorf("WrapKey(%s) kid=%s len=%d, want %s and 256", alg, *w.KID, len(w.Result), *k.Key.KID)
			}
			u, err := kc.UnwrapKey(ctx, "cmk", version, azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: w.Result}, nil)
			if err != nil || !bytes.Equal(u.Result, dek) {
				t.Fatalf("UnwrapKey(%s) = %x, %v, want %x", alg, u.Result, err, dek)
			}
			// Independently: the emulator's wrap opens with crypto/rsa...
			local, err := rsa.DecryptOAEP(oaepHash(alg), nil, priv, w.Result, nil)
			if err != nil || !bytes.Equal(local, dek) {
				t.Errorf("rsa.DecryptOAEP(emulator's %s wrap) = %x, %v, want %x", alg, local, err, dek)
			}
			// ...and a wrap made here with the public key opens in the emulator.
			mine, err := rsa.EncryptOAEP(oaepHash(alg), rand.Reader, pub, dek, nil)
			if err != nil {
				t.Fatal(err)
			}
			u2, err := kc.UnwrapKey(ctx, "cmk", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: mine}, nil)
			if err != nil || !bytes.Equal(u2.Result, dek) {
				t.Errorf("UnwrapKey(local %s wrap, latest) = %x, %v, want %x", alg, u2.Result, err, dek)
			}
			// The wrong algorithm fails to open.
			other := azkeys.EncryptionAlgorithmRSAOAEP256
			if alg == other {
				other = azkeys.EncryptionAlgorithmRSAOAEP
			}
			if _, err := kc.UnwrapKey(ctx, "cmk", version, azkeys.KeyOperationParameters{Algorithm: to.Ptr(other), Value: w.Result}, nil); err == nil {
				t.Errorf("UnwrapKey(%s wrap with %s) err = nil, want 400", alg, other)
			}
		})
		t.Run(string(alg)+"/encrypt-decrypt", func(t *testing.T) {
			msg := []byte("customer data key")
			c, err := kc.Encrypt(ctx, "cmk", version, azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: msg}, nil)
			if err != nil {
				t.Fatalf("Encrypt(%s) err = %v, want nil", alg, err)
			}
			d, err := kc.Decrypt(ctx, "cmk", version, azkeys.KeyOperationParameters{Algorithm: to.Ptr(alg), Value: c.Result}, nil)
			if err != nil || !bytes.Equal(d.Result, msg) {
				t.Fatalf("Decrypt(%s) = %q, %v, want %q", alg, d.Result, err, msg)
			}
			local, err := rsa.DecryptOAEP(oaepHash(alg), nil, priv, c.Result, nil)
			if err != nil || !bytes.Equal(local, msg) {
				t.Errorf("rsa.DecryptOAEP(emulator's %s ciphertext) = %q, %v, want %q", alg, local, err, msg)
			}
		})
	}
}

func TestSDKErrorBodies(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	ctl := e.srv.Control()
	kc := e.keys(t, e.secretCred(t, -1), testVault, -1)
	wrap := func(name string) error {
		_, err := kc.WrapKey(ctx, name, "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: []byte("k")}, nil)
		return err
	}
	mustCreate := func(name string) {
		if _, err := ctl.CreateKey(ctx, testVault, name, 2048); err != nil {
			t.Fatalf("Control.CreateKey(%s) err = %v, want nil", name, err)
		}
	}
	past, future := e.clock.Now().Add(-time.Hour), e.clock.Now().Add(time.Hour)

	tests := []struct {
		name       string
		setup      func()
		call       func() error
		undo       func()
		status     int
		code       string
		inner      string
		retryAfter string
	}{
		{
			name:   "disabled key",
			setup:  func() { mustCreate("disabled"); must(t, ctl.SetKeyEnabled(ctx, testVault, "disabled", false)) },
			call:   func() error { return wrap("disabled") },
			status: 403, code: "Forbidden", inner: "KeyDisabled",
		},
		{
			name:   "disabled key get",
			call:   func() error { _, err := kc.GetKey(ctx, "disabled", "", nil); return err },
			status: 403, code: "Forbidden", inner: "KeyDisabled",
		},
		{
			name: "operation not in key_ops",
			setup: func() {
				_, err := kc.CreateKey(ctx, "nowrap", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeRSA), KeyOps: []*azkeys.KeyOperation{to.Ptr(azkeys.KeyOperationEncrypt)}}, nil)
				must(t, err)
			},
			call:   func() error { return wrap("nowrap") },
			status: 403, code: "Forbidden", inner: "KeyOperationForbidden",
		},
		{
			name: "expired key wraps no more",
			setup: func() {
				_, err := kc.CreateKey(ctx, "expired", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeRSA), KeyAttributes: &azkeys.KeyAttributes{Expires: &past}}, nil)
				must(t, err)
			},
			call:   func() error { return wrap("expired") },
			status: 403, code: "Forbidden",
		},
		{
			name: "not yet valid key",
			setup: func() {
				_, err := kc.CreateKey(ctx, "future", azkeys.CreateKeyParameters{Kty: to.Ptr(azkeys.KeyTypeRSA), KeyAttributes: &azkeys.KeyAttributes{NotBefore: &future}}, nil)
				must(t, err)
			},
			call:   func() error { return wrap("future") },
			status: 403, code: "Forbidden",
		},
		{name: "unknown key", call: func() error { return wrap("nope") }, status: 404, code: "KeyNotFound"},
		{
			name:   "unknown version",
			call:   func() error { _, err := kc.GetKey(ctx, "cmk", strings.Repeat("0", 32), nil); return err },
			status: 404, code: "KeyNotFound",
		},
		{
			name:   "deleted key",
			setup:  func() { mustCreate("gone"); must(t, ctl.DeleteKey(ctx, testVault, "gone")) },
			call:   func() error { return wrap("gone") },
			status: 404, code: "KeyNotFound",
		},
		{
			name:   "revoked by RBAC",
			setup:  func() { must(t, ctl.RevokeAccess(ctx, "", testVault, "")) },
			call:   func() error { return wrap("cmk") },
			undo:   func() { must(t, ctl.GrantAccess(ctx, "", testVault)) },
			status: 403, code: "Forbidden", inner: "ForbiddenByRbac",
		},
		{
			name:   "revoked by access policy",
			setup:  func() { must(t, ctl.RevokeAccess(ctx, e.info.ClientID, "", CodeForbiddenByPolicy)) },
			call:   func() error { _, err := kc.GetKey(ctx, "cmk", "", nil); return err },
			undo:   func() { must(t, ctl.GrantAccess(ctx, e.info.ClientID, "")) },
			status: 403, code: "Forbidden", inner: "ForbiddenByPolicy",
		},
		{
			name:   "revoked by firewall",
			setup:  func() { must(t, ctl.RevokeAccess(ctx, "", testVault, CodeForbiddenByFirewall)) },
			call:   func() error { return wrap("cmk") },
			undo:   func() { must(t, ctl.GrantAccess(ctx, "", "")) },
			status: 403, code: "Forbidden", inner: "ForbiddenByFirewall",
		},
		{
			name: "throttled",
			setup: func() {
				must(t, ctl.InjectFault(ctx, Fault{Host: testVault, Op: OpWrapKey, Status: 429, RetryAfter: 7, Count: 1}))
			},
			call:   func() error { return wrap("cmk") },
			status: 429, code: "Throttled", retryAfter: "7",
		},
		{
			name: "bad algorithm",
			call: func() error {
				_, err := kc.WrapKey(ctx, "cmk", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithm("RSA-OAEP-999")), Value: []byte("k")}, nil)
				return err
			},
			status: 400, code: "BadParameter",
		},
		{
			name:   "expired access token",
			setup:  func() { must(t, wrap("cmk")); e.clock.Advance(DefaultTokenTTL + time.Second) },
			call:   func() error { return wrap("cmk") },
			status: 401, code: "Unauthorized",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			if tc.undo != nil {
				defer tc.undo()
			}
			err := tc.call()
			if err == nil {
				t.Fatalf("call err = nil, want %d %s/%s", tc.status, tc.code, tc.inner)
			}
			status, code, inner := responseError(t, err)
			if status != tc.status || code != tc.code || inner != tc.inner {
				t.Errorf("call = %d %s/%s, want %d %s/%s", status, code, inner, tc.status, tc.code, tc.inner)
			}
			if tc.retryAfter != "" {
				if got := retryAfter(err); got != tc.retryAfter {
					t.Errorf("Retry-After = %q, want %q", got, tc.retryAfter)
				}
			}
		})
	}

	// Unwrap and decrypt keep working outside the validity window, as in
	// Azure, so data wrapped while the key was valid stays recoverable.
	t.Run("expired key still unwraps", func(t *testing.T) {
		e.clock.Advance(-DefaultTokenTTL - time.Second) // tokens valid again
		priv, err := e.srv.PrivateKey(testVault, "expired", "")
		if err != nil {
			t.Fatal(err)
		}
		w, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &priv.PublicKey, []byte("old"), nil)
		if err != nil {
			t.Fatal(err)
		}
		kc2 := e.keys(t, e.secretCred(t, -1), testVault, -1)
		u, err := kc2.UnwrapKey(ctx, "expired", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: w}, nil)
		if err != nil || string(u.Result) != "old" {
			t.Errorf("UnwrapKey(expired) = %q, %v, want old", u.Result, err)
		}
	})
}

func retryAfter(err error) string {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.RawResponse.Header.Get("Retry-After")
	}
	return ""
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("err = %v, want nil", err)
	}
}

func TestConcurrentWrapUnwrap(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	kc := e.keys(t, e.secretCred(t, 0), testVault, 0)
	const workers, rounds = 6, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range rounds {
				dek := []byte{byte(i), byte(j), 1, 2, 3}
				w, err := kc.WrapKey(ctx, "cmk", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: dek}, nil)
				if err != nil {
					errs <- err
					return
				}
				u, err := kc.UnwrapKey(ctx, "cmk", w.KID.Version(), azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: w.Result}, nil)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(u.Result, dek) {
					errs <- errors.New("unwrap returned other bytes")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("concurrent wrap/unwrap err = %v, want nil", err)
	}
	counts, err := e.srv.Control().Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := counts[testVault][OpWrapKey]; got < workers*rounds {
		t.Errorf("counters[%s][wrapkey] = %d, want at least %d", testVault, got, workers*rounds)
	}
}
