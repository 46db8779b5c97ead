package akvemu

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// FuzzWrapRequest fuzzes the wrapkey/unwrapkey/encrypt/decrypt body parser:
// it never panics, refuses with 400 BadParameter, and never echoes the
// value it was given.
func FuzzWrapRequest(f *testing.F) {
	for _, s := range []string{
		`{"alg":"RSA-OAEP-256","value":"AQIDBA"}`,
		`{"alg":"RSA-OAEP","value":"AQIDBA=="}`,
		`{"alg":"RSA1_5","value":"AQ"}`,
		`{"alg":"RSA-OAEP","value":"!!"}`,
		`{"alg":null,"value":null}`,
		`{"alg":"RSA-OAEP","value":"AQ","aad":"AQ","iv":"AQ","tag":"AQ"}`,
		`[]`, `{`, ``, `{"value":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		req, e := parseKeyOpRequest(body)
		if e != nil {
			if e.status != http.StatusBadRequest || e.code != "BadParameter" || e.msg == "" {
				t.Fatalf("parseKeyOpRequest(%q) error = %d %s %q, want 400 BadParameter with a message", body, e.status, e.code, e.msg)
			}
			var p struct {
				Alg   string `json:"alg"`
				Value string `json:"value"`
			}
			// The algorithm is echoed on purpose; a value equal to it is not a leak.
			if json.Unmarshal(body, &p) == nil && len(p.Value) >= 8 && !strings.Contains(p.Alg, p.Value) && strings.Contains(e.msg, p.Value) {
				t.Fatalf("parseKeyOpRequest error %q echoes the value", e.msg)
			}
			return
		}
		if !slices.Contains(supportedAlgs, req.alg) || len(req.value) == 0 {
			t.Fatalf("parseKeyOpRequest(%q) = %q, %x: accepted an unsupported alg or empty value", body, req.alg, req.value)
		}
	})
}

// FuzzKeyRequests fuzzes the create, update and import body parsers.
func FuzzKeyRequests(f *testing.F) {
	for _, s := range []string{
		`{"kty":"RSA","key_size":2048,"key_ops":["wrapKey"],"attributes":{"enabled":true,"nbf":1,"exp":2},"tags":{"a":"b"}}`,
		`{"kty":"RSA-HSM","public_exponent":65537}`,
		`{"kty":"EC","crv":"P-256"}`,
		`{"key_ops":["unwrapKey"],"attributes":{"enabled":false}}`,
		`{"key":{"kty":"RSA","n":"AQAB","e":"AQAB","d":"AQ","p":"Aw","q":"BQ"},"hsm":true}`,
		`{"attributes":{"nbf":1e40}}`, `null`, `{}`,
	} {
		for which := range uint8(3) {
			f.Add(which, []byte(s))
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, body []byte) {
		var e *akvError
		switch which % 3 {
		case 0:
			var p createParams
			if p, e = parseCreateRequest(body); e == nil && (!validKeySize(p.Size) || p.Kty != "RSA" && p.Kty != "RSA-HSM") {
				t.Fatalf("parseCreateRequest(%q) = %+v: accepted a bad kty or size", body, p)
			}
		case 1:
			_, e = parseUpdateRequest(body)
		case 2:
			var p createParams
			if p, e = parseImportRequest(body); e == nil && (p.priv == nil || p.priv.Validate() != nil) {
				t.Fatalf("parseImportRequest(%q): accepted an invalid key", body)
			}
		}
		if e != nil && (e.status != http.StatusBadRequest || e.code != "BadParameter" || e.msg == "") {
			t.Fatalf("parser %d (%q) error = %d %s %q, want 400 BadParameter", which%3, body, e.status, e.code, e.msg)
		}
	})
}

// FuzzVaultRoute fuzzes the vault router.
func FuzzVaultRoute(f *testing.F) {
	for _, s := range []struct{ m, p string }{
		{"GET", "/keys/cmk/"}, {"GET", "/keys/cmk/0123"}, {"GET", "/keys/cmk/versions"}, {"POST", "/keys/cmk/create"},
		{"POST", "/keys/cmk//wrapkey"}, {"POST", "/keys/cmk/v/unwrapKey"}, {"PATCH", "/keys/cmk/"}, {"DELETE", "/deletedkeys/cmk"},
		{"POST", "/deletedkeys/cmk/recover"}, {"GET", "/"}, {"GET", ""}, {"PUT", "/keys/x"}, {"GET", "/deletedkeys/"},
	} {
		f.Add(s.m, s.p)
	}
	f.Fuzz(func(t *testing.T, method, path string) {
		rt := parseVaultRoute(method, path)
		if rt.kind == rNone {
			if rt.op != OpOther || (rt.status != http.StatusNotFound && rt.status != http.StatusMethodNotAllowed) {
				t.Fatalf("parseVaultRoute(%q, %q) = %+v: no route needs op other and 404/405", method, path, rt)
			}
			return
		}
		if !slices.Contains(Ops(), rt.op) || rt.op == OpOther {
			t.Fatalf("parseVaultRoute(%q, %q) op = %q, want a known operation", method, path, rt.op)
		}
		if rt.kind == rCrypto && cryptoOps[rt.crypto] == "" {
			t.Fatalf("parseVaultRoute(%q, %q) crypto = %q", method, path, rt.crypto)
		}
		if strings.Contains(rt.name, "/") || strings.Contains(rt.version, "/") {
			t.Fatalf("parseVaultRoute(%q, %q) = name %q version %q, want no slashes", method, path, rt.name, rt.version)
		}
	})
}

// FuzzFault fuzzes the fault JSON and its validation; a valid fault
// survives a JSON round trip.
func FuzzFault(f *testing.F) {
	s, err := newServer(testConfig())
	if err != nil {
		f.Fatal(err)
	}
	for _, b := range []string{
		`{"host":"kb-east.vault.keybroker.test","op":"wrapkey","latency":"250ms","status":503,"retry_after":2,"count":1}`,
		`{"host":"login","op":"token","reset":true}`, `{"blackhole":true}`, `{"latency":"1h"}`, `{"latency":5}`,
		`{"status":403,"code":"ForbiddenByRbac"}`, `{"extra":1}`, `[]`,
	} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var ft Fault
		if err := json.Unmarshal(b, &ft); err != nil {
			return
		}
		if err := s.validateFault(&ft); err != nil {
			if err.Error() == "" {
				t.Fatal("empty validation error")
			}
			return
		}
		out, err := json.Marshal(ft)
		if err != nil {
			t.Fatalf("Marshal(%+v) err = %v", ft, err)
		}
		var back Fault
		if err := json.Unmarshal(out, &back); err != nil || back != ft {
			t.Fatalf("round trip of %+v = %+v, %v (JSON %s)", ft, back, err, out)
		}
	})
}

// FuzzState fuzzes the state file decoder: damage is an error, never a
// panic, and whatever it accepts it can write back.
func FuzzState(f *testing.F) {
	s, err := newServer(Config{Ephemeral: true})
	if err != nil {
		f.Fatal(err)
	}
	s.ephemeral = true
	if err := s.loadState(); err != nil {
		f.Fatal(err)
	}
	good, err := json.Marshal(s.st)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":"akvemu-state","version":1}`))
	f.Add([]byte(`{"format":"akvemu-state","version":1,"vaults":{"a.b":{"keys":{}}},"clients":{}}`))
	f.Add([]byte(`{"format":"akvemu-state","version":1,"vaults":{"a.b":null}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeState(b)
		if err != nil {
			return
		}
		out, err := json.Marshal(st)
		if err != nil {
			t.Fatalf("Marshal(decoded state) err = %v", err)
		}
		if _, err := decodeState(out); err != nil {
			t.Fatalf("decodeState(re-encoded) err = %v", err)
		}
	})
}

// FuzzTokenRequest fuzzes the token endpoint's form and assertion checks.
func FuzzTokenRequest(f *testing.F) {
	s, err := newServer(Config{Ephemeral: true})
	if err != nil {
		f.Fatal(err)
	}
	if err := s.loadState(); err != nil {
		f.Fatal(err)
	}
	s.dir = f.TempDir()
	secret := s.st.Clients[s.clientID].Secret
	fed, err := s.issueFederatedToken(s.clientID, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	v := func(kv ...string) string {
		q := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		return q.Encode()
	}
	scope := VaultResource + "/.default openid profile offline_access"
	f.Add(v("grant_type", "client_credentials", "client_id", s.clientID, "client_secret", secret, "scope", scope))
	f.Add(v("grant_type", "client_credentials", "client_id", s.clientID, "client_assertion_type", jwtBearerType, "client_assertion", fed, "scope", scope))
	f.Add(v("grant_type", "client_credentials", "client_id", s.clientID, "client_assertion_type", jwtBearerType, "client_assertion", "eyJhbGciOiJub25lIn0.e30.", "scope", scope))
	f.Add(v("grant_type", "password", "client_id", "x"))
	f.Add("%zz")
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest(http.MethodPost, "https://127.0.0.1/"+s.tenant+"/oauth2/v2.0/token", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		w := httptest.NewRecorder()
		_, acr, terr := s.authenticateClient(w, r, s.tenant)
		if terr == nil {
			if acr != "1" && acr != "2" {
				t.Fatalf("accepted %q with appidacr %q", body, acr)
			}
			return
		}
		if terr.status != 400 && terr.status != 401 {
			t.Fatalf("authenticateClient(%q) status = %d, want 400 or 401", body, terr.status)
		}
		if q, err := url.ParseQuery(body); err == nil {
			if sec := q.Get("client_secret"); len(sec) >= 8 && strings.Contains(terr.desc, sec) {
				t.Fatalf("error %q echoes the client secret", terr.desc)
			}
		}
	})
}
