package akv

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// testKey is the key the tests wrap; its bytes must never show in an error.
var testKey = bytes.Repeat([]byte{0xA5, 0x5A, 0x3C, 0xC3}, 8)

// checkErrorHygiene fails when err's text carries a secret, a token or key bytes.
func checkErrorHygiene(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	msg := err.Error()
	for _, s := range []string{testSecret, testToken, testMIHeader, testFederated, hex.EncodeToString(testKey),
		base64.StdEncoding.EncodeToString(testKey), base64.RawURLEncoding.EncodeToString(testKey), string(testKey)} {
		if strings.Contains(msg, s) {
			t.Errorf("error %q reveals a secret, token or key bytes", msg)
		}
	}
	if strings.Contains(msg, "\n") {
		t.Errorf("error %q spans lines, want one line", msg)
	}
}

// TestClassifyVaultAnswers drives the real azkeys client against canned Key
// Vault answers and checks each classification.
func TestClassifyVaultAnswers(t *testing.T) {
	challenge := fmt.Sprintf(`Bearer authorization="https://%s/%s", resource="https://%s"`, testLogin, testTenant, testSuffix)
	tests := []struct {
		name       string
		op         string // get, wrap or unwrap: the call that meets the answer
		answer     canned
		wantKind   kek.Kind
		wantCode   string
		wantStatus int
		wantRetry  time.Duration
		calls      int // requests the vault sees; 0 means 1
	}{
		{"403 ForbiddenByRbac", "wrap", canned{status: 403, body: vaultErrBody("Forbidden", "ForbiddenByRbac", "Caller is not authorized to perform action on resource.\r\nIf role assignments were recently changed, please wait.")}, kek.KindRevoked, "ForbiddenByRbac", 403, 0, 0},
		{"403 ForbiddenByPolicy", "unwrap", canned{status: 403, body: vaultErrBody("Forbidden", "ForbiddenByPolicy", "The user, group or application does not have keys unwrapKey permission.")}, kek.KindRevoked, "ForbiddenByPolicy", 403, 0, 0},
		{"403 ForbiddenByFirewall", "get", canned{status: 403, body: vaultErrBody("Forbidden", "ForbiddenByFirewall", "Client address is not authorized and caller is not a trusted service.")}, kek.KindRevoked, "ForbiddenByFirewall", 403, 0, 0},
		{"403 KeyDisabled", "wrap", canned{status: 403, body: vaultErrBody("Forbidden", "KeyDisabled", "Operation wrapKey is not allowed on a disabled key.")}, kek.KindRevoked, "KeyDisabled", 403, 0, 0},
		{"403 KeyOperationForbidden", "unwrap", canned{status: 403, body: vaultErrBody("Forbidden", "KeyOperationForbidden", "Operation unwrapKey is not permitted on this key.")}, kek.KindRevoked, "KeyOperationForbidden", 403, 0, 0},
		{"403 nested innererror", "wrap", canned{status: 403, body: `{"error":{"code":"Forbidden","message":"x","innererror":{"code":"AccessDenied","innererror":{"code":"ForbiddenByRbac"}}}}`}, kek.KindRevoked, "ForbiddenByRbac", 403, 0, 0},
		{"403 no body", "wrap", canned{status: 403}, kek.KindRevoked, "", 403, 0, 0},
		{"404 KeyNotFound", "get", canned{status: 404, body: vaultErrBody("KeyNotFound", "", "A key with (name/id) cmk was not found in this key vault.")}, kek.KindNotFound, "KeyNotFound", 404, 0, 0},
		{"404 on unwrap", "unwrap", canned{status: 404, body: vaultErrBody("KeyNotFound", "", "A key with (name/id) cmk/v was not found.")}, kek.KindNotFound, "KeyNotFound", 404, 0, 0},
		{"401 after auth", "wrap", canned{status: 401, header: map[string]string{"WWW-Authenticate": challenge}, body: vaultErrBody("Unauthorized", "", "AKV10032: Invalid issuer.")}, kek.KindRevoked, "Unauthorized", 401, 0, 2},
		{"401 without challenge", "get", canned{status: 401, body: vaultErrBody("Unauthorized", "", "AKV10022: Invalid audience.")}, kek.KindRevoked, "Unauthorized", 401, 0, 0},
		{"429 Retry-After seconds", "wrap", canned{status: 429, header: map[string]string{"Retry-After": "7"}, body: vaultErrBody("Throttled", "", "Request was not processed because too many requests were received.")}, kek.KindThrottled, "Throttled", 429, 7 * time.Second, 0},
		{"429 retry-after-ms", "unwrap", canned{status: 429, header: map[string]string{"retry-after-ms": "1500"}, body: vaultErrBody("Throttled", "", "x")}, kek.KindThrottled, "Throttled", 429, 1500 * time.Millisecond, 0},
		{"429 no hint", "get", canned{status: 429, body: vaultErrBody("Throttled", "", "x")}, kek.KindThrottled, "Throttled", 429, 0, 0},
		{"408", "wrap", canned{status: 408, body: vaultErrBody("RequestTimeout", "", "x")}, kek.KindUnavailable, "RequestTimeout", 408, 0, 0},
		{"500", "unwrap", canned{status: 500, body: vaultErrBody("InternalServerError", "", "x")}, kek.KindUnavailable, "InternalServerError", 500, 0, 0},
		{"502 html", "get", canned{status: 502, body: "<html>Bad Gateway</html>"}, kek.KindUnavailable, "", 502, 0, 0},
		{"503", "wrap", canned{status: 503, body: vaultErrBody("ServiceUnavailable", "", "x")}, kek.KindUnavailable, "ServiceUnavailable", 503, 0, 0},
		{"504", "wrap", canned{status: 504}, kek.KindUnavailable, "", 504, 0, 0},
		{"400 BadParameter", "unwrap", canned{status: 400, body: vaultErrBody("BadParameter", "", "Unwrap failed: bad ciphertext.")}, kek.KindInvalidInput, "BadParameter", 400, 0, 0},
		{"409 conflict", "get", canned{status: 409, body: vaultErrBody("Conflict", "", "x")}, kek.KindInvalidInput, "Conflict", 409, 0, 0},
		{"connection reset", "wrap", canned{reset: true}, kek.KindUnavailable, "ConnectionReset", 0, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAzure(t)
			w := f.wrapper(t, nil)
			ctx := context.Background()
			var copies []kek.Wrapped
			if tc.op == "unwrap" {
				var err error
				if copies, err = w.WrapKey(ctx, testKey); err != nil {
					t.Fatalf("WrapKey() err = %v, want nil", err)
				}
			}
			sdkOp := map[string]string{"get": "get", "wrap": "wrapkey", "unwrap": "unwrapkey"}[tc.op]
			f.setHook(func(op string) *canned {
				if op == sdkOp {
					return &tc.answer
				}
				return nil
			})
			var err error
			switch tc.op {
			case "get":
				_, err = w.KeyInfo(ctx)
			case "wrap":
				_, err = w.WrapKey(ctx, testKey)
			case "unwrap":
				_, err = w.UnwrapKey(ctx, copies)
			}
			checkKekError(t, err, tc.op, tc.wantKind, tc.wantCode, tc.wantStatus)
			var ke *kek.Error
			if errors.As(err, &ke) && ke.RetryAfter != tc.wantRetry {
				t.Errorf("RetryAfter = %v, want %v", ke.RetryAfter, tc.wantRetry)
			}
			// One request (MaxRetries -1); two when a challenge makes the SDK
			// authenticate again.
			if want := max(tc.calls, 1); f.count(sdkOp) != want {
				t.Errorf("%s requests = %d, want %d", sdkOp, f.count(sdkOp), want)
			}
		})
	}
}

