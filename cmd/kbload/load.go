package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/keybroker/keybroker/internal/mtls"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Placeholders a scenario's ghz "data" may be, filled in at run time with
// requests only the running broker can make.
const (
	dataWrapDEK     = "$WRAP_DEK"     // a WrapDEK request: a random data key and associated data
	dataUnwrapDEK   = "$UNWRAP_DEK"   // an UnwrapDEK request for a blob this broker wrapped
	dataAllVersions = "$ALL_VERSIONS" // GetMasterKey requests, one per version of the default key (ghz sends them round-robin)
)

// ghzKeysSetByKbload are ghz settings a scenario may not set: kbload fills
// them for the broker it starts and the report it reads.
var ghzKeysSetByKbload = []string{"host", "cacert", "cert", "key", "cname", "skipTLS", "insecure", "format", "output", "proto", "protoset", "authority"}

// Bounds on a load run.
const (
	maxScenarioFile   = 1 << 20
	maxScenarioRuns   = 16
	maxVersions       = 32
	totalRunTimeout   = 10 * time.Minute // a run bounded by a call count rather than a duration
	converterTimeout  = 30 * time.Second
	maxConverterInput = 64 << 20
)

// scenario is one file of load/: ghz runs that go at the same time, the
// broker they need, and the checks on the result.
type scenario struct {
	Name        string `json:"-"` // the file name without .json
	Description string `json:"description"`
	Order       int    `json:"order"`
	// FreshBroker runs the scenario against a broker started just before,
	// after rotating to MasterKeyVersions versions, so its memory holds only
	// what start-up loaded.
	FreshBroker       bool          `json:"fresh_broker"`
	MasterKeyVersions int           `json:"master_key_versions"`
	Checks            scenarioCheck `json:"checks"`
	Runs              []scenarioRun `json:"runs"`
}

// scenarioCheck are the targets of a scenario; nil means not checked.
type scenarioCheck struct {
	// MaxRSSMiB bounds the broker's peak resident memory during the scenario.
	MaxRSSMiB *float64 `json:"max_rss_mib"`
	// MaxKeyVaultCalls bounds the Key Vault key operations and token
	// requests during the scenario.
	MaxKeyVaultCalls *int64 `json:"max_key_vault_calls"`
	// UnwrapsPerVersion is the exact number of Key Vault unwraps per
	// master-key version (fresh brokers only): the emulator must see it for
	// every version start-up did not load, the broker must report it for
	// every version since it started.
	UnwrapsPerVersion *int64 `json:"unwraps_per_version"`
}

// scenarioRun is one ghz process: its settings are a ghz configuration
// (ghz --config), given as is but for the data placeholders and the keys
// kbload sets.
type scenarioRun struct {
	Name string                     `json:"name"`
	GHZ  map[string]json.RawMessage `json:"ghz"`
}

// parseScenario reads and checks one scenario file.
func parseScenario(name string, b []byte) (scenario, error) {
	var s scenario
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return scenario{}, fmt.Errorf("scenario %s: %v", name, err)
	}
	s.Name = name
	if err := s.validate(); err != nil {
		return scenario{}, fmt.Errorf("scenario %s: %w", name, err)
	}
	return s, nil
}

