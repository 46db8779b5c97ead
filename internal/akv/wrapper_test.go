package akv

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

const fakeKeyID = "https://kb-test." + testSuffix + "/keys/cmk"

func TestNewErrors(t *testing.T) {
	azure := mustEnv(t, EnvAzure)
	good := Config{KeyID: "https://myvault.vault.azure.net/keys/cmk", Environment: azure, Credential: staticCred{}}
	tests := []struct {
		name    string
		mod     func(*Config)
		wantIs  error
		wantErr string
	}{
		{"bad environment", func(c *Config) { c.Environment = Environment{Name: "MOON"} }, ErrEnvironment, "unknown environment"},
		{"bad key id", func(c *Config) { c.KeyID = "https://myvault.vault.azure.net/secrets/x" }, ErrKeyID, "secret"},
		{"key of another cloud", func(c *Config) { c.KeyID = "https://myvault.vault.azure.cn/keys/cmk" }, ErrKeyID, "AZURE_CHINA"},
		{"no credential", func(c *Config) { c.Credential = nil }, ErrConfig, "no Credential"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, ErrConfig, "negative"},
		{"negative retry delay", func(c *Config) { c.RetryDelay = -1 }, ErrConfig, "negative"},
		{"retries below -1", func(c *Config) { c.MaxRetries = -2 }, ErrConfig, "MaxRetries"},
		{"endpoint http", func(c *Config) { c.Endpoint = "http://myvault.vault.azure.net/" }, ErrConfig, "https"},
		{"endpoint with path", func(c *Config) { c.Endpoint = "https://myvault.vault.azure.net/keys" }, ErrConfig, "only scheme, host and port"},
		{"endpoint off the cloud", func(c *Config) { c.Endpoint = "https://10.0.0.4/" }, ErrConfig, "not a vault host of AZURE"},
		{"endpoint with port in azure", func(c *Config) { c.Endpoint = "https://myvault.vault.azure.net:8443/" }, ErrConfig, "not a vault host"},
		{"endpoint not a URL", func(c *Config) { c.Endpoint = "::" }, ErrConfig, "not a URL"},
		{"missing CA file", func(c *Config) {
			c.Environment = customEnv
			c.Environment.CAFile = "/nonexistent/ca.pem"
			c.KeyID = fakeKeyID
		}, ErrEnvironment, "CAFile"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.mod(&cfg)
			w, err := New(cfg)
			if err == nil {
				t.Fatalf("New() = %v, nil; want an error", w)
			}
			if !errors.Is(err, tc.wantIs) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("New() err = %v, want errors.Is %v mentioning %q", err, tc.wantIs, tc.wantErr)
			}
		})
	}
	t.Run("valid", func(t *testing.T) {
		cfg := good
		cfg.Endpoint = "https://MyVault.vault.azure.net"
		w, err := New(cfg)
		if err != nil {
			t.Fatalf("New() err = %v, want nil", err)
		}
		if got := w.KeyID(); got != "https://myvault.vault.azure.net/keys/cmk" {
			t.Errorf("KeyID() = %q, want the canonical identifier", got)
		}
	})
}

func TestWrapUnwrap(t *testing.T) {
	tests := []struct {
		name  string
		keyID string
		local bool
	}{
		{"versioned remote", fakeKeyID + "/" + testVersion1, false},
		{"versionless remote", fakeKeyID, false},
		{"versioned local", fakeKeyID + "/" + testVersion1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAzure(t)
			w := f.wrapper(t, func(c *Config) { c.KeyID = tc.keyID; c.LocalWrap = tc.local })
			ctx := context.Background()
			for _, size := range []int{16, 32, 64} {
				key := bytes.Repeat([]byte{byte(size)}, size)
				copies, err := w.WrapKey(ctx, key)
				if err != nil {
					t.Fatalf("WrapKey(%d bytes) err = %v, want nil", size, err)
				}
				if len(copies) != 1 || copies[0].KeyID != fakeKeyID+"/"+testVersion1 || copies[0].Algorithm != "RSA-OAEP-256" || len(copies[0].Ciphertext) != 256 {
					t.Fatalf("WrapKey(%d bytes) = %+v, want one RSA-OAEP-256 copy of %s/%s", size, copies, fakeKeyID, testVersion1)
				}
				got, err := w.UnwrapKey(ctx, copies)
				if err != nil {
					t.Fatalf("UnwrapKey() err = %v, want nil", err)
				}
				if !bytes.Equal(got, key) {
					t.Errorf("UnwrapKey() = %x, want %x", got, key)
				}
			}
			info, err := w.KeyInfo(ctx)
			if err != nil {
				t.Fatalf("KeyInfo() err = %v, want nil", err)
			}
			if info.KeyID != fakeKeyID+"/"+testVersion1 || !info.Enabled || info.KeyType != "RSA" ||
				!info.Created.Equal(time.Unix(1700000000, 0)) || len(info.KeyOps) != 4 {
				t.Errorf("KeyInfo() = %+v, want enabled RSA %s/%s created 1700000000 with 4 ops", info, fakeKeyID, testVersion1)
			}
		})
	}
}