// checkKekError checks err is a *kek.Error of the wanted kind, code and
// status, naming the operation, region and key, and carrying no secret.
func checkKekError(t *testing.T, err error, op string, kind kek.Kind, code string, status int) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s err = nil, want %v", op, kind)
	}
	var ke *kek.Error
	if !errors.As(err, &ke) {
		t.Fatalf("%s err = %v (%T), want a *kek.Error", op, err, err)
	}
	if ke.Kind != kind || ke.Code != code || ke.Status != status || ke.Op != op {
		t.Errorf("%s err = {Kind: %v, Code: %q, Status: %d, Op: %q}, want {%v, %q, %d, %q}: %v", op, ke.Kind, ke.Code, ke.Status, ke.Op, kind, code, status, op, err)
	}
	msg := err.Error()
	t.Logf("%s err = %s", op, msg)
	if ke.Region != "" && !strings.Contains(msg, ke.Region) {
		t.Errorf("error %q does not name region %q", msg, ke.Region)
	}
	if !strings.Contains(msg, "/keys/cmk") {
		t.Errorf("error %q does not name the key", msg)
	}
	if code != "" && !strings.Contains(msg, code) {
		t.Errorf("error %q does not name code %q", msg, code)
	}
	checkErrorHygiene(t, err)
}

