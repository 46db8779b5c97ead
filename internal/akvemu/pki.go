package akvemu

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

const (
	caCertFile     = "ca.pem"
	caKeyFile      = "ca-key.pem"
	serverCertFile = "server.pem"
	serverKeyFile  = "server-key.pem"
	clientsDir     = "clients"

	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 2 * 365 * 24 * time.Hour
	clientValidity = 2 * 365 * 24 * time.Hour
	renewBefore    = 30 * 24 * time.Hour
)

// ClientFiles names the credential files of one registered client.
type ClientFiles struct {
	ClientID           string `json:"client_id"`
	ClientSecretFile   string `json:"client_secret_file"`
	ClientCertFile     string `json:"client_certificate_file"` // PEM: certificate + PKCS#8 key
	FederatedTokenFile string `json:"federated_token_file"`
}

// tlsCertificate loads the configured certificate, or loads (and renews
// when needed) the generated CA and server certificate in the data dir.
func (s *Server) tlsCertificate() (tls.Certificate, error) {
	if s.cfg.CertFile != "" {
		c, err := tls.LoadX509KeyPair(s.cfg.CertFile, s.cfg.KeyFile)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("%w: loading CertFile/KeyFile: %v", ErrConfig, err)
		}
		s.caFile = s.cfg.CAFile
		return c, nil
	}
	caCert, caKey, err := s.loadOrCreateCA()
	if err != nil {
		return tls.Certificate{}, err
	}
	s.caFile = s.path(caCertFile)
	dns, ips := s.serverNames()
	if c, err := tls.LoadX509KeyPair(s.path(serverCertFile), s.path(serverKeyFile)); err == nil && s.serverCertUsable(c, caCert, dns, ips) {
		return c, nil
	}
	return s.issueServerCert(caCert, caKey, dns, ips)
}

// serverNames are the SANs the server certificate must carry.
func (s *Server) serverNames() (dns []string, ips []net.IP) {
	dns = []string{"localhost"}
	for _, v := range s.vaults {
		dns = append(dns, v.hosts...)
	}
	ips = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	if host, _, err := net.SplitHostPort(s.cfg.Addr); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() && !ip.IsLoopback() {
			ips = append(ips, ip)
		}
	}
	return dns, ips
}