func TestWrapKeyInvalid(t *testing.T) {
	f := newFakeAzure(t)
	w := f.wrapper(t, func(c *Config) { c.LocalWrap = true })
	tests := []struct {
		name string
		key  []byte
	}{
		{"nil", nil},
		{"empty", []byte{}},
		{"too long for RSA-2048 OAEP-256", make([]byte, 191)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := w.WrapKey(context.Background(), tc.key)
			if kek.KindOf(err) != kek.KindInvalidInput {
				t.Errorf("WrapKey(%d bytes) err = %v, want KindInvalidInput", len(tc.key), err)
			}
		})
	}
}

// TestLocalWrap checks the proof (one vault unwrap per version), that later
// wraps never reach the vault, and when local wrapping is refused.
func TestLocalWrap(t *testing.T) {
	t.Run("proven once then local", func(t *testing.T) {
		f := newFakeAzure(t)
		w := f.wrapper(t, func(c *Config) { c.LocalWrap = true })
		ctx := context.Background()
		for i := 0; i < 5; i++ {
			copies, err := w.WrapKey(ctx, testKey)
			if err != nil {
				t.Fatalf("WrapKey() #%d err = %v, want nil", i, err)
			}
			if i == 0 {
				if f.count("get") != 1 || f.count("unwrapkey") != 1 || f.count("wrapkey") != 0 {
					t.Fatalf("after first WrapKey: get=%d unwrapkey=%d wrapkey=%d, want 1, 1, 0", f.count("get"), f.count("unwrapkey"), f.count("wrapkey"))
				}
				f.resetCounts()
			}
			got, err := w.UnwrapKey(ctx, copies)
			if err != nil || !bytes.Equal(got, testKey) {
				t.Fatalf("UnwrapKey(local copy) = %x, %v; want the key", got, err)
			}
		}
		// Five unwraps of the copies, no proof after the first wrap.
		if f.count("get") != 0 || f.count("wrapkey") != 0 || f.count("unwrapkey") != 5 {
			t.Errorf("after 4 more wraps and 5 unwraps: get=%d wrapkey=%d unwrapkey=%d, want 0, 0, 5", f.count("get"), f.count("wrapkey"), f.count("unwrapkey"))
		}
	})
	t.Run("expired key wraps remotely", func(t *testing.T) {
		f := newFakeAzure(t)
		exp := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
		f.keys["cmk"][0].expires = exp
		now := exp.Add(-time.Hour)
		w := f.wrapper(t, func(c *Config) { c.LocalWrap = true; c.Now = func() time.Time { return now } })
		ctx := context.Background()
		if _, err := w.WrapKey(ctx, testKey); err != nil {
			t.Fatalf("WrapKey() err = %v, want nil", err)
		}
		if f.count("wrapkey") != 0 {
			t.Fatalf("wrapkey = %d before expiry, want 0 (local)", f.count("wrapkey"))
		}
		now = exp.Add(time.Second)
		if _, err := w.WrapKey(ctx, testKey); err != nil {
			t.Fatalf("WrapKey() after expiry err = %v, want nil (the fake vault does not enforce expiry)", err)
		}
		if f.count("wrapkey") != 1 {
			t.Errorf("wrapkey = %d after expiry, want 1: an expired key is not wrapped locally", f.count("wrapkey"))
		}
	})
	t.Run("no wrapKey operation wraps remotely", func(t *testing.T) {
		f := newFakeAzure(t)
		f.keys["cmk"][0].ops = []string{"unwrapKey"}
		w := f.wrapper(t, func(c *Config) { c.LocalWrap = true })
		if _, err := w.WrapKey(context.Background(), testKey); err != nil {
			t.Fatalf("WrapKey() err = %v, want nil", err)
		}
		if f.count("wrapkey") != 1 || f.count("unwrapkey") != 0 {
			t.Errorf("wrapkey=%d unwrapkey=%d, want 1, 0: the key forbids wrapKey, so the vault decides", f.count("wrapkey"), f.count("unwrapkey"))
		}
	})
	t.Run("public key mismatch refused", func(t *testing.T) {
		f := newFakeAzure(t)
		f.setHook(func(op string) *canned {
			if op == "unwrapkey" {
				return &canned{status: 200, body: `{"kid":"https://kb-test.vault.keybroker.test/keys/cmk/` + testVersion1 + `","value":"AAAA"}`}
			}
			return nil
		})
		w := f.wrapper(t, func(c *Config) { c.LocalWrap = true })
		copies, err := w.WrapKey(context.Background(), testKey)
		if err == nil || copies != nil {
			t.Fatalf("WrapKey() = %v, %v; want no copies and an error", copies, err)
		}
		var ke *kek.Error
		if !errors.As(err, &ke) || ke.Code != "PublicKeyMismatch" || ke.Kind.IsRevocation() || ke.Kind.IsOutage() {
			t.Errorf("WrapKey() err = %v, want code PublicKeyMismatch, neither revocation nor outage", err)
		}
		checkErrorHygiene(t, err)
	})
	t.Run("revocation drops the proof", func(t *testing.T) {
		f := newFakeAzure(t)
		w := f.wrapper(t, func(c *Config) { c.LocalWrap = true })
		ctx := context.Background()
		if _, err := w.WrapKey(ctx, testKey); err != nil {
			t.Fatalf("WrapKey() err = %v, want nil", err)
		}
		f.setEnabled("cmk", false)
		if _, err := w.KeyInfo(ctx); kek.KindOf(err) != kek.KindRevoked {
			t.Fatalf("KeyInfo() of a disabled key err = %v, want KindRevoked", err)
		}
		_, err := w.WrapKey(ctx, testKey)
		checkKekError(t, err, "get", kek.KindRevoked, "KeyDisabled", 403)
		f.setEnabled("cmk", true)
		f.resetCounts()
		if _, err := w.WrapKey(ctx, testKey); err != nil {
			t.Fatalf("WrapKey() after re-enabling err = %v, want nil", err)
		}
		if f.count("unwrapkey") != 1 {
			t.Errorf("unwrapkey = %d after re-enabling, want 1: a new proof", f.count("unwrapkey"))
		}
	})
}