func (s scenario) validate() error {
	if len(s.Runs) == 0 || len(s.Runs) > maxScenarioRuns {
		return fmt.Errorf("%d runs: want 1 to %d", len(s.Runs), maxScenarioRuns)
	}
	if s.MasterKeyVersions < 0 || s.MasterKeyVersions > maxVersions {
		return fmt.Errorf("master_key_versions %d: want 0 to %d", s.MasterKeyVersions, maxVersions)
	}
	if s.MasterKeyVersions > 1 && !s.FreshBroker {
		return errors.New("master_key_versions needs fresh_broker: rotating the shared broker would change the other scenarios")
	}
	if s.Checks.UnwrapsPerVersion != nil && !s.FreshBroker {
		return errors.New("checks.unwraps_per_version needs fresh_broker: only a fresh broker's unwraps can be counted per version")
	}
	seen := map[string]bool{}
	for i, r := range s.Runs {
		if r.Name == "" || strings.ContainsAny(r.Name, `/\ `) || seen[r.Name] {
			return fmt.Errorf("runs[%d]: name %q: want a unique name without spaces or slashes (it names the report files)", i, r.Name)
		}
		seen[r.Name] = true
		for _, k := range ghzKeysSetByKbload {
			if _, ok := r.GHZ[k]; ok {
				return fmt.Errorf("runs[%d] (%s): ghz.%s is set by kbload for the broker it starts: remove it", i, r.Name, k)
			}
		}
		var call string
		if err := json.Unmarshal(r.GHZ["call"], &call); err != nil || !strings.Contains(call, "/") {
			return fmt.Errorf("runs[%d] (%s): ghz.call: want a method such as \"keybroker.v1.KeyBrokerService/GetMasterKey\"", i, r.Name)
		}
		_, hasDur := r.GHZ["duration"]
		_, hasTotal := r.GHZ["total"]
		if hasDur == hasTotal {
			return fmt.Errorf("runs[%d] (%s): set exactly one of ghz.duration and ghz.total", i, r.Name)
		}
		if hasDur {
			if _, err := ghzDuration(r.GHZ["duration"]); err != nil {
				return fmt.Errorf("runs[%d] (%s): ghz.duration: %v", i, r.Name, err)
			}
		}
		var ph string
		if json.Unmarshal(r.GHZ["data"], &ph) == nil && !slices.Contains([]string{dataWrapDEK, dataUnwrapDEK, dataAllVersions}, ph) {
			return fmt.Errorf("runs[%d] (%s): ghz.data %q: want a request object, or one of %s, %s, %s", i, r.Name, truncate(ph, 40), dataWrapDEK, dataUnwrapDEK, dataAllVersions)
		}
		if ph == dataAllVersions && !s.FreshBroker {
			return fmt.Errorf("runs[%d] (%s): %s needs fresh_broker", i, r.Name, dataAllVersions)
		}
	}
	return nil
}

// ghzDuration reads a ghz duration setting ("20s").
func ghzDuration(raw json.RawMessage) (time.Duration, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, errors.New(`want a string such as "20s"`)
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q: want a positive duration such as \"20s\"", s)
	}
	return d, nil
}

// loadScenarios reads every *.json of dir, in their order (then by name).
func loadScenarios(dir string) ([]scenario, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no scenario (*.json) in %s: run kbload from the repository root or pass --scenarios-dir", dir)
	}
	var out []scenario
	for _, f := range files {
		b, err := readLimited(f, maxScenarioFile)
		if err != nil {
			return nil, err
		}
		s, err := parseScenario(strings.TrimSuffix(filepath.Base(f), ".json"), b)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Order != out[j].Order {
			return out[i].Order < out[j].Order
		}
		return out[i].Name < out[j].Name
	})
	return out, nil
}

func readLimited(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes: is it a scenario?", path, limit)
	}
	return b, nil
}

// selectScenarios keeps the named scenarios ("" = all), in file order.
func selectScenarios(all []scenario, names string) ([]scenario, error) {
	if strings.TrimSpace(names) == "" {
		return all, nil
	}
	var out []scenario
	for _, n := range strings.Split(names, ",") {
		n = strings.TrimSpace(n)
		i := slices.IndexFunc(all, func(s scenario) bool { return s.Name == n })
		if i < 0 {
			var have []string
			for _, s := range all {
				have = append(have, s.Name)
			}
			return nil, usageErrorf("--scenarios: no scenario %q (have %s)", n, strings.Join(have, ", "))
		}
		out = append(out, all[i])
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Order < out[j].Order })
	return out, nil
}

// requestData are the placeholders' values for one broker.
type requestData map[string]json.RawMessage

