package akv

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/golang-jwt/jwt/v5"
)

// Test identities. The secret and token must never show in an error.
const (
	testTenant    = "72f988bf-0000-4000-8000-000000000001"
	testClientID  = "11111111-2222-3333-4444-555555555555"
	testSecret    = "s3cret-value-NEVER-printed"
	testToken     = "eyFAKE.access-token-NEVER-printed"
	testMIHeader  = "mi-header-NEVER-printed"
	testFederated = "eyFEDERATED.service-account-token-NEVER-printed"
	testSuffix    = "vault.keybroker.test"
	testHSMSuffix = "managedhsm.keybroker.test"
	testLogin     = "login.keybroker.test"
	testVersion1  = "0123456789abcdef0123456789abcdef"
	testVersion2  = "fedcba9876543210fedcba9876543210"
)

// testRSAKeys are generated once: RSA key generation is the slow part.
var testRSAKeys = sync.OnceValue(func() [2]*rsa.PrivateKey {
	var ks [2]*rsa.PrivateKey
	for i := range ks {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		ks[i] = k
	}
	return ks
})

// testPKI is a CA and a server certificate for the given names.
type testPKI struct {
	caFile string
	caPEM  []byte
	cert   tls.Certificate
	dir    string
}

func newTestPKI(t *testing.T, names ...string) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "akv test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	leafTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "akv test server"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		DNSNames:     names,
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, ca, &leafKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return &testPKI{
		caFile: caFile,
		caPEM:  caPEM,
		dir:    dir,
		cert:   tls.Certificate{Certificate: [][]byte{leafDER}, PrivateKey: leafKey},
	}
}

// canned is a scripted answer to one request.
type canned struct {
	status int
	header map[string]string
	body   string
	reset  bool // close the connection without answering
	hang   bool // never answer
}

// fakeVersion is one version of a fake vault key.
type fakeVersion struct {
	id      string
	key     *rsa.PrivateKey
	enabled bool
	ops     []string
	expires time.Time // zero = none
}

// fakeAzure is a Key Vault and an Entra ID token endpoint on one loopback
// TLS server, answering like the real services do (401 challenge, JSON
// bodies, real RSA-OAEP), with hooks for scripted failures.
type fakeAzure struct {
	t        *testing.T
	srv      *httptest.Server
	pki      *testPKI
	resource string // the challenge's resource
	done     chan struct{}

	mu       sync.Mutex
	keys     map[string][]*fakeVersion // by name, oldest first
	counts   map[string]int            // authorized requests by op: get, wrapkey, unwrapkey, token, msi
	hook     func(op string) *canned   // scripted answer for op, or nil
	secret   string
	certPub  crypto.PublicKey
	kidHost  string // overrides the host in answered key identifiers
	tokenTTL time.Duration
}

func newFakeAzure(t *testing.T, extraNames ...string) *fakeAzure {
	t.Helper()
	names := append([]string{"*." + testSuffix, "*." + testHSMSuffix, testLogin}, extraNames...)
	pki := newTestPKI(t, names...)
	f := &fakeAzure{
		t:        t,
		pki:      pki,
		resource: "https://" + testSuffix,
		done:     make(chan struct{}),
		keys:     map[string][]*fakeVersion{},
		counts:   map[string]int{},
		secret:   testSecret,
		tokenTTL: time.Hour,
	}
	ks := testRSAKeys()
	f.keys["cmk"] = []*fakeVersion{{id: testVersion1, key: ks[0], enabled: true, ops: []string{"wrapKey", "unwrapKey", "encrypt", "decrypt"}}}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // handshake errors are expected
	f.srv.TLS = &tls.Config{Certificates: []tls.Certificate{pki.cert}, MinVersion: tls.VersionTLS12}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	t.Cleanup(func() { close(f.done) }) // runs first: frees hanging handlers
	return f
}

func (f *fakeAzure) env() Environment {
	return Environment{
		Name:             EnvCustom,
		AuthorityHost:    "https://" + testLogin + "/",
		VaultSuffix:      testSuffix,
		ManagedHSMSuffix: testHSMSuffix,
		CAFile:           f.pki.caFile,
		ConnectTo:        f.srv.Listener.Addr().String(),
	}
}

func (f *fakeAzure) count(op string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[op]
}

func (f *fakeAzure) resetCounts() {
	f.mu.Lock()
	defer f.mu.Unlock()
	clear(f.counts)
}

func (f *fakeAzure) setHook(h func(op string) *canned) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = h
}

// rotate adds a version to key name with the second test RSA key.
func (f *fakeAzure) rotate(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	v := &fakeVersion{id: testVersion2, key: testRSAKeys()[1], enabled: true, ops: []string{"wrapKey", "unwrapKey"}}
	f.keys[name] = append(f.keys[name], v)
	return v.id
}