// TestClassifyEntraAnswers drives the real azidentity client secret
// credential against canned Entra ID answers.
func TestClassifyEntraAnswers(t *testing.T) {
	tests := []struct {
		name       string
		answer     canned
		wantKind   kek.Kind
		wantCode   string
		wantStatus int
	}{
		{"invalid secret", canned{status: 401, body: entraErrBody("invalid_client", 7000215, "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the client secret value.\r\nTrace ID: x")}, kek.KindRevoked, "AADSTS7000215", 401},
		{"expired secret", canned{status: 401, body: entraErrBody("invalid_client", 7000222, "AADSTS7000222: The provided client secret keys for app '1' are expired.")}, kek.KindRevoked, "AADSTS7000222", 401},
		{"app not found", canned{status: 400, body: entraErrBody("unauthorized_client", 700016, "AADSTS700016: Application with identifier '1' was not found in the directory 'x'.")}, kek.KindRevoked, "AADSTS700016", 400},
		{"invalid_client without codes", canned{status: 400, body: `{"error":"invalid_client","error_description":"client is bad"}`}, kek.KindRevoked, "invalid_client", 400},
		{"code only in description", canned{status: 400, body: `{"error":"invalid_request","error_description":"AADSTS7000222: expired"}`}, kek.KindRevoked, "AADSTS7000222", 400},
		{"tenant not found", canned{status: 400, body: entraErrBody("invalid_request", 90002, "AADSTS90002: Tenant 'x' not found.")}, kek.KindInvalidInput, "AADSTS90002", 400},
		{"entra 503", canned{status: 503, body: `{"error":"temporarily_unavailable","error_description":"AADSTS90033: A transient error has occurred."}`}, kek.KindUnavailable, "AADSTS90033", 503},
		{"entra 429", canned{status: 429, header: map[string]string{"Retry-After": "3"}, body: `{"error":"too_many_requests"}`}, kek.KindThrottled, "too_many_requests", 429},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAzure(t)
			f.setHook(func(op string) *canned {
				if op == "token" {
					return &tc.answer
				}
				return nil
			})
			w := f.wrapper(t, nil)
			_, err := w.WrapKey(context.Background(), testKey)
			checkKekError(t, err, "get", tc.wantKind, tc.wantCode, tc.wantStatus)
			if f.count("get") != 0 {
				t.Errorf("vault saw %d authorized requests, want 0 without a token", f.count("get"))
			}
		})
	}
}

