package akvemu

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

// TestCredentials runs every credential kind the broker supports against
// the emulator with the real azidentity. Not parallel: the managed
// identity case sets environment variables.
func TestCredentials(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	tests := []struct {
		name string
		cred func(t *testing.T) azcore.TokenCredential
	}{
		{"client secret", func(t *testing.T) azcore.TokenCredential { return e.secretCred(t, 0) }},
		{"client certificate", func(t *testing.T) azcore.TokenCredential {
			pem, err := os.ReadFile(e.info.ClientCertFile)
			if err != nil {
				t.Fatal(err)
			}
			certs, key, err := azidentity.ParseCertificates(pem, nil)
			if err != nil {
				t.Fatalf("ParseCertificates(%s) err = %v, want nil", e.info.ClientCertFile, err)
			}
			cred, err := azidentity.NewClientCertificateCredential(e.info.TenantID, e.info.ClientID, certs, key,
				&azidentity.ClientCertificateCredentialOptions{ClientOptions: e.clientOptions(0), DisableInstanceDiscovery: true})
			if err != nil {
				t.Fatalf("NewClientCertificateCredential() err = %v, want nil", err)
			}
			return cred
		}},
		{"client certificate with chain", func(t *testing.T) azcore.TokenCredential {
			pem, err := os.ReadFile(e.info.ClientCertFile)
			if err != nil {
				t.Fatal(err)
			}
			certs, key, err := azidentity.ParseCertificates(pem, nil)
			if err != nil {
				t.Fatal(err)
			}
			cred, err := azidentity.NewClientCertificateCredential(e.info.TenantID, e.info.ClientID, certs, key,
				&azidentity.ClientCertificateCredentialOptions{ClientOptions: e.clientOptions(0), DisableInstanceDiscovery: true, SendCertificateChain: true})
			if err != nil {
				t.Fatal(err)
			}
			return cred
		}},
		{"workload identity", func(t *testing.T) azcore.TokenCredential {
			cred, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
				ClientOptions: e.clientOptions(0), DisableInstanceDiscovery: true,
				TenantID: e.info.TenantID, ClientID: e.info.ClientID, TokenFilePath: e.info.FederatedTokenFile,
			})
			if err != nil {
				t.Fatalf("NewWorkloadIdentityCredential() err = %v, want nil", err)
			}
			return cred
		}},
		{"managed identity (App Service)", func(t *testing.T) azcore.TokenCredential {
			t.Setenv("IDENTITY_ENDPOINT", e.info.IdentityEndpoint)
			t.Setenv("IDENTITY_HEADER", e.info.IdentityHeader)
			cred, err := azidentity.NewManagedIdentityCredential(&azidentity.ManagedIdentityCredentialOptions{ClientOptions: e.clientOptions(0)})
			if err != nil {
				t.Fatalf("NewManagedIdentityCredential() err = %v, want nil", err)
			}
			return cred
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			must(t, e.srv.Control().ResetCounters(ctx))
			kc := e.keys(t, tc.cred(t), testVault, 0)
			if _, err := kc.GetKey(ctx, "cmk", "", nil); err != nil {
				t.Fatalf("GetKey(cmk) err = %v, want nil", err)
			}
			w, err := kc.WrapKey(ctx, "cmk", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: []byte("dek")}, nil)
			if err != nil {
				t.Fatalf("WrapKey(cmk) err = %v, want nil", err)
			}
			if _, err := kc.UnwrapKey(ctx, "cmk", w.KID.Version(), azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: w.Result}, nil); err != nil {
				t.Fatalf("UnwrapKey(cmk) err = %v, want nil", err)
			}
			counts, err := e.srv.Control().Counters(ctx)
			if err != nil {
				t.Fatal(err)
			}
			// One token serves every call; the first vault call is the
			// unauthenticated challenge, so get is counted twice.
			if counts[HostLogin][OpToken] != 1 || counts[testVault][OpGet] != 2 || counts[testVault][OpWrapKey] != 1 {
				t.Errorf("counters = %v, want login/token 1, %s get 2 and wrapkey 1", counts, testVault)
			}
		})
	}
}

