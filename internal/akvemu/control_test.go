package akvemu

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

func TestControlErrors(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	ctl := e.srv.Control()
	tests := []struct {
		name string
		call func() error
		want error
	}{
		{"create in unknown vault", func() error { _, err := ctl.CreateKey(ctx, "nowhere.test", "k", 2048); return err }, ErrNotFound},
		{"create existing", func() error { _, err := ctl.CreateKey(ctx, testVault, "cmk", 2048); return err }, ErrConflict},
		{"create bad size", func() error { _, err := ctl.CreateKey(ctx, testVault, "k", 1000); return err }, ErrBadRequest},
		{"create bad name", func() error { _, err := ctl.CreateKey(ctx, testVault, "a b", 2048); return err }, ErrBadRequest},
		{"rotate unknown", func() error { _, err := ctl.RotateKey(ctx, testVault, "nope"); return err }, ErrNotFound},
		{"disable unknown", func() error { return ctl.SetKeyEnabled(ctx, testVault, "nope", false) }, ErrNotFound},
		{"delete unknown", func() error { return ctl.DeleteKey(ctx, testVault, "nope") }, ErrNotFound},
		{"recover live key", func() error { return ctl.RecoverKey(ctx, testVault, "cmk") }, ErrNotFound},
		{"purge live key", func() error { return ctl.PurgeKey(ctx, testVault, "cmk") }, ErrNotFound},
		{"revoke bad code", func() error { return ctl.RevokeAccess(ctx, "", testVault, "ForbiddenByMood") }, ErrBadRequest},
		{"revoke unknown client", func() error { return ctl.RevokeAccess(ctx, "ghost", testVault, "") }, ErrNotFound},
		{"grant unknown vault", func() error { return ctl.GrantAccess(ctx, "", "nowhere.test") }, ErrNotFound},
		{"rotate secret of unknown client", func() error { return ctl.RotateClientSecret(ctx, "ghost") }, ErrNotFound},
		{"expire secret of unknown client", func() error { return ctl.ExpireClientSecret(ctx, "ghost") }, ErrNotFound},
		{"add client twice", func() error { _, err := ctl.AddClient(ctx, e.info.ClientID); return err }, ErrConflict},
		{"add client bad id", func() error { _, err := ctl.AddClient(ctx, "../x"); return err }, ErrBadRequest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			if !errors.Is(err, tc.want) {
				t.Errorf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestControlLifecycleAndClients(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	ctl := e.srv.Control()
	kid, err := ctl.CreateKey(ctx, testWest, "tmp", 2048)
	must(t, err)
	if !strings.HasPrefix(kid, "https://"+testWest+"/keys/tmp/") {
		t.Errorf("CreateKey() = %s, want a key identifier of the west vault", kid)
	}
	info, err := ctl.Info(ctx)
	must(t, err)
	if !contains(info.KeyIDs, kid) {
		t.Errorf("Info().KeyIDs = %v, want it to list %s", info.KeyIDs, kid)
	}
	must(t, ctl.DeleteKey(ctx, testWest, "tmp"))
	must(t, ctl.RecoverKey(ctx, testWest, "tmp"))
	must(t, ctl.DeleteKey(ctx, testWest, "tmp"))
	must(t, ctl.PurgeKey(ctx, testWest, "tmp"))
	if _, err := ctl.CreateKey(ctx, testWest, "tmp", 2048); err != nil {
		t.Errorf("CreateKey(purged name) err = %v, want nil", err)
	}
	// An added client authenticates with its own secret file, and access
	// is revoked per client.
	cf, err := ctl.AddClient(ctx, "")
	must(t, err)
	cred, err := azidentity.NewClientSecretCredential(e.info.TenantID, cf.ClientID, e.secret(t, cf.ClientSecretFile),
		&azidentity.ClientSecretCredentialOptions{ClientOptions: e.clientOptions(-1), DisableInstanceDiscovery: true})
	must(t, err)
	if _, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{VaultResource + "/.default"}}); err != nil {
		t.Fatalf("GetToken(added client) err = %v, want nil", err)
	}
	must(t, ctl.RevokeAccess(ctx, cf.ClientID, "", CodeForbiddenByRbac))
	_, err = e.keys(t, cred, testVault, -1).GetKey(ctx, "cmk", "", nil)
	if status, _, inner := responseError(t, err); status != 403 || inner != CodeForbiddenByRbac {
		t.Errorf("GetKey(revoked added client) = %d %s, want 403 ForbiddenByRbac", status, inner)
	}
	if _, err := e.keys(t, e.secretCred(t, -1), testVault, -1).GetKey(ctx, "cmk", "", nil); err != nil {
		t.Errorf("GetKey(configured client) err = %v, want nil: revocation is per client", err)
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// TestControlRaw drives the control API the way curl does.
func TestControlRaw(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	tests := []struct {
		name, method, path, body, host string
		status                         int
	}{
		{"fault with duration string", "POST", "/faults", `{"host":"` + testVault + `","op":"wrapkey","latency":"250ms","count":1}`, "", 204},
		{"fault with numeric latency", "POST", "/faults", `{"latency":250}`, "", 400},
		{"fault with bad duration", "POST", "/faults", `{"latency":"soon","status":500}`, "", 400},
		{"unknown field", "POST", "/faults", `{"status":500,"colour":"red"}`, "", 400},
		{"empty body", "POST", "/keys", ``, "", 400},
		{"trailing data", "POST", "/access/grant", `{} {}`, "", 400},
		{"grant with code", "POST", "/access/grant", `{"code":"ForbiddenByRbac"}`, "", 400},
		{"create key", "POST", "/keys", `{"vault":"` + testVault + `","name":"curl","size":2048}`, "", 201},
		{"counters", "GET", "/counters", ``, "", 200},
		{"unknown route", "GET", "/nope", ``, "", 404},
		{"wrong method", "GET", "/keys/" + testVault + "/cmk/rotate", ``, "", 404},
		{"foreign host header", "GET", "/counters", ``, "evil.example", 400},
		{"oversize", "POST", "/faults", `{"op":"` + strings.Repeat("x", maxBody) + `"}`, "", 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctx, tc.method, e.info.ControlURL+tc.path, strings.NewReader(tc.body))
			if tc.host != "" {
				req.Host = tc.host
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("%s %s = %d %s, want %d", tc.method, tc.path, resp.StatusCode, body, tc.status)
			}
			if tc.status >= 400 {
				var b map[string]string
				if err := json.Unmarshal(body, &b); err != nil || b["error"] == "" {
					t.Errorf("error body %q, want {\"error\": \"...\"}", body)
				}
			}
		})
	}
	faults, err := e.srv.Control().Faults(ctx)
	if err != nil || len(faults) != 1 || faults[0].Latency.String() != "250ms" {
		t.Errorf("Faults() = %+v, %v, want the one fault with 250ms latency", faults, err)
	}
}

// TestInfoJSON pins the JSON names of the info line other tools parse.
func TestInfoJSON(t *testing.T) {
	b, err := json.Marshal(Info{})
	must(t, err)
	var m map[string]any
	must(t, json.Unmarshal(b, &m))
	want := []string{"vault_urls", "endpoint", "authority_host", "tenant_id", "client_id", "client_secret_file",
		"client_certificate_file", "federated_token_file", "identity_endpoint", "identity_header", "ca_file", "key_ids", "control_url"}
	if len(m) != len(want) {
		t.Errorf("Info JSON has %d fields, want %d: %s", len(m), len(want), b)
	}
	for _, k := range want {
		if _, ok := m[k]; !ok {
			t.Errorf("Info JSON lacks %q: %s", k, b)
		}
	}
}
