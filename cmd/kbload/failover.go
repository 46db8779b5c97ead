package main

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/keybroker/keybroker/internal/akv"
	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/kek"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// bench-failover measures the cold path (every request needs an unwrap
// through Key Vault) while the preferred region is down: first black-holed
// (no answer at all: only hedging helps), then answering 503 (fast
// failures: the next region is asked at once). docs/failover.md explains
// the targets and records the figures.

// foFailBackLimit bounds the wait for the broker to go back to the primary
// between phases.
const foFailBackLimit = 60 * time.Second

// foSampleEvery spaces the direct unwraps that measure the secondary's
// latency during a phase: enough samples for a median, too few to load it.
const foSampleEvery = 100 * time.Millisecond

// foPhase is one measured part of the run.
type foPhase struct {
	name   string
	slug   string
	fault  *akvemu.Fault // on the primary; nil: both regions up
	target bool          // the p99 target applies
}

func foPhases() []foPhase {
	return []foPhase{
		{name: "both regions up", slug: "healthy"},
		{name: "primary black-holed", slug: "blackhole", fault: &akvemu.Fault{Host: foPrimaryHost, Blackhole: true}, target: true},
		{name: "primary answers 503", slug: "503", fault: &akvemu.Fault{Host: foPrimaryHost, Status: 503}, target: true},
	}
}

// foFlags are the bench-failover subcommand's flags.
type foFlags struct {
	keybroker   string
	ghz         string
	duration    time.Duration
	concurrency int
	connections int
	out         string
	noFail      bool
	settings    foSettings
}

func (f *foFlags) validate() error {
	s := f.settings
	switch {
	case f.duration <= 0:
		return usageErrorf("--duration %v: want a positive duration such as 10s", f.duration)
	case f.concurrency < 1:
		return usageErrorf("--concurrency %d: want at least 1", f.concurrency)
	case f.connections < 1 || f.connections > f.concurrency:
		return usageErrorf("--connections %d: want 1 to --concurrency (%d)", f.connections, f.concurrency)
	case s.Hedge <= 0:
		return usageErrorf("--hedge %v: want a positive delay such as 50ms (the failover wrapper's hedge_delay)", s.Hedge)
	case s.SecondaryLatency < 0:
		return usageErrorf("--secondary-latency %v: want 0 or more", s.SecondaryLatency)
	case s.TTL <= 0:
		return usageErrorf("--ttl %v: want a positive duration; short (1ms) puts every request on the cold path", s.TTL)
	}
	return nil
}

func runBenchFailover(ctx context.Context, e *env, args []string) error {
	f := foFlags{settings: foSettings{MaxStale: time.Second, ProbeInterval: time.Second, FailBackAfter: 3}}
	fs := newFlagSet(e, "bench-failover", "[--keybroker bin/keybroker] [--duration 10s] [--hedge 50ms] [--secondary-latency 20ms] [--out DIR]")
	fs.StringVar(&f.keybroker, "keybroker", "bin/keybroker", "keybroker binary to measure (build it with: go build -o bin/ ./cmd/keybroker)")
	fs.StringVar(&f.ghz, "ghz", "", "ghz binary; empty builds the one pinned in "+ghzModFile+" into a temporary directory")
	fs.DurationVar(&f.duration, "duration", 10*time.Second, "measured time per phase")
	fs.IntVar(&f.concurrency, "concurrency", 20, "ghz workers (concurrent calls in flight)")
	fs.IntVar(&f.connections, "connections", 4, "gRPC connections the workers share")
	fs.DurationVar(&f.settings.Hedge, "hedge", 50*time.Millisecond, "azure.failover.hedge_delay of the broker")
	fs.DurationVar(&f.settings.SecondaryLatency, "secondary-latency", 20*time.Millisecond, "latency added to every request to the secondary region (a farther region)")
	fs.DurationVar(&f.settings.TTL, "ttl", time.Millisecond, "cache.ttl of the broker: short, so that every request is a cold one")
	fs.StringVar(&f.out, "out", "", "directory for the ghz reports, summary.json and the broker's log (default load/reports/failover-TIMESTAMP)")
	fs.BoolVar(&f.noFail, "no-fail", false, "only report: exit 0 even when a target is missed")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := f.validate(); err != nil {
		return err
	}
	if err := checkKeybroker(f.keybroker); err != nil {
		return err
	}
	return f.run(ctx, e)
}

