package wipe

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"reflect"
	"testing"
	"time"
)

func TestValue(t *testing.T) {
	key := bytes.Repeat([]byte{0x3c}, 32)
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range []any{block, g} {
		m := Memory(v)
		if m == nil || !bytes.Contains(m, key[:16]) {
			t.Fatalf("Memory(%T) = %d bytes without the key's first round key; want the key schedule", v, len(m))
		}
		if !Value(v) || !allZero(m) {
			t.Errorf("Value(%T) did not zero the key schedule", v)
		}
	}
	if Value(&struct{ p *int }{}) || Value(42) {
		t.Errorf("Value touched memory that holds pointers or is not behind one")
	}
}

// tlsPair returns both ends of a TLS 1.3 connection over a pipe.
func tlsPair(t *testing.T) (server, client *tls.Conn) {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"x"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	server = tls.Server(a, &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: priv}}})
	client = tls.Client(b, &tls.Config{InsecureSkipVerify: true})
	errc := make(chan error, 1)
	go func() { errc <- client.Handshake() }()
	if err := server.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return server, client
}

// rawInput is the memory of c's record buffer.
func rawInput(c *tls.Conn) []byte {
	b, _, _ := bufferFields(reflect.ValueOf(c).Elem().FieldByName("rawInput"))
	return b[:cap(b)]
}

func TestClearTLSInput(t *testing.T) {
	server, client := tlsPair(t)
	secretMsg := []byte("register: key bytes 0123456789abcdef")
	next := []byte("the next request, in the same record")
	go func() { _, _ = client.Write(append(bytes.Clone(secretMsg), next...)) }()

	got := make([]byte, len(secretMsg))
	if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, secretMsg) {
		t.Fatalf("read %q, %v", got, err)
	}
	if !bytes.Contains(rawInput(server), secretMsg) {
		t.Fatalf("the decrypted record is not in rawInput: the test does not see crypto/tls's buffer")
	}
	// Part of the record is unread: nothing may be cleared.
	if ClearTLSInput(server) {
		t.Fatalf("ClearTLSInput cleared with unread data waiting")
	}
	rest := make([]byte, len(next))
	if _, err := io.ReadFull(server, rest); err != nil || !bytes.Equal(rest, next) {
		t.Fatalf("after ClearTLSInput with data waiting, read %q, %v; want the next request", rest, err)
	}
	if !ClearTLSInput(server) {
		t.Fatalf("ClearTLSInput found nothing to clear: crypto/tls's fields changed")
	}
	if bytes.Contains(rawInput(server), secretMsg[:16]) || bytes.Contains(rawInput(server), next[:16]) {
		t.Errorf("ClearTLSInput left the decrypted record in rawInput")
	}

	// The connection still works, and ClearTLSBuffers clears the rest.
	go func() { _, _ = client.Write(secretMsg) }()
	if _, err := io.ReadFull(server, got); err != nil || !bytes.Equal(got, secretMsg) {
		t.Fatalf("after clearing, read %q, %v", got, err)
	}
	go func() { _, _ = io.Copy(io.Discard, client) }() // reads the close_notify
	server.Close()
	ClearTLSBuffers(server)
	if bytes.Contains(rawInput(server), secretMsg[:16]) {
		t.Errorf("ClearTLSBuffers left the last record in rawInput")
	}
}
