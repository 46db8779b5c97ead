package main

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/keybroker/keybroker/internal/akv"
	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
)

// Adding a region whose vault holds a key of its own (a vault outside the
// paired regions, say) needs a wrapped copy of every master-key version
// under that key: otherwise the day only that region answers, nothing can
// be unwrapped. The master key itself never changes; only a copy is added.
// `keybroker rewrap` does it on demand, and serve at start for every
// configured region whose key has no copy yet.

func runRewrap(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "rewrap", "--config FILE (--add-region NAME | --all-missing)")
	cfgPath := configFlag(fs)
	addRegion := fs.String("add-region", "", "add the missing copies for this configured region (azure.regions[].name)")
	allMissing := fs.Bool("all-missing", false, "add the missing copies for every configured region whose key has none")
	timeout := fs.Duration("timeout", 5*time.Minute, "deadline for all Key Vault calls")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case *cfgPath == "":
		return cli.UsageErrorf("rewrap: --config is required")
	case *addRegion == "" && !*allMissing:
		return cli.UsageErrorf("rewrap: say which copies to add: --add-region NAME (a region of azure.regions) or --all-missing")
	case *addRegion != "" && *allMissing:
		return cli.UsageErrorf("rewrap: --add-region and --all-missing exclude each other: give one")
	case *timeout <= 0:
		return cli.UsageErrorf("rewrap: --timeout %v: want a positive duration such as 5m", *timeout)
	}
	cfg, logger, err := loadConfigAndLogger(*cfgPath, e)
	if err != nil {
		return err
	}
	env, err := azureEnvironment(cfg.Azure)
	if err != nil {
		return err
	}
	regions, err := configuredRegions(cfg, env)
	if err != nil {
		return err
	}
	if *addRegion != "" && !slices.ContainsFunc(regions, func(r vaultRegion) bool { return r.name == *addRegion }) {
		return cli.UsageErrorf("rewrap: --add-region %q is not a configured region (azure.regions: %s): add it to the configuration first", *addRegion, regionNames(regions))
	}

	store, err := openKeystore(cfg, keystore.Options{Logger: logger},
		"most likely by a running broker: stop it, then run rewrap again (or just restart the broker: serve adds the missing copies when it starts)",
		", which wraps a copy for every configured region")
	if err != nil {
		return err
	}
	defer store.Close()

	c := &copier{store: store, env: env, regions: regions}
	if n := c.orphans(); n > 0 {
		fmt.Fprintf(e.stdout, "note: %d version(s) have copies only under customer keys no configured region holds: a change of customer key, which 'keybroker rotate-cmk' handles (it wraps them under the configured key from the previous one)\n", n)
	}
	targets := c.missing()
	if *addRegion != "" {
		targets = slices.DeleteFunc(targets, func(n string) bool { return n != *addRegion })
	}
	if len(targets) == 0 {
		which := "every configured region"
		if *addRegion != "" {
			which = "region " + *addRegion
		}
		fmt.Fprintf(e.stdout, "nothing to do: every version that a configured region can unwrap has a copy for %s\n", which)
		return nil
	}
	adapters, err := buildRegions(cfg, logger)
	if err != nil {
		return err
	}
	c.attach(adapters)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	added, err := c.add(ctx, targets)
	for _, a := range added {
		fmt.Fprintf(e.stdout, "added a copy of key %q version %s for region %s, wrapped by %s\n", a.key, a.version, a.region, a.keyID)
	}
	if err != nil {
		return cli.WithCode(vaultExitCode(err), fmt.Errorf("%w (%d copies added and kept; run rewrap again once the regions answer)", err, len(added)))
	}
	fmt.Fprintf(e.stdout, "%d copies added for region(s) %s; the master keys are unchanged\n", len(added), strings.Join(targets, ", "))
	return nil
}

