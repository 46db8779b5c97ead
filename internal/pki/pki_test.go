package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// fixedNow is the fake clock of every test: certificates depend on it only.
var fixedNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func clock(t time.Time) func() time.Time { return func() time.Time { return t } }

func mustWrite(t *testing.T, dir string, opts Options) Files {
	t.Helper()
	f, err := WriteDevPKI(dir, opts)
	if err != nil {
		t.Fatalf("WriteDevPKI(%q) err = %v, want nil", dir, err)
	}
	return f
}

func mustCert(t *testing.T, file string) *x509.Certificate {
	t.Helper()
	c, err := readCert(file)
	if err != nil {
		t.Fatalf("readCert(%q) err = %v, want nil", file, err)
	}
	return c
}

func verify(t *testing.T, caFile, certFile string, usage x509.ExtKeyUsage, host string, at time.Time) error {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(mustCert(t, caFile))
	_, err := mustCert(t, certFile).Verify(x509.VerifyOptions{
		Roots: roots, CurrentTime: at, DNSName: host, KeyUsages: []x509.ExtKeyUsage{usage},
	})
	return err
}

func TestWriteDevPKI(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	f := mustWrite(t, dir, Options{Now: clock(fixedNow)})

	if f.EngineIdentity != DefaultEngineIdentity || f.AdminIdentity != DefaultAdminIdentity {
		t.Errorf("identities = %q, %q, want %q, %q", f.EngineIdentity, f.AdminIdentity, DefaultEngineIdentity, DefaultAdminIdentity)
	}
	if len(f.Written) != 8 {
		t.Errorf("Written = %v, want all 8 files", f.Written)
	}

	t.Run("modes", func(t *testing.T) {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatalf("Stat(%q) err = %v, want nil", dir, err)
		}
		if got := fi.Mode().Perm(); got != 0o700 {
			t.Errorf("mode of %s = %v, want 0700", dir, got)
		}
		for file, want := range map[string]os.FileMode{
			f.CA: 0o644, f.CAKey: 0o600, f.ServerCert: 0o644, f.ServerKey: 0o600,
			f.EngineCert: 0o644, f.EngineKey: 0o600, f.AdminCert: 0o644, f.AdminKey: 0o600,
		} {
			fi, err := os.Stat(file)
			if err != nil {
				t.Errorf("Stat(%q) err = %v, want nil", file, err)
				continue
			}
			if got := fi.Mode().Perm(); got != want {
				t.Errorf("mode of %s = %v, want %v", filepath.Base(file), got, want)
			}
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatalf("ReadDir(%q) err = %v, want nil", dir, err)
		}
		if len(entries) != 8 {
			t.Errorf("directory holds %d entries, want 8 (no temp files left)", len(entries))
		}
	})

	t.Run("keys", func(t *testing.T) {
		for _, file := range []string{f.CAKey, f.ServerKey, f.EngineKey, f.AdminKey} {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("ReadFile(%q) err = %v, want nil", file, err)
			}
			block, _ := pem.Decode(b)
			if block == nil || block.Type != "PRIVATE KEY" {
				t.Fatalf("%s: PEM block = %v, want a PRIVATE KEY block", filepath.Base(file), block)
			}
			k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				t.Fatalf("ParsePKCS8PrivateKey(%s) err = %v, want nil", filepath.Base(file), err)
			}
			ek, ok := k.(*ecdsa.PrivateKey)
			if !ok || ek.Curve != elliptic.P256() {
				t.Errorf("%s: key = %T, want ECDSA P-256", filepath.Base(file), k)
			}
		}
	})

	tests := []struct {
		name  string
		cert  string
		usage x509.ExtKeyUsage
		host  string
		cn    string
		uri   string
	}{
		{"server 127.0.0.1", f.ServerCert, x509.ExtKeyUsageServerAuth, "127.0.0.1", "keybroker server", ""},
		{"server ::1", f.ServerCert, x509.ExtKeyUsageServerAuth, "::1", "keybroker server", ""},
		{"server localhost", f.ServerCert, x509.ExtKeyUsageServerAuth, "localhost", "keybroker server", ""},
		{"engine", f.EngineCert, x509.ExtKeyUsageClientAuth, "", "engine", "spiffe://keybroker.dev/engine"},
		{"admin", f.AdminCert, x509.ExtKeyUsageClientAuth, "", "admin", "spiffe://keybroker.dev/admin"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := verify(t, f.CA, tc.cert, tc.usage, tc.host, fixedNow); err != nil {
				t.Errorf("Verify(%s, %v) err = %v, want nil", filepath.Base(tc.cert), tc.usage, err)
			}
			other := x509.ExtKeyUsageClientAuth
			if tc.usage == other {
				other = x509.ExtKeyUsageServerAuth
			}
			if err := verify(t, f.CA, tc.cert, other, "", fixedNow); err == nil {
				t.Errorf("Verify(%s, %v) err = nil, want an extended key usage error", filepath.Base(tc.cert), other)
			}
			if err := verify(t, f.CA, tc.cert, tc.usage, "", fixedNow.Add(DefaultValidity+time.Hour)); err == nil {
				t.Errorf("Verify(%s) after the validity err = nil, want expired", filepath.Base(tc.cert))
			}
			c := mustCert(t, tc.cert)
			if c.Subject.CommonName != tc.cn {
				t.Errorf("CN = %q, want %q", c.Subject.CommonName, tc.cn)
			}
			var uris []string
			for _, u := range c.URIs {
				uris = append(uris, u.String())
			}
			if tc.uri == "" && len(uris) != 0 || tc.uri != "" && !slices.Equal(uris, []string{tc.uri}) {
				t.Errorf("URI SANs = %v, want %q", uris, tc.uri)
			}
			if c.IsCA {
				t.Errorf("leaf IsCA = true, want false")
			}
		})
	}
}