// TestManagedIdentityEndpoint checks the App Service endpoint's answers and
// refusals with raw requests.
func TestManagedIdentityEndpoint(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	other, err := e.srv.Control().AddClient(ctx, "")
	if err != nil {
		t.Fatalf("AddClient() err = %v, want nil", err)
	}
	tests := []struct {
		name   string
		header string
		query  string
		status int
		client string
	}{
		{"system assigned", e.info.IdentityHeader, "api-version=2019-08-01&resource=https://vault.azure.net", 200, e.info.ClientID},
		{"user assigned", e.info.IdentityHeader, "api-version=2019-08-01&resource=https://vault.azure.net/&client_id=" + other.ClientID, 200, other.ClientID},
		{"missing header", "", "api-version=2019-08-01&resource=https://vault.azure.net", 400, ""},
		{"wrong header", "nope", "api-version=2019-08-01&resource=https://vault.azure.net", 401, ""},
		{"wrong api-version", e.info.IdentityHeader, "api-version=2017-09-01&resource=https://vault.azure.net", 400, ""},
		{"missing resource", e.info.IdentityHeader, "api-version=2019-08-01", 400, ""},
		{"other resource", e.info.IdentityHeader, "api-version=2019-08-01&resource=https://management.azure.com", 400, ""},
		{"unknown client", e.info.IdentityHeader, "api-version=2019-08-01&resource=https://vault.azure.net&client_id=unknown", 400, ""},
		{"resource id", e.info.IdentityHeader, "api-version=2019-08-01&resource=https://vault.azure.net&mi_res_id=/subscriptions/x", 400, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.info.IdentityEndpoint+"?"+tc.query, nil)
			if tc.header != "" {
				req.Header.Set("X-IDENTITY-HEADER", tc.header)
			}
			resp, err := e.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("GET %s = %d %v, want %d", tc.query, resp.StatusCode, body, tc.status)
			}
			if tc.status != 200 {
				if msg, _ := body["message"].(string); msg == "" {
					t.Errorf("error body %v has no message", body)
				}
				return
			}
			if body["token_type"] != "Bearer" || body["client_id"] != tc.client || body["access_token"] == "" || body["expires_on"] == "" || body["resource"] == "" {
				t.Errorf("token answer = %v, want Bearer token for %s with expires_on and resource", body, tc.client)
			}
		})
	}
}

