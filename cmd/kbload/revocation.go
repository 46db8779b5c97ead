package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/pki"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Targets of bench-revocation (docs/revocation.md): the PAUSE reaches a
// watcher at most one validity interval plus this after the revoking call,
// and no GetMasterKey reply carrying a key arrives after it.
const revPauseSlack = time.Second

// Bounds on one round.
const (
	revLead      = time.Second      // load before the earliest revocation
	revWaitPause = 30 * time.Second // beyond the interval, before a round is declared failed
	revCallLimit = 5 * time.Second  // deadline of one GetMasterKey of the load
	revMaxCalls  = 1 << 20          // results kept per worker per round
)

// revFlags are the bench-revocation subcommand's flags.
type revFlags struct {
	keybroker      string
	ghz            string
	revoke         string
	interval       time.Duration
	tail           time.Duration
	rounds         int
	concurrency    int
	connections    int
	ghzConcurrency int
	out            string
	noFail         bool
}

// revocations are the ways bench-revocation withdraws the key, and undoes it.
var revocations = map[string]struct {
	revoke, restore func(ctx context.Context, c *akvemu.Control) error
}{
	"access": {
		func(ctx context.Context, c *akvemu.Control) error {
			return c.RevokeAccess(ctx, "", "", akvemu.CodeForbiddenByRbac)
		},
		func(ctx context.Context, c *akvemu.Control) error { return c.GrantAccess(ctx, "", "") },
	},
	"disable": {
		func(ctx context.Context, c *akvemu.Control) error {
			return c.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", false)
		},
		func(ctx context.Context, c *akvemu.Control) error {
			return c.SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", true)
		},
	},
	"delete": {
		func(ctx context.Context, c *akvemu.Control) error {
			return c.DeleteKey(ctx, akvemu.DefaultVaultHost, "cmk")
		},
		func(ctx context.Context, c *akvemu.Control) error {
			return c.RecoverKey(ctx, akvemu.DefaultVaultHost, "cmk")
		},
	},
}

func (f *revFlags) validate() error {
	switch {
	case f.interval < time.Second:
		return usageErrorf("--interval %v: want at least 1s (the configuration's floor)", f.interval)
	case f.tail < 0:
		return usageErrorf("--tail %v: want 0 or a positive duration such as 1s", f.tail)
	case f.rounds < 1:
		return usageErrorf("--rounds %d: want at least 1", f.rounds)
	case f.concurrency < 1:
		return usageErrorf("--concurrency %d: want at least 1", f.concurrency)
	case f.connections < 1 || f.connections > f.concurrency:
		return usageErrorf("--connections %d: want 1 to --concurrency (%d)", f.connections, f.concurrency)
	case f.ghzConcurrency < 1:
		return usageErrorf("--ghz-concurrency %d: want at least 1", f.ghzConcurrency)
	}
	if _, ok := revocations[f.revoke]; !ok {
		return usageErrorf("--revoke %q: want access, disable or delete", f.revoke)
	}
	return nil
}

