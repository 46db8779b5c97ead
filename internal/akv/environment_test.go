package akv

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"

	"github.com/keybroker/keybroker/internal/kek"
)

func TestLookupEnvironment(t *testing.T) {
	tests := []struct {
		in        string
		authority string
		suffix    string
		hsm       string
		cloud     cloud.Configuration
		wantErr   string
	}{
		{in: "AZURE", authority: "https://login.microsoftonline.com/", suffix: "vault.azure.net", hsm: "managedhsm.azure.net", cloud: cloud.AzurePublic},
		{in: "azure_china", authority: "https://login.chinacloudapi.cn/", suffix: "vault.azure.cn", hsm: "managedhsm.azure.cn", cloud: cloud.AzureChina},
		{in: "AZURE_US_GOVERNMENT", authority: "https://login.microsoftonline.us/", suffix: "vault.usgovcloudapi.net", hsm: "managedhsm.usgovcloudapi.net", cloud: cloud.AzureGovernment},
		{in: "CUSTOM", wantErr: "built by the caller"},
		{in: "AzureStack", wantErr: "unknown environment"},
		{in: "", wantErr: "unknown environment"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			e, err := LookupEnvironment(tc.in)
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, ErrEnvironment) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("LookupEnvironment(%q) err = %v, want ErrEnvironment mentioning %q", tc.in, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LookupEnvironment(%q) err = %v, want nil", tc.in, err)
			}
			if e.AuthorityHost != tc.authority || e.VaultSuffix != tc.suffix || e.ManagedHSMSuffix != tc.hsm {
				t.Errorf("LookupEnvironment(%q) = %+v, want authority %s, suffixes %s, %s", tc.in, e, tc.authority, tc.suffix, tc.hsm)
			}
			if err := e.Validate(); err != nil {
				t.Errorf("LookupEnvironment(%q).Validate() err = %v, want nil", tc.in, err)
			}
			if got := e.cloudConfig(); got.ActiveDirectoryAuthorityHost != tc.cloud.ActiveDirectoryAuthorityHost {
				t.Errorf("cloudConfig() authority = %q, want %q", got.ActiveDirectoryAuthorityHost, tc.cloud.ActiveDirectoryAuthorityHost)
			}
			if e.disableInstanceDiscovery() {
				t.Errorf("%s: disableInstanceDiscovery() = true, want false for an Azure cloud", tc.in)
			}
		})
	}
}

func TestEnvironmentValidate(t *testing.T) {
	azure := mustEnv(t, EnvAzure)
	tests := []struct {
		name    string
		mod     func(*Environment)
		base    Environment
		wantErr string // "" = valid
	}{
		{"custom ok", nil, customEnv, ""},
		{"custom without hsm", func(e *Environment) { e.ManagedHSMSuffix = "" }, customEnv, ""},
		{"custom with connect", func(e *Environment) { e.ConnectTo = "127.0.0.1:8443"; e.CAFile = "/x.pem" }, customEnv, ""},
		{"custom no authority", func(e *Environment) { e.AuthorityHost = "" }, customEnv, "no AuthorityHost"},
		{"custom http authority", func(e *Environment) { e.AuthorityHost = "http://login.x.test/" }, customEnv, "https"},
		{"custom authority with path", func(e *Environment) { e.AuthorityHost = "https://login.x.test/tenant" }, customEnv, "just scheme and host"},
		{"custom no suffix", func(e *Environment) { e.VaultSuffix = "" }, customEnv, "no VaultSuffix"},
		{"custom suffix with scheme", func(e *Environment) { e.VaultSuffix = "https://vault.x.test" }, customEnv, "not a host name suffix"},
		{"custom suffix leading dot", func(e *Environment) { e.VaultSuffix = ".vault.x.test" }, customEnv, "not a host name suffix"},
		{"custom single label", func(e *Environment) { e.VaultSuffix = "localhost" }, customEnv, "not a host name suffix"},
		{"custom bad hsm", func(e *Environment) { e.ManagedHSMSuffix = "hsm x" }, customEnv, "ManagedHSMSuffix"},
		{"custom same suffixes", func(e *Environment) { e.ManagedHSMSuffix = e.VaultSuffix }, customEnv, "must differ"},
		{"custom bad connect", func(e *Environment) { e.ConnectTo = "127.0.0.1" }, customEnv, "host:port"},
		{"unknown name", func(e *Environment) { e.Name = "MOON" }, customEnv, "unknown environment name"},
		{"azure ok", nil, azure, ""},
		{"azure tampered suffix", func(e *Environment) { e.VaultSuffix = "vault.evil.test" }, azure, "fixed hosts"},
		{"azure with CA", func(e *Environment) { e.CAFile = "/x.pem" }, azure, "CUSTOM environments only"},
		{"azure with connect", func(e *Environment) { e.ConnectTo = "127.0.0.1:1" }, azure, "CUSTOM environments only"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := tc.base
			if tc.mod != nil {
				tc.mod(&e)
			}
			err := e.Validate()
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() err = %v, want nil", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrEnvironment) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Validate() err = %v, want ErrEnvironment mentioning %q", err, tc.wantErr)
			}
		})
	}
	if !customEnv.disableInstanceDiscovery() {
		t.Errorf("CUSTOM disableInstanceDiscovery() = false, want true: a private authority is unknown to Azure's discovery")
	}
	if got := customEnv.cloudConfig().ActiveDirectoryAuthorityHost; got != customEnv.AuthorityHost {
		t.Errorf("CUSTOM cloudConfig() authority = %q, want %q", got, customEnv.AuthorityHost)
	}
}

