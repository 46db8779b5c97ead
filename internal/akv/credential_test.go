package akv

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/keybroker/keybroker/internal/kek"
)

func writeFile(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// clientCertPEM returns a PEM file with a self-signed client certificate and
// its PKCS#8 key, and the certificate's public key.
func clientCertPEM(t *testing.T) (string, any) {
	t.Helper()
	return clientCertPEMWith(t, testRSAKeys()[1])
}

// clientCertPEMWith writes a self-signed client certificate for key and
// the key itself, in one PEM file.
func clientCertPEMWith(t *testing.T, key *rsa.PrivateKey) (string, any) {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		Subject:      pkix.Name{CommonName: "keybroker client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	p8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	data := append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: p8})...)
	return writeFile(t, "client.pem", data), &key.PublicKey
}

// clientCertPFX writes a client certificate (of another key than
// clientCertPEM's) as a password-protected PKCS#12 file, made at run time with openssl (Go's
// libraries only read PKCS#12), using the 3DES/SHA-1 encryption
// azidentity.ParseCertificates reads.
func clientCertPFX(t *testing.T, password string) string {
	t.Helper()
	pemFile, _ := clientCertPEMWith(t, testRSAKeys()[0])
	out := filepath.Join(t.TempDir(), "client-cert.pfx")
	cmd := exec.Command("openssl", "pkcs12", "-export", "-in", pemFile, "-inkey", pemFile,
		"-certpbe", "PBE-SHA1-3DES", "-keypbe", "PBE-SHA1-3DES", "-macalg", "sha1",
		"-passout", "pass:"+password, "-out", out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("openssl pkcs12 -export err = %v: %s (install openssl: apt-get install openssl)", err, b)
	}
	return out
}

func TestNewCredentialErrors(t *testing.T) {
	env := customEnv
	secretFile := writeFile(t, "secret", []byte(testSecret+"\n"))
	emptyFile := writeFile(t, "empty", []byte(" \n"))
	notCert := writeFile(t, "not-cert.pem", []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	base := CredentialConfig{TenantID: testTenant, ClientID: testClientID}
	pfxFile := clientCertPFX(t, "password")
	tests := []struct {
		name    string
		cfg     func(c *CredentialConfig)
		env     *Environment
		wantErr string
	}{
		{"no kind", func(c *CredentialConfig) {}, nil, "no Kind"},
		{"unknown kind", func(c *CredentialConfig) { c.Kind = "password" }, nil, "unknown Kind"},
		{"secret without tenant", func(c *CredentialConfig) { c.Kind = CredClientSecret; c.TenantID = ""; c.ClientSecret = "x" }, nil, "needs TenantID and ClientID"},
		{"secret missing", func(c *CredentialConfig) { c.Kind = CredClientSecret }, nil, "needs ClientSecret or ClientSecretFile"},
		{"secret twice", func(c *CredentialConfig) {
			c.Kind = CredClientSecret
			c.ClientSecret = testSecret
			c.ClientSecretFile = secretFile
		}, nil, "give one"},
		{"secret file missing", func(c *CredentialConfig) { c.Kind = CredClientSecret; c.ClientSecretFile = "/nonexistent/secret" }, nil, "reading ClientSecretFile"},
		{"secret file empty", func(c *CredentialConfig) { c.Kind = CredClientSecret; c.ClientSecretFile = emptyFile }, nil, "is empty"},
		{"bad tenant", func(c *CredentialConfig) {
			c.Kind = CredClientSecret
			c.ClientSecret = testSecret
			c.TenantID = "bad tenant!"
		}, nil, "client_secret"},
		{"certificate missing", func(c *CredentialConfig) { c.Kind = CredClientCertificate }, nil, "needs CertificateFile"},
		{"certificate unreadable", func(c *CredentialConfig) { c.Kind = CredClientCertificate; c.CertificateFile = "/nonexistent.pem" }, nil, "reading CertificateFile"},
		{"certificate garbage", func(c *CredentialConfig) { c.Kind = CredClientCertificate; c.CertificateFile = notCert }, nil, "CertificateFile"},
		{"pkcs12 wrong password", func(c *CredentialConfig) {
			c.Kind = CredClientCertificate
			c.CertificateFile = pfxFile
			c.CertificatePassword = "wrong-password-NEVER-printed"
		}, nil, "CertificateFile"},
		{"workload without file", func(c *CredentialConfig) { c.Kind = CredWorkloadIdentity }, nil, "needs FederatedTokenFile"},
		{"workload file missing", func(c *CredentialConfig) { c.Kind = CredWorkloadIdentity; c.FederatedTokenFile = "/nonexistent/token" }, nil, "FederatedTokenFile"},
		{"workload without client", func(c *CredentialConfig) {
			c.Kind = CredWorkloadIdentity
			c.ClientID = ""
			c.FederatedTokenFile = secretFile
		}, nil, "needs TenantID and ClientID"},
		{"managed identity with client id", func(c *CredentialConfig) { c.Kind = CredManagedIdentity }, nil, "ManagedIdentityClientID"},
		{"secret with certificate set", func(c *CredentialConfig) {
			c.Kind = CredClientSecret
			c.ClientSecret = testSecret
			c.CertificateFile = "x.pem"
		}, nil, "CertificateFile is set but Kind is client_secret"},
		{"managed identity with secret", func(c *CredentialConfig) {
			*c = CredentialConfig{Kind: CredManagedIdentity, ClientSecret: testSecret}
		}, nil, "ClientSecret is set"},
		{"negative timeout", func(c *CredentialConfig) { c.Kind = CredClientSecret; c.ClientSecret = testSecret; c.Timeout = -1 }, nil, "negative"},
		{"bad environment", func(c *CredentialConfig) { c.Kind = CredClientSecret; c.ClientSecret = testSecret }, &Environment{Name: EnvCustom}, "AuthorityHost"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.cfg(&cfg)
			e := env
			if tc.env != nil {
				e = *tc.env
			}
			_, err := NewCredential(cfg, e)
			if err == nil {
				t.Fatalf("NewCredential() err = nil, want one mentioning %q", tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("NewCredential() err = %v, want it to mention %q", err, tc.wantErr)
			}
			if !errors.Is(err, ErrCredential) && !errors.Is(err, ErrEnvironment) {
				t.Errorf("NewCredential() err = %v, want errors.Is ErrCredential or ErrEnvironment", err)
			}
			for _, s := range []string{testSecret, "wrong-password-NEVER-printed"} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("NewCredential() err = %v reveals a secret", err)
				}
			}
		})
	}
}

// TestCredentialKinds obtains a token with each credential kind from the
// fake Entra ID and wraps and unwraps with it. Not parallel: managed identity
// sets environment variables.
func TestCredentialKinds(t *testing.T) {
	f := newFakeAzure(t)
	pemFile, pemPub := clientCertPEM(t)
	pfxFile := clientCertPFX(t, "password")
	pfx, err := os.ReadFile(pfxFile)
	if err != nil {
		t.Fatal(err)
	}
	pfxCerts, _, err := azidentity.ParseCertificates(pfx, []byte("password"))
	if err != nil {
		t.Fatalf("ParseCertificates(%s) err = %v", pfxFile, err)
	}
	tests := []struct {
		name    string
		cfg     CredentialConfig
		certPub any
		setenv  bool
		wantOp  string // fake counter that must move
	}{
		{"client secret given", CredentialConfig{Kind: CredClientSecret, TenantID: testTenant, ClientID: testClientID, ClientSecret: testSecret}, nil, false, "token"},
		{"client secret file", CredentialConfig{Kind: CredClientSecret, TenantID: testTenant, ClientID: testClientID, ClientSecretFile: writeFile(t, "secret", []byte("\n"+testSecret+"\n"))}, nil, false, "token"},
		{"client certificate PEM", CredentialConfig{Kind: CredClientCertificate, TenantID: testTenant, ClientID: testClientID, CertificateFile: pemFile}, pemPub, false, "token"},
		{"client certificate PKCS#12", CredentialConfig{Kind: CredClientCertificate, TenantID: testTenant, ClientID: testClientID, CertificateFile: pfxFile, CertificatePassword: "password"}, pfxCerts[0].PublicKey, false, "token"},
		{"workload identity", CredentialConfig{Kind: CredWorkloadIdentity, TenantID: testTenant, ClientID: testClientID, FederatedTokenFile: writeFile(t, "token", []byte(testFederated))}, nil, false, "token"},
		{"managed identity system-assigned", CredentialConfig{Kind: CredManagedIdentity}, nil, true, "msi"},
		{"managed identity user-assigned", CredentialConfig{Kind: CredManagedIdentity, ManagedIdentityClientID: testClientID}, nil, true, "msi"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setenv {
				t.Setenv("IDENTITY_ENDPOINT", "https://"+testLogin+"/msi/token")
				t.Setenv("IDENTITY_HEADER", testMIHeader)
			}
			f.mu.Lock()
			f.certPub = tc.certPub
			f.mu.Unlock()
			f.resetCounts()
			tc.cfg.MaxRetries = -1
			cred, err := NewCredential(tc.cfg, f.env())
			if err != nil {
				t.Fatalf("NewCredential() err = %v, want nil", err)
			}
			w := f.wrapper(t, func(c *Config) { c.Credential = cred })
			ctx := context.Background()
			copies, err := w.WrapKey(ctx, testKey)
			if err != nil {
				t.Fatalf("WrapKey() err = %v, want nil", err)
			}
			got, err := w.UnwrapKey(ctx, copies)
			if err != nil || !bytes.Equal(got, testKey) {
				t.Fatalf("UnwrapKey() = %x, %v; want the key", got, err)
			}
			if f.count(tc.wantOp) != 1 {
				t.Errorf("%s requests = %d, want 1 (one token, cached)", tc.wantOp, f.count(tc.wantOp))
			}
		})
	}
	t.Run("wrong certificate refused", func(t *testing.T) {
		f.mu.Lock()
		f.certPub = pfxCerts[0].PublicKey // the PEM certificate is not registered
		f.mu.Unlock()
		cred, err := NewCredential(CredentialConfig{Kind: CredClientCertificate, TenantID: testTenant, ClientID: testClientID, CertificateFile: pemFile, MaxRetries: -1}, f.env())
		if err != nil {
			t.Fatalf("NewCredential() err = %v, want nil", err)
		}
		w := f.wrapper(t, func(c *Config) { c.Credential = cred })
		_, err = w.KeyInfo(context.Background())
		checkKekError(t, err, "get", kek.KindRevoked, "AADSTS7000215", 401)
	})
}
