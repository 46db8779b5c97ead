package akvemu

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

const (
	testVault = "kb-east.vault.keybroker.test"
	testAlias = "kb-east-pe.privatelink.keybroker.test"
	testWest  = "kb-west.vault.keybroker.test"
)

// fakeClock is a settable clock for token and key validity.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is an emulator started for one test, with clients pointed at it.
type env struct {
	t     *testing.T
	srv   *Server
	info  Info
	clock *fakeClock
	hc    *http.Client
	tr    *http.Transport
}

// testConfig is an ephemeral two-vault emulator with 2048-bit keys (RSA
// key generation dominates test time).
func testConfig() Config {
	return Config{
		Ephemeral: true,
		Vaults:    []VaultSpec{{Host: testVault, Aliases: []string{testAlias}}, {Host: testWest}},
		Keys:      []KeySpec{{Vault: testVault, Name: "cmk", Size: 2048}, {Vault: testWest, Name: "cmk", Size: 2048}},
	}
}

func startEnv(t *testing.T, cfg Config) *env {
	t.Helper()
	clock := newFakeClock()
	if cfg.Now == nil {
		cfg.Now = clock.Now
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	srv, err := Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start() err = %v, want nil", err)
	}
	e := &env{t: t, srv: srv, info: srv.Info(), clock: clock}
	e.hc, e.tr = clientFor(t, e.info)
	t.Cleanup(func() {
		e.tr.CloseIdleConnections()
		if err := srv.Close(); err != nil {
			t.Errorf("Close() err = %v, want nil", err)
		}
	})
	return e
}

// clientFor is an http.Client trusting the emulator's CA and dialling its
// endpoint whatever host the URL names, as a client keeping production
// URLs would.
func clientFor(t *testing.T, info Info) (*http.Client, *http.Transport) {
	t.Helper()
	pem, err := os.ReadFile(info.CAFile)
	if err != nil {
		t.Fatalf("reading CA file: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("CA file %s has no certificate", info.CAFile)
	}
	var d net.Dialer
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", info.Endpoint)
		},
		MaxIdleConnsPerHost: 16,
	}
	return &http.Client{Transport: tr}, tr
}

// clientOptions points an SDK client at the emulator. retries < 0 disables
// retries, so that injected faults surface as they are.
func (e *env) clientOptions(retries int) azcore.ClientOptions {
	return azcore.ClientOptions{
		Cloud:     cloud.Configuration{ActiveDirectoryAuthorityHost: e.info.AuthorityHost, Services: map[cloud.ServiceName]cloud.ServiceConfiguration{}},
		Transport: e.hc,
		Retry:     policy.RetryOptions{MaxRetries: int32(retries), RetryDelay: 10 * time.Millisecond, MaxRetryDelay: 50 * time.Millisecond},
	}
}

func (e *env) secret(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("reading secret file: %v", err)
	}
	return string(b)
}

func (e *env) secretCred(t *testing.T, retries int) *azidentity.ClientSecretCredential {
	t.Helper()
	cred, err := azidentity.NewClientSecretCredential(e.info.TenantID, e.info.ClientID, e.secret(t, e.info.ClientSecretFile),
		&azidentity.ClientSecretCredentialOptions{ClientOptions: e.clientOptions(retries), DisableInstanceDiscovery: true})
	if err != nil {
		t.Fatalf("NewClientSecretCredential() err = %v, want nil", err)
	}
	return cred
}

func (e *env) keys(t *testing.T, cred azcore.TokenCredential, host string, retries int) *azkeys.Client {
	t.Helper()
	c, err := azkeys.NewClient("https://"+host+"/", cred, &azkeys.ClientOptions{ClientOptions: e.clientOptions(retries), DisableChallengeResourceVerification: true})
	if err != nil {
		t.Fatalf("azkeys.NewClient() err = %v, want nil", err)
	}
	return c
}

// token gets a raw access token for the configured client.
func (e *env) token(t *testing.T) string {
	t.Helper()
	tk, err := e.secretCred(t, 0).GetToken(context.Background(), policy.TokenRequestOptions{Scopes: []string{VaultResource + "/.default"}})
	if err != nil {
		t.Fatalf("GetToken() err = %v, want nil", err)
	}
	return tk.Token
}

// responseError unpacks an SDK error into status, code and inner code.
func responseError(t *testing.T, err error) (status int, code, inner string) {
	t.Helper()
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		t.Fatalf("err = %v (%T), want an *azcore.ResponseError", err, err)
	}
	body, rerr := runtime.Payload(re.RawResponse)
	if rerr != nil {
		t.Fatalf("reading error body: %v", rerr)
	}
	var b struct {
		Error struct {
			Code       string `json:"code"`
			Message    string `json:"message"`
			InnerError *struct {
				Code string `json:"code"`
			} `json:"innererror"`
		} `json:"error"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("error body %q is not AKV's JSON: %v", body, err)
	}
	if b.Error.Code != re.ErrorCode {
		t.Errorf("body code %q != ResponseError.ErrorCode %q", b.Error.Code, re.ErrorCode)
	}
	if b.Error.Message == "" {
		t.Errorf("error body %s has no message", body)
	}
	if b.Error.InnerError != nil {
		inner = b.Error.InnerError.Code
	}
	return re.StatusCode, re.ErrorCode, inner
}

// entraError unpacks an azidentity error into status and Entra's body.
func entraError(t *testing.T, err error) (status int, name, desc string, codes []int) {
	t.Helper()
	var afe *azidentity.AuthenticationFailedError
	if !errors.As(err, &afe) {
		t.Fatalf("err = %v (%T), want an *azidentity.AuthenticationFailedError", err, err)
	}
	if afe.RawResponse == nil {
		t.Fatalf("AuthenticationFailedError has no RawResponse: %v", err)
	}
	body, rerr := io.ReadAll(afe.RawResponse.Body)
	if rerr != nil {
		t.Fatalf("reading error body: %v", rerr)
	}
	var b struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
		Codes       []int  `json:"error_codes"`
		TraceID     string `json:"trace_id"`
	}
	if err := json.Unmarshal(body, &b); err != nil {
		t.Fatalf("error body %q is not Entra's JSON: %v", body, err)
	}
	if b.TraceID == "" {
		t.Errorf("Entra error body %s has no trace_id", body)
	}
	return afe.RawResponse.StatusCode, b.Error, b.Description, b.Codes
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