// TestTokenFailures drives Entra's refusals through azidentity.
func TestTokenFailures(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	ctl := e.srv.Control()
	scope := policy.TokenRequestOptions{Scopes: []string{VaultResource + "/.default"}}
	secretCred := func(t *testing.T, clientID, secret string) *azidentity.ClientSecretCredential {
		cred, err := azidentity.NewClientSecretCredential(e.info.TenantID, clientID, secret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: e.clientOptions(-1), DisableInstanceDiscovery: true})
		if err != nil {
			t.Fatal(err)
		}
		return cred
	}
	original := e.secret(t, e.info.ClientSecretFile)

	tests := []struct {
		name   string
		setup  func(t *testing.T)
		cred   func(t *testing.T) azcore.TokenCredential
		status int
		oauth  string
		code   int
	}{
		{
			name:   "wrong secret",
			cred:   func(t *testing.T) azcore.TokenCredential { return secretCred(t, e.info.ClientID, "not-the-secret") },
			status: 401, oauth: "invalid_client", code: 7000215,
		},
		{
			name: "unknown client",
			cred: func(t *testing.T) azcore.TokenCredential {
				return secretCred(t, "00000000-0000-0000-0000-000000000001", original)
			},
			status: 400, oauth: "unauthorized_client", code: 700016,
		},
		{
			name: "wrong tenant",
			cred: func(t *testing.T) azcore.TokenCredential {
				cred, err := azidentity.NewClientSecretCredential("11111111-1111-1111-1111-111111111111", e.info.ClientID, original,
					&azidentity.ClientSecretCredentialOptions{ClientOptions: e.clientOptions(-1), DisableInstanceDiscovery: true})
				must(t, err)
				return cred
			},
			status: 400, oauth: "invalid_request", code: 90002,
		},
		{
			name:   "expired secret",
			setup:  func(t *testing.T) { must(t, ctl.ExpireClientSecret(ctx, e.info.ClientID)) },
			cred:   func(t *testing.T) azcore.TokenCredential { return secretCred(t, e.info.ClientID, original) },
			status: 401, oauth: "invalid_client", code: 7000222,
		},
		{
			name:   "rotated secret: the old one",
			setup:  func(t *testing.T) { must(t, ctl.RotateClientSecret(ctx, e.info.ClientID)) },
			cred:   func(t *testing.T) azcore.TokenCredential { return secretCred(t, e.info.ClientID, original) },
			status: 401, oauth: "invalid_client", code: 7000215,
		},
		{
			name: "expired federated token",
			cred: func(t *testing.T) azcore.TokenCredential {
				tok, err := e.srv.FederatedToken(e.info.ClientID, time.Minute)
				must(t, err)
				e.clock.Advance(time.Minute + assertionLeeway + time.Second)
				t.Cleanup(func() { e.clock.Advance(-time.Minute - assertionLeeway - time.Second) })
				cred, err := azidentity.NewClientAssertionCredential(e.info.TenantID, e.info.ClientID,
					func(context.Context) (string, error) { return tok, nil },
					&azidentity.ClientAssertionCredentialOptions{ClientOptions: e.clientOptions(-1), DisableInstanceDiscovery: true})
				must(t, err)
				return cred
			},
			status: 401, oauth: "invalid_client", code: 700024,
		},
		{
			name: "federated token of another client",
			setup: func(t *testing.T) {
				_, err := ctl.AddClient(ctx, "other-app")
				must(t, err)
			},
			cred: func(t *testing.T) azcore.TokenCredential {
				tok, err := e.srv.FederatedToken("other-app", time.Hour)
				must(t, err)
				cred, err := azidentity.NewClientAssertionCredential(e.info.TenantID, e.info.ClientID,
					func(context.Context) (string, error) { return tok, nil },
					&azidentity.ClientAssertionCredentialOptions{ClientOptions: e.clientOptions(-1), DisableInstanceDiscovery: true})
				must(t, err)
				return cred
			},
			status: 400, oauth: "invalid_request", code: 70021,
		},
		{
			name: "garbage assertion",
			cred: func(t *testing.T) azcore.TokenCredential {
				cred, err := azidentity.NewClientAssertionCredential(e.info.TenantID, e.info.ClientID,
					func(context.Context) (string, error) { return "not.a.jwt", nil },
					&azidentity.ClientAssertionCredentialOptions{ClientOptions: e.clientOptions(-1), DisableInstanceDiscovery: true})
				must(t, err)
				return cred
			},
			status: 400, oauth: "invalid_request", code: 50027,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup(t)
			}
			_, err := tc.cred(t).GetToken(ctx, scope)
			if err == nil {
				t.Fatalf("GetToken() err = nil, want %d %s AADSTS%d", tc.status, tc.oauth, tc.code)
			}
			status, oauth, desc, codes := entraError(t, err)
			if status != tc.status || oauth != tc.oauth || len(codes) != 1 || codes[0] != tc.code || !strings.HasPrefix(desc, fmt.Sprintf("AADSTS%d: ", tc.code)) {
				t.Errorf("GetToken() = %d %s %v %q, want %d %s [%d]", status, oauth, codes, desc, tc.status, tc.oauth, tc.code)
			}
		})
	}

	t.Run("rotated secret: the new one from the file", func(t *testing.T) {
		fresh := e.secret(t, e.info.ClientSecretFile)
		if fresh == original {
			t.Fatalf("secret file unchanged after RotateClientSecret")
		}
		if _, err := secretCred(t, e.info.ClientID, fresh).GetToken(ctx, scope); err != nil {
			t.Errorf("GetToken(new secret) err = %v, want nil", err)
		}
	})
}