func runBenchRevocation(ctx context.Context, e *env, args []string) error {
	var f revFlags
	fs := newFlagSet(e, "bench-revocation", "[--keybroker bin/keybroker] [--interval 2s] [--rounds 3] [--revoke access|disable|delete] [--out DIR]")
	fs.StringVar(&f.keybroker, "keybroker", "bin/keybroker", "keybroker binary to measure (build it with: go build -o bin/ ./cmd/keybroker)")
	fs.StringVar(&f.ghz, "ghz", "", `ghz binary for the background load; empty builds the one pinned in `+ghzModFile+`; "off" runs none`)
	fs.StringVar(&f.revoke, "revoke", "access", "how the key is withdrawn through the emulator: access (RBAC, 403 ForbiddenByRbac), disable, or delete")
	fs.DurationVar(&f.interval, "interval", 2*time.Second, "the broker's validation.interval")
	fs.DurationVar(&f.tail, "tail", time.Second, "load kept up after the PAUSE event, to catch late replies")
	fs.IntVar(&f.rounds, "rounds", 3, "revocations, each at a random phase of the check schedule")
	fs.IntVar(&f.concurrency, "concurrency", 16, "kbload's own GetMasterKey workers (timestamped replies)")
	fs.IntVar(&f.connections, "connections", 4, "gRPC connections those workers share")
	fs.IntVar(&f.ghzConcurrency, "ghz-concurrency", 8, "ghz workers of the background load (over 2 connections)")
	fs.StringVar(&f.out, "out", "", "directory for summary.json, the ghz reports and the broker's log (default load/reports/bench-revocation-TIMESTAMP)")
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

// revSummary is what a bench-revocation run found; also summary.json.
type revSummary struct {
	Started  time.Time   `json:"started"`
	Settings revSettings `json:"settings"`
	Machine  machine     `json:"machine"`
	Rounds   []revRound  `json:"rounds"`
	Checks   []check     `json:"checks"`
	Pass     bool        `json:"pass"`
	OutDir   string      `json:"out_dir"`
}

type revSettings struct {
	Revoke         string `json:"revoke"`
	Interval       string `json:"interval"`
	Tail           string `json:"tail"`
	Rounds         int    `json:"rounds"`
	Concurrency    int    `json:"concurrency"`
	Connections    int    `json:"connections"`
	GhzConcurrency int    `json:"ghz_concurrency"` // 0: no ghz
}

// revRound is one revocation.
type revRound struct {
	Round int `json:"round"`
	// LeadMs is how long the load ran before the revoking call: a random
	// phase of the check schedule.
	LeadMs       float64 `json:"lead_ms"`
	RevokeCallMs float64 `json:"revoke_call_ms"` // the control API call itself
	// PauseMs is from the start of the revoking call to the PAUSE event at
	// the watcher; -1 when none came.
	PauseMs  float64 `json:"revoke_to_pause_ms"`
	OKBefore int64   `json:"ok_before_pause"`
	// OKAfter counts successful replies received after the PAUSE event:
	// the target is 0.
	OKAfter int64 `json:"ok_received_after_pause"`
	// OKSentAfter counts those of requests sent after it (a subset).
	OKSentAfter  int64            `json:"ok_sent_after_pause"`
	RefusedAfter int64            `json:"refused_after_pause"` // FAILED_PRECONDITION
	OtherErrors  map[string]int64 `json:"other_errors,omitempty"`
	// LastOKMs is when the last successful reply arrived, relative to the
	// PAUSE event (negative: before it).
	LastOKMs float64 `json:"last_ok_minus_pause_ms"`
	// ResumeMs is from Revalidate, once access is restored, to RESUMED.
	ResumeMs float64        `json:"revalidate_to_resumed_ms"`
	Ghz      map[string]int `json:"ghz_status_codes,omitempty"`
	ghzErr   error
}

// revConfig is the configuration the measured broker serves with: the dev
// set-up with validation.interval set. It is checked with the broker's own
// parser.
func revConfig(dir string, p pki.Files, info akvemu.Info, interval time.Duration) (string, error) {
	if len(info.KeyIDs) == 0 {
		return "", errors.New("the emulator reported no key")
	}
	host := strings.TrimSuffix(strings.TrimPrefix(info.VaultURLs[0], "https://"), "/")
	return serveConfig("bench-revocation", "", dir, p, info, host[strings.IndexByte(host, '.')+1:], fmt.Sprintf(`  key_id: %s
validation:
  interval: %s
log:
  level: info
  format: json
`, yamlString(info.KeyIDs[0]), interval))
}

// startRevEnv starts the emulator with its one vault and key, and the
// broker serving it with validation.interval set; the broker's log goes to
// logw. Close stops everything it started.
func startRevEnv(ctx context.Context, bin, dir string, interval time.Duration, logw io.Writer) (*serveEnv, error) {
	return startServeEnv(ctx, bin, dir, akvemu.Config{Ephemeral: true}, func(p pki.Files, info akvemu.Info) (string, error) {
		return revConfig(dir, p, info, interval)
	}, logw)
}

func (f revFlags) run(ctx context.Context, e *env) error {
	sess, err := newSession(ctx, e, sessionConfig{report: "bench-revocation", tmpPrefix: "kbload-rev-", out: f.out, ghz: f.ghz})
	if err != nil {
		return err
	}
	defer sess.Close()
	f.ghz = sess.ghz // each round runs it, unless "off"

	logFile, logPath, err := sess.openLog("keybroker.log", os.O_TRUNC)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "kbload: starting the emulator and %s serve (validation.interval %v; log: %s) ...\n", f.keybroker, f.interval, logPath)
	env, err := startRevEnv(ctx, f.keybroker, sess.tmp, f.interval, logFile)
	if err != nil {
		return err
	}
	defer env.Close()

	b := &revBench{f: f, env: env, progress: e.stderr}
	if err := b.connect(); err != nil {
		return err
	}
	defer b.close()

	s := revSummary{
		Started: sess.started,
		Settings: revSettings{Revoke: f.revoke, Interval: f.interval.String(), Tail: f.tail.String(), Rounds: f.rounds,
			Concurrency: f.concurrency, Connections: f.connections},
		Machine: describeMachine(f.keybroker),
		OutDir:  sess.out,
	}
	if f.ghz != "off" {
		s.Settings.GhzConcurrency = f.ghzConcurrency
	}
	for n := 1; n <= f.rounds; n++ {
		r, err := b.round(ctx, n)
		if err != nil {
			return fmt.Errorf("round %d: %w", n, err)
		}
		if r.ghzErr != nil {
			fmt.Fprintf(e.stderr, "kbload: round %d: ghz: %v\n", n, r.ghzErr)
		}
		fmt.Fprintf(e.stderr, "kbload: round %d/%d: revoke -> PAUSE %.0fms, %d key(s) received after PAUSE, %d refused\n",
			n, f.rounds, r.PauseMs, r.OKAfter, r.RefusedAfter)
		s.Rounds = append(s.Rounds, r)
	}
	s.Checks, s.Pass = revJudge(s.Rounds, f.interval)
	if err := sess.writeSummary(s); err != nil {
		return err
	}
	if err := printRevReport(e.stdout, s); err != nil {
		return err
	}
	if err := env.Close(); err != nil {
		return err
	}
	return verdict(s.Pass, f.noFail)
}

