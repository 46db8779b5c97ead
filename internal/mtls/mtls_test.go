package mtls

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/pki"
)

// syncBuffer is a log sink that handshake goroutines can write concurrently.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newLogger(buf *syncBuffer) *slog.Logger {
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func devPKI(t *testing.T) pki.Files {
	t.Helper()
	f, err := pki.WriteDevPKI(t.TempDir(), pki.Options{})
	if err != nil {
		t.Fatalf("WriteDevPKI err = %v, want nil", err)
	}
	return f
}

func writeFile(t *testing.T, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatalf("WriteFile(%q) err = %v, want nil", p, err)
	}
	return p
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("ReadFile(%q) err = %v, want nil", p, err)
	}
	return b
}

func TestServerTLS(t *testing.T) {
	f := devPKI(t)
	cfg, err := ServerTLS(ServerConfig{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: f.CA})
	if err != nil {
		t.Fatalf("ServerTLS err = %v, want nil", err)
	}
	if cfg.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion = %#x, want TLS 1.3", cfg.MinVersion)
	}
	if cfg.ClientAuth != tls.VerifyClientCertIfGiven {
		t.Errorf("ClientAuth = %v, want VerifyClientCertIfGiven (the Authorizer refuses clients without one)", cfg.ClientAuth)
	}
	cert, err := cfg.GetCertificate(nil)
	if err != nil || cert == nil || cert.Leaf == nil {
		t.Fatalf("GetCertificate = %v, %v, want the server certificate", cert, err)
	}
	if err := cert.Leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("served certificate VerifyHostname(127.0.0.1) err = %v, want nil", err)
	}
	cfg12, err := ServerTLS(ServerConfig{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: f.CA, MinVersion: tls.VersionTLS12})
	if err != nil || cfg12.MinVersion != tls.VersionTLS12 {
		t.Errorf("ServerTLS(MinVersion TLS 1.2) = %v, %v, want MinVersion TLS 1.2", cfg12, err)
	}
}