func readAll(t *testing.T, f Files) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for _, file := range []string{f.CA, f.CAKey, f.ServerCert, f.ServerKey, f.EngineCert, f.EngineKey, f.AdminCert, f.AdminKey} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatalf("ReadFile(%q) err = %v, want nil", file, err)
		}
		out[filepath.Base(file)] = b
	}
	return out
}

func TestWriteDevPKIReuse(t *testing.T) {
	dir := t.TempDir()
	first := mustWrite(t, dir, Options{Now: clock(fixedNow)})
	before := readAll(t, first)
	// A later restart, well within the validity, reuses everything.
	second := mustWrite(t, dir, Options{Now: clock(fixedNow.Add(10 * 24 * time.Hour))})
	if len(second.Written) != 0 {
		t.Errorf("second WriteDevPKI Written = %v, want none", second.Written)
	}
	for name, b := range readAll(t, second) {
		if !bytes.Equal(b, before[name]) {
			t.Errorf("%s changed on the second call, want it reused", name)
		}
	}
}

func TestWriteDevPKIRegenerates(t *testing.T) {
	all := []string{CAFile, CAKeyFile, ServerCertFile, ServerKeyFile, EngineCertFile, EngineKeyFile, AdminCertFile, AdminKeyFile}
	tests := []struct {
		name    string
		break_  func(t *testing.T, f Files)
		opts    Options
		written []string
	}{
		{
			name:    "engine key missing",
			break_:  func(t *testing.T, f Files) { remove(t, f.EngineKey) },
			written: []string{EngineCertFile, EngineKeyFile},
		},
		{
			name:    "server cert missing",
			break_:  func(t *testing.T, f Files) { remove(t, f.ServerCert) },
			written: []string{ServerCertFile, ServerKeyFile},
		},
		{
			name:    "CA key missing",
			break_:  func(t *testing.T, f Files) { remove(t, f.CAKey) },
			written: all,
		},
		{
			name:    "CA cert garbage",
			break_:  func(t *testing.T, f Files) { write(t, f.CA, []byte("not a certificate")) },
			written: all,
		},
		{
			name:    "admin key does not match",
			break_:  func(t *testing.T, f Files) { write(t, f.AdminKey, read(t, f.EngineKey)) },
			written: []string{AdminCertFile, AdminKeyFile},
		},
		{
			name: "engine signed by another CA",
			break_: func(t *testing.T, f Files) {
				other := t.TempDir()
				caCert, caKey := filepath.Join(other, "ca.pem"), filepath.Join(other, "ca-key.pem")
				if err := NewCA(caCert, caKey, Options{Now: clock(fixedNow)}); err != nil {
					t.Fatalf("NewCA err = %v, want nil", err)
				}
				if err := IssueClient(caCert, caKey, f.EngineIdentity, f.EngineCert, f.EngineKey, Options{Now: clock(fixedNow)}); err != nil {
					t.Fatalf("IssueClient err = %v, want nil", err)
				}
			},
			written: []string{EngineCertFile, EngineKeyFile},
		},
		{
			name:    "expired",
			opts:    Options{Now: clock(fixedNow.Add(DefaultValidity + time.Hour))},
			written: all,
		},
		{
			name:    "close to expiry",
			opts:    Options{Now: clock(fixedNow.Add(DefaultValidity - time.Hour))},
			written: all,
		},
		{
			name:    "other server hosts",
			opts:    Options{Now: clock(fixedNow), ServerHosts: []string{"broker.internal", "10.0.0.7"}},
			written: []string{ServerCertFile, ServerKeyFile},
		},
		{
			name:    "other trust domain",
			opts:    Options{Now: clock(fixedNow), TrustDomain: "example.org"},
			written: []string{EngineCertFile, EngineKeyFile, AdminCertFile, AdminKeyFile},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			first := mustWrite(t, dir, Options{Now: clock(fixedNow)})
			before := readAll(t, first)
			if tc.break_ != nil {
				tc.break_(t, first)
			}
			opts := tc.opts
			if opts.Now == nil {
				opts.Now = clock(fixedNow)
			}
			second := mustWrite(t, dir, opts)
			var written []string
			for _, w := range second.Written {
				written = append(written, filepath.Base(w))
			}
			slices.Sort(written)
			want := slices.Sorted(slices.Values(tc.written))
			if !slices.Equal(written, want) {
				t.Errorf("Written = %v, want %v", written, want)
			}
			after := readAll(t, second)
			for name, b := range after {
				if changed := !bytes.Equal(b, before[name]); changed != slices.Contains(want, name) {
					t.Errorf("%s changed = %v, want %v", name, changed, !changed)
				}
			}
			// Whatever was regenerated, the result is a consistent PKI.
			at := opts.Now()
			for _, c := range []struct {
				file  string
				usage x509.ExtKeyUsage
			}{{second.ServerCert, x509.ExtKeyUsageServerAuth}, {second.EngineCert, x509.ExtKeyUsageClientAuth}, {second.AdminCert, x509.ExtKeyUsageClientAuth}} {
				if err := verify(t, second.CA, c.file, c.usage, "", at); err != nil {
					t.Errorf("Verify(%s) err = %v, want nil", filepath.Base(c.file), err)
				}
			}
			if again := mustWrite(t, dir, opts); len(again.Written) != 0 {
				t.Errorf("third WriteDevPKI Written = %v, want none", again.Written)
			}
		})
	}
}

