package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/pki"
)

func TestFoConfig(t *testing.T) {
	files := foConfigFiles{
		Dir: "/tmp/run",
		PKI: pki.Files{ServerCert: "s.pem", ServerKey: "s-key.pem", CA: "ca.pem", EngineIdentity: "spiffe://keybroker.dev/engine", AdminIdentity: "spiffe://keybroker.dev/admin"},
		Emu: akvemu.Info{AuthorityHost: "https://127.0.0.1:1234/", CAFile: "emu-ca.pem", Endpoint: "127.0.0.1:1234",
			TenantID: akvemu.DefaultTenantID, ClientID: akvemu.DefaultClientID, ClientSecretFile: "secret"},
		Keys: [2]string{"https://" + foPrimaryHost + "/keys/cmk/0123456789abcdef0123456789abcdef", "https://" + foSecondaryHost + "/keys/cmk/fedcba9876543210fedcba9876543210"},
	}
	s := foSettings{Hedge: 50 * time.Millisecond, TTL: time.Millisecond, MaxStale: time.Second, ProbeInterval: time.Second, FailBackAfter: 3}
	yaml, err := foConfig(files, s)
	if err != nil {
		t.Fatalf("foConfig err = %v, want nil", err)
	}
	cfg, err := config.Parse("test", []byte(yaml), nil)
	if err != nil {
		t.Fatalf("config.Parse(foConfig) err = %v, want nil", err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"regions", len(cfg.Azure.Regions), 2},
		{"primary first", cfg.Azure.Regions[0].KeyID, files.Keys[0]},
		{"secondary", cfg.Azure.Regions[1].KeyID, files.Keys[1]},
		{"hedge", cfg.Azure.Failover.HedgeDelay.D(), s.Hedge},
		{"ttl", cfg.Cache.TTL.D(), s.TTL},
		{"max_stale", cfg.Cache.MaxStale.D(), s.MaxStale},
		{"fail_back_after", cfg.Azure.Failover.FailBackAfter, 3},
		{"listen", cfg.Listen.Address, "127.0.0.1:0"},
		{"log format", cfg.Log.Format, "json"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("foConfig %s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}

func TestFoFlagsValidate(t *testing.T) {
	good := func() foFlags {
		return foFlags{duration: time.Second, concurrency: 4, connections: 2,
			settings: foSettings{Hedge: 50 * time.Millisecond, SecondaryLatency: 20 * time.Millisecond, TTL: time.Millisecond}}
	}
	tests := []struct {
		name   string
		change func(*foFlags)
		want   string // "" = valid
	}{
		{"defaults", func(*foFlags) {}, ""},
		{"no duration", func(f *foFlags) { f.duration = 0 }, "--duration"},
		{"no workers", func(f *foFlags) { f.concurrency = 0 }, "--concurrency"},
		{"more connections than workers", func(f *foFlags) { f.connections = 5 }, "--connections"},
		{"no hedge", func(f *foFlags) { f.settings.Hedge = 0 }, "--hedge"},
		{"negative latency", func(f *foFlags) { f.settings.SecondaryLatency = -time.Millisecond }, "--secondary-latency"},
		{"no ttl", func(f *foFlags) { f.settings.TTL = 0 }, "--ttl"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := good()
			tc.change(&f)
			err := f.validate()
			var ee *exitError
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ee) || ee.code != exitUsage):
				t.Fatalf("validate() = %v, want a usage error about %s", err, tc.want)
			}
		})
	}
}

