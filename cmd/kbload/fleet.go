package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/internal/akv"
	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cache"
	"github.com/keybroker/keybroker/internal/failover"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
)

// The fleet simulation (bench-fleet, docs/capacity.md): N broker cores in
// this process, each with its own keystore, cache, credential, Azure
// adapter and schedules, against one emulator vault (two for the outage
// scenario) with Azure's throttling model on. No gRPC: what is measured is
// what the fleet asks of Key Vault.
const (
	fleetPrimary   = "kb-fleet-primary.vault.keybroker.test"
	fleetSecondary = "kb-fleet-secondary.vault.keybroker.test"
	fleetSuffix    = "vault.keybroker.test"
)

// fleetEnv is the emulator and what every node needs to reach it.
type fleetEnv struct {
	emu    *akvemu.Server
	info   akvemu.Info
	env    akv.Environment
	keyIDs [2]string // primary, secondary
	// setup wraps master keys locally (one proving unwrap each), so
	// building thousands of keystores costs the vault nothing.
	setup [2]*akv.Wrapper
	dir   string
	// limit is the simulated key's calls per 10 s window (Azure's limit
	// for its type, size and protection).
	limit int
}

// startFleetEnv starts an in-process emulator with two vaults and
// throttling off. The vaults hold RSA 2048 software keys whatever key is
// simulated: the limit is what the simulation is about, and an RSA 3072
// private-key operation costs the 2-core machine 3.5 times as much CPU;
// the throttling scale (throttleScale) makes the vault admit as many calls
// per window as it would for the simulated key.
func startFleetEnv(ctx context.Context, dir string, size int, hsm bool) (*fleetEnv, error) {
	emu, err := akvemu.Start(ctx, akvemu.Config{
		Ephemeral: true,
		Vaults:    []akvemu.VaultSpec{{Host: fleetPrimary}, {Host: fleetSecondary}},
		Keys:      []akvemu.KeySpec{{Vault: fleetPrimary, Name: "cmk", Size: 2048}, {Vault: fleetSecondary, Name: "cmk", Size: 2048}},
		TokenTTL:  24 * time.Hour, // no token refresh inside a run
	})
	if err != nil {
		return nil, fmt.Errorf("bench-fleet: starting the emulator: %w", err)
	}
	f := &fleetEnv{emu: emu, info: emu.Info(), dir: dir, limit: akvemu.CallLimit(hsm, size, 1)}
	f.env = akv.Environment{Name: akv.EnvCustom, AuthorityHost: f.info.AuthorityHost, VaultSuffix: fleetSuffix, CAFile: f.info.CAFile, ConnectTo: f.info.Endpoint}
	copy(f.keyIDs[:], f.info.KeyIDs)
	for i := range 2 {
		w, err := f.adapter(i, "setup", true)
		if err != nil {
			f.close()
			return nil, err
		}
		f.setup[i] = w
	}
	return f, nil
}

func (f *fleetEnv) close() { _ = f.emu.Close() }

// throttleScale is the emulator's throttling scale that admits the
// simulated key's limit, times timeScale, per window of calls on the
// emulator's RSA 2048 software keys.
func (f *fleetEnv) throttleScale(timeScale float64) float64 {
	return timeScale * float64(f.limit) / float64(akvemu.CallLimit(false, 2048, 1))
}