func TestServerTLSErrors(t *testing.T) {
	f := devPKI(t)
	dir := t.TempDir()
	certPEM, keyPEM := readFile(t, f.ServerCert), readFile(t, f.ServerKey)
	garbage := writeFile(t, dir, "server.pem", []byte("hello\n"))
	empty := writeFile(t, dir, "empty.pem", nil)
	badDER := writeFile(t, dir, "bad-der.pem", []byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"))
	badKey := writeFile(t, dir, "bad-key.pem", []byte("-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n"))
	encKey := writeFile(t, dir, "enc-key.pem", []byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"))
	bundle := writeFile(t, dir, "bundle.pem", append(append([]byte{}, keyPEM...), certPEM...))

	old := filepath.Join(t.TempDir(), "old")
	oldFiles, err := pki.WriteDevPKI(old, pki.Options{Now: func() time.Time { return time.Now().Add(-60 * 24 * time.Hour) }})
	if err != nil {
		t.Fatalf("WriteDevPKI(old) err = %v, want nil", err)
	}
	future := filepath.Join(t.TempDir(), "future")
	futureFiles, err := pki.WriteDevPKI(future, pki.Options{Now: func() time.Time { return time.Now().Add(24 * time.Hour) }})
	if err != nil {
		t.Fatalf("WriteDevPKI(future) err = %v, want nil", err)
	}

	tests := []struct {
		name    string
		cfg     ServerConfig
		wantErr error
		wantMsg string
	}{
		{"no cert file", ServerConfig{KeyFile: f.ServerKey, ClientCAFile: f.CA}, ErrInvalidConfig, "CertFile and KeyFile"},
		{"no CA file", ServerConfig{CertFile: f.ServerCert, KeyFile: f.ServerKey}, ErrInvalidConfig, "ClientCAFile is required"},
		{"TLS 1.1", ServerConfig{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: f.CA, MinVersion: tls.VersionTLS11}, ErrInvalidConfig, "MinVersion"},
		{"missing cert", ServerConfig{CertFile: filepath.Join(dir, "nope.pem"), KeyFile: f.ServerKey, ClientCAFile: f.CA}, fs.ErrNotExist, "nope.pem"},
		{"missing key", ServerConfig{CertFile: f.ServerCert, KeyFile: filepath.Join(dir, "nope-key.pem"), ClientCAFile: f.CA}, fs.ErrNotExist, "nope-key.pem"},
		{"missing CA", ServerConfig{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: filepath.Join(dir, "ca.pem")}, fs.ErrNotExist, "ca.pem"},
		{"cert not PEM", ServerConfig{CertFile: garbage, KeyFile: f.ServerKey, ClientCAFile: f.CA}, ErrInvalidCertificate, "no PEM certificate in " + garbage},
		{"cert and key swapped", ServerConfig{CertFile: f.ServerKey, KeyFile: f.ServerCert, ClientCAFile: f.CA}, ErrInvalidCertificate, "swapped"},
		{"cert DER invalid", ServerConfig{CertFile: badDER, KeyFile: f.ServerKey, ClientCAFile: f.CA}, ErrInvalidCertificate, "certificate 1"},
		{"key not PEM", ServerConfig{CertFile: f.ServerCert, KeyFile: garbage, ClientCAFile: f.CA}, ErrInvalidKey, "no PEM private key"},
		{"key DER invalid", ServerConfig{CertFile: f.ServerCert, KeyFile: badKey, ClientCAFile: f.CA}, ErrInvalidKey, "PRIVATE KEY block does not parse"},
		{"key encrypted", ServerConfig{CertFile: f.ServerCert, KeyFile: encKey, ClientCAFile: f.CA}, ErrInvalidKey, "encrypted"},
		{"key of another cert", ServerConfig{CertFile: f.ServerCert, KeyFile: f.EngineKey, ClientCAFile: f.CA}, ErrKeyMismatch, "does not belong to the certificate"},
		{"client cert as server cert", ServerConfig{CertFile: f.EngineCert, KeyFile: f.EngineKey, ClientCAFile: f.CA}, ErrInvalidCertificate, "not for TLS servers"},
		{"expired", ServerConfig{CertFile: oldFiles.ServerCert, KeyFile: oldFiles.ServerKey, ClientCAFile: f.CA}, ErrInvalidCertificate, "expired at"},
		{"not yet valid", ServerConfig{CertFile: futureFiles.ServerCert, KeyFile: futureFiles.ServerKey, ClientCAFile: f.CA}, ErrInvalidCertificate, "not valid before"},
		{"CA file empty", ServerConfig{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: empty}, ErrInvalidCertificate, "CA file " + empty + " has no certificates"},
		{"CA file is a key", ServerConfig{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: f.CAKey}, ErrInvalidCertificate, "has no certificates"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ServerTLS(tc.cfg)
			if cfg != nil || !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("ServerTLS() = %v, %v, want %v mentioning %q", cfg, err, tc.wantErr, tc.wantMsg)
			}
			// Errors name files and problems, never key material.
			if strings.Contains(err.Error(), "BEGIN") || bytes.Contains([]byte(err.Error()), keyPEM[30:60]) {
				t.Errorf("ServerTLS() err = %v, carries PEM content", err)
			}
		})
	}

	t.Run("bundle with key first", func(t *testing.T) {
		if _, err := ServerTLS(ServerConfig{CertFile: bundle, KeyFile: bundle, ClientCAFile: f.CA}); err != nil {
			t.Errorf("ServerTLS(one file with key and cert) err = %v, want nil", err)
		}
	})
}

func TestClientTLS(t *testing.T) {
	f := devPKI(t)
	cfg, err := ClientTLS(ClientConfig{CAFile: f.CA, CertFile: f.EngineCert, KeyFile: f.EngineKey, ServerName: "localhost"})
	if err != nil {
		t.Fatalf("ClientTLS err = %v, want nil", err)
	}
	if cfg.MinVersion != tls.VersionTLS13 || cfg.ServerName != "localhost" || len(cfg.Certificates) != 1 || cfg.RootCAs == nil {
		t.Errorf("ClientTLS = MinVersion %#x ServerName %q %d certificates, want TLS 1.3, localhost, 1", cfg.MinVersion, cfg.ServerName, len(cfg.Certificates))
	}
	if got := Identities(cfg.Certificates[0].Leaf); len(got) == 0 || got[0] != f.EngineIdentity {
		t.Errorf("client certificate identities = %q, want %q first", got, f.EngineIdentity)
	}
	noCert, err := ClientTLS(ClientConfig{CAFile: f.CA})
	if err != nil || len(noCert.Certificates) != 0 {
		t.Errorf("ClientTLS(no cert) = %v, %v, want a config without certificates", noCert, err)
	}

	tests := []struct {
		name    string
		cfg     ClientConfig
		wantErr error
		wantMsg string
	}{
		{"no CA", ClientConfig{CertFile: f.EngineCert, KeyFile: f.EngineKey}, ErrInvalidConfig, "CAFile is required"},
		{"cert without key", ClientConfig{CAFile: f.CA, CertFile: f.EngineCert}, ErrInvalidConfig, "both CertFile and KeyFile"},
		{"server cert as client cert", ClientConfig{CAFile: f.CA, CertFile: f.ServerCert, KeyFile: f.ServerKey}, ErrInvalidCertificate, "not for TLS clients"},
		{"key mismatch", ClientConfig{CAFile: f.CA, CertFile: f.EngineCert, KeyFile: f.AdminKey}, ErrKeyMismatch, f.AdminKey},
		{"CA missing", ClientConfig{CAFile: filepath.Join(t.TempDir(), "ca.pem")}, fs.ErrNotExist, "ca.pem"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ClientTLS(tc.cfg)
			if cfg != nil || !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("ClientTLS() = %v, %v, want %v mentioning %q", cfg, err, tc.wantErr, tc.wantMsg)
			}
		})
	}
}

