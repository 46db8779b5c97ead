package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/mtls"
)

// preflight prints one line per check and remembers whether any failed.
type preflight struct {
	w      io.Writer
	failed int
}

func (p *preflight) ok(what, detail string) { fmt.Fprintf(p.w, "ok    %-22s %s\n", what, detail) }
func (p *preflight) warn(what, detail string) {
	fmt.Fprintf(p.w, "warn  %-22s %s\n", what, detail)
}
func (p *preflight) fail(what string, err error, hint string) {
	p.failed++
	fmt.Fprintf(p.w, "FAIL  %-22s %v\n", what, err)
	if hint != "" {
		fmt.Fprintf(p.w, "      %-22s -> %s\n", "", hint)
	}
}

func runCheck(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "check", "--config FILE")
	cfgPath := fs.String("config", "", "configuration file to check")
	timeout := fs.Duration("timeout", 60*time.Second, "deadline for all Key Vault calls")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *cfgPath == "" {
		return cli.UsageErrorf("check: --config is required")
	}
	p := &preflight{w: e.stdout}
	cfg, err := loadConfig(*cfgPath, e)
	if err != nil {
		p.fail("configuration", err, "fix the file; every problem is listed with its line")
		return cli.WithCode(exitCheckFailed, fmt.Errorf("check found %d problem(s)", p.failed))
	}
	p.ok("configuration", *cfgPath)

	if _, err := mtls.ServerTLS(mtls.ServerConfig{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, ClientCAFile: cfg.TLS.ClientCAFile}); err != nil {
		p.fail("tls", err, "check tls.cert_file, tls.key_file and tls.client_ca_file")
	} else {
		p.ok("tls", cfg.TLS.CertFile)
	}

	var store *keystore.Store
	switch exists, err := keystore.Exists(cfg.Keystore.Dir); {
	case err != nil:
		p.fail("keystore", err, "")
	case !exists:
		p.warn("keystore", "no keystore in "+cfg.Keystore.Dir+" yet: 'keybroker init --config FILE' creates it")
	default:
		store, err = keystore.Open(cfg.Keystore.Dir, keystore.Options{ReadOnly: true})
		if err != nil {
			p.fail("keystore", err, "the keystore is unreadable or corrupt: restore it from backup; nothing was changed")
		} else {
			defer store.Close()
			p.ok("keystore", fmt.Sprintf("%s (%d key(s))", cfg.Keystore.Dir, len(store.Keys())))
		}
	}

	logger, _ := newLogger(io.Discard, cfg.Log)
	wrapper, closeWrapper, err := buildWrapper(cfg, logger)
	if err != nil {
		p.fail("azure", err, "check the azure section")
		return cli.WithCode(exitCheckFailed, fmt.Errorf("check found %d problem(s)", p.failed))
	}
	defer closeWrapper()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	info, err := wrapper.KeyInfo(ctx)
	switch {
	case err != nil:
		p.fail("customer key", err, vaultHint(err))
	case !info.Enabled:
		p.fail("customer key", fmt.Errorf("%s is disabled", info.KeyID), "enable the key in Key Vault")
	default:
		p.ok("customer key", fmt.Sprintf("%s enabled (%s)", info.KeyID, info.KeyType))
	}

	probe := make([]byte, 32)
	defer clear(probe)
	if _, err := rand.Read(probe); err != nil {
		return err
	}
	copies, err := wrapper.WrapKey(ctx, probe)
	if err != nil {
		p.fail("wrap", err, vaultHint(err))
	} else {
		back, err := wrapper.UnwrapKey(ctx, copies)
		switch {
		case err != nil:
			p.fail("unwrap", err, vaultHint(err))
		case !bytes.Equal(back, probe):
			p.fail("unwrap", errors.New("the round trip returned different bytes"), "the vault answered wrongly: contact support")
		default:
			p.ok("wrap/unwrap", fmt.Sprintf("round trip through %d key(s)", len(copies)))
		}
		clear(back)
	}

	if store != nil {
		for _, k := range store.Keys() {
			v, ok := k.Current()
			if !ok {
				continue
			}
			raw, err := wrapper.UnwrapKey(ctx, v.Copies)
			clear(raw)
			if err != nil {
				p.fail("keystore key "+k.Name, err, vaultHint(err))
				continue
			}
			p.ok("keystore key "+k.Name, "version "+v.ID+" unwraps")
		}
	}
	if p.failed > 0 {
		return cli.WithCode(exitCheckFailed, fmt.Errorf("check found %d problem(s)", p.failed))
	}
	fmt.Fprintln(e.stdout, "all checks passed")
	return nil
}

// vaultHint says what to do about a classified Key Vault failure.
func vaultHint(err error) string {
	switch kek.KindOf(err) {
	case kek.KindRevoked:
		return "grant the broker's identity get, wrapKey and unwrapKey on the key (Key Vault Crypto Service Encryption User), enable the key, and check its credential"
	case kek.KindNotFound:
		return "the key or version does not exist: check azure.key_id, or recover the deleted key"
	case kek.KindUnavailable:
		return "Key Vault is unreachable: check DNS, firewall and private endpoint routes"
	case kek.KindThrottled:
		return "Key Vault is throttling: retry later"
	}
	return ""
}
