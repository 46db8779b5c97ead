package config

import (
	"strings"
	"testing"
	"time"
)

func TestKMIPSection(t *testing.T) {
	cfg, err := Parse("kb.yaml", []byte(valid), nil)
	if err != nil || cfg.KMIP.Address != "" {
		t.Fatalf("Parse(valid) = %+v, %v; want KMIP off by default", cfg.KMIP, err)
	}
	cfg, err = Parse("kb.yaml", []byte(valid+"kmip:\n  address: \"127.0.0.1:5696\"\n  idle_timeout: 30s\n"), nil)
	if err != nil {
		t.Fatalf("Parse(kmip) err = %v, want nil", err)
	}
	k := cfg.KMIP
	if k.CertFile != "server.pem" || k.KeyFile != "server-key.pem" || k.ClientCAFile != "ca.pem" ||
		k.MaxConnections != DefaultKMIPMaxConnections || k.MaxMessageSize != DefaultKMIPMaxMessageSize ||
		k.HandshakeTimeout.D() != DefaultKMIPHandshakeTimeout || k.ReadTimeout.D() != DefaultKMIPReadTimeout || k.IdleTimeout.D() != 30*time.Second {
		t.Fatalf("kmip defaults = %+v, want the tls files and the documented limits", k)
	}
	for _, tc := range []struct {
		name, section, want string
	}{
		{"bad address", "  address: localhost\n", "kmip.address"},
		{"cert without key", "  address: \":5696\"\n  cert_file: k.pem\n", "kmip.cert_file"},
		{"negative cap", "  address: \":5696\"\n  max_connections: -1\n", "kmip.max_connections"},
		{"tiny message size", "  address: \":5696\"\n  max_message_size: 100\n", "kmip.max_message_size"},
		{"negative timeout", "  address: \":5696\"\n  read_timeout: -1s\n", `"-1s" is not a duration`},
		{"unknown key", "  address: \":5696\"\n  port: 5696\n", "port is not a known key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("kb.yaml", []byte(valid+"kmip:\n"+tc.section), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse err = %v, want it to name %q", err, tc.want)
			}
		})
	}
}