// TestVersionlessFollowsRotation checks a versionless identifier resolves to
// the current version, moves on when KeyInfo sees a rotation, and still
// unwraps copies of the old version.
func TestVersionlessFollowsRotation(t *testing.T) {
	for _, local := range []bool{false, true} {
		t.Run(map[bool]string{false: "remote", true: "local"}[local], func(t *testing.T) {
			f := newFakeAzure(t)
			w := f.wrapper(t, func(c *Config) { c.KeyID = fakeKeyID; c.LocalWrap = local })
			ctx := context.Background()
			old, err := w.WrapKey(ctx, testKey)
			if err != nil || old[0].KeyID != fakeKeyID+"/"+testVersion1 {
				t.Fatalf("WrapKey() = %+v, %v; want a copy of version 1", old, err)
			}
			f.rotate("cmk")
			// Wraps stay on the resolved version until KeyInfo is asked.
			if c, err := w.WrapKey(ctx, testKey); err != nil || c[0].KeyID != fakeKeyID+"/"+testVersion1 {
				t.Fatalf("WrapKey() before KeyInfo = %+v, %v; want version 1 still", c, err)
			}
			info, err := w.KeyInfo(ctx)
			if err != nil || info.KeyID != fakeKeyID+"/"+testVersion2 {
				t.Fatalf("KeyInfo() = %+v, %v; want version 2", info, err)
			}
			c, err := w.WrapKey(ctx, testKey)
			if err != nil || c[0].KeyID != fakeKeyID+"/"+testVersion2 {
				t.Fatalf("WrapKey() after KeyInfo = %+v, %v; want version 2", c, err)
			}
			for _, copies := range [][]kek.Wrapped{old, c} {
				got, err := w.UnwrapKey(ctx, copies)
				if err != nil || !bytes.Equal(got, testKey) {
					t.Errorf("UnwrapKey(%s) = %x, %v; want the key", copies[0].KeyID, got, err)
				}
			}
			if w.KeyID() != fakeKeyID {
				t.Errorf("KeyID() = %q, want the configured %q", w.KeyID(), fakeKeyID)
			}
		})
	}
}