// revBench holds the connections of a run.
type revBench struct {
	f        revFlags
	env      *serveEnv
	progress io.Writer
	loadConn []*grpc.ClientConn
	watch    *grpc.ClientConn
	admin    *grpc.ClientConn
}

func (b *revBench) connect() error {
	p := b.env.pki
	for range b.f.connections {
		c, err := b.env.dial(p.EngineCert, p.EngineKey)
		if err != nil {
			return fmt.Errorf("connecting to the broker: %w", err)
		}
		b.loadConn = append(b.loadConn, c)
	}
	var err error
	if b.watch, err = b.env.dial(p.EngineCert, p.EngineKey); err != nil {
		return err
	}
	b.admin, err = b.env.dial(p.AdminCert, p.AdminKey)
	return err
}

func (b *revBench) close() {
	for _, c := range append(b.loadConn, b.watch, b.admin) {
		if c != nil {
			c.Close()
		}
	}
}

// revCall is one GetMasterKey of the load, timed on kbload's clock.
type revCall struct {
	sent, recv time.Time
	code       codes.Code
}

// timedEvent is a watch event and when kbload received it.
type timedEvent struct {
	at time.Time
	ev *keybrokerv1.KeyStateEvent
}

// round revokes once under load and restores access.
func (b *revBench) round(ctx context.Context, n int) (revRound, error) {
	r := revRound{Round: n, PauseMs: -1}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// The watcher first: it must be streaming before anything changes.
	events, err := b.watchEvents(ctx)
	if err != nil {
		return r, err
	}
	kb := keybrokerv1.NewKeyBrokerServiceClient(b.loadConn[0])
	warm, err := kb.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		return r, fmt.Errorf("GetMasterKey before revoking: %w", err)
	}
	clear(warm.GetKey())

	// A random phase of the check schedule, so rounds do not all revoke
	// just before (or after) a check.
	lead := revLead + time.Duration(rand.Int64N(int64(b.f.interval)))
	r.LeadMs = ms(lead)
	ctl, ok := revocations[b.f.revoke]
	if !ok {
		return r, fmt.Errorf("unknown --revoke %q", b.f.revoke)
	}
	type ghzOut struct {
		codes map[string]int
		err   error
	}
	var ghzDone chan ghzOut
	if b.f.ghz != "off" {
		ghzDone = make(chan ghzOut, 1)
		g := ghzRun{bin: b.f.ghz, addr: b.env.broker.addr, ca: b.env.pki.CA, cert: b.env.pki.EngineCert, key: b.env.pki.EngineKey,
			concurrency: b.f.ghzConcurrency, conns: min(2, b.f.ghzConcurrency)}
		d := lead + b.f.interval + revPauseSlack + b.f.tail
		go func() {
			rep, _, err := g.run(ctx, "keybroker.v1.KeyBrokerService/GetMasterKey", "{}", d)
			ghzDone <- ghzOut{rep.StatusCodeDist, err}
		}()
	}
	loadCtx, stopLoad := context.WithCancel(ctx)
	results := b.load(loadCtx)

	select {
	case <-time.After(lead):
	case <-ctx.Done():
		stopLoad()
		return r, ctx.Err()
	}
	revokeAt := time.Now()
	if err := ctl.revoke(ctx, b.env.ctl); err != nil {
		stopLoad()
		return r, fmt.Errorf("revoking through the emulator: %w", err)
	}
	r.RevokeCallMs = ms(time.Since(revokeAt))
	pause, err := waitKind(ctx, events, keybrokerv1.KeyStateEvent_KIND_PAUSE, b.f.interval+revWaitPause)
	if err != nil {
		stopLoad()
		return r, err
	}
	r.PauseMs = ms(pause.at.Sub(revokeAt))
	select {
	case <-time.After(b.f.tail):
	case <-ctx.Done():
	}
	stopLoad()
	calls := <-results
	r.tally(calls, pause.at)
	if ghzDone != nil {
		g := <-ghzDone
		r.Ghz, r.ghzErr = g.codes, g.err
	}

	// Restore, and the Try Again.
	if err := ctl.restore(ctx, b.env.ctl); err != nil {
		return r, fmt.Errorf("restoring access through the emulator: %w", err)
	}
	revalidateAt := time.Now()
	rv, err := keybrokerv1.NewKeyBrokerServiceClient(b.admin).Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || !rv.GetOk() {
		return r, fmt.Errorf("the Try Again (Revalidate) after restoring access = %v (%v), want ok", rv, err)
	}
	resumed, err := waitKind(ctx, events, keybrokerv1.KeyStateEvent_KIND_RESUMED, revWaitPause)
	if err != nil {
		return r, err
	}
	r.ResumeMs = ms(resumed.at.Sub(revalidateAt))
	return r, nil
}