func remove(t *testing.T, file string) {
	t.Helper()
	if err := os.Remove(file); err != nil {
		t.Fatalf("Remove(%q) err = %v, want nil", file, err)
	}
}

func read(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("ReadFile(%q) err = %v, want nil", file, err)
	}
	return b
}

func write(t *testing.T, file string, b []byte) {
	t.Helper()
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatalf("WriteFile(%q) err = %v, want nil", file, err)
	}
}

func TestWriteDevPKIInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		dir  string
		opts Options
	}{
		{"negative validity", "x", Options{Validity: -time.Hour}},
		{"upper-case trust domain", "x", Options{TrustDomain: "KeyBroker.dev"}},
		{"trust domain with slash", "x", Options{TrustDomain: "a/b"}},
		{"bad host", "x", Options{ServerHosts: []string{"not a host"}}},
		{"empty host", "x", Options{ServerHosts: []string{""}}},
		{"empty dir", "", Options{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir
			if dir != "" {
				dir = filepath.Join(t.TempDir(), dir)
			}
			if _, err := WriteDevPKI(dir, tc.opts); !errors.Is(err, ErrInvalidOptions) {
				t.Errorf("WriteDevPKI(%+v) err = %v, want ErrInvalidOptions", tc.opts, err)
			}
		})
	}
}

