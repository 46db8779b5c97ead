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
		{"require_mount relative", strings.Replace(valid, "  dir: /var/lib/keybroker\n", "  dir: /var/lib/keybroker\n  require_mount: data\n", 1), []string{"line 3", "keystore.require_mount", "not an absolute path"}},
		{"require_mount not holding dir", strings.Replace(valid, "  dir: /var/lib/keybroker\n", "  dir: /var/lib/keybroker\n  require_mount: /srv/data\n", 1), []string{"line 3", "keystore.dir /var/lib/keybroker is not on /srv/data"}},
		{"require_mount sibling prefix", strings.Replace(valid, "  dir: /var/lib/keybroker\n", "  dir: /var/lib/keybroker\n  require_mount: /var/lib/key\n", 1), []string{"is not on /var/lib/key"}},
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
	f.Add([]byte("rotation: {master_key_interval: 90d, retain_versions: 2, cmk_rotation_alert: 400d}"))
	f.Add([]byte(valid + "kmip: {address: \"127.0.0.1:5696\", max_connections: 8, idle_timeout: 1m}\n"))
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

func TestParseRotation(t *testing.T) {
	day := 24 * time.Hour
	tests := []struct {
		name      string
		section   string
		want      Rotation
		automatic bool
	}{
		{"defaults", "", Rotation{MasterKeyInterval: Duration(90 * day), CMKRotationAlert: Duration(90 * day)}, true},
		{"days and hours", "rotation:\n  master_key_interval: 30d\n  cmk_rotation_alert: 400d\n  retain_for: 720h\n  retain_versions: 5\n  cmk_copy_retention: 7d\n",
			Rotation{MasterKeyInterval: Duration(30 * day), CMKRotationAlert: Duration(400 * day), RetainFor: Duration(30 * day), RetainVersions: 5, CMKCopyRetention: Duration(7 * day)}, true},
		{"alerts only", "rotation:\n  automatic: false\n", Rotation{MasterKeyInterval: Duration(90 * day), CMKRotationAlert: Duration(90 * day)}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := Parse("kb.yaml", []byte(valid+tc.section), nil)
			if err != nil {
				t.Fatalf("Parse(%s) err = %v, want nil", tc.name, err)
			}
			got := cfg.Rotation
			if got.Automatic == nil || *got.Automatic != tc.automatic {
				t.Errorf("Parse(%s) rotation.automatic = %v, want %v", tc.name, got.Automatic, tc.automatic)
			}
			got.Automatic = nil
			if got != tc.want {
				t.Errorf("Parse(%s) rotation = %+v, want %+v", tc.name, got, tc.want)
			}
		})
	}
}

func TestParseRotationErrors(t *testing.T) {
	tests := []struct {
		name, section, want string
	}{
		{"interval in seconds", "rotation:\n  master_key_interval: 90s\n", "rotation.master_key_interval: 1m30s is too short"},
		{"one version", "rotation:\n  retain_versions: 1\n", "rotation.retain_versions: 1: want 0"},
		{"negative versions", "rotation:\n  retain_versions: -2\n", "rotation.retain_versions: -2"},
		{"retain for an hour", "rotation:\n  retain_for: 1h\n", "rotation.retain_for: 1h0m0s is too short"},
		{"short alert", "rotation:\n  cmk_rotation_alert: 5m\n", "rotation.cmk_rotation_alert: 5m0s is too short"},
		{"short copy retention", "rotation:\n  cmk_copy_retention: 10m\n", "rotation.cmk_copy_retention: 10m0s is too short"},
		{"fractional days", "rotation:\n  master_key_interval: 1.5d\n", `"1.5d" is not a duration`},
		{"too many days", "rotation:\n  master_key_interval: 99999999d\n", `"99999999d" is not a duration`},
		{"unknown key", "rotation:\n  interval: 90d\n", "key interval is not a known key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("kb.yaml", []byte(valid+tc.section), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse(%s) err = %v, want one containing %q", tc.name, err, tc.want)
			}
		})
	}
}

func TestParseAdminAndTelemetry(t *testing.T) {
	tests := []struct {
		name      string
		section   string
		env       map[string]string
		wantAddr  string
		wantOTEL  map[string]string
		wantError string
	}{
		{name: "off by default"},
		{name: "admin address", section: "admin:\n  address: 127.0.0.1:9464\n", wantAddr: "127.0.0.1:9464"},
		{name: "any free port", section: "admin:\n  address: \"[::1]:0\"\n", wantAddr: "[::1]:0"},
		{name: "bad address", section: "admin:\n  address: 9464\n", wantError: `admin.address: "9464" is not host:port`},
		{name: "unknown admin key", section: "admin:\n  port: 9464\n", wantError: "key port is not a known key"},
		{name: "telemetry is not a file section", section: "telemetry:\n  otel: {}\n", wantError: "key telemetry is not a known key"},
		{name: "OTEL variables from the environment",
			env:      map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": " http://collector:4318 ", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_UNRELATED": "x", "OTEL_METRICS_EXPORTER": ""},
			wantOTEL: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "otlp"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var getenv func(string) string
			if tc.env != nil {
				getenv = func(k string) string { return tc.env[k] }
			}
			cfg, err := Parse("kb.yaml", []byte(valid+tc.section), getenv)
			if tc.wantError != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantError) {
					t.Fatalf("Parse(%s) err = %v, want one containing %q", tc.name, err, tc.wantError)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%s) err = %v, want nil", tc.name, err)
			}
			if cfg.Admin.Address != tc.wantAddr {
				t.Errorf("Parse(%s) admin.address = %q, want %q", tc.name, cfg.Admin.Address, tc.wantAddr)
			}
			if len(cfg.Telemetry.OTEL) != len(tc.wantOTEL) {
				t.Errorf("Parse(%s) Telemetry.OTEL = %v, want %v", tc.name, cfg.Telemetry.OTEL, tc.wantOTEL)
			}
			for k, v := range tc.wantOTEL {
				if cfg.Telemetry.OTEL[k] != v {
					t.Errorf("Parse(%s) Telemetry.OTEL[%s] = %q, want %q", tc.name, k, cfg.Telemetry.OTEL[k], v)
				}
			}
		})
	}
}