func TestUnwrapKeySelection(t *testing.T) {
	f := newFakeAzure(t)
	w := f.wrapper(t, nil)
	ctx := context.Background()
	good, err := w.WrapKey(ctx, testKey)
	if err != nil {
		t.Fatalf("WrapKey() err = %v, want nil", err)
	}
	g := good[0]
	with := func(mod func(*kek.Wrapped)) kek.Wrapped {
		c := g
		c.Ciphertext = bytes.Clone(g.Ciphertext)
		mod(&c)
		return c
	}
	other := with(func(c *kek.Wrapped) { c.KeyID = "https://elsewhere." + testSuffix + "/keys/cmk/" + testVersion1 })
	otherName := with(func(c *kek.Wrapped) { c.KeyID = fakeKeyID + "-2/" + testVersion1 })
	garbageID := with(func(c *kek.Wrapped) { c.KeyID = "not a key id" })
	unknownVersion := with(func(c *kek.Wrapped) { c.KeyID = fakeKeyID + "/" + testVersion2 })
	upper := with(func(c *kek.Wrapped) {
		c.KeyID = "https://KB-TEST." + strings.ToUpper(testSuffix) + "/keys/CMK/" + testVersion1
	})
	noVersion := with(func(c *kek.Wrapped) { c.KeyID = fakeKeyID })
	badAlg := with(func(c *kek.Wrapped) { c.Algorithm = "ROT13" })
	empty := with(func(c *kek.Wrapped) { c.Ciphertext = nil })
	tampered := with(func(c *kek.Wrapped) { c.Ciphertext[0] ^= 0x80 })
	tests := []struct {
		name     string
		copies   []kek.Wrapped
		wantKind kek.Kind // KindUnknown = success
	}{
		{"ours", []kek.Wrapped{g}, kek.KindUnknown},
		{"others skipped", []kek.Wrapped{other, otherName, garbageID, g}, kek.KindUnknown},
		{"host and name case ignored", []kek.Wrapped{upper}, kek.KindUnknown},
		{"unknown version gives way", []kek.Wrapped{unknownVersion, g}, kek.KindUnknown},
		{"tampered gives way", []kek.Wrapped{tampered, g}, kek.KindUnknown},
		{"none", nil, kek.KindInvalidInput},
		{"only other keys", []kek.Wrapped{other, otherName, garbageID}, kek.KindInvalidInput},
		{"unknown version", []kek.Wrapped{unknownVersion}, kek.KindNotFound},
		{"no version", []kek.Wrapped{noVersion}, kek.KindInvalidInput},
		{"bad algorithm", []kek.Wrapped{badAlg}, kek.KindInvalidInput},
		{"empty ciphertext", []kek.Wrapped{empty}, kek.KindInvalidInput},
		{"tampered", []kek.Wrapped{tampered}, kek.KindInvalidInput},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := w.UnwrapKey(ctx, tc.copies)
			if tc.wantKind == kek.KindUnknown {
				if err != nil || !bytes.Equal(got, testKey) {
					t.Fatalf("UnwrapKey() = %x, %v; want the key", got, err)
				}
				return
			}
			if got != nil || kek.KindOf(err) != tc.wantKind {
				t.Fatalf("UnwrapKey() = %x, %v; want nil and %v", got, err, tc.wantKind)
			}
			if tc.name == "none" || tc.name == "only other keys" {
				if !strings.Contains(err.Error(), fakeKeyID) {
					t.Errorf("UnwrapKey() err = %v, want it to name the configured key %s", err, fakeKeyID)
				}
			}
			checkErrorHygiene(t, err)
		})
	}
}

func TestWrongVaultAnswer(t *testing.T) {
	f := newFakeAzure(t)
	f.kidHost = "other-vault." + testSuffix
	w := f.wrapper(t, nil)
	_, err := w.KeyInfo(context.Background())
	checkKekError(t, err, "get", kek.KindInvalidInput, "WrongVault", 0)
}

// TestLogHygiene runs successes and failures with a debug logger and checks
// the log carries the key identifier and region but no secret, token or key.
func TestLogHygiene(t *testing.T) {
	var buf bytes.Buffer
	f := newFakeAzure(t)
	w := f.wrapper(t, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		c.LocalWrap = true
	})
	ctx := context.Background()
	copies, err := w.WrapKey(ctx, testKey)
	if err != nil {
		t.Fatalf("WrapKey() err = %v, want nil", err)
	}
	if _, err := w.UnwrapKey(ctx, copies); err != nil {
		t.Fatalf("UnwrapKey() err = %v, want nil", err)
	}
	f.setHook(func(string) *canned {
		return &canned{status: 403, header: map[string]string{"x-ms-request-id": "req-1234"}, body: vaultErrBody("Forbidden", "ForbiddenByRbac", "no")}
	})
	if _, err := w.UnwrapKey(ctx, copies); err == nil {
		t.Fatalf("UnwrapKey() err = nil, want revoked")
	}
	log := buf.String()
	for _, want := range []string{"key_id=" + fakeKeyID, "region=test-region", "kind=revoked", "code=ForbiddenByRbac", "request_id=req-1234"} {
		if !strings.Contains(log, want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	checkErrorHygiene(t, errors.New(strings.ReplaceAll(log, "\n", " ")))
}