// addCopiesAtStart gives the keystore a copy for every configured region
// whose key has none yet, before serve loads the keys. A failure is logged
// loudly and serving goes on with the copies there are: the regions that
// have copies still unwrap them.
func addCopiesAtStart(ctx context.Context, cfg *config.Config, store *keystore.Store, logger *slog.Logger) {
	env, err := azureEnvironment(cfg.Azure)
	if err != nil {
		return // buildWrapper reports it
	}
	regions, err := configuredRegions(cfg, env)
	if err != nil {
		return // buildWrapper reports it
	}
	c := &copier{store: store, env: env, regions: regions}
	targets := c.missing()
	if len(targets) == 0 {
		return
	}
	logger.Info("adding wrapped copies of the master keys for regions whose key has none", "regions", strings.Join(targets, ","))
	adapters, err := buildRegions(cfg, logger)
	if err != nil {
		return // buildWrapper reports it
	}
	c.attach(adapters)
	var longest time.Duration
	for _, r := range cfg.Azure.Regions {
		longest = max(longest, r.Timeout.D())
	}
	ctx, cancel := context.WithTimeout(ctx, 3*longest+10*time.Second)
	defer cancel()
	added, err := c.add(ctx, targets)
	for _, a := range added {
		logger.Info("added a wrapped copy of a master key", "key", a.key, "version", a.version, "region", a.region, "cmk", a.keyID)
	}
	if err != nil {
		logger.Error("COULD NOT ADD every missing wrapped copy: serving with the copies there are, so the regions below cannot serve these keys on their own; fix their access, then restart the broker (it retries at start) or stop it and run 'keybroker rewrap --all-missing'",
			"regions", strings.Join(targets, ","), "added", len(added), "err", err)
	}
}

// vaultRegion is one configured region and the key it wraps with.
type vaultRegion struct {
	name string
	key  akv.KeyID
	kw   broker.KeyWrapper // set by attach, only when there is work to do
}

// configuredRegions lists the configured regions and their keys, without
// touching the network.
func configuredRegions(cfg *config.Config, env akv.Environment) ([]vaultRegion, error) {
	var out []vaultRegion
	for i, r := range cfg.Azure.Regions {
		id, err := akv.ParseKeyID(r.KeyID, env)
		if err != nil {
			return nil, cli.WithCode(exitUsage, fmt.Errorf("azure.regions[%d] (%s): %w", i, r.Name, err))
		}
		out = append(out, vaultRegion{name: r.Name, key: id})
	}
	return out, nil
}

func regionNames(rs []vaultRegion) string {
	var names []string
	for _, r := range rs {
		names = append(names, r.name)
	}
	return strings.Join(names, ", ")
}

// addedCopy is one copy written to the keystore.
type addedCopy struct {
	key, version, region, keyID string
}

// copier adds the wrapped copies a keystore lacks for configured regions.
// It is used by one goroutine at a time.
type copier struct {
	store   *keystore.Store
	env     akv.Environment
	regions []vaultRegion
}

// attach gives each region its adapter; adapters are in configured order.
func (c *copier) attach(adapters []*akv.Wrapper) {
	for i := range c.regions {
		c.regions[i].kw = adapters[i]
	}
}

// holds reports whether one of copies is wrapped by key, in any version.
func (c *copier) holds(copies []kek.Wrapped, key akv.KeyID) bool {
	return slices.ContainsFunc(copies, func(w kek.Wrapped) bool {
		id, err := akv.ParseKeyID(w.KeyID, c.env)
		return err == nil && id.SameKey(key)
	})
}

// needs reports whether version v lacks a copy for region t that another
// configured region can make: one of its copies is under that region's
// key. A version whose copies are all under keys no configured region
// holds is a change of customer key, which CMK rotation handles
// (`keybroker rotate-cmk`, or serve at start): not a copy to add here.
func (c *copier) needs(t vaultRegion, v keystore.Version) bool {
	if len(v.Copies) == 0 || c.holds(v.Copies, t.key) {
		return false
	}
	return slices.ContainsFunc(c.regions, func(r vaultRegion) bool { return r.name != t.name && c.holds(v.Copies, r.key) })
}

// missing returns, in configured order, the regions that need a copy of at
// least one version.
func (c *copier) missing() []string {
	var out []string
	keys := c.store.Keys()
	for _, r := range c.regions {
		if slices.ContainsFunc(keys, func(k keystore.Key) bool {
			return slices.ContainsFunc(k.Versions, func(v keystore.Version) bool { return c.needs(r, v) })
		}) {
			out = append(out, r.name)
		}
	}
	return out
}

// orphans counts the versions with key material none of whose copies is
// under a configured region's key.
func (c *copier) orphans() int {
	n := 0
	for _, k := range c.store.Keys() {
		for _, v := range k.Versions {
			if len(v.Copies) > 0 && !slices.ContainsFunc(c.regions, func(r vaultRegion) bool { return c.holds(v.Copies, r.key) }) {
				n++
			}
		}
	}
	return n
}

