package pki

import (
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"os"
	"testing"
)

// FuzzParsePEM feeds arbitrary files to the certificate and key parsers that
// decide whether WriteDevPKI reuses a file: they must fail cleanly, never panic.
func FuzzParsePEM(f *testing.F) {
	dir := f.TempDir()
	files, err := WriteDevPKI(dir, Options{})
	if err != nil {
		f.Fatalf("WriteDevPKI err = %v, want nil", err)
	}
	for _, file := range []string{files.CA, files.CAKey, files.EngineCert} {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatalf("ReadFile(%q) err = %v, want nil", file, err)
		}
		f.Add(b)
	}
	f.Add([]byte("-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMAA=\n-----END ENCRYPTED PRIVATE KEY-----\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		if c, err := parseCertPEM(b); (c == nil) == (err == nil) {
			t.Fatalf("parseCertPEM = %v, %v: want exactly one of certificate and error", c, err)
		}
		if k, err := parseKeyPEM(b); (k == nil) == (err == nil) {
			t.Fatalf("parseKeyPEM = %v, %v: want exactly one of key and error", k, err)
		}
	})
}

// FuzzClientIdentity checks that IssueClient's identity parser never panics
// and that what it accepts can be signed.
func FuzzClientIdentity(f *testing.F) {
	for _, s := range []string{"spiffe://keybroker.dev/engine", "dns:engine.local", "cn:admin", "urn:x:y", "engine", ":", "dns:", "https://h/%zz"} {
		f.Add(s)
	}
	dir := f.TempDir()
	files, err := WriteDevPKI(dir, Options{})
	if err != nil {
		f.Fatalf("WriteDevPKI err = %v, want nil", err)
	}
	ca, caKey, err := loadCA(files.CA, files.CAKey)
	if err != nil {
		f.Fatalf("loadCA err = %v, want nil", err)
	}
	f.Fuzz(func(t *testing.T, identity string) {
		tmpl, err := clientTemplateFor(identity)
		if err != nil {
			return
		}
		tmpl.SerialNumber = big.NewInt(1)
		if _, err := x509.CreateCertificate(rand.Reader, tmpl, ca, caKey.Public(), caKey); err != nil {
			t.Fatalf("CreateCertificate(%q) err = %v, want nil for an accepted identity", identity, err)
		}
	})
}
