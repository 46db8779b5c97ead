package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/keybroker/keybroker/internal/akv"
	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
)

// CMK rotation (docs/rotation.md). The customer moves to a new key version,
// or names another key in azure.key_id. The broker wraps every retained
// master-key version under it and keeps the old copies: at start (serve),
// when a validity check sees a new version of a versionless key id, or
// offline with `keybroker rotate-cmk`. `rotate-cmk --finalize` then drops
// the old copies, after which the old key version may be disabled.

// rewrapAtStartTimeout bounds the rewrap serve does before it listens; what
// is left is done by the scheduler in the background.
const rewrapAtStartTimeout = time.Minute

func runRotateCMK(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "rotate-cmk", "--config FILE [--finalize]")
	cfgPath := configFlag(fs)
	finalize := fs.Bool("finalize", false, "drop the copies wrapped by previous customer keys or key versions, once every version has a copy under the current one")
	timeout := fs.Duration("timeout", 5*time.Minute, "deadline for all Key Vault calls")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *cfgPath == "":
		return cli.UsageErrorf("rotate-cmk: --config is required")
	case *timeout <= 0:
		return cli.UsageErrorf("rotate-cmk: --timeout %v: want a positive duration such as 5m", *timeout)
	}
	cfg, logger, err := loadConfigAndLogger(*cfgPath, e)
	if err != nil {
		return err
	}
	store, err := openKeystore(cfg, keystore.Options{Logger: logger},
		"most likely by a running broker. A running broker rewraps by itself: at start, and when a validity check sees a new version of a versionless key id ('keybroker revalidate' runs one now). Stop it to run rotate-cmk",
		"")
	if err != nil {
		return err
	}
	defer store.Close()

	wrapper, closeWrapper, err := buildWrapper(cfg, logger)
	if err != nil {
		return err
	}
	defer closeWrapper()
	wrapper, err = withPreviousKeys(cfg, store, wrapper, logger)
	if err != nil {
		return err
	}
	b, err := broker.New(broker.Config{Store: store, Wrapper: wrapper, DefaultKey: cfg.Keystore.DefaultKey, Logger: logger})
	if err != nil {
		return cli.WithCode(exitUsage, err)
	}
	defer b.Close()

	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if *finalize {
		rep, err := b.FinalizeCMK(ctx)
		if err != nil {
			return cli.WithCode(cmkExitCode(err), err)
		}
		if len(rep.Finalized) == 0 {
			fmt.Fprintf(e.stdout, "nothing to drop: every version is wrapped only by %s\n", strings.Join(rep.Targets, ", "))
			return nil
		}
		fmt.Fprintf(e.stdout, "dropped the copies wrapped by %s from %d versions; every version is now wrapped only by %s.\n", strings.Join(rep.Dropped, ", "), len(rep.Finalized), strings.Join(rep.Targets, ", "))
		fmt.Fprintln(e.stdout, "The previous customer key version can be disabled once no keystore backup taken before now is still needed.")
		return nil
	}
	rep, err := b.RotateCMK(ctx)
	for _, v := range rep.Rewrapped {
		fmt.Fprintf(e.stdout, "rewrapped key %q version %s\n", v.Key, v.Version)
	}
	if err != nil {
		return cli.WithCode(cmkExitCode(err), fmt.Errorf("%w (%d versions rewrapped and kept; run rotate-cmk again once the cause is fixed)", err, len(rep.Rewrapped)))
	}
	fmt.Fprintf(e.stdout, "%d versions rewrapped, %d already wrapped by %s; the master keys are unchanged.\n", len(rep.Rewrapped), rep.Current, strings.Join(rep.Targets, ", "))
	if len(rep.Rewrapped) > 0 {
		fmt.Fprintln(e.stdout, "The copies under the previous customer key stay: keep that key version enabled until 'keybroker rotate-cmk --finalize' has run.")
	}
	return nil
}

// cmkExitCode picks the exit code for a failed rewrap or finalize: the
// vault's answer when there was one, else 1 (a version without its new
// copy, for instance).
func cmkExitCode(err error) int {
	if errors.Is(err, context.DeadlineExceeded) {
		return exitUnavailable
	}
	return vaultExitCode(err)
}

// rotationConfig turns the configuration's rotation section into the
// broker's.
func rotationConfig(c config.Rotation) broker.RotationConfig {
	return broker.RotationConfig{
		MasterKeyInterval: c.MasterKeyInterval.D(),
		Manual:            c.Automatic != nil && !*c.Automatic,
		RetainVersions:    c.RetainVersions,
		RetainFor:         c.RetainFor.D(),
		CMKRotationAlert:  c.CMKRotationAlert.D(),
		CMKCopyRetention:  c.CMKCopyRetention.D(),
	}
}

// startRotation makes sure, before the broker serves, that every master-key
// version is wrapped by the customer key configured now (a new key or key
// version named in the configuration is taken up here), then runs the
// rotation scheduler. A failure is logged and left to the scheduler, which
// retries. The returned func stops the scheduler and waits for it.
func startRotation(ctx context.Context, b *broker.Broker, logger *slog.Logger) func() {
	if b.State().State == broker.StateServing {
		rctx, cancel := context.WithTimeout(ctx, rewrapAtStartTimeout)
		rep, err := b.RotateCMK(rctx)
		cancel()
		switch {
		case err != nil:
			logger.Error("could not wrap every master-key version under the configured customer key at start: serving with the copies there are, retrying in the background; keep the previous customer key version enabled", "err", err, "rewrapped", len(rep.Rewrapped))
		case len(rep.Rewrapped) > 0:
			logger.Info("master keys rewrapped under the configured customer key; the copies under the previous key stay until rotate-cmk --finalize", "cmk", rep.Targets, "versions", len(rep.Rewrapped))
		}
	}
	sctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.RunRotation(sctx)
	}()
	return func() {
		stop()
		<-done
	}
}

