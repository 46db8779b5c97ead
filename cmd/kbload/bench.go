package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Targets: the key RPCs against Health/Check, which does no key work at all
// and so measures what TLS, gRPC and the machine allow. A key RPC near it
// means the broker's own work (cache lookup, AES-GCM) is cheap.
const (
	targetGetMasterKey = 0.90
	targetDEK          = 0.85
)

// benchCall is one RPC the benchmark measures.
type benchCall struct {
	call     string
	data     string  // request as JSON, ghz --data
	minRatio float64 // target RPS relative to the baseline (calls[0]); 0 = none
	server   string  // serverFloor for the floor server; "" for the broker
	addr     string  // where to send it; "" = the ghzRun's address (the broker)
	pid      int     // the serving process, for its CPU per call; 0 = not measured
	maxP99   float64 // target p99 relative to the baseline's; 0 = none
	protoset string  // ghz --protoset, for a server without reflection
}

// benchCalls are the calls measured, the baseline first. blob is a WrapDEK
// result for aad, so UnwrapDEK succeeds on every call.
func benchCalls(dek, aad, blob []byte) []benchCall {
	b64 := base64.StdEncoding.EncodeToString
	j := func(m map[string]string) string { b, _ := json.Marshal(m); return string(b) }
	return []benchCall{
		{call: "grpc.health.v1.Health/Check", data: "{}"},
		{call: "keybroker.v1.KeyBrokerService/GetMasterKey", data: "{}", minRatio: targetGetMasterKey},
		{call: "keybroker.v1.KeyBrokerService/WrapDEK", data: j(map[string]string{"dek": b64(dek), "associated_data": b64(aad)}), minRatio: targetDEK},
		{call: "keybroker.v1.KeyBrokerService/UnwrapDEK", data: j(map[string]string{"wrapped_dek": b64(blob), "associated_data": b64(aad)}), minRatio: targetDEK},
	}
}

// benchFlags are the bench subcommand's flags.
type benchFlags struct {
	keybroker   string
	ghz         string
	duration    time.Duration
	warmup      time.Duration
	rounds      int
	concurrency int
	connections int
	out         string
	noFail      bool
	floor       string
}

func (f *benchFlags) validate() error {
	switch {
	case f.duration <= 0:
		return usageErrorf("--duration %v: want a positive duration such as 5s", f.duration)
	case f.warmup < 0:
		return usageErrorf("--warmup %v: want 0 (none) or a positive duration such as 2s", f.warmup)
	case f.rounds < 1:
		return usageErrorf("--rounds %d: want at least 1 (3 or more make the medians meaningful)", f.rounds)
	case f.concurrency < 1:
		return usageErrorf("--concurrency %d: want at least 1", f.concurrency)
	case f.connections < 1 || f.connections > f.concurrency:
		return usageErrorf("--connections %d: want 1 to --concurrency (%d); ghz spreads the workers over the connections", f.connections, f.concurrency)
	}
	return nil
}

func runBench(ctx context.Context, e *env, args []string) error {
	var f benchFlags
	fs := newFlagSet(e, "bench", "[--keybroker bin/keybroker] [--duration 5s] [--rounds 3] [--concurrency 20] [--connections 4] [--out DIR]")
	fs.StringVar(&f.keybroker, "keybroker", "bin/keybroker", "keybroker binary to measure (build it with: go build -o bin/ ./cmd/keybroker)")
	fs.StringVar(&f.ghz, "ghz", "", "ghz binary; empty builds the one pinned in "+ghzModFile+" into a temporary directory")
	fs.DurationVar(&f.duration, "duration", 5*time.Second, "measured time per call per round")
	fs.DurationVar(&f.warmup, "warmup", 2*time.Second, "unmeasured time per call before the first round")
	fs.IntVar(&f.rounds, "rounds", 3, "rounds; each runs every call once, and the medians across rounds are reported")
	fs.IntVar(&f.concurrency, "concurrency", 20, "ghz workers (concurrent calls in flight)")
	fs.IntVar(&f.connections, "connections", 4, "gRPC connections the workers share")
	fs.StringVar(&f.out, "out", "", "directory for the raw ghz reports, summary.json and the broker's log (default load/reports/bench-TIMESTAMP)")
	fs.BoolVar(&f.noFail, "no-fail", false, "only report: exit 0 even when a target is missed")
	fs.StringVar(&f.floor, "floor", "", "kbfloor binary, the bare grpc-go server measured as the floor; empty builds "+floorPkg+" into a temporary directory")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := f.validate(); err != nil {
		return err
	}
	return f.run(ctx, e)
}