func (f foFlags) run(ctx context.Context, e *env) error {
	sess, err := newSession(ctx, e, sessionConfig{report: "failover", tmpPrefix: "kbload-failover-", out: f.out, ghz: f.ghz})
	if err != nil {
		return err
	}
	defer sess.Close()
	f.out = sess.out // runPhase writes its reports there

	logFile, logPath, err := sess.openLog("keybroker.log", os.O_TRUNC)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "kbload: starting the emulator (two vaults) and %s serve with two regions (log: %s) ...\n", f.keybroker, logPath)
	fe, err := startFoEnv(ctx, f.keybroker, filepath.Join(sess.tmp, "run"), f.settings, logFile)
	if err != nil {
		return err
	}
	defer fe.Close()
	if cfg, err := os.ReadFile(fe.cfg); err == nil {
		_ = os.WriteFile(filepath.Join(f.out, "keybroker.yaml"), cfg, 0o644)
	}

	conn, err := fe.dialEngine()
	if err != nil {
		return fmt.Errorf("connecting to the broker: %w", err)
	}
	defer conn.Close()
	kb := keybrokerv1.NewKeyBrokerServiceClient(conn)
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	mk, err := kb.GetMasterKey(pctx, &keybrokerv1.GetMasterKeyRequest{})
	cancel()
	if err != nil {
		return fmt.Errorf("GetMasterKey before the benchmark: %w", err)
	}
	clear(mk.Key)

	probe, err := newFoProbe(ctx, fe.files)
	if err != nil {
		return err
	}
	g := ghzRun{
		bin: sess.ghz, addr: fe.broker.addr, ca: fe.files.PKI.CA, cert: fe.files.PKI.EngineCert, key: fe.files.PKI.EngineKey,
		concurrency: f.concurrency, conns: f.connections, stderr: e.stderr,
	}

	s := foSummary{
		Started:     sess.started,
		Settings:    f.settings,
		Duration:    f.duration.String(),
		Concurrency: f.concurrency,
		Connections: f.connections,
		Machine:     describeMachine(f.keybroker),
		OutDir:      f.out,
	}
	for i, ph := range foPhases() {
		r, err := f.runPhase(ctx, e.stderr, fe, kb, probe, g, i+1, ph)
		if err != nil {
			return fmt.Errorf("phase %q: %w", ph.name, err)
		}
		s.Phases = append(s.Phases, r)
	}
	s.Checks, s.Pass = foJudge(s)

	if err := sess.writeSummary(s); err != nil {
		return err
	}
	if err := printFoReport(e.stdout, s); err != nil {
		return err
	}
	if err := fe.Close(); err != nil {
		return err
	}
	return verdict(s.Pass, f.noFail)
}

// runPhase measures one phase: faults set, counters reset, ghz for the
// duration while the secondary's latency is sampled; then the faults are
// cleared and, after an outage, the broker's return to the primary timed.
func (f foFlags) runPhase(ctx context.Context, progress io.Writer, fe *foEnv, kb keybrokerv1.KeyBrokerServiceClient, probe *foProbe, g ghzRun, n int, ph foPhase) (foPhaseResult, error) {
	if err := fe.setFaults(ctx, f.settings, ph.fault); err != nil {
		return foPhaseResult{}, err
	}
	if err := fe.ctl.ResetCounters(ctx); err != nil {
		return foPhaseResult{}, fmt.Errorf("resetting the emulator's counters: %w", err)
	}
	failures0 := fe.logs.loadFailures.Load()
	sctx, stopSampling := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var samples []time.Duration
	wg.Go(func() { samples = probe.sample(sctx, foSampleEvery) })
	rep, raw, err := g.run(ctx, "keybroker.v1.KeyBrokerService/GetMasterKey", "{}", f.duration)
	stopSampling()
	wg.Wait()
	if err != nil {
		return foPhaseResult{}, err
	}
	file := fmt.Sprintf("phase%d-%s.json", n, ph.slug)
	if err := writeReport(filepath.Join(f.out, file), raw); err != nil {
		return foPhaseResult{}, err
	}
	counters, err := fe.ctl.Counters(ctx)
	if err != nil {
		return foPhaseResult{}, fmt.Errorf("reading the emulator's counters: %w", err)
	}
	r := newFoPhaseResult(ph, rep, samples, f.settings)
	r.Report = file
	r.LoadFailures = fe.logs.loadFailures.Load() - failures0
	r.PrimaryUnwraps = counters[foPrimaryHost][akvemu.OpUnwrapKey]
	r.SecondaryUnwraps = counters[foSecondaryHost][akvemu.OpUnwrapKey]
	r.ActiveAfter, err = foActive(ctx, kb)
	if err != nil {
		return foPhaseResult{}, err
	}
	fmt.Fprintf(progress, "kbload: %-20s %8d calls  %6d error(s)  p50 %7.2fms  p99 %7.2fms  secondary p50 %6.2fms\n",
		ph.name, r.Count, r.Errors+uint64(r.LoadFailures), r.P50, r.P99, r.SecondaryP50)

	if ph.fault != nil {
		if err := fe.setFaults(ctx, f.settings, nil); err != nil {
			return foPhaseResult{}, err
		}
		healed := time.Now()
		back, err := foWaitPrimary(ctx, kb, foFailBackLimit)
		if err != nil {
			return foPhaseResult{}, err
		}
		if back {
			r.FailBackMs = ms(time.Since(healed))
		} else {
			r.FailBackMs = -1
		}
	}
	return r, nil
}

