// Package pki writes the development PKI that `keybroker dev` and the tests
// use: a CA, a server certificate for the loopback addresses and client
// certificates for the engine and admin roles, all ECDSA P-256 keys in PKCS#8
// "PRIVATE KEY" PEM files.
//
// It is for development and tests only: production deployments bring their
// own CA and certificates and point the broker at them.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Defaults for Options.
const (
	DefaultValidity    = 30 * 24 * time.Hour
	DefaultTrustDomain = "keybroker.dev"
)

// The identities of the dev client certificates under the default trust
// domain, as internal/mtls names them.
const (
	DefaultEngineIdentity = "spiffe://" + DefaultTrustDomain + "/engine"
	DefaultAdminIdentity  = "spiffe://" + DefaultTrustDomain + "/admin"
)

// File names WriteDevPKI uses inside its directory.
const (
	CAFile         = "ca.pem"
	CAKeyFile      = "ca-key.pem"
	ServerCertFile = "server.pem"
	ServerKeyFile  = "server-key.pem"
	EngineCertFile = "engine-client.pem"
	EngineKeyFile  = "engine-client-key.pem"
	AdminCertFile  = "admin-client.pem"
	AdminKeyFile   = "admin-client-key.pem"
)

// Errors returned by this package.
var (
	ErrInvalidOptions  = errors.New("pki: invalid options")
	ErrInvalidIdentity = errors.New("pki: invalid identity")
	ErrInvalidPEM      = errors.New("pki: invalid PEM file")
)

// Options tune the generated certificates. The zero value is valid.
type Options struct {
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Validity is how long new certificates are valid; 0 means DefaultValidity.
	Validity time.Duration
	// ServerHosts are the server certificate's IP and DNS SANs; nil means
	// 127.0.0.1, ::1 and localhost.
	ServerHosts []string
	// TrustDomain is the SPIFFE trust domain of the client identities; ""
	// means DefaultTrustDomain.
	TrustDomain string
}

func (o Options) now() time.Time {
	if o.Now != nil {
		return o.Now()
	}
	return time.Now()
}

func (o Options) validity() time.Duration {
	if o.Validity > 0 {
		return o.Validity
	}
	return DefaultValidity
}

// renewBefore is how close to expiry a certificate may be and still be
// reused: reusing one that expires in an hour would break the dev session
// an hour later.
func (o Options) renewBefore() time.Duration { return o.validity() / 10 }

func (o Options) hosts() []string {
	if len(o.ServerHosts) > 0 {
		return o.ServerHosts
	}
	return []string{"127.0.0.1", "::1", "localhost"}
}

func (o Options) trustDomain() string {
	if o.TrustDomain != "" {
		return o.TrustDomain
	}
	return DefaultTrustDomain
}

func (o Options) validate() error {
	if o.Validity < 0 {
		return fmt.Errorf("%w: Validity %v is negative; use 0 for the default of %v", ErrInvalidOptions, o.Validity, DefaultValidity)
	}
	if td := o.TrustDomain; td != "" && !validTrustDomain(td) {
		return fmt.Errorf("%w: trust domain %q: use lower-case letters, digits, '.', '-' and '_' only, e.g. %q", ErrInvalidOptions, td, DefaultTrustDomain)
	}
	for _, h := range o.ServerHosts {
		if net.ParseIP(h) == nil && !validDNSName(h) {
			return fmt.Errorf("%w: server host %q is neither an IP address nor a DNS name", ErrInvalidOptions, h)
		}
	}
	return nil
}

// Files names the files WriteDevPKI wrote or reused, and the identities of
// its client certificates.
type Files struct {
	Dir        string
	CA         string // CA certificate: the server's client CA and the clients' root
	CAKey      string
	ServerCert string
	ServerKey  string
	EngineCert string
	EngineKey  string
	AdminCert  string
	AdminKey   string

	// EngineIdentity and AdminIdentity are the URI SANs of the engine and
	// admin client certificates, e.g. spiffe://keybroker.dev/engine.
	EngineIdentity string
	AdminIdentity  string

	// Written lists the files this call (re)generated; empty when every file
	// was reused.
	Written []string
}