// run is the benchmark: set up, warm up, measure, judge.
func (f benchFlags) run(ctx context.Context, e *env) error {
	if err := checkKeybroker(f.keybroker); err != nil {
		return err
	}
	sess, err := newSession(ctx, e, sessionConfig{report: "bench", tmpPrefix: "kbload-", out: f.out, ghz: f.ghz})
	if err != nil {
		return err
	}
	defer sess.Close()

	b, err := sess.startDev(ctx, f.keybroker, filepath.Join(sess.tmp, "dev"), "keybroker.log", os.O_TRUNC)
	if err != nil {
		return err
	}
	defer b.Stop()

	conn, err := b.dialEngine()
	if err != nil {
		return fmt.Errorf("connecting to the broker: %w", err)
	}
	defer conn.Close()
	kb := keybrokerv1.NewKeyBrokerServiceClient(conn)
	calls, err := prepareCalls(ctx, kb)
	if err != nil {
		return err
	}
	g := ghzRun{
		bin: sess.ghz, addr: b.info.Address, ca: b.info.CA, cert: b.info.EngineCert, key: b.info.EngineKey,
		concurrency: f.concurrency, conns: f.connections, stderr: e.stderr,
	}

	fl, err := sess.startFloor(ctx, f.floor, b.info.Config)
	if err != nil {
		return err
	}
	defer fl.Stop()
	calls = withFloor(calls, fl, b.cmd.Process.Pid)

	if err := warmUp(ctx, g, calls, f.warmup, e.stderr); err != nil {
		return err
	}
	watcher := watchStatus(ctx, kb)
	defer watcher.cancel()
	if err := b.ctl.ResetCounters(ctx); err != nil {
		return fmt.Errorf("resetting the emulator's counters: %w", err)
	}
	results, err := measure(ctx, g, calls, f.rounds, f.duration, sess.out, e.stderr)
	if err != nil {
		return err
	}
	counters, err := b.ctl.Counters(ctx)
	if err != nil {
		return fmt.Errorf("reading the emulator's counters: %w", err)
	}
	activity := watcher.stop(ctx)

	s := summary{
		Started: sess.started,
		Settings: benchSettings{
			Duration: f.duration.String(), Warmup: f.warmup.String(), Rounds: f.rounds,
			Concurrency: f.concurrency, Connections: f.connections,
		},
		Machine: describeMachine(f.keybroker),
		AKV:     newAKVCalls(counters, activity),
		Broker:  activity,
		OutDir:  sess.out,
	}
	for i, c := range calls {
		cs := summarizeCall(c.call, c.minRatio, results[i])
		cs.Server, cs.MaxP99Ratio = c.server, c.maxP99
		s.Calls = append(s.Calls, cs)
	}
	setRatios(s.Calls)
	s.Checks, s.Pass = judge(s.Calls, s.AKV, s.Broker)

	if err := sess.writeSummary(s); err != nil {
		return err
	}
	if err := printReport(e.stdout, s); err != nil {
		return err
	}
	if err := b.Stop(); err != nil {
		return err
	}
	return verdict(s.Pass, f.noFail)
}

// warmUp runs each call for d, unmeasured: the broker loads its key and
// fills its caches, connections open, and none of that is measured.
func warmUp(ctx context.Context, g ghzRun, calls []benchCall, d time.Duration, progress io.Writer) error {
	if d == 0 {
		return nil
	}
	for _, c := range calls {
		rep, _, err := c.ghz(g).run(ctx, c.call, c.data, d)
		if err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
		if n := rep.errorCount(); n > 0 {
			fmt.Fprintf(progress, "kbload: warm-up: %s: %d of %d calls failed\n", shortName(c.call), n, rep.Count)
		}
	}
	return nil
}

// measure runs rounds rounds of every call for d each, saving the raw ghz
// reports into out. Result i holds calls[i]'s rounds, in round order.
//
// Rounds interleave the calls, so noise from the rest of the machine hits
// all of them alike; the order also rotates each round, so no call always
// runs right after the same neighbour (and inherits its garbage or caches).
func measure(ctx context.Context, g ghzRun, calls []benchCall, rounds int, d time.Duration, out string, progress io.Writer) ([][]roundResult, error) {
	results := make([][]roundResult, len(calls))
	for r := range rounds {
		for k := range calls {
			i := (k + r) % len(calls)
			c := calls[i]
			cpu0, cpuErr := c.cpu()
			rep, raw, err := c.ghz(g).run(ctx, c.call, c.data, d)
			if err != nil {
				return nil, fmt.Errorf("round %d: %w", r+1, err)
			}
			cpu1, cpuErr1 := c.cpu()
			res := roundResult{report: rep}
			if cpuErr == nil && cpuErr1 == nil && c.pid != 0 {
				res.cpu, res.cpuKnown = cpu1-cpu0, true
			}
			file := fmt.Sprintf("round%d-%s.json", r+1, strings.ReplaceAll(c.label(), "/", "-"))
			if err := writeReport(filepath.Join(out, file), raw); err != nil {
				return nil, err
			}
			res.file = file
			results[i] = append(results[i], res)
			p99, _ := rep.percentile(99)
			fmt.Fprintf(progress, "kbload: round %d/%d %-18s %8.0f RPS  p99 %6.2fms  %d error(s)%s\n",
				r+1, rounds, c.label(), rep.Rps, ms(p99), rep.errorCount(), res.cpuText())
		}
	}
	return results, nil
}

// prepareCalls checks the broker serves the engine and makes the UnwrapDEK
// request: a blob from a real WrapDEK, unwrapped once to prove it good.
func prepareCalls(ctx context.Context, kb keybrokerv1.KeyBrokerServiceClient) ([]benchCall, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()

	mk, err := kb.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		return nil, fmt.Errorf("GetMasterKey before the benchmark: %w", err)
	}
	clear(mk.Key)

	// A random DEK made for this run: it protects nothing, and ends up in
	// the ghz reports as request data.
	dek := make([]byte, 32)
	if _, err := rand.Read(dek); err != nil {
		return nil, err
	}
	aad := []byte("kbload bench: database=bench collection=load")
	w, err := kb.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: dek, AssociatedData: aad})
	if err != nil {
		return nil, fmt.Errorf("WrapDEK before the benchmark: %w", err)
	}
	u, err := kb.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.WrappedDek, AssociatedData: aad})
	if err != nil {
		return nil, fmt.Errorf("UnwrapDEK before the benchmark: %w", err)
	}
	if subtle.ConstantTimeCompare(u.Dek, dek) != 1 {
		return nil, errors.New("UnwrapDEK before the benchmark returned a different data key than was wrapped: a broker bug")
	}
	return benchCalls(dek, aad, w.WrappedDek), nil
}

// writeReport saves a raw ghz report without its per-call details.
func writeReport(path string, raw []byte) error {
	compact, err := compactReport(raw)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return os.WriteFile(path, append(compact, '\n'), 0o644)
}
