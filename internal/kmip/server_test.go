package kmip

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/mtls"
	"github.com/keybroker/keybroker/internal/pki"
)

var (
	testPKI    pki.Files
	testPKIDir string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if testPKIDir != "" {
		os.RemoveAll(testPKIDir)
	}
	os.Exit(code)
}

// testTLS writes a dev PKI (once per test binary) and returns the server's
// TLS configuration.
func testTLS(t testing.TB) *tls.Config {
	t.Helper()
	if testPKI.CA == "" {
		dir, err := os.MkdirTemp("", "kmip-pki-")
		if err != nil {
			t.Fatal(err)
		}
		testPKIDir = dir
		if testPKI, err = pki.WriteDevPKI(filepath.Join(dir, "pki"), pki.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := mtls.ServerTLS(mtls.ServerConfig{CertFile: testPKI.ServerCert, KeyFile: testPKI.ServerKey, ClientCAFile: testPKI.CA, MinVersion: tls.VersionTLS12})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// start serves cfg (Core and TLS filled in when nil) on a loopback port.
func start(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Core == nil {
		cfg.Core = newFakeCore()
	}
	if cfg.TLS == nil {
		cfg.TLS = testTLS(t)
	}
	if cfg.Roles == nil {
		cfg.Roles = map[string][]string{testPKI.EngineIdentity: {mtls.RoleEngine}, testPKI.AdminIdentity: {mtls.RoleAdmin}}
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(l) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve returned %v after Close, want nil", err)
		}
	})
	return s, l.Addr().String()
}

func dialRaw(t *testing.T, addr string, withCert bool) (*tls.Conn, error) {
	t.Helper()
	pool := x509.NewCertPool()
	ca, _ := os.ReadFile(testPKI.CA)
	pool.AppendCertsFromPEM(ca)
	cfg := &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if withCert {
		cert, err := tls.LoadX509KeyPair(testPKI.EngineCert, testPKI.EngineKey)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	d := &net.Dialer{Timeout: 5 * time.Second}
	c, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err == nil {
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
	}
	return c, err
}

// closedWithin reports whether the server closes c (EOF or reset) before
// the connection's 5 s deadline.
func closedWithin(c net.Conn) bool {
	_, err := io.ReadAll(c)
	var ne net.Error
	return !(errors.As(err, &ne) && ne.Timeout())
}

func request(v kmip.ProtocolVersion, pl kmip.OperationPayload) []byte {
	msg := kmip.NewRequestMessage(v, pl)
	return ttlv.MarshalTTLV(&msg)
}

func readMsg(t *testing.T, c io.Reader) kmip.ResponseMessage {
	t.Helper()
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	buf := make([]byte, 8+binary.BigEndian.Uint32(hdr[4:]))
	copy(buf, hdr)
	if _, err := io.ReadFull(c, buf[8:]); err != nil {
		t.Fatalf("reading a response: %v", err)
	}
	var resp kmip.ResponseMessage
	if err := ttlv.UnmarshalTTLV(buf, &resp); err != nil {
		t.Fatalf("decoding a response: %v", err)
	}
	return resp
}

// TestHardening: connection cap, handshake, idle and size limits, a client
// without a certificate or without a role.
func TestHardening(t *testing.T) {
	state := &payloads.GetAttributesRequestPayload{UniqueIdentifier: "master", AttributeName: []kmip.AttributeName{kmip.AttributeNameState}}
	for _, tc := range []struct {
		name string
		cfg  Config
		run  func(t *testing.T, addr string)
	}{
		{"connection cap", Config{MaxConnections: 1}, func(t *testing.T, addr string) {
			first, err := dialRaw(t, addr, true)
			if err != nil {
				t.Fatal(err)
			}
			first.Write(request(kmip.V1_2, state))
			readMsg(t, first) // the first connection holds the only slot
			second, err := dialRaw(t, addr, true)
			if err == nil {
				second.Write(request(kmip.V1_2, state))
				if !closedWithin(second) {
					t.Fatal("a connection past max_connections was served")
				}
			}
			first.Write(request(kmip.V1_2, state))
			if r := readMsg(t, first); r.BatchItem[0].ResultStatus != kmip.ResultStatusSuccess {
				t.Fatalf("the first connection after the refusal: %+v", r.BatchItem[0])
			}
		}},
		{"handshake timeout", Config{HandshakeTimeout: 200 * time.Millisecond}, func(t *testing.T, addr string) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if !closedWithin(c) {
				t.Fatal("a connection that never shook hands stayed open")
			}
		}},
		{"idle timeout", Config{IdleTimeout: 200 * time.Millisecond}, func(t *testing.T, addr string) {
			c, err := dialRaw(t, addr, true)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(request(kmip.V1_2, state))
			readMsg(t, c)
			if !closedWithin(c) {
				t.Fatal("an idle connection stayed open")
			}
		}},
		{"message too large", Config{MaxMessageSize: 1024}, func(t *testing.T, addr string) {
			c, err := dialRaw(t, addr, true)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(request(kmip.V1_2, &payloads.EncryptRequestPayload{UniqueIdentifier: "master", Data: make([]byte, 2000)}))
			r := readMsg(t, c)
			if bi := r.BatchItem[0]; bi.ResultReason != kmip.ResultReasonInvalidMessage || !strings.Contains(bi.ResultMessage, "max_message_size") {
				t.Fatalf("oversized message answered %+v, want Invalid Message naming kmip.max_message_size", bi)
			}
			if !closedWithin(c) {
				t.Fatal("the connection stayed open after an oversized message")
			}
		}},
		{"no client certificate", Config{}, func(t *testing.T, addr string) {
			c, err := dialRaw(t, addr, false)
			if err == nil {
				c.Write(request(kmip.V1_2, state))
				if _, err = c.Read(make([]byte, 1)); err == nil {
					t.Fatal("a client without a certificate got an answer")
				}
			}
		}},
		{"no role", Config{Roles: map[string][]string{"spiffe://other": {mtls.RoleEngine}}}, func(t *testing.T, addr string) {
			c, err := dialRaw(t, addr, true)
			if err != nil {
				t.Fatal(err)
			}
			c.Write(request(kmip.V1_0, state))
			bi := readMsg(t, c).BatchItem[0]
			if bi.ResultReason != kmip.ResultReasonPermissionDenied || bi.Operation != kmip.OperationGetAttributes || !strings.Contains(bi.ResultMessage, "authorization") {
				t.Fatalf("a client without a role got %+v, want Permission Denied naming the authorization section, Operation echoed", bi)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := start(t, tc.cfg)
			tc.run(t, addr)
		})
	}
}

// TestOperations runs the library's client through the server over TLS on
// the in-memory core: discovery, query, a create-get-activate batch with
// ID Placeholders, Get Attributes answering exactly what was asked, and
// the refusals while paused.
func TestOperations(t *testing.T) {
	core := newFakeCore()
	_, addr := start(t, Config{Core: core})
	c, err := kmipclient.Dial(addr, kmipclient.WithRootCAFile(testPKI.CA), kmipclient.WithClientCertFiles(testPKI.EngineCert, testPKI.EngineKey))
	if err != nil {
		t.Fatalf("Dial (with version discovery) err = %v, want nil", err)
	}
	defer c.Close()
	if c.Version() != kmip.V1_4 {
		t.Fatalf("negotiated %s, want 1.4", c.Version())
	}
	ctx := context.Background()
	q, err := c.Query().Operations().Objects().ExecContext(ctx)
	if err != nil || len(q.Operations) != len(supportedOperations) || len(q.ObjectType) != 2 {
		t.Fatalf("Query = %+v, %v; want %d operations and 2 object types", q, err, len(supportedOperations))
	}
	res, err := c.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).
		Then(func(c *kmipclient.Client) kmipclient.PayloadBuilder { return c.Get("") }).
		Then(func(c *kmipclient.Client) kmipclient.PayloadBuilder { return c.Activate("") }).ExecContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pls, err := res.Unwrap()
	if err != nil {
		t.Fatalf("Create, Get, Activate batch: %v", err)
	}
	id := pls[0].(*payloads.CreateResponsePayload).UniqueIdentifier
	key, err := pls[1].(*payloads.GetResponsePayload).SymmetricKey()
	if err != nil || len(key) != 32 {
		t.Fatalf("Get by placeholder: %d bytes, %v; want 32", len(key), err)
	}
	for _, tc := range []struct {
		names []kmip.AttributeName
		want  []kmip.AttributeName
	}{
		{[]kmip.AttributeName{kmip.AttributeNameState}, []kmip.AttributeName{kmip.AttributeNameState}},
		{[]kmip.AttributeName{kmip.AttributeNameCryptographicLength, kmip.AttributeNameObjectType}, []kmip.AttributeName{kmip.AttributeNameCryptographicLength, kmip.AttributeNameObjectType}},
		{[]kmip.AttributeName{kmip.AttributeNameName}, nil}, // the object has no Name: fails, never empty
	} {
		ga, err := c.GetAttributes(id, tc.names...).ExecContext(ctx)
		if tc.want == nil {
			if err == nil {
				t.Fatalf("GetAttributes(%v) = %+v, want an error rather than no attribute", tc.names, ga)
			}
			continue
		}
		if err != nil || len(ga.Attribute) != len(tc.want) {
			t.Fatalf("GetAttributes(%v) = %+v, %v; want exactly %v", tc.names, ga, err, tc.want)
		}
		for i, a := range ga.Attribute {
			if a.AttributeName != tc.want[i] {
				t.Fatalf("GetAttributes(%v)[%d] = %s, want %s", tc.names, i, a.AttributeName, tc.want[i])
			}
		}
	}
	core.mu.Lock()
	core.paused = true
	core.mu.Unlock()
	ga, err := c.GetAttributes(id, kmip.AttributeNameState).ExecContext(ctx)
	if err != nil || ga.Attribute[0].AttributeValue != kmip.StateDeactivated {
		t.Fatalf("paused: State = %+v, %v; want Deactivated", ga, err)
	}
	if _, err := c.Get(id).ExecContext(ctx); err == nil || !strings.Contains(err.Error(), "PermissionDenied") {
		t.Fatalf("paused: Get err = %v, want Permission Denied", err)
	}
}

// TestSeedMessages answers every seed request with a well-formed response.
func TestSeedMessages(t *testing.T) {
	s := testServer(t)
	for i, m := range seedMessages() {
		resp, _ := s.handle(&conn{}, bytes.Clone(m))
		checkResponse(t, resp)
		if i < 2 && resp.BatchItem[0].ResultStatus != kmip.ResultStatusSuccess {
			t.Fatalf("seed %d: %+v, want success", i, resp.BatchItem[0])
		}
	}
}

// TestHandlerPanic: a handler panic (a bug) answers General Failure with a
// message pointing at the log, and the next request is served.
func TestHandlerPanic(t *testing.T) {
	s := testServer(t)
	for _, id := range []string{"panic", "master"} {
		resp, _ := s.handle(&conn{}, request(kmip.V1_2, &payloads.GetAttributesRequestPayload{UniqueIdentifier: id}))
		checkResponse(t, resp)
		bi := resp.BatchItem[0]
		if id == "panic" && (bi.ResultReason != kmip.ResultReasonGeneralFailure || !strings.Contains(bi.ResultMessage, "keybroker bug")) {
			t.Fatalf("panicking handler answered %+v, want General Failure naming a keybroker bug", bi)
		}
		if id == "master" && bi.ResultStatus != kmip.ResultStatusSuccess {
			t.Fatalf("after a panic: %+v, want success", bi)
		}
	}
}

// TestBatchLimit: a message with more items than keybroker takes is
// answered with Invalid Message, its first Operation echoed.
func TestBatchLimit(t *testing.T) {
	s := testServer(t)
	var pls []kmip.OperationPayload
	for range maxBatchItems + 1 {
		pls = append(pls, &payloads.GetAttributesRequestPayload{UniqueIdentifier: "master"})
	}
	msg := kmip.NewRequestMessage(kmip.V1_2, pls...)
	resp, _ := s.handle(&conn{}, ttlv.MarshalTTLV(&msg))
	checkResponse(t, resp)
	if bi := resp.BatchItem[0]; bi.ResultReason != kmip.ResultReasonInvalidMessage || bi.Operation != kmip.OperationGetAttributes || !strings.Contains(bi.ResultMessage, "at most") {
		t.Fatalf("oversized batch answered %+v, want Invalid Message with the Operation echoed", bi)
	}
}