// TestDiscovery checks what MSAL reads from the OpenID configuration and
// the instance discovery endpoint.
func TestDiscovery(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	get := func(t *testing.T, u string) (int, map[string]any) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
		resp, err := e.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatalf("GET %s: body is not JSON: %v", u, err)
		}
		return resp.StatusCode, m
	}
	base := strings.TrimSuffix(e.info.AuthorityHost, "/") + "/" + e.info.TenantID
	status, doc := get(t, base+"/v2.0/.well-known/openid-configuration")
	if status != 200 || doc["issuer"] != base+"/v2.0" || doc["token_endpoint"] != base+"/oauth2/v2.0/token" || doc["authorization_endpoint"] != base+"/oauth2/v2.0/authorize" {
		t.Errorf("openid-configuration = %d %v, want issuer, token and authorization endpoints under %s", status, doc, base)
	}
	status, inst := get(t, e.info.AuthorityHost+"common/discovery/instance?api-version=1.1&authorization_endpoint="+url.QueryEscape(base+"/oauth2/v2.0/authorize"))
	if status != 200 || inst["tenant_discovery_endpoint"] != base+"/v2.0/.well-known/openid-configuration" {
		t.Errorf("instance discovery = %d %v, want the tenant's discovery endpoint", status, inst)
	}
	status, jwks := get(t, base+"/discovery/v2.0/keys")
	if keys, _ := jwks["keys"].([]any); status != 200 || len(keys) != 1 {
		t.Errorf("jwks = %d %v, want one key", status, jwks)
	}
	if status, body := get(t, strings.TrimSuffix(e.info.AuthorityHost, "/")+"/00000000-0000-0000-0000-000000000000/v2.0/.well-known/openid-configuration"); status != 400 || body["error"] != "invalid_request" {
		t.Errorf("openid-configuration of an unknown tenant = %d %v, want 400 invalid_request", status, body)
	}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNoSecretsInLogsOrErrors checks that debug logs and error answers
// carry neither secrets nor tokens nor key material.
func TestNoSecretsInLogsOrErrors(t *testing.T) {
	var logs syncBuffer
	cfg := testConfig()
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e := startEnv(t, cfg)
	ctx := ctxT(t)
	secret := e.secret(t, e.info.ClientSecretFile)
	tok := e.token(t)
	kc := e.keys(t, e.secretCred(t, 0), testVault, 0)
	dek := []byte("0123456789abcdef-dek-material-xx")
	w, err := kc.WrapKey(ctx, "cmk", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: dek}, nil)
	must(t, err)
	_, err = kc.UnwrapKey(ctx, "cmk", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP), Value: w.Result}, nil)
	var errText string
	if err != nil {
		errText = err.Error()
	}
	wrong := "Wr0ng~Secret-Value-That-Must-Not-Leak"
	cred, _ := azidentity.NewClientSecretCredential(e.info.TenantID, e.info.ClientID, wrong,
		&azidentity.ClientSecretCredentialOptions{ClientOptions: e.clientOptions(-1), DisableInstanceDiscovery: true})
	if _, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{VaultResource + "/.default"}}); err != nil {
		errText += err.Error()
	} else {
		t.Fatalf("GetToken(wrong secret) err = nil, want invalid_client")
	}
	priv, err := e.srv.PrivateKey(testVault, "cmk", "")
	must(t, err)
	out := logs.String() + errText
	if !strings.Contains(logs.String(), "token request refused") {
		t.Fatalf("logs lack the refused token request; is the logger wired? logs:\n%s", logs.String())
	}
	for what, s := range map[string]string{
		"client secret": secret, "wrong secret": wrong, "access token": tok, "token header": "eyJ",
		"wrapped key": string(dek), "private exponent": priv.D.String(),
	} {
		if strings.Contains(out, s) {
			t.Errorf("logs or errors contain the %s", what)
		}
	}
}