func (f *fakeAzure) setEnabled(name string, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, v := range f.keys[name] {
		v.enabled = on
	}
}

func (f *fakeAzure) serve(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/.well-known/openid-configuration"):
		tenant := strings.Split(strings.TrimPrefix(r.URL.Path, "/"), "/")[0]
		base := "https://" + testLogin + "/" + tenant
		writeJSON(w, 200, map[string]any{
			"authorization_endpoint": base + "/oauth2/v2.0/authorize",
			"token_endpoint":         base + "/oauth2/v2.0/token",
			"issuer":                 base + "/v2.0",
		})
	case strings.HasSuffix(r.URL.Path, "/oauth2/v2.0/token"):
		f.serveToken(w, r)
	case r.URL.Path == "/msi/token":
		f.serveMSI(w, r)
	case strings.HasPrefix(r.URL.Path, "/keys/"):
		f.serveVault(w, r)
	default:
		http.NotFound(w, r)
	}
}

// script applies the hook for op, reporting whether it answered.
func (f *fakeAzure) script(w http.ResponseWriter, r *http.Request, op string) bool {
	f.mu.Lock()
	f.counts[op]++
	h := f.hook
	f.mu.Unlock()
	if h == nil {
		return false
	}
	c := h(op)
	if c == nil {
		return false
	}
	switch {
	case c.hang:
		select {
		case <-r.Context().Done():
		case <-f.done:
		}
		return true
	case c.reset:
		hj, ok := w.(http.Hijacker)
		if !ok {
			f.t.Errorf("fake: cannot hijack to reset")
			return true
		}
		conn, _, err := hj.Hijack()
		if err == nil {
			if tc, ok := conn.(*tls.Conn); ok {
				conn = tc.NetConn() // no TLS close_notify: just drop
			}
			if tcp, ok := conn.(*net.TCPConn); ok {
				_ = tcp.SetLinger(0) // RST, not FIN
			}
			_ = conn.Close()
		}
		return true
	}
	for k, v := range c.header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(c.status)
	_, _ = io.WriteString(w, c.body)
	return true
}

func (f *fakeAzure) serveToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		writeJSON(w, 400, map[string]any{"error": "invalid_request"})
		return
	}
	if f.script(w, r, "token") {
		return
	}
	f.mu.Lock()
	secret, certPub, ttl := f.secret, f.certPub, f.tokenTTL
	f.mu.Unlock()
	ok := r.PostForm.Get("client_id") == testClientID
	switch {
	case r.PostForm.Get("client_secret") != "":
		ok = ok && r.PostForm.Get("client_secret") == secret
	case r.PostForm.Get("client_assertion") == testFederated:
	case r.PostForm.Get("client_assertion") != "" && certPub != nil:
		_, err := jwt.Parse(r.PostForm.Get("client_assertion"), func(*jwt.Token) (any, error) { return certPub, nil },
			jwt.WithValidMethods([]string{"PS256", "RS256"}), jwt.WithAudience("https://"+testLogin+"/"+testTenant+"/oauth2/v2.0/token"))
		ok = ok && err == nil
	default:
		ok = false
	}
	if !ok {
		writeJSON(w, 401, map[string]any{
			"error":             "invalid_client",
			"error_description": "AADSTS7000215: Invalid client secret provided.\r\nTrace ID: 1\r\nCorrelation ID: 2",
			"error_codes":       []int{7000215},
		})
		return
	}
	writeJSON(w, 200, map[string]any{"token_type": "Bearer", "expires_in": int(ttl.Seconds()), "ext_expires_in": int(ttl.Seconds()), "access_token": testToken})
}

func (f *fakeAzure) serveMSI(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("X-IDENTITY-HEADER") != testMIHeader {
		writeJSON(w, 401, map[string]any{"statusCode": 401, "message": "bad identity header"})
		return
	}
	if f.script(w, r, "msi") {
		return
	}
	writeJSON(w, 200, map[string]any{
		"access_token": testToken,
		"expires_on":   strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10),
		"resource":     r.URL.Query().Get("resource"),
		"token_type":   "Bearer",
		"client_id":    r.URL.Query().Get("client_id"),
	})
}