// withPreviousKeys lets w also unwrap the copies made by customer keys that
// the keystore holds copies of but the configuration no longer names (the
// customer named another key in azure.key_id): the broker can then start
// and rewrap them under the configured key. Previous keys are reached at
// their own vault with the configured credential, and only for unwrapping.
// It returns w itself when there is none.
func withPreviousKeys(cfg *config.Config, store *keystore.Store, w broker.KeyWrapper, logger *slog.Logger) (broker.KeyWrapper, error) {
	env, err := azureEnvironment(cfg.Azure)
	if err != nil {
		return nil, err
	}
	var configured []akv.KeyID
	for i, r := range cfg.Azure.Regions {
		id, err := akv.ParseKeyID(r.KeyID, env)
		if err != nil {
			return nil, cli.WithCode(exitUsage, fmt.Errorf("azure.regions[%d] (%s): %w", i, r.Name, err))
		}
		configured = append(configured, id)
	}
	seen := make(map[string]bool)
	var previous []akv.KeyID
	for _, k := range store.Keys() {
		for _, v := range k.Versions {
			for _, c := range v.Copies {
				id, err := akv.ParseKeyID(c.KeyID, env)
				if err != nil {
					logger.Warn("a keystore copy names a key outside the configured Azure environment: it cannot be unwrapped here", "key", k.Name, "version", v.ID, "cmk", c.KeyID)
					continue
				}
				base := strings.ToLower(id.Versionless())
				if seen[base] || isConfigured(id, configured) {
					continue
				}
				seen[base] = true
				previous = append(previous, id)
			}
		}
	}
	if len(previous) == 0 {
		return w, nil
	}
	pw := previousKeys{KeyWrapper: w}
	for _, id := range previous {
		c := *cfg
		c.Azure.Regions = []config.Region{{Name: "previous", KeyID: id.Versionless(), Timeout: cfg.Azure.Timeout}}
		// One region: an akv adapter, whose release func is a no-op.
		kw, _, err := buildWrapper(&c, logger)
		if err != nil {
			return nil, fmt.Errorf("previous customer key %s, which the keystore holds copies of: %w", id.Versionless(), err)
		}
		pw.previous = append(pw.previous, kw)
		logger.Info("the keystore holds copies under a customer key the configuration no longer names: it is used to unwrap them until they are rewrapped and finalized", "cmk", id.Versionless())
	}
	return pw, nil
}

func isConfigured(id akv.KeyID, configured []akv.KeyID) bool {
	for _, c := range configured {
		if c.SameKey(id) {
			return true
		}
	}
	return false
}

// previousKeys is the configured wrapper, which does everything, plus
// unwrap-only wrappers for previous customer keys, asked only when the
// configured one holds none of the copies. It is safe for concurrent use.
type previousKeys struct {
	broker.KeyWrapper
	previous []broker.KeyWrapper
}

// The broker asks its wrapper for these; previousKeys answers as the
// configured wrapper would.
var (
	_ broker.RegionReporter = previousKeys{}
	_ broker.RegionChecker  = previousKeys{}
)

// UnwrapKey implements broker.KeyWrapper.
func (p previousKeys) UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error) {
	raw, err := p.KeyWrapper.UnwrapKey(ctx, copies)
	if err == nil || kek.KindOf(err) != kek.KindInvalidInput {
		return raw, err
	}
	// No copy of a configured key among these: a previous key's, then.
	for _, w := range p.previous {
		raw, perr := w.UnwrapKey(ctx, copies)
		if perr == nil {
			return raw, nil
		}
		if kek.KindOf(perr) != kek.KindInvalidInput {
			return nil, perr
		}
	}
	return nil, err
}

// RegionStatus shows the configured wrapper's regions, if it has any.
func (p previousKeys) RegionStatus() []broker.RegionStatus {
	if rr, ok := p.KeyWrapper.(broker.RegionReporter); ok {
		return rr.RegionStatus()
	}
	return nil
}

// PartialRevocation is the configured wrapper's, if it spans regions.
func (p previousKeys) PartialRevocation() bool {
	rr, ok := p.KeyWrapper.(broker.RegionReporter)
	return ok && rr.PartialRevocation()
}

// CheckRegions is the configured wrapper's, if it spans regions; else it
// reports nothing and the broker checks the wrapper as one region.
func (p previousKeys) CheckRegions(ctx context.Context, sets [][]kek.Wrapped, report func(region string, info kek.KeyInfo, err error)) {
	if rc, ok := p.KeyWrapper.(broker.RegionChecker); ok {
		rc.CheckRegions(ctx, sets, report)
	}
}

// Region is the configured wrapper's region name, if it has one.
func (p previousKeys) Region() string {
	if n, ok := p.KeyWrapper.(interface{ Region() string }); ok {
		return n.Region()
	}
	return ""
}