// setFaults leaves exactly the faults of a phase: the secondary's added
// latency, and the primary's fault if any. Clearing also releases the
// requests a black hole holds.
func (e *foEnv) setFaults(ctx context.Context, s foSettings, primary *akvemu.Fault) error {
	if err := e.ctl.ClearFaults(ctx); err != nil {
		return fmt.Errorf("clearing the emulator's faults: %w", err)
	}
	if s.SecondaryLatency > 0 {
		for _, host := range []string{foSecondaryHost, foProbeHost} {
			if err := e.ctl.InjectFault(ctx, akvemu.Fault{Host: host, Latency: s.SecondaryLatency}); err != nil {
				return fmt.Errorf("injecting the secondary's latency: %w", err)
			}
		}
	}
	if primary != nil {
		if err := e.ctl.InjectFault(ctx, *primary); err != nil {
			return fmt.Errorf("injecting the primary's fault: %w", err)
		}
	}
	return nil
}

// foActive returns the name of the region the broker calls first.
func foActive(ctx context.Context, kb keybrokerv1.KeyBrokerServiceClient) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := kb.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
	if err != nil {
		return "", fmt.Errorf("GetStatus: %w", err)
	}
	for _, r := range st.GetRegions() {
		if r.GetActive() {
			return r.GetName(), nil
		}
	}
	return "", errors.New("GetStatus shows no active region: is the broker configured with two regions?")
}

// foWaitPrimary polls GetStatus until the primary is active and healthy
// again; false when limit passed first.
func foWaitPrimary(ctx context.Context, kb keybrokerv1.KeyBrokerServiceClient, limit time.Duration) (bool, error) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		st, err := kb.GetStatus(sctx, &keybrokerv1.GetStatusRequest{})
		cancel()
		if err != nil {
			return false, fmt.Errorf("GetStatus: %w", err)
		}
		for _, r := range st.GetRegions() {
			if r.GetName() == "primary" && r.GetActive() && r.GetHealthy() {
				return true, nil
			}
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	return false, nil
}

// foProbe measures the secondary region's latency as the broker sees it:
// an unwrap straight to it through the same Azure adapter, on the same
// machine, during the phase. It goes through an alias of the secondary's
// vault, so that the emulator counts its requests apart from the broker's.
type foProbe struct {
	w      *akv.Wrapper
	copies []kek.Wrapped
}

func newFoProbe(ctx context.Context, f foConfigFiles) (*foProbe, error) {
	env := akv.Environment{Name: akv.EnvCustom, AuthorityHost: f.Emu.AuthorityHost, VaultSuffix: foVaultSuffix, CAFile: f.Emu.CAFile, ConnectTo: f.Emu.Endpoint}
	cred, err := akv.NewCredential(akv.CredentialConfig{
		Kind: akv.CredClientSecret, TenantID: f.Emu.TenantID, ClientID: f.Emu.ClientID, ClientSecretFile: f.Emu.ClientSecretFile,
	}, env)
	if err != nil {
		return nil, fmt.Errorf("the secondary's latency probe: %w", err)
	}
	w, err := akv.New(akv.Config{KeyID: f.Keys[1], Endpoint: "https://" + foProbeHost + "/", Region: "secondary (kbload probe)", Environment: env, Credential: cred, MaxRetries: -1, Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("the secondary's latency probe: %w", err)
	}
	// A random key made for the probe: it protects nothing.
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	copies, err := w.WrapKey(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("the secondary's latency probe: wrapping: %w", err)
	}
	return &foProbe{w: w, copies: copies}, nil
}

// sample unwraps every interval until ctx ends, and returns the latencies
// of the successful unwraps.
func (p *foProbe) sample(ctx context.Context, every time.Duration) []time.Duration {
	var out []time.Duration
	for ctx.Err() == nil {
		start := time.Now()
		b, err := p.w.UnwrapKey(ctx, p.copies)
		if err == nil {
			out = append(out, time.Since(start))
		}
		clear(b)
		select {
		case <-time.After(every):
		case <-ctx.Done():
		}
	}
	return out
}