// WriteDevPKI makes sure dir holds a valid dev PKI and returns its files.
// Files that are present, parse, match their keys, are signed by the CA, name
// the requested hosts or identity and stay valid for a while are reused, so
// restarting `keybroker dev` keeps issued client certificates valid. When the
// CA is unusable everything is regenerated; otherwise only the broken
// certificates are. dir is created with mode 0700; keys are written 0600 and
// certificates 0644, each atomically.
func WriteDevPKI(dir string, opts Options) (Files, error) {
	if err := opts.validate(); err != nil {
		return Files{}, err
	}
	if dir == "" {
		return Files{}, fmt.Errorf("%w: empty directory", ErrInvalidOptions)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Files{}, fmt.Errorf("pki: create directory: %w", err)
	}
	td := opts.trustDomain()
	f := Files{
		Dir:            dir,
		CA:             filepath.Join(dir, CAFile),
		CAKey:          filepath.Join(dir, CAKeyFile),
		ServerCert:     filepath.Join(dir, ServerCertFile),
		ServerKey:      filepath.Join(dir, ServerKeyFile),
		EngineCert:     filepath.Join(dir, EngineCertFile),
		EngineKey:      filepath.Join(dir, EngineKeyFile),
		AdminCert:      filepath.Join(dir, AdminCertFile),
		AdminKey:       filepath.Join(dir, AdminKeyFile),
		EngineIdentity: "spiffe://" + td + "/engine",
		AdminIdentity:  "spiffe://" + td + "/admin",
	}
	now := opts.now()

	ca, caKey, err := loadCA(f.CA, f.CAKey)
	caOK := err == nil && usable(ca, now, opts.renewBefore())
	if !caOK {
		ca, caKey, err = writeCA(f.CA, f.CAKey, opts)
		if err != nil {
			return Files{}, err
		}
		f.Written = append(f.Written, f.CA, f.CAKey)
	}

	engineURI, _ := url.Parse(f.EngineIdentity)
	adminURI, _ := url.Parse(f.AdminIdentity)
	leaves := []struct {
		cert, key string
		tmpl      func() *x509.Certificate
		usage     x509.ExtKeyUsage
		matches   func(*x509.Certificate) bool
	}{
		{f.ServerCert, f.ServerKey, func() *x509.Certificate { return serverTemplate(opts.hosts()) }, x509.ExtKeyUsageServerAuth,
			func(c *x509.Certificate) bool { return coversHosts(c, opts.hosts()) }},
		{f.EngineCert, f.EngineKey, func() *x509.Certificate { return clientTemplate("engine", nil, engineURI) }, x509.ExtKeyUsageClientAuth,
			func(c *x509.Certificate) bool { return onlyURI(c, f.EngineIdentity) }},
		{f.AdminCert, f.AdminKey, func() *x509.Certificate { return clientTemplate("admin", nil, adminURI) }, x509.ExtKeyUsageClientAuth,
			func(c *x509.Certificate) bool { return onlyURI(c, f.AdminIdentity) }},
	}
	for _, l := range leaves {
		if caOK && leafOK(ca, l.cert, l.key, l.usage, now, opts.renewBefore(), l.matches) {
			continue
		}
		if err := issue(ca, caKey, l.tmpl(), l.cert, l.key, opts); err != nil {
			return Files{}, err
		}
		f.Written = append(f.Written, l.cert, l.key)
	}
	return f, nil
}

// NewCA writes a new self-signed CA certificate and its key. Tests use it
// for a "foreign" CA whose clients the broker must refuse.
func NewCA(certFile, keyFile string, opts Options) error {
	if err := opts.validate(); err != nil {
		return err
	}
	_, _, err := writeCA(certFile, keyFile, opts)
	return err
}

// IssueClient writes a client certificate and key signed by the CA in
// caCertFile and caKeyFile. identity uses internal/mtls's syntax: an absolute
// URI (spiffe://keybroker.dev/ops) becomes the URI SAN, with its last path
// element as the CN; "dns:NAME" becomes a DNS SAN and the CN; "cn:NAME" sets
// only the CN.
func IssueClient(caCertFile, caKeyFile, identity, certFile, keyFile string, opts Options) error {
	if err := opts.validate(); err != nil {
		return err
	}
	tmpl, err := clientTemplateFor(identity)
	if err != nil {
		return err
	}
	ca, caKey, err := loadCA(caCertFile, caKeyFile)
	if err != nil {
		return err
	}
	return issue(ca, caKey, tmpl, certFile, keyFile, opts)
}