// watchEvents streams WatchKeyState, stamping each event on arrival; the
// first (CURRENT) must be SERVING.
func (b *revBench) watchEvents(ctx context.Context) (<-chan timedEvent, error) {
	st, err := keybrokerv1.NewKeyBrokerServiceClient(b.watch).WatchKeyState(ctx, &keybrokerv1.WatchKeyStateRequest{}, grpc.WaitForReady(true))
	if err != nil {
		return nil, fmt.Errorf("WatchKeyState: %w", err)
	}
	first, err := st.Recv()
	if err != nil {
		return nil, fmt.Errorf("WatchKeyState: %w", err)
	}
	if s := first.GetEvent().GetState(); s != keybrokerv1.State_STATE_SERVING {
		return nil, fmt.Errorf("the broker is %v before the round (%s), want SERVING", s, first.GetEvent().GetReason())
	}
	ch := make(chan timedEvent, 16)
	go func() {
		defer close(ch)
		for {
			m, err := st.Recv()
			if err != nil {
				return
			}
			select {
			case ch <- timedEvent{at: time.Now(), ev: m.GetEvent()}:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

func waitKind(ctx context.Context, ch <-chan timedEvent, kind keybrokerv1.KeyStateEvent_Kind, limit time.Duration) (timedEvent, error) {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		select {
		case te, ok := <-ch:
			if !ok {
				return timedEvent{}, fmt.Errorf("the watch stream ended before %v", kind)
			}
			if te.ev.GetKind() == kind {
				return te, nil
			}
		case <-timer.C:
			return timedEvent{}, fmt.Errorf("no %v event within %v", kind, limit)
		case <-ctx.Done():
			return timedEvent{}, ctx.Err()
		}
	}
}

// load runs the GetMasterKey workers until ctx ends and then delivers what
// each call did. ghz runs alongside for the load, but its per-call records
// are of no use here: they come from another process, relative to its own
// start, with no reply time. These workers stamp every reply on the same
// clock as the watcher.
func (b *revBench) load(ctx context.Context) <-chan [][]revCall {
	out := make(chan [][]revCall, 1)
	all := make([][]revCall, b.f.concurrency)
	var wg sync.WaitGroup
	for i := range b.f.concurrency {
		kb := keybrokerv1.NewKeyBrokerServiceClient(b.loadConn[i%len(b.loadConn)])
		wg.Go(func() {
			calls := make([]revCall, 0, 4096)
			for ctx.Err() == nil && len(calls) < revMaxCalls {
				cctx, cancel := context.WithTimeout(ctx, revCallLimit)
				sent := time.Now()
				resp, err := kb.GetMasterKey(cctx, &keybrokerv1.GetMasterKeyRequest{})
				recv := time.Now()
				cancel()
				if ctx.Err() != nil {
					break // cut short by the end of the load: not a result
				}
				clear(resp.GetKey())
				calls = append(calls, revCall{sent: sent, recv: recv, code: status.Code(err)})
			}
			all[i] = calls
		})
	}
	go func() {
		wg.Wait()
		out <- all
	}()
	return out
}

// tally sorts the calls around the PAUSE event received at pause.
func (r *revRound) tally(workers [][]revCall, pause time.Time) {
	var lastOK time.Time
	for _, calls := range workers {
		for _, c := range calls {
			switch {
			case c.code == codes.OK:
				if c.recv.After(lastOK) {
					lastOK = c.recv
				}
				if c.recv.After(pause) {
					r.OKAfter++
					if c.sent.After(pause) {
						r.OKSentAfter++
					}
				} else {
					r.OKBefore++
				}
			case c.code == codes.FailedPrecondition && c.recv.After(pause):
				r.RefusedAfter++
			case c.code != codes.FailedPrecondition:
				if r.OtherErrors == nil {
					r.OtherErrors = map[string]int64{}
				}
				r.OtherErrors[c.code.String()]++
			}
		}
	}
	if !lastOK.IsZero() {
		r.LastOKMs = ms(lastOK.Sub(pause))
	}
}

// revJudge applies the targets to every round.
func revJudge(rounds []revRound, interval time.Duration) ([]check, bool) {
	limit := interval + revPauseSlack
	worst, okAfter, sentAfter := -1.0, int64(0), int64(0)
	missing := 0
	for _, r := range rounds {
		if r.PauseMs < 0 {
			missing++
			continue
		}
		worst = max(worst, r.PauseMs)
		okAfter += r.OKAfter
		sentAfter += r.OKSentAfter
	}
	got := "none"
	if worst >= 0 {
		got = fmt.Sprintf("%.0fms (worst of %d)", worst, len(rounds))
	}
	checks := []check{
		{Name: "revoking call -> PAUSE at a watcher", Want: fmt.Sprintf("<= %v (interval + %v)", limit, revPauseSlack), Got: got,
			Pass: missing == 0 && len(rounds) > 0 && worst <= ms(limit)},
		{Name: "GetMasterKey replies with a key after PAUSE", Want: "0", Got: fmt.Sprint(okAfter), Pass: okAfter == 0},
		{Name: "of requests sent after PAUSE", Want: "0", Got: fmt.Sprint(sentAfter), Pass: sentAfter == 0},
	}
	return checks, allPass(checks)
}

func printRevReport(w io.Writer, s revSummary) error {
	bw := bufio.NewWriter(w)
	st := s.Settings
	ghz := "no ghz"
	if st.GhzConcurrency > 0 {
		ghz = fmt.Sprintf("ghz %d workers", st.GhzConcurrency)
	}
	fmt.Fprintf(bw, "kbload bench-revocation: revoke (%s) under GetMasterKey load: %d timestamped workers over %d connection(s) + %s; validation.interval %s\n\n",
		st.Revoke, st.Concurrency, st.Connections, ghz, st.Interval)
	tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "round\tlead\trevoke->PAUSE\tkeys before\tkeys after PAUSE\t(sent after)\tlast key vs PAUSE\trefused after\tother errors\tghz codes\tRevalidate->RESUMED\n")
	for _, r := range s.Rounds {
		var other []string
		for _, k := range slices.Sorted(maps.Keys(r.OtherErrors)) {
			other = append(other, fmt.Sprintf("%s:%d", k, r.OtherErrors[k]))
		}
		var g []string
		for _, k := range slices.Sorted(maps.Keys(r.Ghz)) {
			g = append(g, fmt.Sprintf("%s:%d", k, r.Ghz[k]))
		}
		fmt.Fprintf(tw, "%d\t%.0fms\t%.0fms\t%d\t%d\t%d\t%+.1fms\t%d\t%s\t%s\t%.0fms\n",
			r.Round, r.LeadMs, r.PauseMs, r.OKBefore, r.OKAfter, r.OKSentAfter, r.LastOKMs, r.RefusedAfter,
			orDash(strings.Join(other, " ")), orDash(strings.Join(g, " ")), r.ResumeMs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	m := s.Machine
	fmt.Fprintf(bw, "\nmachine: %d CPU(s), %s, %s; broker built with %s, kbload with %s\n",
		m.CPUs, m.CPUModel, m.OSArch, m.BrokerGoVersion, m.GoVersion)
	printChecks(bw, s.Checks, 45, 30)
	fmt.Fprintf(bw, "\nresult: %s (summary in %s)\n", passFail(s.Pass), s.OutDir)
	return bw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