// add adds the missing copies for each target region in turn. A region
// that fails is left at its first failure (the others go on): its next
// calls would most likely fail the same way, each after a timeout. Copies
// already persisted stay; running add again resumes.
func (c *copier) add(ctx context.Context, targets []string) ([]addedCopy, error) {
	var added []addedCopy
	var errs []error
	for _, name := range targets {
		i := slices.IndexFunc(c.regions, func(r vaultRegion) bool { return r.name == name })
		if i < 0 {
			errs = append(errs, fmt.Errorf("region %q is not configured", name))
			continue
		}
		got, err := c.addFor(ctx, c.regions[i])
		added = append(added, got...)
		if err != nil {
			errs = append(errs, err)
		}
	}
	return added, errors.Join(errs...)
}

// addFor adds the copies region t lacks, version by version, reading the
// keystore afresh so that a region sharing a key with an earlier target
// finds its copies already there.
func (c *copier) addFor(ctx context.Context, t vaultRegion) ([]addedCopy, error) {
	var added []addedCopy
	for _, k := range c.store.Keys() {
		for _, v := range k.Versions {
			if !c.needs(t, v) {
				continue
			}
			w, err := c.addOne(ctx, t, k, v)
			if err != nil {
				return added, fmt.Errorf("region %s: key %q version %s: %w", t.name, k.Name, v.ID, err)
			}
			added = append(added, addedCopy{key: k.Name, version: v.ID, region: t.name, keyID: w.KeyID})
		}
	}
	return added, nil
}

// addOne unwraps version v through a region that has a copy, wraps the
// same bytes with t's key, proves the new copy by unwrapping it through t,
// and persists it beside the old copies.
func (c *copier) addOne(ctx context.Context, t vaultRegion, k keystore.Key, v keystore.Version) (kek.Wrapped, error) {
	raw, err := c.unwrapExisting(ctx, t, v)
	if err != nil {
		return kek.Wrapped{}, err
	}
	defer clear(raw)
	copies, err := t.kw.WrapKey(ctx, raw)
	if err != nil {
		return kek.Wrapped{}, fmt.Errorf("wrapping with the region's key: %w", err)
	}
	i := slices.IndexFunc(copies, func(w kek.Wrapped) bool { return c.holds([]kek.Wrapped{w}, t.key) })
	if i < 0 {
		return kek.Wrapped{}, fmt.Errorf("the region returned no copy wrapped by its configured key %s: this is a keybroker bug", t.key.Versionless())
	}
	nw := copies[i]
	back, err := t.kw.UnwrapKey(ctx, []kek.Wrapped{nw})
	if err != nil {
		return kek.Wrapped{}, fmt.Errorf("checking the new copy (nothing was written): %w", err)
	}
	same := subtle.ConstantTimeCompare(back, raw) == 1
	clear(back)
	if !same {
		return kek.Wrapped{}, errors.New("the new copy does not unwrap to the same key (nothing was written): the vault answered wrongly")
	}
	cur, err := c.store.Key(k.ID)
	if err != nil {
		return kek.Wrapped{}, err
	}
	cv, ok := cur.Version(v.ID)
	if !ok || len(cv.Copies) == 0 {
		return kek.Wrapped{}, fmt.Errorf("the version was removed or destroyed meanwhile: %w", keystore.ErrVersionNotFound)
	}
	if _, err := c.store.SetCopies(k.ID, v.ID, append(slices.Clone(cv.Copies), nw)); err != nil {
		return kek.Wrapped{}, fmt.Errorf("persisting the new copy: %w", err)
	}
	return nw, nil
}

// unwrapExisting unwraps v through the configured regions whose key wraps
// one of its copies, in configured order, t excepted.
func (c *copier) unwrapExisting(ctx context.Context, t vaultRegion, v keystore.Version) ([]byte, error) {
	var fails []string
	var errs []error
	for _, r := range c.regions {
		if r.name == t.name || !c.holds(v.Copies, r.key) {
			continue
		}
		raw, err := r.kw.UnwrapKey(ctx, v.Copies)
		if err == nil && len(raw) > 0 {
			return raw, nil
		}
		clear(raw)
		if err == nil {
			err = errors.New("the region unwrapped an empty key")
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("unwrapping an existing copy through %s: %w", r.name, err)
		}
		fails = append(fails, r.name+": "+kek.KindOf(err).String())
		errs = append(errs, err)
	}
	if len(fails) == 0 { // needs said there was one
		return nil, errors.New("no other configured region holds the key of an existing copy: this is a keybroker bug")
	}
	return nil, fmt.Errorf("no region could unwrap an existing copy (%s): %w", strings.Join(fails, ", "), errors.Join(errs...))
}