func clientTemplateFor(identity string) (*x509.Certificate, error) {
	scheme, rest, ok := strings.Cut(identity, ":")
	if !ok || scheme == "" || rest == "" {
		return nil, fmt.Errorf("%w: %q: write a URI (spiffe://%s/NAME), dns:NAME or cn:NAME", ErrInvalidIdentity, identity, DefaultTrustDomain)
	}
	switch strings.ToLower(scheme) {
	case "dns":
		if !validDNSName(rest) {
			return nil, fmt.Errorf("%w: %q: %q is not a DNS name", ErrInvalidIdentity, identity, rest)
		}
		return clientTemplate(rest, []string{rest}, nil), nil
	case "cn":
		if !validCN(rest) {
			return nil, fmt.Errorf("%w: %q: a CN must be 1 to 64 printable characters", ErrInvalidIdentity, identity)
		}
		return clientTemplate(rest, nil, nil), nil
	}
	u, err := url.Parse(identity)
	if err != nil || !u.IsAbs() || (u.Host == "" && u.Opaque == "") {
		return nil, fmt.Errorf("%w: %q is not an absolute URI like spiffe://%s/NAME", ErrInvalidIdentity, identity, DefaultTrustDomain)
	}
	// A URI SAN is an IA5String: ASCII only, and spaces or controls would not
	// survive a round trip through the certificate.
	if strings.ContainsFunc(u.String(), func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		return nil, fmt.Errorf("%w: %q: a URI may hold printable ASCII characters only; percent-encode the others", ErrInvalidIdentity, identity)
	}
	cn := u.Host
	if i := strings.LastIndex(u.Path, "/"); i >= 0 && i < len(u.Path)-1 {
		cn = u.Path[i+1:]
	}
	if !validCN(cn) {
		cn = "client"
	}
	return clientTemplate(cn, nil, u), nil
}

func clientTemplate(cn string, dns []string, uri *url.URL) *x509.Certificate {
	t := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: []string{"keybroker dev"}},
		DNSNames:    dns,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if uri != nil {
		t.URIs = []*url.URL{uri}
	}
	return t
}

func serverTemplate(hosts []string) *x509.Certificate {
	t := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "keybroker server", Organization: []string{"keybroker dev"}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			t.IPAddresses = append(t.IPAddresses, ip)
		} else {
			t.DNSNames = append(t.DNSNames, h)
		}
	}
	return t
}

// notBeforeSkew backdates certificates so a peer whose clock is slightly
// behind still accepts them.
const notBeforeSkew = 5 * time.Minute

func writeCA(certFile, keyFile string, opts Options) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := opts.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "keybroker dev CA " + serial.Text(16)[:8], Organization: []string{"keybroker dev"}},
		NotBefore:             now.Add(-notBeforeSkew),
		NotAfter:              now.Add(opts.validity()),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: parse new CA certificate: %w", err)
	}
	if err := writeKeyAndCert(certFile, keyFile, der, key); err != nil {
		return nil, nil, err
	}
	return cert, key, nil
}

// issue signs tmpl (with a fresh key, serial and validity) by ca and writes
// the pair. The validity is clipped to the CA's, which a verifier would
// enforce anyway.
func issue(ca *x509.Certificate, caKey crypto.Signer, tmpl *x509.Certificate, certFile, keyFile string, opts Options) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return err
	}
	now := opts.now()
	tmpl.SerialNumber = serial
	tmpl.NotBefore = now.Add(-notBeforeSkew)
	tmpl.NotAfter = now.Add(opts.validity())
	if tmpl.NotBefore.Before(ca.NotBefore) {
		tmpl.NotBefore = ca.NotBefore
	}
	if tmpl.NotAfter.After(ca.NotAfter) {
		tmpl.NotAfter = ca.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return fmt.Errorf("pki: sign certificate for %s: %w", certFile, err)
	}
	return writeKeyAndCert(certFile, keyFile, der, key)
}