// adapter builds an Azure adapter for region i (0 primary, 1 secondary)
// with a credential of its own, as a node has. SDK retries are off: the
// broker's own backoff answers throttling (azure.max_retries: 0).
func (f *fleetEnv) adapter(i int, region string, localWrap bool) (*akv.Wrapper, error) {
	cred, err := akv.NewCredential(akv.CredentialConfig{
		Kind: akv.CredClientSecret, TenantID: f.info.TenantID, ClientID: f.info.ClientID, ClientSecretFile: f.info.ClientSecretFile,
	}, f.env)
	if err != nil {
		return nil, fmt.Errorf("bench-fleet: credential: %w", err)
	}
	w, err := akv.New(akv.Config{KeyID: f.keyIDs[i], Region: region, Environment: f.env, Credential: cred, MaxRetries: -1, LocalWrap: localWrap, Timeout: 20 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("bench-fleet: adapter: %w", err)
	}
	return w, nil
}

// newVersion wraps a fresh master key under both vaults' keys.
func (f *fleetEnv) newVersion(ctx context.Context) (keystore.Version, error) {
	raw := make([]byte, broker.MasterKeySize)
	defer clear(raw)
	if _, err := rand.Read(raw); err != nil {
		return keystore.Version{}, err
	}
	var copies []kek.Wrapped
	for _, w := range f.setup {
		c, err := w.WrapKey(ctx, raw)
		if err != nil {
			return keystore.Version{}, fmt.Errorf("bench-fleet: wrapping a node's master key: %w", err)
		}
		copies = append(copies, c...)
	}
	return keystore.Version{ID: keystore.NewID(), Created: time.Now().UTC(), Copies: copies}, nil
}

// callLog counts one node's Key Vault calls per region. Safe for
// concurrent use.
type callLog struct {
	mu        sync.Mutex
	unwraps   []time.Time // every unwrap started, throttled ones included
	gets      []time.Time // every key-info call started
	throttled int
}

func (l *callLog) add(get bool, at time.Time, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if get {
		l.gets = append(l.gets, at)
	} else {
		l.unwraps = append(l.unwraps, at)
	}
	if kek.KindOf(err) == kek.KindThrottled {
		l.throttled++
	}
}

// between returns the unwraps started in [from, to).
func (l *callLog) between(from, to time.Time) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return inSpan(l.unwraps, from, to)
}

// getsBetween returns the key-info calls started in [from, to).
func (l *callLog) getsBetween(from, to time.Time) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return inSpan(l.gets, from, to)
}

func inSpan(ts []time.Time, from, to time.Time) []time.Time {
	var out []time.Time
	for _, t := range ts {
		if !t.Before(from) && t.Before(to) {
			out = append(out, t)
		}
	}
	return out
}

func (l *callLog) throttledCalls() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.throttled
}

// countingWrapper is a region's adapter that logs its calls.
type countingWrapper struct {
	*akv.Wrapper
	log *callLog
}

func (c *countingWrapper) UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error) {
	at := time.Now()
	k, err := c.Wrapper.UnwrapKey(ctx, copies)
	c.log.add(false, at, err)
	return k, err
}

func (c *countingWrapper) KeyInfo(ctx context.Context) (kek.KeyInfo, error) {
	at := time.Now()
	info, err := c.Wrapper.KeyInfo(ctx)
	c.log.add(true, at, err)
	return info, err
}

// fleetNode is one simulated broker.
type fleetNode struct {
	b        *broker.Broker
	store    *keystore.Store
	fo       *failover.Wrapper // nil with one region
	logs     [2]*callLog
	servedAt atomic.Int64 // ns since the scenario's start; 0: not yet
	pauses   atomic.Int64
	degraded atomic.Int64
	failed   atomic.Int64 // scheduled or on-demand validity checks that failed
	warmErr  atomic.Value // string: the first start-up attempt's error, for the report
}

// ValidityCheck implements broker.Metrics.
func (n *fleetNode) ValidityCheck(err error, _ time.Duration) {
	if err != nil {
		n.failed.Add(1)
	}
}

// StateChange implements broker.Metrics.
func (n *fleetNode) StateChange(to broker.State) {
	switch to {
	case broker.StatePaused:
		n.pauses.Add(1)
	case broker.StateDegraded:
		n.degraded.Add(1)
	}
}

// nodeOpts are the per-node settings of a scenario, already scaled.
type nodeOpts struct {
	regions         int // 1 or 2
	keyInfoInterval time.Duration
	cacheTTL        time.Duration
	probeInterval   time.Duration
	failBackAfter   int
}