// TestCertificateAssertionChecks signs assertions by hand to reach the
// refusals MSAL never triggers on its own.
func TestCertificateAssertionChecks(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	other, err := e.srv.Control().AddClient(ctx, "cert-other")
	must(t, err)
	pemOther, err := os.ReadFile(other.ClientCertFile)
	must(t, err)
	certs, key, err := azidentity.ParseCertificates(pemOther, nil)
	must(t, err)
	// The other client's certificate presented for the main client.
	cred, err := azidentity.NewClientCertificateCredential(e.info.TenantID, e.info.ClientID, certs, key,
		&azidentity.ClientCertificateCredentialOptions{ClientOptions: e.clientOptions(-1), DisableInstanceDiscovery: true})
	must(t, err)
	_, err = cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{VaultResource + "/.default"}})
	if err == nil {
		t.Fatalf("GetToken(certificate of another client) err = nil, want invalid_client")
	}
	if status, oauth, _, codes := entraError(t, err); status != 401 || oauth != "invalid_client" || codes[0] != 700027 {
		t.Errorf("GetToken(certificate of another client) = %d %s %v, want 401 invalid_client [700027]", status, oauth, codes)
	}

	// Raw token requests: body problems answer 4xx with Entra's body.
	tokenURL := strings.TrimSuffix(e.info.AuthorityHost, "/") + "/" + e.info.TenantID + "/oauth2/v2.0/token"
	secret := e.secret(t, e.info.ClientSecretFile)
	form := func(kv ...string) string {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			v.Add(kv[i], kv[i+1])
		}
		return v.Encode()
	}
	tests := []struct {
		name   string
		body   string
		status int
		code   int
	}{
		{"no grant type", form("client_id", e.info.ClientID), 400, 900144},
		{"password grant", form("grant_type", "password", "client_id", e.info.ClientID), 400, 70003},
		{"no client id", form("grant_type", "client_credentials"), 400, 900144},
		{"no scope", form("grant_type", "client_credentials", "client_id", e.info.ClientID, "client_secret", secret), 400, 900144},
		{"scope without .default", form("grant_type", "client_credentials", "client_id", e.info.ClientID, "client_secret", secret, "scope", VaultResource), 400, 1002012},
		{"other resource", form("grant_type", "client_credentials", "client_id", e.info.ClientID, "client_secret", secret, "scope", "https://graph.microsoft.com/.default"), 400, 500011},
		{"no credential", form("grant_type", "client_credentials", "client_id", e.info.ClientID, "scope", VaultResource+"/.default"), 401, 7000218},
		{"secret and assertion", form("grant_type", "client_credentials", "client_id", e.info.ClientID, "scope", VaultResource+"/.default", "client_secret", secret, "client_assertion", "x"), 400, 9002313},
		{"bad assertion type", form("grant_type", "client_credentials", "client_id", e.info.ClientID, "scope", VaultResource+"/.default", "client_assertion", "a.b.c", "client_assertion_type", "saml"), 400, 9002313},
		{"repeated parameter", form("grant_type", "client_credentials", "grant_type", "client_credentials"), 400, 9002313},
		{"not a form", "%%%", 400, 9002313},
		{"oversize", "grant_type=" + strings.Repeat("a", maxBody+1), 400, 9002313},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(tc.body))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			resp, err := e.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			var b struct {
				Codes []int `json:"error_codes"`
			}
			if err := json.Unmarshal(body, &b); err != nil {
				t.Fatalf("body %q is not JSON: %v", body, err)
			}
			if resp.StatusCode != tc.status || len(b.Codes) != 1 || b.Codes[0] != tc.code {
				t.Errorf("POST token = %d %s, want %d AADSTS%d", resp.StatusCode, body, tc.status, tc.code)
			}
			if strings.Contains(string(body), secret) {
				t.Errorf("error body contains the client secret")
			}
		})
	}
}