// TestClassifyTransport covers failures with no answer: refused, reset,
// blackholed, untrusted TLS, an unreachable token endpoint, and the caller's
// own deadline and cancellation.
func TestClassifyTransport(t *testing.T) {
	t.Run("connection refused", func(t *testing.T) {
		f := newFakeAzure(t)
		w := f.wrapper(t, nil)
		f.srv.Close()
		_, err := w.KeyInfo(context.Background())
		checkKekError(t, err, "get", kek.KindUnavailable, "ConnectionRefused", 0)
	})
	t.Run("blackhole with a short attempt timeout", func(t *testing.T) {
		f := newFakeAzure(t)
		f.setHook(func(op string) *canned {
			if op == "get" {
				return &canned{hang: true}
			}
			return nil
		})
		w := f.wrapper(t, func(c *Config) { c.Timeout = 300 * time.Millisecond })
		_, err := w.KeyInfo(context.Background())
		checkKekError(t, err, "get", kek.KindUnavailable, "Timeout", 0)
		if !errors.Is(err, ErrAttemptTimeout) {
			t.Errorf("KeyInfo() err = %v, want errors.Is ErrAttemptTimeout", err)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("KeyInfo() err = %v matches context.DeadlineExceeded, want not: the caller's deadline did not pass", err)
		}
	})
	t.Run("TLS never answers", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		done := make(chan struct{})
		defer close(done)
		go func() {
			for i := 0; i < 10; i++ {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() { <-done; c.Close() }()
			}
		}()
		env := customEnv
		env.ConnectTo = ln.Addr().String()
		w, err := New(Config{KeyID: "https://kb-test." + testSuffix + "/keys/cmk", Environment: env, Credential: staticCred{}, Timeout: 300 * time.Millisecond, MaxRetries: -1, Region: "r1"})
		if err != nil {
			t.Fatal(err)
		}
		_, err = w.KeyInfo(context.Background())
		checkKekError(t, err, "get", kek.KindUnavailable, "Timeout", 0)
	})
	t.Run("untrusted certificate", func(t *testing.T) {
		f := newFakeAzure(t)
		env := f.env()
		env.CAFile = ""
		w := f.wrapper(t, func(c *Config) { c.Environment = env })
		_, err := w.KeyInfo(context.Background())
		// The token request fails first: the authority is the same server.
		checkKekError(t, err, "get", kek.KindUnavailable, "TLSFailure", 0)
		if f.count("token") != 0 {
			t.Errorf("token endpoint saw %d requests over untrusted TLS, want 0", f.count("token"))
		}
	})
	t.Run("token endpoint unreachable", func(t *testing.T) {
		f := newFakeAzure(t)
		dead, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		deadAddr := dead.Addr().String()
		dead.Close()
		env := f.env()
		env.AuthorityHost = "https://" + deadAddr + "/"
		w := f.wrapper(t, func(c *Config) {
			cred, err := NewCredential(f.secretCred(t), env)
			if err != nil {
				t.Fatal(err)
			}
			c.Credential = cred
		})
		_, err = w.WrapKey(context.Background(), testKey)
		checkKekError(t, err, "get", kek.KindUnavailable, "TokenEndpointUnreachable", 0)
	})
	t.Run("caller deadline", func(t *testing.T) {
		f := newFakeAzure(t)
		f.setHook(func(op string) *canned {
			if op == "wrapkey" {
				return &canned{hang: true}
			}
			return nil
		})
		w := f.wrapper(t, nil)
		if _, err := w.KeyInfo(context.Background()); err != nil {
			t.Fatalf("KeyInfo() err = %v, want nil", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := w.WrapKey(ctx, testKey)
		checkKekError(t, err, "wrap", kek.KindUnavailable, "CallerContext", 0)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("WrapKey() err = %v, want errors.Is context.DeadlineExceeded", err)
		}
	})
	t.Run("caller cancel", func(t *testing.T) {
		f := newFakeAzure(t)
		w := f.wrapper(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := w.UnwrapKey(ctx, []kek.Wrapped{{KeyID: "https://kb-test." + testSuffix + "/keys/cmk/" + testVersion1, Algorithm: "RSA-OAEP-256", Ciphertext: []byte{1}}})
		checkKekError(t, err, "unwrap", kek.KindUnavailable, "CallerContext", 0)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("UnwrapKey() err = %v, want errors.Is context.Canceled", err)
		}
	})
}

