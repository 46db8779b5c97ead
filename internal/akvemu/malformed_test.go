package akvemu

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestMalformedInput sends raw requests with a valid token: every bad input
// gets a 4xx with AKV's error body, never a 5xx or a dropped connection.
func TestMalformedInput(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	tok := e.token(t)
	base := "https://" + testVault
	const av = "?api-version=2025-07-01"
	wrapURL := base + "/keys/cmk/wrapkey" + av
	tests := []struct {
		name, method, url, body string
		noAuth                  bool
		status                  int
		code                    string
	}{
		{"bad base64", "POST", wrapURL, `{"alg":"RSA-OAEP-256","value":"!!not base64!!"}`, false, 400, "BadParameter"},
		{"standard base64", "POST", wrapURL, `{"alg":"RSA-OAEP-256","value":"a+b/"}`, false, 400, "BadParameter"},
		{"unknown alg", "POST", wrapURL, `{"alg":"RSA-OAEP-1024","value":"AQID"}`, false, 400, "BadParameter"},
		{"RSA1_5 unsupported", "POST", wrapURL, `{"alg":"RSA1_5","value":"AQID"}`, false, 400, "BadParameter"},
		{"missing alg", "POST", wrapURL, `{"value":"AQID"}`, false, 400, "BadParameter"},
		{"missing value", "POST", wrapURL, `{"alg":"RSA-OAEP"}`, false, 400, "BadParameter"},
		{"bad JSON", "POST", wrapURL, `{"alg":`, false, 400, "BadParameter"},
		{"JSON array", "POST", wrapURL, `[1,2,3]`, false, 400, "BadParameter"},
		{"wrong type", "POST", wrapURL, `{"alg":7,"value":"AQID"}`, false, 400, "BadParameter"},
		{"trailing data", "POST", wrapURL, `{"alg":"RSA-OAEP","value":"AQID"} x`, false, 400, "BadParameter"},
		{"empty body", "POST", wrapURL, ``, false, 400, "BadParameter"},
		{"oversize body", "POST", wrapURL, `{"alg":"RSA-OAEP","value":"` + strings.Repeat("A", maxBody) + `"}`, false, 400, "BadParameter"},
		{"value too long", "POST", wrapURL, `{"alg":"RSA-OAEP","value":"` + strings.Repeat("A", 400) + `"}`, false, 400, "BadParameter"},
		{"bogus ciphertext", "POST", base + "/keys/cmk/unwrapkey" + av, `{"alg":"RSA-OAEP","value":"AQID"}`, false, 400, "BadParameter"},
		{"missing api-version", "GET", base + "/keys/cmk", "", false, 400, "BadParameter"},
		{"bad api-version", "GET", base + "/keys/cmk?api-version=latest", "", false, 400, "BadParameter"},
		{"unknown route", "GET", base + "/secrets/db" + av, "", false, 404, "NotFound"},
		{"unknown key sub-route", "POST", base + "/keys/cmk/sign/extra" + av, "{}", false, 404, "NotFound"},
		{"method not allowed", "PUT", base + "/keys" + av, "{}", false, 405, "MethodNotAllowed"},
		{"invalid key name", "GET", base + "/keys/bad_name!" + av, "", false, 400, "BadParameter"},
		{"very long key name", "GET", base + "/keys/" + strings.Repeat("k", 200) + av, "", false, 400, "BadParameter"},
		{"create: no kty", "POST", base + "/keys/new/create" + av, `{}`, false, 400, "BadParameter"},
		{"create: EC", "POST", base + "/keys/new/create" + av, `{"kty":"EC","crv":"P-256"}`, false, 400, "BadParameter"},
		{"create: bad size", "POST", base + "/keys/new/create" + av, `{"kty":"RSA","key_size":1024}`, false, 400, "BadParameter"},
		{"create: bad exponent", "POST", base + "/keys/new/create" + av, `{"kty":"RSA","public_exponent":3}`, false, 400, "BadParameter"},
		{"create: bad key_ops", "POST", base + "/keys/new/create" + av, `{"kty":"RSA","key_ops":["fly"]}`, false, 400, "BadParameter"},
		{"create: exp before nbf", "POST", base + "/keys/new/create" + av, `{"kty":"RSA","attributes":{"nbf":200,"exp":100}}`, false, 400, "BadParameter"},
		{"create: exportable", "POST", base + "/keys/new/create" + av, `{"kty":"RSA","attributes":{"exportable":true}}`, false, 400, "BadParameter"},
		{"create: nbf overflow", "POST", base + "/keys/new/create" + av, `{"kty":"RSA","attributes":{"nbf":1e40}}`, false, 400, "BadParameter"},
		{"update: bad key_ops", "PATCH", base + "/keys/cmk/" + av, `{"key_ops":[1]}`, false, 400, "BadParameter"},
		{"update: unknown version", "PATCH", base + "/keys/cmk/" + strings.Repeat("a", 32) + av, `{}`, false, 404, "KeyNotFound"},
		{"import: no key", "PUT", base + "/keys/imp" + av, `{}`, false, 400, "BadParameter"},
		{"import: public only", "PUT", base + "/keys/imp" + av, `{"key":{"kty":"RSA","n":"AQAB","e":"AQAB"}}`, false, 400, "BadParameter"},
		{"import: mismatched", "PUT", base + "/keys/imp" + av, `{"key":{"kty":"RSA","n":"` + strings.Repeat("_w", 171) + `","e":"AQAB","d":"AQ","p":"Aw","q":"BQ"}}`, false, 400, "BadParameter"},
		{"list: bad maxresults", "GET", base + "/keys/cmk/versions" + av + "&maxresults=0", "", false, 400, "BadParameter"},
		{"list: bad skiptoken", "GET", base + "/keys" + av + "&$skiptoken=garbage", "", false, 400, "BadParameter"},
		{"rotate: unknown key", "POST", base + "/keys/nope/rotate" + av, "", false, 404, "KeyNotFound"},
		{"recover: not deleted", "POST", base + "/deletedkeys/cmk/recover" + av, "", false, 404, "KeyNotFound"},
		{"purge: not deleted", "DELETE", base + "/deletedkeys/cmk" + av, "", false, 404, "KeyNotFound"},
		{"no token", "GET", base + "/keys/cmk" + av, "", true, 401, "Unauthorized"},
		{"garbage token", "GET", base + "/keys/cmk" + av, "", false, 401, "Unauthorized"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequestWithContext(ctx, tc.method, tc.url, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case tc.name == "garbage token":
				req.Header.Set("Authorization", "Bearer not-a-token")
			case !tc.noAuth:
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			req.Header.Set("Content-Type", "application/json")
			resp, err := e.hc.Do(req)
			if err != nil {
				t.Fatalf("%s %s err = %v, want an answer", tc.method, tc.url, err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			var b struct {
				Error struct {
					Code    string `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal(body, &b); err != nil {
				t.Fatalf("body %.200q is not AKV's error JSON: %v", body, err)
			}
			if resp.StatusCode != tc.status || b.Error.Code != tc.code || b.Error.Message == "" {
				t.Errorf("%s = %d %s, want %d %s with a message", tc.name, resp.StatusCode, body, tc.status, tc.code)
			}
			if tc.status == 401 && !strings.Contains(resp.Header.Get("WWW-Authenticate"), `resource="https://vault.azure.net"`) {
				t.Errorf("401 WWW-Authenticate = %q, want the bearer challenge", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}

	// Bad input on the Entra host answers 4xx too.
	for _, path := range []string{"/", "/common/discovery/instance/x", "/" + e.info.TenantID + "/oauth2/v2.0/authorize"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.info.AuthorityHost+strings.TrimPrefix(path, "/"), nil)
		resp, err := e.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 4 {
			t.Errorf("GET %s on the authority = %d, want 4xx", path, resp.StatusCode)
		}
	}
}

// TestChallenge checks the unauthenticated answer azkeys learns the tenant
// and resource from.
func TestChallenge(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	for _, host := range []string{testVault, testAlias, testWest} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+host+"/keys/cmk/create?api-version=2025-07-01", nil)
		resp, err := e.hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := `Bearer authorization="` + e.info.AuthorityHost + e.info.TenantID + `", resource="https://vault.azure.net"`
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != want {
			t.Errorf("unauthenticated POST to %s = %d %q, want 401 %q", host, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
		}
	}
}
