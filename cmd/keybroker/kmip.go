package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/kmip"
	"github.com/keybroker/keybroker/internal/mtls"
	"github.com/keybroker/keybroker/internal/pki"
)

// startKMIP serves KMIP when kmip.address is set, and returns its address
// ("" when off) and a stop function that closes it.
func startKMIP(cfg *config.Config, b *broker.Broker, logger *slog.Logger, metrics kmip.Metrics) (string, func(), error) {
	k := cfg.KMIP
	if k.Address == "" {
		return "", func() {}, nil
	}
	tlsCfg, err := mtls.ServerTLS(mtls.ServerConfig{CertFile: k.CertFile, KeyFile: k.KeyFile, ClientCAFile: k.ClientCAFile, MinVersion: tls.VersionTLS12, Logger: logger})
	if err != nil {
		return "", nil, cli.WithCode(exitUsage, fmt.Errorf("kmip: %w", err))
	}
	srv, err := kmip.New(kmip.Config{
		Core: b, TLS: tlsCfg, Roles: roles(cfg.Authorization), Logger: logger.With("component", "kmip"), Metrics: metrics,
		MaxConnections: k.MaxConnections, MaxMessageSize: k.MaxMessageSize,
		HandshakeTimeout: k.HandshakeTimeout.D(), ReadTimeout: k.ReadTimeout.D(), IdleTimeout: k.IdleTimeout.D(),
	})
	if err != nil {
		return "", nil, cli.WithCode(exitUsage, err)
	}
	l, err := kmip.Listen(k.Address)
	if err != nil {
		return "", nil, cli.WithCode(exitUsage, err)
	}
	go func() {
		if err := srv.Serve(l); err != nil {
			logger.Error("kmip: serving stopped", "err", err)
		}
	}()
	addr := l.Addr().String()
	if id, err := b.MasterKeyObjectID(); err == nil {
		logger.Info("serving KMIP", "address", addr, "master_key_kmip_id", id)
	}
	return addr, func() { srv.Close() }, nil
}

// Dev PKI files for KMIP clients: one PEM holding a client certificate and
// its key, as mongod's --kmipClientCertificateFile and PyKMIP want.
const (
	devKMIPEnginePEM = "engine-kmip.pem"
	devKMIPAdminPEM  = "admin-kmip.pem"
)

// writeKMIPPEMs writes the engine and admin certificate+key PEM files of
// the dev PKI (0600) and returns their paths.
func writeKMIPPEMs(f pki.Files) (engine, admin string, err error) {
	write := func(name, cert, key string) (string, error) {
		c, err := os.ReadFile(cert)
		if err != nil {
			return "", err
		}
		k, err := os.ReadFile(key)
		if err != nil {
			return "", err
		}
		p := filepath.Join(f.Dir, name)
		tmp := p + ".tmp"
		if err := os.WriteFile(tmp, append(append(c, '\n'), k...), 0o600); err != nil {
			return "", err
		}
		clear(k)
		return p, os.Rename(tmp, p)
	}
	if engine, err = write(devKMIPEnginePEM, f.EngineCert, f.EngineKey); err != nil {
		return "", "", fmt.Errorf("dev PKI: writing the KMIP engine PEM: %w", err)
	}
	if admin, err = write(devKMIPAdminPEM, f.AdminCert, f.AdminKey); err != nil {
		return "", "", fmt.Errorf("dev PKI: writing the KMIP admin PEM: %w", err)
	}
	return engine, admin, nil
}

// devKMIPAddr is the KMIP address of `keybroker dev`: flag, or port 5696
// on loopback, or a free port when the gRPC address asks for one.
func devKMIPAddr(flagVal, grpcAddr string) string {
	if flagVal != "" {
		return flagVal
	}
	if _, port, err := net.SplitHostPort(grpcAddr); err == nil && port == "0" {
		return "127.0.0.1:0"
	}
	return "127.0.0.1:5696"
}

// devKMIPHint prints working mongod and Percona Server configurations for
// the dev PKI.
func devKMIPHint(kmipAddr, ca, enginePEM, keyID string) string {
	host, port, _ := net.SplitHostPort(kmipAddr)
	return fmt.Sprintf(`
KMIP is served on %[1]s (master key KMIP id %[5]s). mongod Enterprise:
  mongod --enableEncryption --kmipServerName %[2]s --kmipPort %[3]s \
    --kmipServerCAFile %[4]s --kmipClientCertificateFile %[6]s \
    --kmipKeyIdentifier %[5]s
  (leave out --kmipKeyIdentifier to let mongod Create its own key; add --kmipKeyStatePollingSeconds 30 to notice a revocation sooner)
Percona Server for MongoDB (mongod.conf):
  security:
    enableEncryption: true
    kmip:
      serverName: %[2]s
      port: %[3]s
      serverCAFile: %[4]s
      clientCertificateFile: %[6]s
`, kmipAddr, host, port, ca, keyID, enginePEM)
}

// devKMIPConfig is the kmip section of the dev configuration.
func devKMIPConfig(addr string) string {
	return fmt.Sprintf("kmip:\n  address: %q\n", addr)
}

// kmipMetrics returns the KMIP instruments; nil records nothing.
func (o *observability) kmipMetrics() kmip.Metrics {
	if o == nil {
		return nil
	}
	return o.tel.KMIPMetrics()
}