// ghzConfig is the ghz --config file for run r: its settings with the data
// filled in, template processing off (the data is constant) and calls in
// flight at the end of a duration allowed to finish (the default would
// cancel them and count errors the broker never made). d, if positive,
// replaces a duration setting.
func ghzConfig(r scenarioRun, data requestData, d time.Duration) ([]byte, error) {
	cfg := maps.Clone(r.GHZ)
	var ph string
	if json.Unmarshal(cfg["data"], &ph) == nil {
		v, ok := data[ph]
		if !ok {
			return nil, fmt.Errorf("run %s: no value for %s", r.Name, ph)
		}
		cfg["data"] = v
	}
	if _, ok := cfg["duration"]; ok {
		if d > 0 {
			cfg["duration"] = json.RawMessage(fmt.Sprintf("%q", d.String()))
		}
		if _, ok := cfg["duration-stop"]; !ok {
			cfg["duration-stop"] = json.RawMessage(`"wait"`)
		}
	}
	for _, k := range []string{"disable-template-functions", "disable-template-data"} {
		if _, ok := cfg[k]; !ok {
			cfg[k] = json.RawMessage("true")
		}
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// runTimeout bounds one ghz run of cfg.
func runTimeout(r scenarioRun, d time.Duration) time.Duration {
	if _, ok := r.GHZ["duration"]; ok {
		if d <= 0 {
			d, _ = ghzDuration(r.GHZ["duration"])
		}
		return d + ghzSlack
	}
	return totalRunTimeout
}

// ghzTarget is the broker and TLS identity every run talks to.
type ghzTarget struct {
	bin, addr, ca, cert, key string
}

// runGhzConfig runs ghz with a configuration file and returns the parsed
// report and the raw JSON.
func runGhzConfig(ctx context.Context, t ghzTarget, cfgPath string, timeout time.Duration, stderrOut io.Writer) (ghzReport, []byte, error) {
	args := []string{
		"--config", cfgPath,
		"--cacert", t.ca, "--cert", t.cert, "--key", t.key, "--cname", serverName,
		"--format", "json", t.addr,
	}
	rep, raw, err := runGhz(ctx, t.bin, args, "ghz --config "+cfgPath, timeout, stderrOut)
	if err == nil && rep.Count == 0 {
		return ghzReport{}, nil, fmt.Errorf("ghz --config %s made no call: is the broker serving?", cfgPath)
	}
	return rep, raw, err
}

// buildConverter builds load/ghzhtml (ghz's HTML printer over a JSON
// report) against ghz's own module, like ghz itself.
func buildConverter(ctx context.Context, root, dir string) (string, error) {
	bin := filepath.Join(dir, "ghzhtml")
	if err := buildWithGhzModule(ctx, root, bin, "./load/ghzhtml/main.go"); err != nil {
		return "", fmt.Errorf("building load/ghzhtml: %w", err)
	}
	return bin, nil
}

// writeHTML turns a compact ghz report into ghz's HTML report at path.
func writeHTML(ctx context.Context, converter string, compact []byte, path string) error {
	if len(compact) > maxConverterInput {
		return fmt.Errorf("%s: report too large for the HTML converter", path)
	}
	ctx, cancel := context.WithTimeout(ctx, converterTimeout)
	defer cancel()
	var out bytes.Buffer
	stderr := &capped{max: maxGhzStderr}
	cmd := exec.CommandContext(ctx, converter)
	cmd.Stdin = bytes.NewReader(compact)
	cmd.Stdout = &out
	cmd.Stderr = stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ghz HTML report %s: %v: %s", path, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return os.WriteFile(path, out.Bytes(), 0o644)
}

// loadFlags are the load subcommand's flags.
type loadFlags struct {
	keybroker, ghz string
	dir            string
	scenarios      string
	duration       time.Duration
	sample         time.Duration
	out            string
	noFail         bool
}

func runLoad(ctx context.Context, e *env, args []string) error {
	var f loadFlags
	fs := newFlagSet(e, "load", "[--keybroker bin/keybroker] [--scenarios steady,mix,burst,storm] [--duration D] [--out DIR]")
	fs.StringVar(&f.keybroker, "keybroker", "bin/keybroker", "keybroker binary to load (build it with: go build -o bin/ ./cmd/keybroker)")
	fs.StringVar(&f.ghz, "ghz", "", "ghz binary; empty builds the one pinned in "+ghzModFile+" into a temporary directory")
	fs.StringVar(&f.dir, "scenarios-dir", "load", "directory of the scenario files (*.json)")
	fs.StringVar(&f.scenarios, "scenarios", "", "comma-separated scenario names to run; empty runs all, in their order")
	fs.DurationVar(&f.duration, "duration", 0, "replace the duration of every duration-bound run (0 keeps the files' durations)")
	fs.DurationVar(&f.sample, "sample", time.Second, "interval between scrapes of the broker's /metrics during a scenario")
	fs.StringVar(&f.out, "out", "", "directory for the reports (ghz JSON and HTML), summary.json and the brokers' logs (default load/reports/load-TIMESTAMP)")
	fs.BoolVar(&f.noFail, "no-fail", false, "only report: exit 0 even when a check fails")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if f.duration < 0 {
		return usageErrorf("--duration %v: want 0 (the files' durations) or a positive duration", f.duration)
	}
	if f.sample < 100*time.Millisecond {
		return usageErrorf("--sample %v: want at least 100ms", f.sample)
	}
	if err := checkKeybroker(f.keybroker); err != nil {
		return err
	}
	all, err := loadScenarios(f.dir)
	if err != nil {
		return usageErrorf("%v", err)
	}
	scenarios, err := selectScenarios(all, f.scenarios)
	if err != nil {
		return err
	}

	sess, err := newSession(ctx, e, sessionConfig{report: "load", tmpPrefix: "kbload-load-", out: f.out, ghz: f.ghz})
	if err != nil {
		return err
	}
	defer sess.Close()
	f.out = sess.out // the scenarios write their reports there

	// The HTML converter is a nicety: without the repository, no HTML.
	root, _ := repoRoot()
	converter := ""
	if root != "" {
		if converter, err = buildConverter(ctx, root, sess.tmp); err != nil {
			fmt.Fprintf(e.stderr, "kbload: no HTML reports: %v\n", err)
		}
	}

	l := &loadRun{e: e, f: f, sess: sess, converter: converter, hc: &http.Client{}}
	defer l.stopAll()
	res := loadSummary{Started: sess.started, Machine: describeMachine(f.keybroker), OutDir: sess.out}
	for _, s := range scenarios {
		fmt.Fprintf(e.stderr, "kbload: scenario %s ...\n", s.Name)
		r, err := l.run(ctx, s)
		if err != nil {
			return fmt.Errorf("scenario %s: %w", s.Name, err)
		}
		res.Scenarios = append(res.Scenarios, r)
	}
	res.Pass = true
	for _, s := range res.Scenarios {
		res.Pass = res.Pass && allPass(s.Checks)
	}
	if err := sess.writeSummary(res); err != nil {
		return err
	}
	if err := printLoadReport(e.stdout, res); err != nil {
		return err
	}
	if err := l.stopAll(); err != nil {
		return err
	}
	return verdict(res.Pass, f.noFail)
}

// loadSummary is everything a load run found; also summary.json.
type loadSummary struct {
	Started   time.Time        `json:"started"`
	Machine   machine          `json:"machine"`
	Scenarios []scenarioResult `json:"scenarios"`
	Pass      bool             `json:"pass"`
	OutDir    string           `json:"out_dir"`
}

// scenarioResult is one scenario's figures and checks.
type scenarioResult struct {
	Name        string      `json:"name"`
	Description string      `json:"description"`
	Runs        []runResult `json:"runs"`
	// AKV are the emulator's counters over the scenario; HotPath the key
	// operations beyond the validity checks that ran meanwhile;
	// BrokerUnwraps the unwraps the broker reports since it started.
	AKV            akvTotals `json:"akv"`
	HotPath        int64     `json:"akv_hot_path"`
	ValidityChecks float64   `json:"validity_checks"`
	BrokerUnwraps  float64   `json:"broker_unwraps"`
	Versions       int       `json:"master_key_versions,omitempty"`
	// PeakRSS and PeakGoroutines are the highest the broker reported
	// during the scenario; After is its /metrics once the scenario ended.
	PeakRSS        float64       `json:"peak_rss_bytes"`
	PeakGoroutines float64       `json:"peak_goroutines"`
	After          metricsSample `json:"after"`
	States         string        `json:"states"`
	BrokerErrors   float64       `json:"broker_rpc_errors"`
	ScrapeErrors   []string      `json:"scrape_errors,omitempty"`
	Checks         []check       `json:"checks"`
}

// runResult is one ghz run of a scenario.
type runResult struct {
	Name        string         `json:"name"`
	Call        string         `json:"call"`
	Concurrency int            `json:"concurrency"`
	Connections int            `json:"connections"`
	Count       uint64         `json:"count"`
	RPS         float64        `json:"rps"`
	P50         float64        `json:"p50_ms"`
	P99         float64        `json:"p99_ms"`
	Errors      uint64         `json:"errors"`
	ErrorDist   map[string]int `json:"error_distribution,omitempty"`
	Report      string         `json:"report"`
	HTML        string         `json:"html,omitempty"`
}

// loadRun holds the brokers of one load run.
type loadRun struct {
	e         *env
	f         loadFlags
	sess      *session // the brokers' logs, the ghz binary and a temporary directory
	converter string
	hc        *http.Client

	shared *devBroker   // for the scenarios without fresh_broker
	data   requestData  // the shared broker's placeholders
	others []*devBroker // fresh brokers, stopped as soon as their scenario ends
}

// stopAll stops every broker still running; it is safe to call twice.
func (l *loadRun) stopAll() error {
	var errs []error
	if l.shared != nil {
		errs = append(errs, l.shared.Stop())
	}
	for _, b := range l.others {
		errs = append(errs, b.Stop())
	}
	return errors.Join(errs...)
}

// startBroker starts `keybroker dev` in dir with its log in the reports,
// appended to: a fresh broker is started twice.
func (l *loadRun) startBroker(ctx context.Context, dir, logName string) (*devBroker, error) {
	b, err := l.sess.startDev(ctx, l.f.keybroker, dir, logName, os.O_APPEND)
	if err != nil {
		return nil, err
	}
	if err := checkAdminURL(b.info.AdminURL); err != nil {
		b.Stop()
		return nil, err
	}
	return b, nil
}

// run carries out one scenario.
func (l *loadRun) run(ctx context.Context, s scenario) (scenarioResult, error) {
	res := scenarioResult{Name: s.Name, Description: s.Description}
	var b *devBroker
	var data requestData
	if s.FreshBroker {
		var err error
		b, data, res.Versions, err = l.freshBroker(ctx, s)
		if err != nil {
			return res, err
		}
		l.others = append(l.others, b)
		defer b.Stop()
		// Start-up's calls are over once it serves. The emulator's counters
		// would count them with the SDK's first request, which only fetches
		// the bearer challenge; the broker's own metric counts them right.
		if err := b.ctl.ResetCounters(ctx); err != nil {
			return res, fmt.Errorf("resetting the emulator's counters: %w", err)
		}
	} else {
		if l.shared == nil {
			sb, err := l.startBroker(ctx, filepath.Join(l.sess.tmp, "dev"), "keybroker.log")
			if err != nil {
				return res, err
			}
			l.shared = sb
			if l.data, err = sharedData(ctx, sb); err != nil {
				return res, err
			}
		}
		b, data = l.shared, l.data
		if err := b.ctl.ResetCounters(ctx); err != nil {
			return res, fmt.Errorf("resetting the emulator's counters: %w", err)
		}
	}

	before, err := scrapeMetrics(ctx, l.hc, b.info.AdminURL)
	if err != nil {
		return res, err
	}
	smp := startSampler(ctx, l.hc, b.info.AdminURL, l.f.sample)
	runs, err := l.runAll(ctx, s, b, data)
	samples, scrapeErrs := smp.Stop()
	if err != nil {
		return res, err
	}
	after, err := scrapeMetrics(ctx, l.hc, b.info.AdminURL)
	if err != nil {
		return res, err
	}
	samples = append(samples, after)
	counters, err := b.ctl.Counters(ctx)
	if err != nil {
		return res, fmt.Errorf("reading the emulator's counters: %w", err)
	}

	res.Runs = runs
	res.AKV = sumAKV(counters)
	res.ValidityChecks = after.Checks - before.Checks
	res.HotPath = res.AKV.hotPath(res.ValidityChecks, after.ActiveKeys)
	res.BrokerUnwraps = after.Unwraps
	res.PeakRSS, res.PeakGoroutines = peak(samples)
	res.After = after
	res.States = joinStates(samples)
	res.BrokerErrors = after.rpcErrors() - before.rpcErrors()
	res.ScrapeErrors = scrapeErrs
	res.Checks = judgeScenario(s, res)
	return res, nil
}

// sharedData makes the placeholders' values on the shared broker, with the
// engine client: the WrapDEK request and an UnwrapDEK request for a blob
// it wrapped, both checked by a round trip (as bench does).
func sharedData(ctx context.Context, b *devBroker) (requestData, error) {
	calls, err := prepareBroker(ctx, b)
	if err != nil {
		return nil, err
	}
	d := requestData{}
	for _, c := range calls {
		switch shortName(c.call) {
		case "WrapDEK":
			d[dataWrapDEK] = json.RawMessage(c.data)
		case "UnwrapDEK":
			d[dataUnwrapDEK] = json.RawMessage(c.data)
		}
	}
	if len(d) != 2 {
		return nil, errors.New("kbload: the bench requests have no WrapDEK or UnwrapDEK: a kbload bug")
	}
	return d, nil
}

// freshBroker prepares a broker with s.MasterKeyVersions versions, stops it
// and starts it again, so the scenario meets a broker that has loaded only
// what start-up loads. The emulator runs inside the broker, so its counters
// start at zero with the new process.
func (l *loadRun) freshBroker(ctx context.Context, s scenario) (*devBroker, requestData, int, error) {
	dir := filepath.Join(l.sess.tmp, "dev-"+s.Name)
	logName := "keybroker-" + s.Name + ".log"
	prep, err := l.startBroker(ctx, dir, logName)
	if err != nil {
		return nil, nil, 0, err
	}
	versions, err := rotateTo(ctx, prep.info, s.MasterKeyVersions)
	if stopErr := prep.Stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return nil, nil, 0, err
	}
	b, err := l.startBroker(ctx, dir, logName)
	if err != nil {
		return nil, nil, 0, err
	}
	var reqs []map[string]string
	for _, v := range versions {
		reqs = append(reqs, map[string]string{"version": v})
	}
	all, err := json.Marshal(reqs)
	if err != nil {
		b.Stop()
		return nil, nil, 0, err
	}
	return b, requestData{dataAllVersions: all}, len(versions), nil
}

// prepareBroker checks b serves the engine and makes the requests of the
// bench (WrapDEK, and UnwrapDEK of a blob it wrapped).
func prepareBroker(ctx context.Context, b *devBroker) ([]benchCall, error) {
	conn, err := b.dialEngine()
	if err != nil {
		return nil, fmt.Errorf("connecting to the broker: %w", err)
	}
	defer conn.Close()
	return prepareCalls(ctx, keybrokerv1.NewKeyBrokerServiceClient(conn))
}

// rotateTo rotates the default master key (as the admin) until it has n
// versions, and returns every version id.
func rotateTo(ctx context.Context, info devInfo, n int) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	tlsCfg, err := mtls.ClientTLS(mtls.ClientConfig{CAFile: info.CA, CertFile: info.AdminCert, KeyFile: info.AdminKey, ServerName: serverName})
	if err != nil {
		return nil, fmt.Errorf("the dev admin client: %w", err)
	}
	conn, err := grpc.NewClient(info.Address, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	kb := keybrokerv1.NewKeyBrokerServiceClient(conn)
	versions := func() ([]string, error) {
		st, err := kb.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
		if err != nil {
			return nil, fmt.Errorf("GetStatus: %w", err)
		}
		if len(st.GetKeys()) == 0 {
			return nil, errors.New("GetStatus lists no key")
		}
		return st.GetKeys()[0].GetVersions(), nil
	}
	have, err := versions()
	if err != nil {
		return nil, err
	}
	for i := len(have); i < n; i++ {
		if _, err := kb.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{}); err != nil {
			return nil, fmt.Errorf("RotateDEK: %w", err)
		}
	}
	return versions()
}

