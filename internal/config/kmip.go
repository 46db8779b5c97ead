package config

import (
	"net"
	"time"
)

// KMIP configures the KMIP front-end (internal/kmip): TTLV over TLS for
// storage engines that speak KMIP (mongod Enterprise, Percona Server for
// MongoDB, libmongocrypt). Client identities and roles are the
// authorization section's.
type KMIP struct {
	// Address is host:port, e.g. 127.0.0.1:5696 (KMIP's port); "" (the
	// default) leaves KMIP off.
	Address string `yaml:"address"`
	// CertFile, KeyFile and ClientCAFile default to the tls section's.
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
	// MaxConnections caps concurrent connections; default 256.
	MaxConnections int `yaml:"max_connections"`
	// MaxMessageSize bounds one request in bytes; default 64 KiB.
	MaxMessageSize int `yaml:"max_message_size"`
	// HandshakeTimeout bounds the TLS handshake; default 10s.
	HandshakeTimeout Duration `yaml:"handshake_timeout"`
	// ReadTimeout bounds reading one request once its first byte came and
	// writing its response; default 30s.
	ReadTimeout Duration `yaml:"read_timeout"`
	// IdleTimeout closes a connection that sends no request for that
	// long; default 2m.
	IdleTimeout Duration `yaml:"idle_timeout"`
}

// KMIP defaults.
const (
	DefaultKMIPMaxConnections   = 256
	DefaultKMIPMaxMessageSize   = 64 << 10
	DefaultKMIPHandshakeTimeout = 10 * time.Second
	DefaultKMIPReadTimeout      = 30 * time.Second
	DefaultKMIPIdleTimeout      = 2 * time.Minute
)

func (v *validator) checkKMIP(c *Config) {
	k := &c.KMIP
	if k.Address == "" {
		return
	}
	if _, _, err := net.SplitHostPort(k.Address); err != nil {
		v.addf("kmip.address", "%q is not host:port (e.g. 127.0.0.1:5696)", k.Address)
	}
	if (k.CertFile == "") != (k.KeyFile == "") {
		v.addf("kmip.cert_file", "set both kmip.cert_file and kmip.key_file, or neither to use the tls section's")
	}
	if k.MaxConnections < 0 {
		v.addf("kmip.max_connections", "must not be negative")
	}
	if k.MaxMessageSize < 0 || (k.MaxMessageSize > 0 && k.MaxMessageSize < 1024) {
		v.addf("kmip.max_message_size", "%d bytes: use at least 1024 (0 = 64 KiB)", k.MaxMessageSize)
	}
	for _, d := range []struct {
		path string
		val  Duration
	}{{"kmip.handshake_timeout", k.HandshakeTimeout}, {"kmip.read_timeout", k.ReadTimeout}, {"kmip.idle_timeout", k.IdleTimeout}} {
		if d.val < 0 {
			v.addf(d.path, "must not be negative")
		}
	}
}

func (c *Config) fillKMIPDefaults() {
	k := &c.KMIP
	if k.CertFile == "" {
		k.CertFile, k.KeyFile = c.TLS.CertFile, c.TLS.KeyFile
	}
	if k.ClientCAFile == "" {
		k.ClientCAFile = c.TLS.ClientCAFile
	}
	if k.MaxConnections == 0 {
		k.MaxConnections = DefaultKMIPMaxConnections
	}
	if k.MaxMessageSize == 0 {
		k.MaxMessageSize = DefaultKMIPMaxMessageSize
	}
	if k.HandshakeTimeout == 0 {
		k.HandshakeTimeout = Duration(DefaultKMIPHandshakeTimeout)
	}
	if k.ReadTimeout == 0 {
		k.ReadTimeout = Duration(DefaultKMIPReadTimeout)
	}
	if k.IdleTimeout == 0 {
		k.IdleTimeout = Duration(DefaultKMIPIdleTimeout)
	}
}
