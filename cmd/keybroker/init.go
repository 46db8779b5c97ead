package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/keystore"
)

func runInit(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "init", "--config FILE [--if-missing]")
	cfgPath := configFlag(fs)
	ifMissing := fs.Bool("if-missing", false, "exit 0 without changes when a keystore already exists (for bootstrap scripts)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *cfgPath == "" {
		return cli.UsageErrorf("init: --config is required")
	}
	cfg, logger, err := loadConfigAndLogger(*cfgPath, e)
	if err != nil {
		return err
	}
	created, err := initKeystore(ctx, cfg, logger, *ifMissing)
	if err != nil {
		return err
	}
	if created {
		fmt.Fprintf(e.stdout, "created keystore %s with master key %q\n", cfg.Keystore.Dir, cfg.Keystore.DefaultKey)
	} else {
		fmt.Fprintf(e.stdout, "keystore %s exists: nothing to do\n", cfg.Keystore.Dir)
	}
	return nil
}

// initKeystore creates the keystore with a first master key: 32 random
// bytes, wrapped by every configured customer key and proven by an unwrap
// before anything is written. It never overwrites: an existing keystore is
// an error, or with ifMissing a no-op.
func initKeystore(ctx context.Context, cfg *config.Config, logger *slog.Logger, ifMissing bool) (bool, error) {
	// Local preconditions first (preflight.go): nothing reaches Key Vault,
	// and nothing is created, on a volume that is not there yet.
	if err := checkMount(cfg.Keystore); err != nil {
		return false, err
	}
	if err := checkParent(cfg.Keystore.Dir); err != nil {
		return false, err
	}
	exists, err := keystore.Exists(cfg.Keystore.Dir)
	if err != nil {
		return false, cli.WithCode(exitUsage, err)
	}
	resume := false
	if exists {
		// A keystore without any key is an init killed between creating the
		// keystore and persisting the key: finish it, or nothing can serve.
		if resume, err = keystoreEmpty(cfg.Keystore.Dir); err != nil {
			return false, cli.WithCode(exitUsage, err)
		}
	}
	if exists && !resume {
		if ifMissing {
			return false, nil
		}
		return false, cli.WithCode(exitExists, fmt.Errorf("a keystore already exists in %s: refusing to overwrite it (use --if-missing in scripts)", cfg.Keystore.Dir))
	}
	if !exists {
		if err := checkNewKeystoreDir(cfg.Keystore.Dir, minFreeBytes); err != nil {
			return false, err
		}
	}
	wrapper, closeWrapper, err := buildWrapper(cfg, logger)
	if err != nil {
		return false, err
	}
	defer closeWrapper()
	v, err := broker.NewVersion(ctx, wrapper)
	if err != nil {
		return false, cli.WithCode(vaultExitCode(err), fmt.Errorf("wrapping a new master key with the customer key: %w (nothing was written)", err))
	}
	create := keystore.Create
	if resume {
		logger.Warn("the keystore holds no key: an earlier init was interrupted, finishing it", "dir", cfg.Keystore.Dir)
		create = keystore.Open
	}
	store, err := create(cfg.Keystore.Dir, keystore.Options{})
	if err != nil {
		if errors.Is(err, keystore.ErrExists) && ifMissing {
			return false, nil
		}
		return false, cli.WithCode(exitUsage, err)
	}
	defer store.Close()
	if _, err := store.CreateKey(cfg.Keystore.DefaultKey, keystore.StateActive, v); err != nil {
		return false, fmt.Errorf("persisting the master key: %w", err)
	}
	logger.Info("keystore created", "dir", cfg.Keystore.Dir, "key", cfg.Keystore.DefaultKey, "version", v.ID, "cmk", v.Copies[0].KeyID)
	return true, nil
}

// keystoreEmpty reports whether the keystore in dir holds no key at all.
func keystoreEmpty(dir string) (bool, error) {
	s, err := keystore.Open(dir, keystore.Options{ReadOnly: true})
	if err != nil {
		return false, err
	}
	defer s.Close()
	return len(s.Keys()) == 0, nil
}