// TestRetryHonoursRetryAfter checks bounded SDK retries: a short Retry-After
// is waited for and retried; one above MaxRetryDelay is returned at once.
func TestRetryHonoursRetryAfter(t *testing.T) {
	tests := []struct {
		name      string
		header    map[string]string
		wantErr   bool
		wantCalls int
	}{
		{"short hint retried", map[string]string{"retry-after-ms": "50"}, false, 2},
		{"long hint not waited for", map[string]string{"Retry-After": "30"}, true, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAzure(t)
			first := true
			f.setHook(func(op string) *canned {
				if op == "get" && first {
					first = false
					return &canned{status: 429, header: tc.header, body: vaultErrBody("Throttled", "", "x")}
				}
				return nil
			})
			w := f.wrapper(t, func(c *Config) { c.MaxRetries = 2; c.MaxRetryDelay = time.Second })
			_, err := w.KeyInfo(context.Background())
			if (err != nil) != tc.wantErr {
				t.Fatalf("KeyInfo() err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr && kek.KindOf(err) != kek.KindThrottled {
				t.Errorf("KeyInfo() kind = %v, want throttled", kek.KindOf(err))
			}
			if n := f.count("get"); n != tc.wantCalls {
				t.Errorf("get requests = %d, want %d", n, tc.wantCalls)
			}
		})
	}
}

// TestClassifyErrors covers errors built by hand: those that are hard to
// provoke on loopback (DNS, TLS handshake timeouts) and the pass-through cases.
func TestClassifyErrors(t *testing.T) {
	u := "https://kb.vault.keybroker.test/keys/cmk?api-version=7.6&secret=x"
	urlErr := func(err error) error { return &url.Error{Op: "Post", URL: u, Err: err} }
	given := &kek.Error{Kind: kek.KindNotFound, Op: "get"}
	tests := []struct {
		name     string
		err      error
		wantKind kek.Kind
		wantCode string
		wantIs   error
	}{
		{"dns", urlErr(&net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "no such host", Name: "kb.vault.keybroker.test", IsNotFound: true}}), kek.KindUnavailable, "DNSFailure", nil},
		{"tls handshake timeout", urlErr(tlsTimeout{}), kek.KindUnavailable, "Timeout", nil},
		{"refused", urlErr(&net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}), kek.KindUnavailable, "ConnectionRefused", nil},
		{"reset", urlErr(&net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}), kek.KindUnavailable, "ConnectionReset", nil},
		{"eof", urlErr(io.EOF), kek.KindUnavailable, "ConnectionReset", nil},
		{"certificate", urlErr(&tls.CertificateVerificationError{Err: errors.New("x509: certificate signed by unknown authority")}), kek.KindUnavailable, "TLSFailure", nil},
		{"deadline kept by Classify", urlErr(context.DeadlineExceeded), kek.KindUnavailable, "Timeout", context.DeadlineExceeded},
		{"canceled kept by Classify", context.Canceled, kek.KindUnavailable, "Timeout", context.Canceled},
		{"unknown error", errors.New("something odd"), kek.KindUnavailable, "NetworkError", nil},
		{"already classified", given, kek.KindNotFound, "", kek.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Classify("wrap", tc.err)
			var ke *kek.Error
			if !errors.As(err, &ke) {
				t.Fatalf("Classify(%v) = %v, want a *kek.Error", tc.err, err)
			}
			if ke.Kind != tc.wantKind || ke.Code != tc.wantCode {
				t.Errorf("Classify(%v) = {Kind: %v, Code: %q}, want {%v, %q}", tc.err, ke.Kind, ke.Code, tc.wantKind, tc.wantCode)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("Classify(%v) = %v, want errors.Is %v", tc.err, err, tc.wantIs)
			}
			if strings.Contains(err.Error(), "secret=x") || strings.Contains(err.Error(), "api-version") {
				t.Errorf("Classify(%v) = %q, want the URL query dropped", tc.err, err)
			}
		})
	}
	if err := Classify("wrap", nil); err != nil {
		t.Errorf("Classify(nil) = %v, want nil", err)
	}
}