func TestIssueClient(t *testing.T) {
	dir := t.TempDir()
	f := mustWrite(t, dir, Options{Now: clock(fixedNow)})
	tests := []struct {
		identity string
		cn       string
		dns      []string
		uri      string
	}{
		{"spiffe://keybroker.dev/ops", "ops", nil, "spiffe://keybroker.dev/ops"},
		{"spiffe://keybroker.dev/ns/prod/sa/mongod", "mongod", nil, "spiffe://keybroker.dev/ns/prod/sa/mongod"},
		{"spiffe://keybroker.dev", "keybroker.dev", nil, "spiffe://keybroker.dev"},
		{"urn:keybroker:norole", "client", nil, "urn:keybroker:norole"},
		{"dns:engine.local", "engine.local", []string{"engine.local"}, ""},
		{"cn:backup", "backup", nil, ""},
	}
	for _, tc := range tests {
		t.Run(tc.identity, func(t *testing.T) {
			cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "c-key.pem")
			if err := IssueClient(f.CA, f.CAKey, tc.identity, cert, key, Options{Now: clock(fixedNow)}); err != nil {
				t.Fatalf("IssueClient(%q) err = %v, want nil", tc.identity, err)
			}
			if err := verify(t, f.CA, cert, x509.ExtKeyUsageClientAuth, "", fixedNow); err != nil {
				t.Errorf("Verify err = %v, want nil", err)
			}
			c := mustCert(t, cert)
			if c.Subject.CommonName != tc.cn {
				t.Errorf("CN = %q, want %q", c.Subject.CommonName, tc.cn)
			}
			if !slices.Equal(c.DNSNames, tc.dns) {
				t.Errorf("DNS SANs = %v, want %v", c.DNSNames, tc.dns)
			}
			var uri string
			if len(c.URIs) == 1 {
				uri = c.URIs[0].String()
			}
			if len(c.URIs) > 1 || uri != tc.uri {
				t.Errorf("URI SANs = %v, want %q", c.URIs, tc.uri)
			}
			k, err := readKey(key)
			if err != nil {
				t.Fatalf("readKey err = %v, want nil", err)
			}
			if !publicKeysEqual(c.PublicKey, k.Public()) {
				t.Errorf("key does not match the certificate")
			}
		})
	}

	bad := []struct {
		name, identity, caCert, caKey string
		want                          error
	}{
		{"bare name", "engine", f.CA, f.CAKey, ErrInvalidIdentity},
		{"empty", "", f.CA, f.CAKey, ErrInvalidIdentity},
		{"empty dns", "dns:", f.CA, f.CAKey, ErrInvalidIdentity},
		{"bad dns", "dns:a..b", f.CA, f.CAKey, ErrInvalidIdentity},
		{"long cn", "cn:" + string(bytes.Repeat([]byte("a"), 65)), f.CA, f.CAKey, ErrInvalidIdentity},
		{"relative uri", "spiffe:/x", f.CA, f.CAKey, ErrInvalidIdentity},
		{"leaf as CA", "cn:x", f.EngineCert, f.EngineKey, nil},
		{"CA key garbage", "cn:x", f.CA, f.CA, ErrInvalidPEM},
		{"CA key mismatch", "cn:x", f.CA, f.ServerKey, nil},
		{"CA missing", "cn:x", filepath.Join(dir, "nope.pem"), f.CAKey, os.ErrNotExist},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			cert, key := filepath.Join(dir, "bad.pem"), filepath.Join(dir, "bad-key.pem")
			err := IssueClient(tc.caCert, tc.caKey, tc.identity, cert, key, Options{Now: clock(fixedNow)})
			if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("IssueClient(%q) err = %v, want %v", tc.identity, err, tc.want)
			}
			if _, statErr := os.Stat(cert); statErr == nil {
				t.Errorf("IssueClient(%q) failed but wrote %s", tc.identity, cert)
			}
		})
	}
}

func TestNewCA(t *testing.T) {
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	if err := NewCA(cert, key, Options{Now: clock(fixedNow), Validity: time.Hour}); err != nil {
		t.Fatalf("NewCA err = %v, want nil", err)
	}
	c, k, err := loadCA(cert, key)
	if err != nil {
		t.Fatalf("loadCA err = %v, want nil", err)
	}
	if !c.IsCA || !c.MaxPathLenZero || c.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA: IsCA=%v MaxPathLenZero=%v KeyUsage=%v, want a path-length-0 signing CA", c.IsCA, c.MaxPathLenZero, c.KeyUsage)
	}
	if want := fixedNow.Add(time.Hour); !c.NotAfter.Equal(want) {
		t.Errorf("NotAfter = %v, want %v", c.NotAfter, want)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("CheckSignatureFrom(self) err = %v, want nil", err)
	}
	if k == nil {
		t.Errorf("loadCA key = nil")
	}
	// A leaf issued later is clipped to the CA's lifetime.
	leaf, leafKey := filepath.Join(dir, "l.pem"), filepath.Join(dir, "l-key.pem")
	if err := IssueClient(cert, key, "cn:x", leaf, leafKey, Options{Now: clock(fixedNow)}); err != nil {
		t.Fatalf("IssueClient err = %v, want nil", err)
	}
	if got := mustCert(t, leaf).NotAfter; got.After(c.NotAfter) {
		t.Errorf("leaf NotAfter = %v, want at most the CA's %v", got, c.NotAfter)
	}
}

func TestNewCAErrors(t *testing.T) {
	dir := t.TempDir()
	if err := NewCA(filepath.Join(dir, "missing", "ca.pem"), filepath.Join(dir, "missing", "ca-key.pem"), Options{}); err == nil {
		t.Errorf("NewCA into a missing directory err = nil, want an error")
	}
	if err := NewCA(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem"), Options{Validity: -1}); !errors.Is(err, ErrInvalidOptions) {
		t.Errorf("NewCA(Validity -1) err = %v, want ErrInvalidOptions", err)
	}
}
