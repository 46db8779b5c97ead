// Package mtls builds the broker's mutual-TLS configuration and authorizes
// gRPC calls by the client certificate: it loads the server and client
// certificates with errors that name the bad file, derives identities from a
// verified client certificate (URI SAN, DNS SAN, CN) and maps them to roles
// (engine, admin) in gRPC interceptors.
//
// cmd/keybroker uses it to serve gRPC on TCP and unix sockets alike; tests and
// client tools use ClientTLS.
package mtls

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"

	"github.com/keybroker/keybroker/internal/pki"
)

// Errors returned by this package; match them with errors.Is.
var (
	ErrInvalidConfig      = errors.New("mtls: invalid configuration")
	ErrInvalidCertificate = errors.New("mtls: invalid certificate")
	ErrInvalidKey         = errors.New("mtls: invalid private key")
	ErrKeyMismatch        = errors.New("mtls: private key does not match certificate")
	ErrInvalidIdentity    = errors.New("mtls: invalid identity")
	ErrInvalidRole        = errors.New("mtls: invalid role")
)

// ServerConfig names the broker's TLS files.
type ServerConfig struct {
	CertFile     string // PEM server certificate, then any intermediates
	KeyFile      string // PEM private key of the server certificate
	ClientCAFile string // PEM CA certificates that client certificates must chain to
	// MinVersion is the lowest TLS version accepted; 0 means TLS 1.3.
	// tls.VersionTLS12 is the lowest allowed.
	MinVersion uint16
	// Now is the clock for the validity check at load; nil means time.Now.
	Now func() time.Time
	// Logger receives certificate reloads and failed reloads; nil discards.
	Logger *slog.Logger
}

// ServerTLS returns a server configuration that requires a client certificate
// verified against ClientCAFile. The server certificate is re-read when its
// files change (checked on each handshake), so rotating it needs no restart;
// a change that fails to load is logged and the previous certificate stays in
// use. The client CA is read once.
func ServerTLS(cfg ServerConfig) (*tls.Config, error) {
	minVersion, err := minTLSVersion(cfg.MinVersion)
	if err != nil {
		return nil, err
	}
	if cfg.CertFile == "" || cfg.KeyFile == "" {
		return nil, fmt.Errorf("%w: server CertFile and KeyFile are both required", ErrInvalidConfig)
	}
	if cfg.ClientCAFile == "" {
		return nil, fmt.Errorf("%w: ClientCAFile is required: client certificates are verified against it", ErrInvalidConfig)
	}
	pool, err := loadCAPool(cfg.ClientCAFile)
	if err != nil {
		return nil, err
	}
	r, err := newReloader(cfg.CertFile, cfg.KeyFile, x509.ExtKeyUsageServerAuth, cfg.Now, cfg.Logger)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: minVersion,
		// A certificate, when given, must chain to the client CA or the
		// handshake fails. A client with none gets through TLS only to be
		// refused by the Authorizer with UNAUTHENTICATED and a message
		// saying what to do (DESIGN.md's error table), on every method,
		// health and reflection included.
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      pool,
		GetCertificate: r.getCertificate,
	}, nil
}

func minTLSVersion(v uint16) (uint16, error) {
	switch v {
	case 0:
		return tls.VersionTLS13, nil
	case tls.VersionTLS12, tls.VersionTLS13:
		return v, nil
	}
	return 0, fmt.Errorf("%w: MinVersion %#04x: use 0 (TLS 1.3) or tls.VersionTLS12", ErrInvalidConfig, v)
}

// ClientConfig names a client's TLS files.
type ClientConfig struct {
	CAFile string // PEM CA certificates the server certificate must chain to
	// CertFile and KeyFile are the client certificate and key. Both empty
	// means no client certificate, which the broker refuses; it is there for
	// tests and diagnostics.
	CertFile, KeyFile string
	// ServerName is the name the server certificate must carry; "" lets
	// gRPC use the host of the target address.
	ServerName string
}

// ClientTLS returns a TLS 1.3 client configuration for the broker.
func ClientTLS(cfg ClientConfig) (*tls.Config, error) {
	if cfg.CAFile == "" {
		return nil, fmt.Errorf("%w: CAFile is required to verify the broker's certificate", ErrInvalidConfig)
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, fmt.Errorf("%w: set both CertFile and KeyFile, or neither", ErrInvalidConfig)
	}
	pool, err := loadCAPool(cfg.CAFile)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{
		MinVersion: tls.VersionTLS13,
		RootCAs:    pool,
		ServerName: cfg.ServerName,
	}
	if cfg.CertFile != "" {
		cert, err := loadKeyPair(cfg.CertFile, cfg.KeyFile, x509.ExtKeyUsageClientAuth, time.Now())
		if err != nil {
			return nil, err
		}
		c.Certificates = []tls.Certificate{*cert}
	}
	return c, nil
}