type tlsTimeout struct{}

func (tlsTimeout) Error() string   { return "net/http: TLS handshake timeout" }
func (tlsTimeout) Timeout() bool   { return true }
func (tlsTimeout) Temporary() bool { return true }

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		name   string
		header map[string]string
		want   time.Duration
	}{
		{"none", nil, 0},
		{"seconds", map[string]string{"Retry-After": "12"}, 12 * time.Second},
		{"ms", map[string]string{"retry-after-ms": "250"}, 250 * time.Millisecond},
		{"x-ms", map[string]string{"x-ms-retry-after-ms": "80"}, 80 * time.Millisecond},
		{"ms preferred", map[string]string{"retry-after-ms": "5", "Retry-After": "9"}, 5 * time.Millisecond},
		{"date", map[string]string{"Retry-After": now.Add(90 * time.Second).Format(http.TimeFormat)}, 90 * time.Second},
		{"past date", map[string]string{"Retry-After": now.Add(-time.Minute).Format(http.TimeFormat)}, 0},
		{"negative", map[string]string{"Retry-After": "-4"}, 0},
		{"garbage", map[string]string{"Retry-After": "soon"}, 0},
		{"huge capped", map[string]string{"Retry-After": "99999999999999999"}, time.Hour},
		{"overflow", map[string]string{"Retry-After": "99999999999999999999"}, 0},
		{"large capped", map[string]string{"Retry-After": "86400"}, time.Hour},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.header {
				h.Set(k, v)
			}
			if got := retryAfter(h, func() time.Time { return now }); got != tc.want {
				t.Errorf("retryAfter(%v) = %v, want %v", tc.header, got, tc.want)
			}
		})
	}
}

// FuzzRetryAfter checks the Retry-After parser never panics and stays in
// [0, 1h].
func FuzzRetryAfter(f *testing.F) {
	for _, s := range []string{"", "0", "12", "-1", "Wed, 21 Oct 2015 07:28:00 GMT", "1e9", "99999999999999999999"} {
		f.Add(s, s)
	}
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	f.Fuzz(func(t *testing.T, ra, ms string) {
		h := http.Header{}
		h.Set("Retry-After", ra)
		h.Set("retry-after-ms", ms)
		if d := retryAfter(h, func() time.Time { return now }); d < 0 || d > time.Hour {
			t.Fatalf("retryAfter(%q, %q) = %v, want within [0, 1h]", ra, ms, d)
		}
	})
}

// FuzzParseErrorBody checks the Key Vault and Entra ID error body parsers
// never panic, whatever a server sends.
func FuzzParseErrorBody(f *testing.F) {
	for _, s := range []string{
		vaultErrBody("Forbidden", "ForbiddenByRbac", "x"),
		`{"error":{"code":"Forbidden","innererror":{"innererror":{"code":"KeyDisabled"}}}}`,
		entraErrBody("invalid_client", 7000215, "AADSTS7000215: x"),
		`{"error":"x","error_codes":[-1]}`, `{"error":null}`, `[]`, `"x"`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		code, msg := parseVaultError(body)
		_ = oneLine(msg, 200)
		_ = code
		code, oauthErr, desc := parseEntraError(body)
		_, _, _ = code, oauthErr, oneLine(desc, 240)
	})
}