func TestServerTLSReload(t *testing.T) {
	f := devPKI(t)
	var logs syncBuffer
	cfg, err := ServerTLS(ServerConfig{CertFile: f.ServerCert, KeyFile: f.ServerKey, ClientCAFile: f.CA, Logger: newLogger(&logs)})
	if err != nil {
		t.Fatalf("ServerTLS err = %v, want nil", err)
	}
	serial := func() string {
		t.Helper()
		c, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil || c == nil {
			t.Fatalf("GetCertificate = %v, %v, want a certificate", c, err)
		}
		return c.Leaf.SerialNumber.String()
	}
	first := serial()
	if again := serial(); again != first {
		t.Fatalf("GetCertificate serial changed from %s to %s without a file change", first, again)
	}

	// Re-issue the server certificate in place, as `keybroker dev` would.
	if err := os.Remove(f.ServerCert); err != nil {
		t.Fatalf("Remove err = %v, want nil", err)
	}
	if _, err := pki.WriteDevPKI(f.Dir, pki.Options{}); err != nil {
		t.Fatalf("WriteDevPKI err = %v, want nil", err)
	}
	second := serial()
	if second == first {
		t.Fatalf("GetCertificate serial = %s after the files changed, want a new certificate", second)
	}
	if !strings.Contains(logs.String(), "server certificate reloaded") {
		t.Errorf("logs = %q, want a reload message", logs.String())
	}

	// A broken replacement keeps the current certificate and is logged once.
	if err := os.WriteFile(f.ServerCert, []byte("broken"), 0o644); err != nil {
		t.Fatalf("WriteFile err = %v, want nil", err)
	}
	for range 3 {
		if got := serial(); got != second {
			t.Fatalf("GetCertificate serial = %s after a broken change, want the previous %s", got, second)
		}
	}
	if n := strings.Count(logs.String(), "does not load"); n != 1 {
		t.Errorf("logged %d failed reloads, want 1; logs:\n%s", n, logs.String())
	}
	// A removed file keeps the current certificate too.
	if err := os.Remove(f.ServerCert); err != nil {
		t.Fatalf("Remove err = %v, want nil", err)
	}
	if got := serial(); got != second {
		t.Errorf("GetCertificate serial = %s with the file removed, want the previous %s", got, second)
	}
}

// FuzzParseKeyPair feeds arbitrary certificate and key files to the loader
// behind ServerTLS and ClientTLS: it must fail with an error, never panic,
// and never echo the key file's content.
func FuzzParseKeyPair(f *testing.F) {
	dir := f.TempDir()
	files, err := pki.WriteDevPKI(dir, pki.Options{})
	if err != nil {
		f.Fatalf("WriteDevPKI err = %v, want nil", err)
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatalf("ReadFile(%q) err = %v, want nil", p, err)
		}
		return b
	}
	f.Add(read(files.ServerCert), read(files.ServerKey))
	f.Add(read(files.ServerCert), read(files.EngineKey))
	f.Add(read(files.ServerKey), read(files.ServerCert))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"), []byte("-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte{}, []byte("-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n"))
	now := time.Now()
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		c, err := parseKeyPair(certPEM, keyPEM, "cert.pem", "key.pem", x509.ExtKeyUsageServerAuth, now)
		if (c == nil) == (err == nil) {
			t.Fatalf("parseKeyPair = %v, %v: want exactly one of certificate and error", c, err)
		}
		if err != nil && len(keyPEM) >= 16 && strings.Contains(err.Error(), string(keyPEM)) {
			t.Fatalf("parseKeyPair err = %q, echoes the key file", err)
		}
		if c != nil && (c.Leaf == nil || len(c.Certificate) == 0 || c.PrivateKey == nil) {
			t.Fatalf("parseKeyPair = %+v, want a complete certificate", c)
		}
		if _, err := parseCerts(certPEM); err != nil && strings.Contains(err.Error(), "BEGIN") {
			t.Fatalf("parseCerts err = %q, echoes PEM", err)
		}
	})
}