// writeKeyAndCert writes the key first, so that a crash in between leaves a
// certificate that does not match its key, which the next WriteDevPKI
// notices and repairs.
func writeKeyAndCert(certFile, keyFile string, der []byte, key crypto.Signer) error {
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("pki: encode key: %w", err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	clear(pkcs8)
	defer clear(keyPEM)
	if err := writeFileAtomic(keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	return writeFileAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("pki: generate serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil // never zero
}

func usable(c *x509.Certificate, now time.Time, renewBefore time.Duration) bool {
	return !now.Before(c.NotBefore) && now.Add(renewBefore).Before(c.NotAfter)
}

// leafOK reports whether the pair in certFile and keyFile can be reused.
func leafOK(ca *x509.Certificate, certFile, keyFile string, usage x509.ExtKeyUsage, now time.Time, renewBefore time.Duration, matches func(*x509.Certificate) bool) bool {
	cert, err := readCert(certFile)
	if err != nil {
		return false
	}
	key, err := readKey(keyFile)
	if err != nil || !publicKeysEqual(cert.PublicKey, key.Public()) {
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	_, err = cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err == nil && usable(cert, now, renewBefore) && matches(cert)
}

func coversHosts(c *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

func onlyURI(c *x509.Certificate, want string) bool {
	return len(c.URIs) == 1 && c.URIs[0].String() == want
}

// loadCA reads a CA certificate and its key and checks that they belong
// together and that the certificate may sign others.
func loadCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	cert, err := readCert(certFile)
	if err != nil {
		return nil, nil, err
	}
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return nil, nil, fmt.Errorf("pki: %s is not a CA certificate (basic constraints CA:FALSE)", certFile)
	}
	key, err := readKey(keyFile)
	if err != nil {
		return nil, nil, err
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, nil, fmt.Errorf("pki: private key in %s does not match CA certificate in %s", keyFile, certFile)
	}
	return cert, key, nil
}

func readCert(file string) (*x509.Certificate, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("pki: read certificate: %w", err)
	}
	c, err := parseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return c, nil
}

func readKey(file string) (crypto.Signer, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("pki: read key: %w", err)
	}
	defer clear(b)
	k, err := parseKeyPEM(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return k, nil
}

// parseCertPEM returns the first certificate in a PEM file.
func parseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, fmt.Errorf("%w: no PEM certificate", ErrInvalidPEM)
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidPEM, err)
		}
		return c, nil
	}
}

// parseKeyPEM returns the first private key in a PEM file: PKCS#8, SEC 1
// (EC) or PKCS#1 (RSA), so that IssueClient accepts CAs made by other tools.
func parseKeyPEM(b []byte) (crypto.Signer, error) {
	key, typ, err := DecodePrivateKeyPEM(b)
	switch {
	case typ == "":
		return nil, fmt.Errorf("%w: no PEM private key", ErrInvalidPEM)
	case typ == EncryptedKeyBlock:
		return nil, fmt.Errorf("%w: the private key is encrypted; decrypt it first", ErrInvalidPEM)
	case err != nil:
		return nil, fmt.Errorf("%w: %s block: %w", ErrInvalidPEM, typ, err)
	}
	s, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%w: unsupported private key type %T", ErrInvalidPEM, key)
	}
	return s, nil
}

// EncryptedKeyBlock is the PEM type of a PKCS#8 encrypted private key,
// which DecodePrivateKeyPEM finds but does not decrypt.
const EncryptedKeyBlock = "ENCRYPTED PRIVATE KEY"

// DecodePrivateKeyPEM parses the first private-key block of the PEM data b:
// PKCS#8, SEC 1 (EC) or PKCS#1 (RSA), clearing the block's DER once parsed.
// typ is the block's type: "" when b holds no private key, and
// EncryptedKeyBlock, with a nil key and error, for an encrypted key. err is
// the parser's and never holds the key's bytes; callers word their own
// errors from typ and err.
func DecodePrivateKeyPEM(b []byte) (key any, typ string, err error) {
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			return nil, "", nil
		}
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case EncryptedKeyBlock:
			return nil, block.Type, nil
		default:
			continue
		}
		clear(block.Bytes)
		return key, block.Type, err
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

// validTrustDomain follows the SPIFFE ID spec: lower case, so that
// identities compare as plain strings.
func validTrustDomain(s string) bool {
	return validDNSName(s) && s == strings.ToLower(s)
}

func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	return !slices.ContainsFunc(strings.Split(s, "."), func(label string) bool {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return true
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return true
			}
		}
		return false
	})
}

func validCN(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == 0xfffd {
			return false
		}
	}
	return true
}