// runAll runs every ghz run of s at once and writes their reports.
func (l *loadRun) runAll(ctx context.Context, s scenario, b *devBroker, data requestData) ([]runResult, error) {
	target := ghzTarget{bin: l.sess.ghz, addr: b.info.Address, ca: b.info.CA, cert: b.info.EngineCert, key: b.info.EngineKey}
	out := make([]runResult, len(s.Runs))
	errs := make([]error, len(s.Runs))
	var wg sync.WaitGroup
	for i, r := range s.Runs {
		cfg, err := ghzConfig(r, data, l.f.duration)
		if err != nil {
			return nil, err
		}
		cfgPath := filepath.Join(l.sess.tmp, s.Name+"-"+r.Name+".ghz.json")
		if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			rep, raw, err := runGhzConfig(ctx, target, cfgPath, runTimeout(r, l.f.duration), l.e.stderr)
			if err != nil {
				errs[i] = fmt.Errorf("run %s: %w", r.Name, err)
				return
			}
			out[i], errs[i] = l.saveRun(ctx, s, r, rep, raw)
		}()
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

// saveRun writes one run's compact JSON report and its HTML, and sums it up.
func (l *loadRun) saveRun(ctx context.Context, s scenario, r scenarioRun, rep ghzReport, raw []byte) (runResult, error) {
	compact, err := compactReport(raw)
	if err != nil {
		return runResult{}, err
	}
	base := s.Name + "-" + r.Name
	res := runResult{Name: r.Name, Count: rep.Count, RPS: rep.Rps, Errors: rep.errorCount(), ErrorDist: rep.ErrorDist, Report: base + ".json"}
	_ = json.Unmarshal(r.GHZ["call"], &res.Call)
	_ = json.Unmarshal(r.GHZ["concurrency"], &res.Concurrency)
	_ = json.Unmarshal(r.GHZ["connections"], &res.Connections)
	p50, _ := rep.percentile(50)
	p99, _ := rep.percentile(99)
	res.P50, res.P99 = ms(p50), ms(p99)
	if err := os.WriteFile(filepath.Join(l.f.out, res.Report), append(compact, '\n'), 0o644); err != nil {
		return runResult{}, err
	}
	if l.converter != "" {
		html := base + ".html"
		if err := writeHTML(ctx, l.converter, compact, filepath.Join(l.f.out, html)); err != nil {
			fmt.Fprintf(l.e.stderr, "kbload: %v\n", err)
		} else {
			res.HTML = html
		}
	}
	return res, nil
}

// judgeScenario returns the checks of one scenario: no failed call,
// and the scenario's own targets.
func judgeScenario(s scenario, r scenarioResult) []check {
	var errs, count uint64
	for _, run := range r.Runs {
		errs += run.Errors
		count += run.Count
	}
	checks := []check{{
		Name: "errors",
		Want: "0",
		Got:  fmt.Sprintf("%d of %d calls (broker: %.0f)", errs, count, r.BrokerErrors),
		Pass: errs == 0 && r.BrokerErrors == 0,
	}}
	if c := s.Checks.MaxRSSMiB; c != nil {
		checks = append(checks, check{
			Name: "peak resident memory",
			Want: fmt.Sprintf("<= %.0f MiB", *c),
			Got:  fmt.Sprintf("%.1f MiB", mib(r.PeakRSS)),
			Pass: r.PeakRSS > 0 && mib(r.PeakRSS) <= *c,
		})
	}
	if c := s.Checks.MaxKeyVaultCalls; c != nil {
		checks = append(checks, check{
			Name: "Key Vault calls",
			Want: fmt.Sprintf("<= %d", *c),
			Got:  fmt.Sprintf("%d (%d key operations less %.0f validity check(s))", r.HotPath, r.AKV.KeyOps, r.ValidityChecks),
			Pass: r.HotPath <= *c,
		})
	}
	if c := s.Checks.UnwrapsPerVersion; c != nil {
		during, all := *c*int64(r.Versions-1), *c*int64(r.Versions)
		checks = append(checks, check{
			Name: "Key Vault unwraps",
			Want: fmt.Sprintf("%d during, %d since start", during, all),
			Got:  fmt.Sprintf("%d during (emulator), %.0f since start (broker)", r.AKV.Unwraps, r.BrokerUnwraps),
			Pass: r.Versions > 0 && r.AKV.Unwraps == during && r.BrokerUnwraps == float64(all),
		})
	}
	return checks
}

// printLoadReport writes the tables of a load run.
func printLoadReport(w io.Writer, s loadSummary) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, "kbload load")
	fmt.Fprintln(bw)
	tw := tabwriter.NewWriter(bw, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\trun\tclients\tconns\tcalls\tRPS\tp50\tp99\terrors")
	for _, sc := range s.Scenarios {
		for _, r := range sc.Runs {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%.0f\t%.2fms\t%.2fms\t%d\n",
				sc.Name, r.Name, r.Concurrency, r.Connections, r.Count, r.RPS, r.P50, r.P99, r.Errors)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(bw)
	tw = tabwriter.NewWriter(bw, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "scenario\tKey Vault key ops\tunwraps\tchecks\tpeak RSS\tRSS after\tpeak goroutines\tgoroutines after\tstates")
	for _, sc := range s.Scenarios {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.1f MiB\t%.1f MiB\t%.0f\t%.0f\t%s\n",
			sc.Name, sc.AKV.KeyOps, sc.AKV.Unwraps, sc.ValidityChecks, mib(sc.PeakRSS), mib(sc.After.RSS), sc.PeakGoroutines, sc.After.Goroutines, sc.States)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	m := s.Machine
	fmt.Fprintf(bw, "\nmachine: %d CPU(s), %s, %s; broker built with %s\n", m.CPUs, m.CPUModel, m.OSArch, m.BrokerGoVersion)
	for _, sc := range s.Scenarios {
		for _, r := range sc.Runs {
			for _, msg := range slices.Sorted(maps.Keys(r.ErrorDist)) {
				fmt.Fprintf(bw, "error: %s/%s: %d x %s\n", sc.Name, r.Name, r.ErrorDist[msg], truncate(msg, 200))
			}
		}
		for _, e := range sc.ScrapeErrors {
			fmt.Fprintf(bw, "scrape: %s: %s\n", sc.Name, truncate(e, 200))
		}
	}
	fmt.Fprintln(bw, "\nchecks:")
	for _, sc := range s.Scenarios {
		for _, c := range sc.Checks {
			fmt.Fprintf(bw, "  %s  %-8s %-22s want %-22s got %s\n", passFail(c.Pass), sc.Name, c.Name, c.Want, c.Got)
		}
	}
	fmt.Fprintf(bw, "\nresult: %s (reports, ghz HTML included, in %s)\n", passFail(s.Pass), s.OutDir)
	return bw.Flush()
}