func (f *fakeAzure) serveVault(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") != "Bearer "+testToken {
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer authorization="https://%s/%s", resource="%s"`, testLogin, testTenant, f.resource))
		writeJSON(w, 401, map[string]any{"error": map[string]any{"code": "Unauthorized", "message": "AKV10000: Request is missing a Bearer or PoP token."}})
		return
	}
	segs := strings.Split(strings.TrimPrefix(r.URL.Path, "/keys/"), "/")
	op := "get"
	if len(segs) == 3 {
		op = segs[2]
	}
	if f.script(w, r, op) {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	versions := f.keys[segs[0]]
	var v *fakeVersion
	if len(segs) == 1 || segs[1] == "" {
		if len(versions) > 0 {
			v = versions[len(versions)-1]
		}
	} else {
		for _, x := range versions {
			if x.id == segs[1] {
				v = x
			}
		}
	}
	if v == nil {
		writeJSON(w, 404, map[string]any{"error": map[string]any{"code": "KeyNotFound", "message": "A key with (name/id) " + segs[0] + " was not found in this key vault."}})
		return
	}
	host := r.Host
	if f.kidHost != "" {
		host = f.kidHost
	}
	kid := "https://" + host + "/keys/" + segs[0] + "/" + v.id
	if !v.enabled {
		writeJSON(w, 403, map[string]any{"error": map[string]any{"code": "Forbidden", "message": "Operation is not allowed on a disabled key.", "innererror": map[string]any{"code": "KeyDisabled"}}})
		return
	}
	b64 := base64.RawURLEncoding
	switch op {
	case "get":
		attrs := map[string]any{"enabled": v.enabled, "created": 1700000000, "updated": 1700000000, "recoveryLevel": "Recoverable+Purgeable"}
		if !v.expires.IsZero() {
			attrs["exp"] = v.expires.Unix()
		}
		writeJSON(w, 200, map[string]any{
			"key": map[string]any{
				"kid": kid, "kty": "RSA", "key_ops": v.ops,
				"n": b64.EncodeToString(v.key.N.Bytes()), "e": b64.EncodeToString(big.NewInt(int64(v.key.E)).Bytes()),
			},
			"attributes": attrs,
		})
	case "wrapkey", "unwrapkey":
		var req struct {
			Alg   string `json:"alg"`
			Value string `json:"value"`
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeJSON(w, 400, map[string]any{"error": map[string]any{"code": "BadParameter", "message": "bad body"}})
			return
		}
		in, err := b64.DecodeString(strings.TrimRight(req.Value, "="))
		if err != nil {
			writeJSON(w, 400, map[string]any{"error": map[string]any{"code": "BadParameter", "message": "value is not base64url"}})
			return
		}
		var h = sha256.New()
		switch req.Alg {
		case "RSA-OAEP-256":
		case "RSA-OAEP":
			h = sha1.New()
		default:
			writeJSON(w, 400, map[string]any{"error": map[string]any{"code": "BadParameter", "message": "unsupported algorithm " + req.Alg}})
			return
		}
		var out []byte
		if op == "wrapkey" {
			out, err = rsa.EncryptOAEP(h, rand.Reader, &v.key.PublicKey, in, nil)
		} else {
			out, err = rsa.DecryptOAEP(h, rand.Reader, v.key, in, nil)
		}
		if err != nil {
			writeJSON(w, 400, map[string]any{"error": map[string]any{"code": "BadParameter", "message": "Bad Request"}})
			return
		}
		writeJSON(w, 200, map[string]any{"kid": kid, "value": b64.EncodeToString(out)})
	default:
		http.NotFound(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// secretCred returns a client-secret credential against f with no retries.
func (f *fakeAzure) secretCred(t *testing.T) CredentialConfig {
	t.Helper()
	return CredentialConfig{Kind: CredClientSecret, TenantID: testTenant, ClientID: testClientID, ClientSecret: testSecret, MaxRetries: -1, Timeout: 5 * time.Second}
}

// wrapper builds a Wrapper for key cmk (versioned unless keyID is given)
// with a client-secret credential; mod may adjust the config.
func (f *fakeAzure) wrapper(t *testing.T, mod func(*Config)) *Wrapper {
	t.Helper()
	env := f.env()
	cred, err := NewCredential(f.secretCred(t), env)
	if err != nil {
		t.Fatalf("NewCredential() err = %v, want nil", err)
	}
	cfg := Config{
		KeyID:       "https://kb-test." + testSuffix + "/keys/cmk/" + testVersion1,
		Region:      "test-region",
		Environment: env,
		Credential:  cred,
		Timeout:     5 * time.Second,
		MaxRetries:  -1,
		RetryDelay:  10 * time.Millisecond,
	}
	if mod != nil {
		mod(&cfg)
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatalf("New() err = %v, want nil", err)
	}
	return w
}

func vaultErrBody(code, inner, msg string) string {
	e := map[string]any{"code": code, "message": msg}
	if inner != "" {
		e["innererror"] = map[string]any{"code": inner}
	}
	b, _ := json.Marshal(map[string]any{"error": e})
	return string(b)
}

func entraErrBody(oauthErr string, code int, desc string) string {
	b, _ := json.Marshal(map[string]any{"error": oauthErr, "error_description": desc, "error_codes": []int{code}})
	return string(b)
}

// staticCred is a TokenCredential for tests that never reach a token endpoint.
type staticCred struct{}

func (staticCred) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: testToken, ExpiresOn: time.Now().Add(time.Hour)}, nil
}