func (s *Server) serverCertUsable(c tls.Certificate, ca *x509.Certificate, dns []string, ips []net.IP) bool {
	if len(c.Certificate) == 0 {
		return false
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil || leaf.CheckSignatureFrom(ca) != nil {
		return false
	}
	if time.Until(leaf.NotAfter) < renewBefore {
		return false
	}
	for _, d := range dns {
		if !slices.Contains(leaf.DNSNames, d) {
			return false
		}
	}
	for _, ip := range ips {
		if !slices.ContainsFunc(leaf.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

func (s *Server) loadOrCreateCA() (*x509.Certificate, crypto.Signer, error) {
	certPEM, errC := os.ReadFile(s.path(caCertFile))
	keyPEM, errK := os.ReadFile(s.path(caKeyFile))
	if errC == nil && errK == nil {
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, nil, fmt.Errorf("akvemu: CA files %s and %s do not match or are damaged (%v); remove both to make a new CA", s.path(caCertFile), s.path(caKeyFile), err)
		}
		leaf, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			return nil, nil, fmt.Errorf("akvemu: CA certificate %s: %w", s.path(caCertFile), err)
		}
		signer, ok := c.PrivateKey.(crypto.Signer)
		if !ok || !leaf.IsCA {
			return nil, nil, fmt.Errorf("akvemu: %s is not a CA certificate with a signing key; remove it and %s to make a new CA", s.path(caCertFile), s.path(caKeyFile))
		}
		return leaf, signer, nil
	}
	if !errors.Is(errC, fs.ErrNotExist) && errC != nil {
		return nil, nil, fmt.Errorf("akvemu: reading CA: %w", errC)
	}
	if !errors.Is(errK, fs.ErrNotExist) && errK != nil {
		return nil, nil, fmt.Errorf("akvemu: reading CA key: %w", errK)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("akvemu: generating CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{CommonName: "akvemu development CA", Organization: []string{"keybroker"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("akvemu: creating CA: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("akvemu: encoding CA key: %w", err)
	}
	if err := writeFileAtomic(s.path(caKeyFile), pemBytes("PRIVATE KEY", keyDER), 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFileAtomic(s.path(caCertFile), pemBytes("CERTIFICATE", der), 0o644); err != nil {
		return nil, nil, err
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("akvemu: parsing new CA: %w", err)
	}
	return leaf, key, nil
}

func (s *Server) issueServerCert(ca *x509.Certificate, caKey crypto.Signer, dns []string, ips []net.IP) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("akvemu: generating server key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: dns[len(dns)-1], Organization: []string{"keybroker"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(serverValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("akvemu: issuing server certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("akvemu: encoding server key: %w", err)
	}
	certPEM, keyPEM := pemBytes("CERTIFICATE", der), pemBytes("PRIVATE KEY", keyDER)
	if err := writeFileAtomic(s.path(serverKeyFile), keyPEM, 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeFileAtomic(s.path(serverCertFile), certPEM, 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.X509KeyPair(certPEM, keyPEM)
}

// newClient registers credentials for a client: a secret and a self-signed
// RSA certificate (MSAL signs assertions with PS256, so it must be RSA).
func newClient(id string) (*clientState, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("akvemu: generating client certificate key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(),
		Subject:      pkix.Name{CommonName: "akvemu client " + id},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(clientValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("akvemu: creating client certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("akvemu: encoding client key: %w", err)
	}
	return &clientState{ObjectID: newGUID(), Secret: newSecret(), CertDER: der, CertKey: keyDER}, nil
}

// clientFilesFor names a client's files; the directory is created on write.
func (s *Server) clientFilesFor(id string) ClientFiles {
	d := filepath.Join(s.dir, clientsDir, id)
	return ClientFiles{
		ClientID:           id,
		ClientSecretFile:   filepath.Join(d, "client-secret"),
		ClientCertFile:     filepath.Join(d, "client-cert.pem"),
		FederatedTokenFile: filepath.Join(d, "federated-token"),
	}
}

// writeAllClientFiles (re)writes every client's secret, certificate and a
// fresh federated token.
func (s *Server) writeAllClientFiles() error {
	s.mu.RLock()
	ids := make([]string, 0, len(s.st.Clients))
	for id := range s.st.Clients {
		ids = append(ids, id)
	}
	s.mu.RUnlock()
	var errs []error
	for _, id := range ids {
		if _, err := s.writeClientFiles(id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// writeClientFiles writes one client's files from the current state.
func (s *Server) writeClientFiles(id string) (ClientFiles, error) {
	s.mu.RLock()
	c := s.st.Clients[id]
	if c == nil {
		s.mu.RUnlock()
		return ClientFiles{}, fmt.Errorf("%w: client %q", ErrNotFound, id)
	}
	secret := c.Secret
	certPEM := append(pemBytes("CERTIFICATE", c.CertDER), pemBytes("PRIVATE KEY", c.CertKey)...)
	tok, err := s.issueFederatedToken(id, federatedTokenTTL)
	s.mu.RUnlock()
	if err != nil {
		return ClientFiles{}, err
	}
	s.filesMu.Lock()
	defer s.filesMu.Unlock()
	cf := s.clientFilesFor(id)
	if err := os.MkdirAll(filepath.Dir(cf.ClientSecretFile), 0o700); err != nil {
		return ClientFiles{}, fmt.Errorf("akvemu: client directory: %w", err)
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{cf.ClientSecretFile, []byte(secret)}, {cf.ClientCertFile, certPEM}, {cf.FederatedTokenFile, []byte(tok)}} {
		if err := writeFileAtomic(f.path, f.data, 0o600); err != nil {
			return ClientFiles{}, err
		}
	}
	s.clientFiles[id] = cf
	return cf, nil
}

func pemBytes(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

// randomString returns n random bytes, base64url encoded.
func randomString(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// newSecret makes a client secret shaped like Entra's (40 characters, with
// the "~" Entra puts in its secrets so that shell quoting gets exercised).
func newSecret() string {
	s := randomString(30)
	return s[:3] + "8Q~" + s[3:37]
}

func newGUID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}
