package akv

import (
	"errors"
	"strings"
	"testing"
)

func mustEnv(t testing.TB, name string) Environment {
	t.Helper()
	e, err := LookupEnvironment(name)
	if err != nil {
		t.Fatalf("LookupEnvironment(%q) err = %v, want nil", name, err)
	}
	return e
}

var customEnv = Environment{
	Name:             EnvCustom,
	AuthorityHost:    "https://" + testLogin + "/",
	VaultSuffix:      testSuffix,
	ManagedHSMSuffix: testHSMSuffix,
}

func TestParseKeyID(t *testing.T) {
	const v = "0123456789abcdef0123456789abcdef"
	tests := []struct {
		name string
		env  string // "" = CUSTOM
		in   string
		want KeyID
	}{
		{"vault with version", EnvAzure, "https://myvault.vault.azure.net/keys/cmk/" + v,
			KeyID{VaultURL: "https://myvault.vault.azure.net/", Host: "myvault.vault.azure.net", Name: "cmk", Version: v}},
		{"vault versionless", EnvAzure, "https://myvault.vault.azure.net/keys/cmk",
			KeyID{VaultURL: "https://myvault.vault.azure.net/", Host: "myvault.vault.azure.net", Name: "cmk"}},
		{"managed hsm", EnvAzure, "https://my-hsm.managedhsm.azure.net/keys/aes-1/" + v,
			KeyID{VaultURL: "https://my-hsm.managedhsm.azure.net/", Host: "my-hsm.managedhsm.azure.net", Name: "aes-1", Version: v, ManagedHSM: true}},
		{"china vault", EnvAzureChina, "https://cnvault.vault.azure.cn/keys/k",
			KeyID{VaultURL: "https://cnvault.vault.azure.cn/", Host: "cnvault.vault.azure.cn", Name: "k"}},
		{"china hsm", EnvAzureChina, "https://cnhsm.managedhsm.azure.cn/keys/k/" + v,
			KeyID{VaultURL: "https://cnhsm.managedhsm.azure.cn/", Host: "cnhsm.managedhsm.azure.cn", Name: "k", Version: v, ManagedHSM: true}},
		{"gov vault", EnvAzureGovernment, "https://govvault.vault.usgovcloudapi.net/keys/k/" + v,
			KeyID{VaultURL: "https://govvault.vault.usgovcloudapi.net/", Host: "govvault.vault.usgovcloudapi.net", Name: "k", Version: v}},
		{"gov hsm", EnvAzureGovernment, "https://govhsm.managedhsm.usgovcloudapi.net/keys/k",
			KeyID{VaultURL: "https://govhsm.managedhsm.usgovcloudapi.net/", Host: "govhsm.managedhsm.usgovcloudapi.net", Name: "k", ManagedHSM: true}},
		{"custom vault", "", "https://keybroker-dev.vault.keybroker.test/keys/cmk/" + v,
			KeyID{VaultURL: "https://keybroker-dev.vault.keybroker.test/", Host: "keybroker-dev.vault.keybroker.test", Name: "cmk", Version: v}},
		{"custom hsm", "", "https://dev-hsm.managedhsm.keybroker.test/keys/cmk",
			KeyID{VaultURL: "https://dev-hsm.managedhsm.keybroker.test/", Host: "dev-hsm.managedhsm.keybroker.test", Name: "cmk", ManagedHSM: true}},
		{"host and scheme case folded, name kept", EnvAzure, "HTTPS://MyVault.Vault.Azure.NET/keys/CMK-Prod/" + v,
			KeyID{VaultURL: "https://myvault.vault.azure.net/", Host: "myvault.vault.azure.net", Name: "CMK-Prod", Version: v}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := customEnv
			if tc.env != "" {
				env = mustEnv(t, tc.env)
			}
			got, err := ParseKeyID(tc.in, env)
			if err != nil {
				t.Fatalf("ParseKeyID(%q) err = %v, want nil", tc.in, err)
			}
			if got != tc.want {
				t.Errorf("ParseKeyID(%q) = %+v, want %+v", tc.in, got, tc.want)
			}
			again, err := ParseKeyID(got.String(), env)
			if err != nil || again != got {
				t.Errorf("ParseKeyID(%q) = %+v, %v; want %+v, nil (round trip)", got.String(), again, err, got)
			}
			if !strings.HasSuffix(got.Versionless(), "/keys/"+got.Name) {
				t.Errorf("Versionless() = %q, want it to end in /keys/%s", got.Versionless(), got.Name)
			}
		})
	}
}