func TestFoJudge(t *testing.T) {
	healthy := foPhaseResult{Name: "both regions up", Count: 100, P99: 5}
	outage := foPhaseResult{Name: "primary black-holed", Outage: true, Count: 100, P50: 20, P99: 70, SecondaryP50: 25,
		SecondarySamples: 30, TargetP99: 100, SecondaryUnwraps: 50, FailBackMs: 3000}
	tests := []struct {
		name     string
		change   func(*foPhaseResult)
		wantPass bool
		wantFail string // the failing check's name
	}{
		{"all targets met", func(*foPhaseResult) {}, true, ""},
		{"an error", func(p *foPhaseResult) { p.Errors = 1 }, false, "primary black-holed: errors"},
		{"a failed load served stale", func(p *foPhaseResult) { p.LoadFailures = 1 }, false, "primary black-holed: errors"},
		{"p99 over the target", func(p *foPhaseResult) { p.P99 = 101 }, false, "primary black-holed: p99"},
		{"no secondary sample", func(p *foPhaseResult) { p.SecondarySamples = 0 }, false, "primary black-holed: p99"},
		{"secondary unused", func(p *foPhaseResult) { p.SecondaryUnwraps = 0 }, false, "primary black-holed: served by the secondary"},
		{"no fail-back", func(p *foPhaseResult) { p.FailBackMs = -1 }, false, "primary black-holed: fail-back to the primary once healed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := outage
			tc.change(&o)
			checks, pass := foJudge(foSummary{Settings: foSettings{Hedge: 50 * time.Millisecond}, Phases: []foPhaseResult{healthy, o}})
			if pass != tc.wantPass {
				t.Fatalf("foJudge pass = %v, want %v (checks %+v)", pass, tc.wantPass, checks)
			}
			for _, c := range checks {
				if c.Pass == (c.Name == tc.wantFail) {
					t.Errorf("foJudge check %q pass = %v, want %v", c.Name, c.Pass, c.Name != tc.wantFail)
				}
			}
		})
	}
	if _, pass := foJudge(foSummary{}); pass {
		t.Error("foJudge(no phases) pass = true, want false")
	}
}

func TestFoLogWatch(t *testing.T) {
	var out bytes.Buffer
	w := &foLogWatch{out: &out, serving: make(chan string, 1)}
	log := `{"time":"...","level":"INFO","msg":"keys loaded"}
not json at all
{"level":"WARN","msg":"cache: key load failed","key_id":"v1"}
{"level":"INFO","msg":"serving","address":"127.0.0.1:4242","unix":""}
{"level":"WARN","msg":"cache: reload failed with an outage; serving the key past its TTL"}
{"level":"INFO","msg":"serving","address":"127.0.0.1:9"}
{"level":"WARN","msg":"cache: reload failed; key wiped"}
`
	// Split in odd places, as a pipe may deliver it.
	for i := 0; i < len(log); i += 7 {
		if _, err := w.Write([]byte(log[i:min(i+7, len(log))])); err != nil {
			t.Fatal(err)
		}
	}
	if out.String() != log {
		t.Errorf("foLogWatch passed on %q, want the log unchanged", out.String())
	}
	select {
	case addr := <-w.serving:
		if addr != "127.0.0.1:4242" {
			t.Errorf("serving address = %q, want 127.0.0.1:4242 (the first)", addr)
		}
	default:
		t.Error("foLogWatch saw no serving line")
	}
	if n := w.loadFailures.Load(); n != 3 {
		t.Errorf("load failures = %d, want 3", n)
	}
}

// TestBenchFailoverIntegration runs bench-failover briefly against a real
// keybroker built from this tree. It is slow (two builds, a broker, three
// ghz runs and two fail-backs), so it runs only with KBLOAD_INTEGRATION=1
// and without -short. It checks outcomes, never speed.
func TestBenchFailoverIntegration(t *testing.T) {
	in := startIntegration(t, "bench-failover against a real keybroker", 10*time.Minute, true)
	out := t.TempDir()
	stdout, stderr, err := in.kbload(
		"bench-failover", "--keybroker", in.keybroker, "--ghz", in.ghz,
		"--duration", "2s", "--concurrency", "4", "--connections", "2", "--out", out, "--no-fail",
	)
	if err != nil {
		t.Fatalf("kbload bench-failover err = %v, want nil\nstderr:\n%s", err, stderr)
	}
	t.Logf("kbload bench-failover:\n%s", stdout)
	s := readSummary[foSummary](t, out)
	if len(s.Phases) != 3 {
		t.Fatalf("summary.json has %d phases, want 3", len(s.Phases))
	}
	for _, p := range s.Phases {
		if p.Count == 0 || p.Errors != 0 || p.LoadFailures != 0 {
			t.Errorf("%s: %d calls, %d errors (%v), %d failed loads; want calls and no error", p.Name, p.Count, p.Errors, p.ErrorDist, p.LoadFailures)
		}
		if p.Outage && (p.SecondaryUnwraps == 0 || p.FailBackMs <= 0 || p.ActiveAfter != "secondary") {
			t.Errorf("%s: secondary unwraps %d, fail-back %vms, active after %q; want the secondary serving, then a fail-back",
				p.Name, p.SecondaryUnwraps, p.FailBackMs, p.ActiveAfter)
		}
	}
}