func TestVerifyChallengeResource(t *testing.T) {
	tests := []struct {
		host string
		want bool
	}{
		{"myvault.vault.azure.net", true},
		{"MyVault.Vault.Azure.Net", true},
		{"myvault.vault.azure.cn", true},
		{"myvault.vault.usgovcloudapi.net", true},
		{"myhsm.managedhsm.azure.net", true},
		{"myhsm.managedhsm.azure.cn", true},
		{"myhsm.managedhsm.usgovcloudapi.net", true},
		{"myvault.vault.azure.net:8443", true},
		{"keybroker-dev.vault.keybroker.test", false},
		{"myvault.vault.azure.net.evil.test", false},
		{"notvault.azure.net", false},
		{"127.0.0.1:8443", false},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			if got := verifyChallengeResource(tc.host); got != tc.want {
				t.Errorf("verifyChallengeResource(%q) = %v, want %v", tc.host, got, tc.want)
			}
		})
	}
}

// TestChallengeVerificationChoice checks New's choice and its effect with the
// real SDK: a vault under Azure's domain whose challenge names a foreign
// resource gets no token; a custom vault may name any resource.
func TestChallengeVerificationChoice(t *testing.T) {
	t.Run("azure clouds verify", func(t *testing.T) {
		for _, name := range []string{EnvAzure, EnvAzureChina, EnvAzureGovernment} {
			env := mustEnv(t, name)
			w, err := New(Config{KeyID: "https://myvault." + env.VaultSuffix + "/keys/cmk", Environment: env, Credential: staticCred{}})
			if err != nil {
				t.Fatalf("New(%s) err = %v, want nil", name, err)
			}
			if !w.verifyResource {
				t.Errorf("New(%s).verifyResource = false, want true", name)
			}
			w, err = New(Config{KeyID: "https://myhsm." + env.ManagedHSMSuffix + "/keys/cmk", Environment: env, Credential: staticCred{}})
			if err != nil || !w.verifyResource {
				t.Errorf("New(%s managed HSM) = %v, %v; want verifyResource true", name, w, err)
			}
		}
	})
	t.Run("custom does not", func(t *testing.T) {
		w, err := New(Config{KeyID: "https://kb-dev." + testSuffix + "/keys/cmk", Environment: customEnv, Credential: staticCred{}})
		if err != nil || w.verifyResource {
			t.Fatalf("New(CUSTOM) = %v, %v; want verifyResource false", w, err)
		}
	})

	tests := []struct {
		name      string
		suffix    string // vault suffix of the CUSTOM environment
		resource  string // in the vault's challenge
		wantToken bool
	}{
		{"azure domain, matching resource", "vault.azure.net", "https://vault.azure.net", true},
		{"azure domain, foreign resource", "vault.azure.net", "https://attacker.example", false},
		{"custom domain, foreign resource", testSuffix, "https://attacker.example", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeAzure(t, "*.vault.azure.net")
			f.resource = tc.resource
			env := f.env()
			env.VaultSuffix = tc.suffix
			w := f.wrapper(t, func(c *Config) {
				c.Environment = env
				c.KeyID = "https://kb-test." + tc.suffix + "/keys/cmk/" + testVersion1
			})
			_, err := w.KeyInfo(context.Background())
			if got := f.count("token") > 0; got != tc.wantToken {
				t.Errorf("token requested = %v, want %v (KeyInfo err = %v)", got, tc.wantToken, err)
			}
			if tc.wantToken && err != nil {
				t.Errorf("KeyInfo() err = %v, want nil", err)
			}
			if !tc.wantToken {
				if err == nil {
					t.Fatalf("KeyInfo() err = nil, want a challenge mismatch error")
				}
				if !strings.Contains(err.Error(), "challenge resource") {
					t.Errorf("KeyInfo() err = %v, want the SDK's challenge resource mismatch", err)
				}
				if k := kek.KindOf(err); k.IsRevocation() {
					t.Errorf("KeyInfo() kind = %v, want not revocation for a forged challenge", k)
				}
			}
		})
	}
}