func loadCAPool(file string) (*x509.CertPool, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("mtls: read CA file: %w", err)
	}
	certs, err := parseCerts(b)
	if err != nil {
		return nil, fmt.Errorf("%w: CA file %s: %w", ErrInvalidCertificate, file, err)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: CA file %s has no certificates: it must hold PEM \"CERTIFICATE\" blocks", ErrInvalidCertificate, file)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, nil
}

// loadKeyPair reads and checks a certificate and its key for usage at now.
func loadKeyPair(certFile, keyFile string, usage x509.ExtKeyUsage, now time.Time) (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("mtls: read certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("mtls: read private key: %w", err)
	}
	defer clear(keyPEM)
	return parseKeyPair(certPEM, keyPEM, certFile, keyFile, usage, now)
}

// parseKeyPair does loadKeyPair's work on the file contents; certName and
// keyName only label errors.
func parseKeyPair(certPEM, keyPEM []byte, certName, keyName string, usage x509.ExtKeyUsage, now time.Time) (*tls.Certificate, error) {
	certs, err := parseCerts(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidCertificate, certName, err)
	}
	if len(certs) == 0 {
		hint := ""
		if hasPrivateKeyBlock(certPEM) {
			hint = " (it holds a private key: are the certificate and key files swapped?)"
		}
		return nil, fmt.Errorf("%w: no PEM certificate in %s%s", ErrInvalidCertificate, certName, hint)
	}
	leaf := certs[0]
	if !hasUsage(leaf, usage) {
		return nil, fmt.Errorf("%w: certificate in %s is not for %s (its extended key usage lacks %s); issue one that has it",
			ErrInvalidCertificate, certName, usageRole(usage), usageName(usage))
	}
	if now.Before(leaf.NotBefore) {
		return nil, fmt.Errorf("%w: certificate in %s is not valid before %s; check the clock or the certificate", ErrInvalidCertificate, certName, leaf.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("%w: certificate in %s expired at %s; issue a new one", ErrInvalidCertificate, certName, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidKey, keyName, err)
	}
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("%w: the private key in %s does not belong to the certificate in %s", ErrKeyMismatch, keyName, certName)
	}
	chain := make([][]byte, len(certs))
	for i, c := range certs {
		chain[i] = c.Raw
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// parseCerts returns every CERTIFICATE block; other blocks are skipped so a
// combined cert-and-key file still works as a certificate file.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for n := 1; ; {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return certs, nil
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", n, err)
		}
		certs = append(certs, c)
		n++
	}
}

func hasPrivateKeyBlock(b []byte) bool {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return false
		}
		if isKeyBlock(block.Type) {
			return true
		}
	}
}

func isKeyBlock(t string) bool {
	return t == "PRIVATE KEY" || t == "EC PRIVATE KEY" || t == "RSA PRIVATE KEY" || t == "ENCRYPTED PRIVATE KEY"
}

// parseKey returns the first private key: PKCS#8, SEC 1 or PKCS#1. Errors
// describe the block, never its bytes.
func parseKey(b []byte) (crypto.Signer, error) {
	key, typ, err := pki.DecodePrivateKeyPEM(b)
	switch {
	case typ == "":
		return nil, errors.New("no PEM private key: the file must hold a \"PRIVATE KEY\" block")
	case typ == pki.EncryptedKeyBlock:
		return nil, errors.New("the private key is encrypted; the broker needs it decrypted, protected by file mode 0600")
	case err != nil:
		return nil, fmt.Errorf("%s block does not parse: %w", typ, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", key)
	}
	return s, nil
}

func hasUsage(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	// No extended key usage at all means any usage, as crypto/x509 treats it.
	return len(c.ExtKeyUsage) == 0 && len(c.UnknownExtKeyUsage) == 0 ||
		slices.Contains(c.ExtKeyUsage, want) || slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageAny)
}

func usageName(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageServerAuth {
		return "serverAuth"
	}
	return "clientAuth"
}

func usageRole(u x509.ExtKeyUsage) string {
	if u == x509.ExtKeyUsageServerAuth {
		return "TLS servers"
	}
	return "TLS clients"
}
