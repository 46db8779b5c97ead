package config

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const valid = `keystore:
  dir: /var/lib/keybroker
listen:
  address: 127.0.0.1:7443
  unix: /run/keybroker.sock
tls:
  cert_file: server.pem
  key_file: server-key.pem
  client_ca_file: ca.pem
authorization:
  engine: [spiffe://keybroker.dev/engine]
  admin: [spiffe://keybroker.dev/admin]
azure:
  credential:
    kind: client_secret
    tenant_id: 00000000-0000-0000-0000-000000000001
    client_id: 00000000-0000-0000-0000-000000000002
    client_secret_file: /etc/keybroker/secret
  key_id: https://kb.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef
cache:
  ttl: 30m
`

func TestParseValid(t *testing.T) {
	cfg, err := Parse("kb.yaml", []byte(valid), nil)
	if err != nil {
		t.Fatalf("Parse(valid) err = %v, want nil", err)
	}
	if got, want := cfg.Cache.TTL.D(), 30*time.Minute; got != want {
		t.Errorf("cache.ttl = %v, want %v", got, want)
	}
	if cfg.Keystore.DefaultKey != DefaultKeyName || cfg.Validation.Interval.D() != DefaultCheckInterval || cfg.Azure.Environment != "AZURE" {
		t.Errorf("defaults not filled: %+v", cfg)
	}
	if len(cfg.Azure.Regions) != 1 || cfg.Azure.Regions[0].KeyID != cfg.Azure.KeyID || cfg.Azure.Regions[0].Timeout.D() != DefaultTimeout {
		t.Errorf("single key_id not turned into one region: %+v", cfg.Azure.Regions)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error
	}{
		{"unknown key", strings.Replace(valid, "  ttl: 30m", "  ttl: 30m\n  tll: 5m", 1), []string{"line 22", `key tll is not a known key`}},
		{"unknown top-level", valid + "extra: 1\n", []string{"line 22", "extra"}},
		{"missing dir", strings.Replace(valid, "  dir: /var/lib/keybroker\n", "  default_key: m\n", 1), []string{"line 1", "keystore.dir: missing"}},
		{"missing tenant", strings.Replace(valid, "    tenant_id: 00000000-0000-0000-0000-000000000001\n", "", 1), []string{"line 14", "azure.credential.tenant_id: missing"}},
		{"bad duration", strings.Replace(valid, "ttl: 30m", "ttl: soon", 1), []string{"line 21", `"soon" is not a duration`}},
		{"bad kind", strings.Replace(valid, "kind: client_secret", "kind: password", 1), []string{"line 15", `"password"`}},
		{"bad listen", strings.Replace(valid, "address: 127.0.0.1:7443", "address: 7443x", 1), []string{"line 4", "not host:port"}},
		{"no listener", strings.Replace(strings.Replace(valid, "  address: 127.0.0.1:7443\n", "", 1), "  unix: /run/keybroker.sock\n", "", 1), []string{"listen"}},
		{"no key", strings.Replace(valid, "  key_id: https://kb.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef\n", "", 1), []string{"azure.key_id: missing"}},
		{"custom without authority", strings.Replace(valid, "azure:\n", "azure:\n  environment: CUSTOM\n", 1), []string{"azure.custom.authority_host: missing"}},
		{"custom outside CUSTOM", strings.Replace(valid, "azure:\n", "azure:\n  custom:\n    connect_to: 127.0.0.1:1\n", 1), []string{"only allowed with environment: CUSTOM"}},
		{"empty", "", []string{"is empty"}},
		{"not yaml", "keystore: [", []string{"kb.yaml"}},
		{"wrong type", strings.Replace(valid, "  engine: [spiffe://keybroker.dev/engine]", "  engine: {a: b}", 1), []string{"line 11"}},
		{"duplicate region", strings.Replace(valid, "cache:", "  regions:\n  - {name: a}\n  - {name: a}\ncache:", 1), []string{`"a" is listed twice`}},
		{"oversize", strings.Repeat("#", MaxSize+1), []string{"more than"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("kb.yaml", []byte(tc.yaml), nil)
			if err == nil {
				t.Fatalf("Parse err = nil, want an error containing %q", tc.want)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse err = %v, want it to wrap ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Parse err = %q, want it to contain %q", err, w)
				}
			}
		})
	}
}

func TestParseEnv(t *testing.T) {
	in := strings.Replace(valid, "    tenant_id: 00000000-0000-0000-0000-000000000001\n", "", 1)
	in = strings.Replace(in, "    client_secret_file: /etc/keybroker/secret\n", "", 1)
	env := map[string]string{"AZURE_TENANT_ID": "tenant-from-env", "AZURE_CLIENT_SECRET": "s3cret"}
	cfg, err := Parse("kb.yaml", []byte(in), func(k string) string { return env[k] })
	if err != nil {
		t.Fatalf("Parse with env err = %v, want nil", err)
	}
	if cfg.Azure.Credential.TenantID != "tenant-from-env" || cfg.Azure.Credential.ClientSecret != "s3cret" {
		t.Errorf("env not applied: tenant %q", cfg.Azure.Credential.TenantID)
	}
	if _, err := Parse("kb.yaml", []byte(in), nil); err == nil || !strings.Contains(err.Error(), "AZURE_CLIENT_SECRET") {
		t.Errorf("Parse without secret err = %v, want one naming AZURE_CLIENT_SECRET", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(valid))
	f.Add([]byte("keystore: {dir: x}\nazure: {regions: [{name: a}]}"))
	f.Add([]byte("cache: {ttl: -1s}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("fuzz.yaml", data, nil)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse err = %v, want it to wrap ErrInvalid", err)
			}
			return
		}
		if cfg.Keystore.Dir == "" || len(cfg.Azure.Regions) == 0 {
			t.Fatalf("Parse accepted a config without keystore.dir or a region: %+v", cfg)
		}
	})
}