func TestParseKeyIDErrors(t *testing.T) {
	const v = "0123456789abcdef0123456789abcdef"
	tests := []struct {
		name string
		env  string // "" = AZURE
		in   string
		want string // in the message
	}{
		{"empty", "", "", "empty"},
		{"http", "", "http://myvault.vault.azure.net/keys/cmk", "https"},
		{"other scheme", "", "ftp://myvault.vault.azure.net/keys/cmk", "not https"},
		{"no scheme", "", "myvault.vault.azure.net/keys/cmk", "not a URL"},
		{"port", "", "https://myvault.vault.azure.net:443/keys/cmk", "port"},
		{"ipv6", "", "https://[::1]/keys/cmk", "IP address"},
		{"userinfo", "", "https://me@myvault.vault.azure.net/keys/cmk", "user information"},
		{"query", "", "https://myvault.vault.azure.net/keys/cmk?api-version=7.4", "query"},
		{"fragment", "", "https://myvault.vault.azure.net/keys/cmk#x", "fragment"},
		{"percent", "", "https://myvault.vault.azure.net/keys/%63mk", "percent"},
		{"space", "", "https://myvault.vault.azure.net/keys/cmk ", "spaces"},
		{"non-ascii", "", "https://myvault.vault.azure.net/keys/cmké", "non-ASCII"},
		{"secret", "", "https://myvault.vault.azure.net/secrets/cmk/" + v, "secret identifier"},
		{"certificate", "", "https://myvault.vault.azure.net/certificates/cmk", "certificate identifier"},
		{"deleted key", "", "https://myvault.vault.azure.net/deletedkeys/cmk", "deleted"},
		{"other path", "", "https://myvault.vault.azure.net/foo/cmk", "must start with /keys/"},
		{"no path", "", "https://myvault.vault.azure.net", "no /keys/{name} path"},
		{"root path", "", "https://myvault.vault.azure.net/", "no /keys/{name} path"},
		{"empty name", "", "https://myvault.vault.azure.net/keys/", "empty key name"},
		{"empty name with version", "", "https://myvault.vault.azure.net/keys//" + v, "empty key name"},
		{"trailing slash", "", "https://myvault.vault.azure.net/keys/cmk/", "ends with a slash"},
		{"extra segments", "", "https://myvault.vault.azure.net/keys/cmk/" + v + "/wrapkey", "extra path segments"},
		{"bad name char", "", "https://myvault.vault.azure.net/keys/cm_k", "character '_'"},
		{"long name", "", "https://myvault.vault.azure.net/keys/" + strings.Repeat("a", 128), "longer than 127"},
		{"bad version char", "", "https://myvault.vault.azure.net/keys/cmk/abc-def", "version"},
		{"long version", "", "https://myvault.vault.azure.net/keys/cmk/" + strings.Repeat("a", 65), "longer than 64"},
		{"wrong suffix", "", "https://myvault.vault.example.com/keys/cmk", "not a vault of environment AZURE"},
		{"china host in azure", "", "https://myvault.vault.azure.cn/keys/cmk", "set the environment to AZURE_CHINA"},
		{"azure host in gov", EnvAzureGovernment, "https://myvault.vault.azure.net/keys/cmk", "set the environment to AZURE"},
		{"bare suffix", "", "https://vault.azure.net/keys/cmk", "not a vault of environment"},
		{"nested vault name", "", "https://a.b.vault.azure.net/keys/cmk", "dot"},
		{"short vault name", "", "https://ab.vault.azure.net/keys/cmk", "3 to 24"},
		{"vault name starts with digit", "", "https://1vault.vault.azure.net/keys/cmk", "start with a letter"},
		{"vault name double hyphen", "", "https://my--vault.vault.azure.net/keys/cmk", "consecutive hyphens"},
		{"vault name ends with hyphen", "", "https://myvault-.vault.azure.net/keys/cmk", "end with a letter"},
		{"vault name underscore", "", "https://my_vault.vault.azure.net/keys/cmk", "character '_'"},
		{"uppercase keys segment", "", "https://myvault.vault.azure.net/Keys/cmk", "must start with /keys/"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := mustEnv(t, EnvAzure)
			if tc.env != "" {
				env = mustEnv(t, tc.env)
			}
			got, err := ParseKeyID(tc.in, env)
			if err == nil {
				t.Fatalf("ParseKeyID(%q) = %+v, nil; want an error", tc.in, got)
			}
			if !errors.Is(err, ErrKeyID) {
				t.Errorf("ParseKeyID(%q) err = %v, want errors.Is ErrKeyID", tc.in, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParseKeyID(%q) err = %q, want it to mention %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestParseVersionedKeyID(t *testing.T) {
	env := mustEnv(t, EnvAzure)
	tests := []struct {
		in      string
		wantErr string
	}{
		{"https://myvault.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef", ""},
		{"https://myvault.vault.azure.net/keys/cmk", "no version"},
		{"http://myvault.vault.azure.net/keys/cmk/0123", "https"},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			_, err := ParseVersionedKeyID(tc.in, env)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("ParseVersionedKeyID(%q) err = %v, want nil", tc.in, err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("ParseVersionedKeyID(%q) err = %v, want one mentioning %q", tc.in, err, tc.wantErr)
			}
		})
	}
}

func TestKeyIDMethods(t *testing.T) {
	env := mustEnv(t, EnvAzure)
	a, _ := ParseKeyID("https://myvault.vault.azure.net/keys/CMK/0123456789abcdef0123456789abcdef", env)
	b, _ := ParseKeyID("https://MYVAULT.vault.azure.net/keys/cmk", env)
	c, _ := ParseKeyID("https://other.vault.azure.net/keys/cmk", env)
	tests := []struct {
		name string
		got  any
		want any
	}{
		{"String", a.String(), "https://myvault.vault.azure.net/keys/CMK/0123456789abcdef0123456789abcdef"},
		{"Versionless", a.Versionless(), "https://myvault.vault.azure.net/keys/CMK"},
		{"String versionless", b.String(), "https://myvault.vault.azure.net/keys/cmk"},
		{"WithVersion", b.WithVersion("ab").String(), "https://myvault.vault.azure.net/keys/cmk/ab"},
		{"SameKey across versions and case", a.SameKey(b), true},
		{"SameKey other vault", a.SameKey(c), false},
		{"zero String", KeyID{}.String(), ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
			}
		})
	}
}

// FuzzParseKeyID checks that ParseKeyID never panics and that whatever it
// accepts round-trips through String.
func FuzzParseKeyID(f *testing.F) {
	for _, s := range []string{
		"https://myvault.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef",
		"https://myvault.vault.azure.net/keys/cmk",
		"https://my-hsm.managedhsm.azure.net/keys/k/1",
		"https://kb.vault.keybroker.test/keys/cmk",
		"http://myvault.vault.azure.net/keys/cmk",
		"https://myvault.vault.azure.net:443/keys/cmk",
		"https://myvault.vault.azure.net/secrets/x",
		"HTTPS://MyVault.Vault.Azure.Net/keys/K/V",
		"https://[::1]/keys/x", "", "://", "https://", "https:///keys/x",
	} {
		f.Add(s)
	}
	envs := []Environment{mustEnv(f, EnvAzure), mustEnv(f, EnvAzureChina), customEnv}
	f.Fuzz(func(t *testing.T, s string) {
		for _, env := range envs {
			id, err := ParseKeyID(s, env)
			if err != nil {
				if !errors.Is(err, ErrKeyID) {
					t.Fatalf("ParseKeyID(%q) err = %v, want errors.Is ErrKeyID", s, err)
				}
				continue
			}
			again, err := ParseKeyID(id.String(), env)
			if err != nil {
				t.Fatalf("ParseKeyID(%q) = %+v; ParseKeyID(String()) err = %v, want nil", s, id, err)
			}
			if again != id {
				t.Fatalf("ParseKeyID(%q) = %+v, round trip = %+v", s, id, again)
			}
			if id.Name == "" || id.Host == "" || id.VaultURL != "https://"+id.Host+"/" {
				t.Fatalf("ParseKeyID(%q) = %+v: incomplete", s, id)
			}
		}
	})
}
