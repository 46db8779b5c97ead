package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/pki"
)

func TestRevFlagsValidate(t *testing.T) {
	good := revFlags{revoke: "access", interval: 2 * time.Second, tail: time.Second, rounds: 3, concurrency: 16, connections: 4, ghzConcurrency: 8}
	tests := []struct {
		name   string
		change func(*revFlags)
		ok     bool
	}{
		{"defaults", func(*revFlags) {}, true},
		{"interval below the configuration's floor", func(f *revFlags) { f.interval = 500 * time.Millisecond }, false},
		{"negative tail", func(f *revFlags) { f.tail = -time.Second }, false},
		{"no rounds", func(f *revFlags) { f.rounds = 0 }, false},
		{"more connections than workers", func(f *revFlags) { f.connections = 17 }, false},
		{"no ghz workers", func(f *revFlags) { f.ghzConcurrency = 0 }, false},
		{"unknown revocation", func(f *revFlags) { f.revoke = "purge" }, false},
		{"disable", func(f *revFlags) { f.revoke = "disable" }, true},
		{"delete", func(f *revFlags) { f.revoke = "delete" }, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := good
			tc.change(&f)
			if err := f.validate(); (err == nil) != tc.ok {
				t.Fatalf("validate() = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

func TestRevConfig(t *testing.T) {
	info := akvemu.Info{
		VaultURLs: []string{"https://" + akvemu.DefaultVaultHost + "/"}, Endpoint: "127.0.0.1:1234",
		AuthorityHost: "https://127.0.0.1:1234/", TenantID: akvemu.DefaultTenantID, ClientID: akvemu.DefaultClientID,
		ClientSecretFile: "/x/secret", CAFile: "/x/ca.pem",
		KeyIDs: []string{"https://" + akvemu.DefaultVaultHost + "/keys/cmk/0123456789abcdef0123456789abcdef"},
	}
	p := pki.Files{CA: "/p/ca.pem", ServerCert: "/p/s.pem", ServerKey: "/p/s-key.pem", EngineIdentity: "spiffe://e", AdminIdentity: "spiffe://a"}
	yaml, err := revConfig("/run", p, info, 3*time.Second)
	if err != nil {
		t.Fatalf("revConfig err = %v", err)
	}
	cfg, err := config.Parse("t", []byte(yaml), nil)
	if err != nil {
		t.Fatalf("config.Parse(revConfig) err = %v", err)
	}
	if cfg.Validation.Interval.D() != 3*time.Second || cfg.Azure.Regions[0].KeyID != info.KeyIDs[0] || cfg.Listen.Address != "127.0.0.1:0" || cfg.Azure.Custom.VaultSuffix != "vault.keybroker.test" {
		t.Fatalf("revConfig = interval %v, key %q, listen %q, suffix %q; want 3s, the emulator key, 127.0.0.1:0, vault.keybroker.test",
			cfg.Validation.Interval.D(), cfg.Azure.Regions[0].KeyID, cfg.Listen.Address, cfg.Azure.Custom.VaultSuffix)
	}
	if _, err := revConfig("/run", p, akvemu.Info{}, time.Second); err == nil {
		t.Fatal("revConfig with no emulator key err = nil, want an error")
	}
}

func TestRevTally(t *testing.T) {
	pause := time.Unix(1000, 0)
	at := func(ms int) time.Time { return pause.Add(time.Duration(ms) * time.Millisecond) }
	calls := [][]revCall{
		{
			{sent: at(-10), recv: at(-5), code: codes.OK},                // before
			{sent: at(-3), recv: at(2), code: codes.OK},                  // in flight across the event: after
			{sent: at(1), recv: at(3), code: codes.OK},                   // sent after: the worst
			{sent: at(4), recv: at(5), code: codes.FailedPrecondition},   // refused
			{sent: at(-9), recv: at(-8), code: codes.FailedPrecondition}, // refused before: not counted
		},
		{
			{sent: at(-2), recv: at(-1), code: codes.OK},
			{sent: at(6), recv: at(7), code: codes.Unavailable},
		},
	}
	var r revRound
	r.tally(calls, pause)
	if r.OKBefore != 2 || r.OKAfter != 2 || r.OKSentAfter != 1 || r.RefusedAfter != 1 || r.OtherErrors["Unavailable"] != 1 || r.LastOKMs != 3 {
		t.Fatalf("tally = before %d, after %d, sent after %d, refused %d, other %v, last %vms; want 2, 2, 1, 1, Unavailable:1, 3ms",
			r.OKBefore, r.OKAfter, r.OKSentAfter, r.RefusedAfter, r.OtherErrors, r.LastOKMs)
	}
}

func TestRevJudge(t *testing.T) {
	tests := []struct {
		name   string
		rounds []revRound
		want   []bool
	}{
		{"all good", []revRound{{PauseMs: 900}, {PauseMs: 2900}}, []bool{true, true, true}},
		{"too slow", []revRound{{PauseMs: 900}, {PauseMs: 3100}}, []bool{false, true, true}},
		{"no pause", []revRound{{PauseMs: -1}}, []bool{false, true, true}},
		{"key after the pause", []revRound{{PauseMs: 100, OKAfter: 1}}, []bool{true, false, true}},
		{"key to a request sent after", []revRound{{PauseMs: 100, OKAfter: 1, OKSentAfter: 1}}, []bool{true, false, false}},
		{"no rounds", nil, []bool{false, true, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			checks, pass := revJudge(tc.rounds, 2*time.Second)
			allPass := true
			for i, c := range checks {
				if c.Pass != tc.want[i] {
					t.Errorf("revJudge check %q = %v (got %s), want %v", c.Name, c.Pass, c.Got, tc.want[i])
				}
				allPass = allPass && tc.want[i]
			}
			if pass != allPass {
				t.Errorf("revJudge pass = %v, want %v", pass, allPass)
			}
		})
	}
}

func TestPrintRevReport(t *testing.T) {
	s := revSummary{
		Settings: revSettings{Revoke: "access", Interval: "2s", Concurrency: 16, Connections: 4, GhzConcurrency: 8},
		Rounds:   []revRound{{Round: 1, PauseMs: 812, OKBefore: 100, RefusedAfter: 40, Ghz: map[string]int{"OK": 5, "FailedPrecondition": 9}}},
		OutDir:   "/tmp/x",
	}
	s.Checks, s.Pass = revJudge(s.Rounds, 2*time.Second)
	var b bytes.Buffer
	if err := printRevReport(&b, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"812ms", "FailedPrecondition:9 OK:5", "PASS  revoking call -> PAUSE", "result: PASS"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("printRevReport output lacks %q:\n%s", want, b.String())
		}
	}
}

// TestBenchRevocationIntegration runs bench-revocation, one round without
// ghz, against a keybroker built from this tree. Slow (a build, a broker),
// so only with KBLOAD_INTEGRATION=1 and without -short.
func TestBenchRevocationIntegration(t *testing.T) {
	in := startIntegration(t, "bench-revocation against a real keybroker", 5*time.Minute, false)
	out := t.TempDir()
	stdout, stderr, err := in.kbload(
		"bench-revocation", "--keybroker", in.keybroker, "--ghz", "off",
		"--interval", "1s", "--rounds", "1", "--tail", "200ms", "--concurrency", "4", "--connections", "2", "--out", out,
	)
	if err != nil {
		t.Fatalf("kbload bench-revocation err = %v, want nil\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	s := readSummary[revSummary](t, out)
	if len(s.Rounds) != 1 || s.Rounds[0].PauseMs < 0 || s.Rounds[0].OKBefore == 0 || s.Rounds[0].RefusedAfter == 0 || !s.Pass {
		t.Fatalf("summary = %+v, want one passing round with keys served before and refused after the PAUSE", s)
	}
}