// newNode builds node i: keystore, adapters, maybe failover, broker core.
func (f *fleetEnv) newNode(ctx context.Context, i int, o nodeOpts) (*fleetNode, error) {
	dir := filepath.Join(f.dir, fmt.Sprintf("node-%05d", i))
	store, err := keystore.Create(dir, keystore.Options{})
	if err != nil {
		return nil, err
	}
	n := &fleetNode{store: store}
	v, err := f.newVersion(ctx)
	if err == nil {
		_, err = store.CreateKey(broker.DefaultKeyName, keystore.StateActive, v)
	}
	var regions []failover.Region
	for r := 0; r < o.regions && err == nil; r++ {
		var a *akv.Wrapper
		name := []string{"primary", "secondary"}[r]
		if a, err = f.adapter(r, name, false); err == nil {
			n.logs[r] = &callLog{}
			regions = append(regions, failover.Region{Name: name, Wrapper: &countingWrapper{Wrapper: a, log: n.logs[r]}, KeyID: f.keyIDs[r]})
		}
	}
	if err != nil {
		store.Close()
		return nil, err
	}
	var w broker.KeyWrapper = regions[0].Wrapper.(*countingWrapper)
	if o.regions > 1 {
		n.fo, err = failover.New(failover.Config{Regions: regions, ProbeInterval: o.probeInterval, FailBackAfter: o.failBackAfter, MaxBackoff: o.probeInterval})
		if err != nil {
			store.Close()
			return nil, err
		}
		w = n.fo
	}
	n.b, err = broker.New(broker.Config{
		Store: store, Wrapper: w,
		Cache:           cache.Config{TTL: o.cacheTTL, MaxStale: 24 * time.Hour},
		KeyInfoInterval: o.keyInfoInterval,
		Metrics:         n,
		Logger:          slog.New(slog.DiscardHandler),
	})
	if err != nil {
		n.close()
		return nil, err
	}
	return n, nil
}

func (n *fleetNode) close() {
	if n.b != nil {
		n.b.Close()
	}
	if n.fo != nil {
		_ = n.fo.Close()
	}
	n.store.Close()
}

// buildNodes builds n nodes, a few at a time.
func (f *fleetEnv) buildNodes(ctx context.Context, n int, o nodeOpts) ([]*fleetNode, error) {
	nodes := make([]*fleetNode, n)
	errs := make([]error, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				nodes[i], errs[i] = f.newNode(ctx, i, o)
			}
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil || nodes[i] == nil {
			closeNodes(nodes)
			if err == nil {
				err = ctx.Err()
			}
			return nil, fmt.Errorf("bench-fleet: building node %d: %w", i, err)
		}
	}
	return nodes, nil
}

// closeNodes closes the nodes, 64 at a time: a broker's Close wipes its
// cache and then waits for garbage collections (internal/cache), and
// concurrent waits share one collection where one node after another
// would run two each (4,000 full collections of a large heap for 2,000
// nodes).
func closeNodes(nodes []*fleetNode) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, n := range nodes {
		if n == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			n.close()
		}()
	}
	wg.Wait()
}

// removeNodes closes the nodes and deletes their keystores.
func (f *fleetEnv) removeNodes(nodes []*fleetNode) {
	closeNodes(nodes)
	entries, _ := os.ReadDir(f.dir)
	for _, e := range entries {
		if e.IsDir() {
			_ = os.RemoveAll(filepath.Join(f.dir, e.Name()))
		}
	}
}

// runNodes starts every node as serve does: one load attempt, retried in
// the background until it succeeds when it fails (StartWarming), then the
// rotation scheduler and the scheduled checks. Node i starts at i × spread
// / N (0: all at once). It returns at once; cancel ctx to stop them, then
// wait.
func runNodes(ctx context.Context, nodes []*fleetNode, interval, spread time.Duration, start time.Time) (wait func()) {
	var wg sync.WaitGroup
	for i, n := range nodes {
		wg.Go(func() {
			sleepCtx(ctx, spread*time.Duration(i)/time.Duration(len(nodes)))
			wctx, cancel := context.WithTimeout(ctx, 25*time.Second)
			err := n.b.Warm(wctx)
			cancel()
			if err != nil {
				n.warmErr.Store(err.Error())
			}
			if err != nil && !kek.KindOf(err).IsRevocation() {
				done := n.b.StartWarming(ctx, err)
				wg.Go(func() {
					<-done
					if n.b.Stats().CachedKeys > 0 {
						n.servedAt.Store(max(1, int64(time.Since(start))))
					}
				})
			} else if err == nil {
				n.servedAt.Store(max(1, int64(time.Since(start))))
			}
			wg.Go(func() { n.b.RunRotation(ctx) })
			n.b.RunChecks(ctx, interval)
		})
	}
	return wg.Wait
}

// servingCount returns how many nodes have loaded their key.
func servingCount(nodes []*fleetNode) int {
	c := 0
	for _, n := range nodes {
		if n.servedAt.Load() != 0 {
			c++
		}
	}
	return c
}

// quantile returns the q quantile of sorted durations (nearest rank).
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.999999) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func sortedDurations(d []time.Duration) []time.Duration {
	out := slices.Clone(d)
	slices.Sort(out)
	return out
}
