package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestScenarioFiles parses the scenario files the repository ships: a
// broken one would only show up in `make load`.
func TestScenarioFiles(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	all, err := loadScenarios(filepath.Join(root, "load"))
	if err != nil {
		t.Fatalf("loadScenarios(load) err = %v, want nil", err)
	}
	var names []string
	for _, s := range all {
		names = append(names, s.Name)
	}
	if got, want := strings.Join(names, ","), "steady,mix,burst,storm"; got != want {
		t.Fatalf("scenarios = %s, want %s in that order", got, want)
	}
	for _, s := range all {
		if s.Name == "storm" && (!s.FreshBroker || s.MasterKeyVersions < 2 || s.Checks.UnwrapsPerVersion == nil || *s.Checks.UnwrapsPerVersion != 1) {
			t.Errorf("storm = %+v, want a fresh broker with several versions and one unwrap per version", s)
		}
		if s.Name == "steady" {
			var c int
			_ = json.Unmarshal(s.Runs[0].GHZ["concurrency"], &c)
			if c != 50 || s.Checks.MaxRSSMiB == nil || *s.Checks.MaxRSSMiB != 64 {
				t.Errorf("steady: concurrency %d, max RSS %v, want 50 clients and 64 MiB", c, s.Checks.MaxRSSMiB)
			}
		}
		for _, r := range s.Runs {
			if _, err := ghzConfig(r, requestData{dataWrapDEK: json.RawMessage(`{}`), dataUnwrapDEK: json.RawMessage(`{}`), dataAllVersions: json.RawMessage(`[]`)}, 0); err != nil {
				t.Errorf("%s/%s: ghzConfig err = %v, want nil", s.Name, r.Name, err)
			}
		}
	}
}

func TestParseScenarioErrors(t *testing.T) {
	run := func(ghz string) string {
		return `{"runs":[{"name":"r","ghz":` + ghz + `}]}`
	}
	tests := []struct {
		name, in, want string
	}{
		{"not json", `{`, "unexpected EOF"},
		{"unknown key", `{"runz":[]}`, `unknown field "runz"`},
		{"no runs", `{"runs":[]}`, "0 runs"},
		{"run without name", `{"runs":[{"ghz":{"call":"a/b","total":1}}]}`, `name ""`},
		{"duplicate names", `{"runs":[{"name":"a","ghz":{"call":"a/b","total":1}},{"name":"a","ghz":{"call":"a/b","total":1}}]}`, `name "a"`},
		{"name with slash", `{"runs":[{"name":"a/b","ghz":{"call":"a/b","total":1}}]}`, "slashes"},
		{"no call", run(`{"total":1}`), "ghz.call"},
		{"host set", run(`{"call":"a/b","total":1,"host":"example.com:443"}`), "ghz.host is set by kbload"},
		{"cert set", run(`{"call":"a/b","total":1,"cert":"x.pem"}`), "ghz.cert is set by kbload"},
		{"neither duration nor total", run(`{"call":"a/b"}`), "exactly one of ghz.duration and ghz.total"},
		{"both", run(`{"call":"a/b","total":1,"duration":"1s"}`), "exactly one"},
		{"bad duration", run(`{"call":"a/b","duration":"soon"}`), `"soon"`},
		{"unknown placeholder", run(`{"call":"a/b","total":1,"data":"$NOPE"}`), `"$NOPE"`},
		{"versions placeholder without fresh broker", run(`{"call":"a/b","total":1,"data":"$ALL_VERSIONS"}`), "needs fresh_broker"},
		{"versions without fresh broker", `{"master_key_versions":3,` + run(`{"call":"a/b","total":1}`)[1:], "needs fresh_broker"},
		{"too many versions", `{"fresh_broker":true,"master_key_versions":1000,` + run(`{"call":"a/b","total":1}`)[1:], "master_key_versions 1000"},
		{"unwrap check without fresh broker", `{"checks":{"unwraps_per_version":1},` + run(`{"call":"a/b","total":1}`)[1:], "needs fresh_broker"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseScenario("x", []byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseScenario(%s) err = %v, want one containing %q", tc.in, err, tc.want)
			}
			if !strings.HasPrefix(err.Error(), "scenario x: ") {
				t.Errorf("parseScenario err = %q, want it to name the scenario", err)
			}
		})
	}
}

func TestGhzConfig(t *testing.T) {
	r := scenarioRun{Name: "u", GHZ: map[string]json.RawMessage{
		"call": json.RawMessage(`"keybroker.v1.KeyBrokerService/UnwrapDEK"`), "data": json.RawMessage(`"$UNWRAP_DEK"`),
		"duration": json.RawMessage(`"20s"`), "concurrency": json.RawMessage(`15`),
	}}
	data := requestData{dataUnwrapDEK: json.RawMessage(`{"wrapped_dek":"QUJD"}`)}
	tests := []struct {
		name     string
		override time.Duration
		want     map[string]string
	}{
		{"as written", 0, map[string]string{"duration": `"20s"`, "data": `{"wrapped_dek":"QUJD"}`, "duration-stop": `"wait"`, "disable-template-data": "true", "concurrency": "15"}},
		{"duration replaced", 2 * time.Second, map[string]string{"duration": `"2s"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ghzConfig(r, data, tc.override)
			if err != nil {
				t.Fatalf("ghzConfig err = %v", err)
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				var compact bytes.Buffer
				_ = json.Compact(&compact, got[k])
				if compact.String() != v {
					t.Errorf("ghzConfig()[%s] = %s, want %s", k, compact.String(), v)
				}
			}
		})
	}
	if string(r.GHZ["data"]) != `"$UNWRAP_DEK"` {
		t.Errorf("ghzConfig changed the scenario's own data to %s", r.GHZ["data"])
	}
	if _, err := ghzConfig(r, requestData{}, 0); err == nil {
		t.Errorf("ghzConfig without a value for $UNWRAP_DEK err = nil, want an error")
	}
	total := scenarioRun{Name: "t", GHZ: map[string]json.RawMessage{"call": json.RawMessage(`"a/b"`), "total": json.RawMessage(`10`)}}
	b, _ := ghzConfig(total, nil, time.Second)
	if strings.Contains(string(b), "duration") {
		t.Errorf("ghzConfig(total-bound run) = %s, want no duration settings", b)
	}
	if got := runTimeout(total, 0); got != totalRunTimeout {
		t.Errorf("runTimeout(total-bound) = %v, want %v", got, totalRunTimeout)
	}
	if got := runTimeout(r, 0); got != 20*time.Second+ghzSlack {
		t.Errorf("runTimeout(20s run) = %v, want %v", got, 20*time.Second+ghzSlack)
	}
}

func TestSelectScenarios(t *testing.T) {
	all := []scenario{{Name: "steady", Order: 1}, {Name: "mix", Order: 2}, {Name: "storm", Order: 4}}
	tests := []struct {
		in, want, wantErr string
	}{
		{"", "steady,mix,storm", ""},
		{"storm,steady", "steady,storm", ""},
		{" mix ", "mix", ""},
		{"nope", "", `no scenario "nope" (have steady, mix, storm)`},
	}
	for _, tc := range tests {
		got, err := selectScenarios(all, tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("selectScenarios(%q) err = %v, want %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		var names []string
		for _, s := range got {
			names = append(names, s.Name)
		}
		if err != nil || strings.Join(names, ",") != tc.want {
			t.Errorf("selectScenarios(%q) = %v, %v, want %s", tc.in, names, err, tc.want)
		}
	}
}

func TestJudgeScenario(t *testing.T) {
	f := func(v float64) *float64 { return &v }
	i := func(v int64) *int64 { return &v }
	okRuns := []runResult{{Count: 100}, {Count: 50}}
	tests := []struct {
		name   string
		s      scenario
		r      scenarioResult
		failed []string // names of the checks that must fail; the rest pass
	}{
		{"all good", scenario{Checks: scenarioCheck{MaxRSSMiB: f(64), MaxKeyVaultCalls: i(0)}},
			scenarioResult{Runs: okRuns, PeakRSS: 30 << 20}, nil},
		{"ghz errors", scenario{}, scenarioResult{Runs: []runResult{{Count: 10, Errors: 1}}}, []string{"errors"}},
		{"broker-side errors", scenario{}, scenarioResult{Runs: okRuns, BrokerErrors: 2}, []string{"errors"}},
		{"too much memory", scenario{Checks: scenarioCheck{MaxRSSMiB: f(64)}}, scenarioResult{Runs: okRuns, PeakRSS: 65 << 20}, []string{"peak resident memory"}},
		{"no memory figure", scenario{Checks: scenarioCheck{MaxRSSMiB: f(64)}}, scenarioResult{Runs: okRuns}, []string{"peak resident memory"}},
		{"hot path calls Key Vault", scenario{Checks: scenarioCheck{MaxKeyVaultCalls: i(0)}}, scenarioResult{Runs: okRuns, HotPath: 3}, []string{"Key Vault calls"}},
		{"one unwrap per version", scenario{FreshBroker: true, Checks: scenarioCheck{UnwrapsPerVersion: i(1)}},
			scenarioResult{Runs: okRuns, Versions: 4, AKV: akvTotals{Unwraps: 3}, BrokerUnwraps: 4}, nil},
		{"a thundering herd", scenario{FreshBroker: true, Checks: scenarioCheck{UnwrapsPerVersion: i(1)}},
			scenarioResult{Runs: okRuns, Versions: 4, AKV: akvTotals{Unwraps: 9}, BrokerUnwraps: 10}, []string{"Key Vault unwraps"}},
		{"broker disagrees", scenario{FreshBroker: true, Checks: scenarioCheck{UnwrapsPerVersion: i(1)}},
			scenarioResult{Runs: okRuns, Versions: 4, AKV: akvTotals{Unwraps: 3}, BrokerUnwraps: 5}, []string{"Key Vault unwraps"}},
		{"no versions seen", scenario{FreshBroker: true, Checks: scenarioCheck{UnwrapsPerVersion: i(1)}},
			scenarioResult{Runs: okRuns}, []string{"Key Vault unwraps"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range judgeScenario(tc.s, tc.r) {
				wantFail := false
				for _, n := range tc.failed {
					wantFail = wantFail || c.Name == n
				}
				if c.Pass == wantFail {
					t.Errorf("check %q pass = %v (got %s), want %v", c.Name, c.Pass, c.Got, !wantFail)
				}
			}
		})
	}
}

func TestPrintLoadReport(t *testing.T) {
	s := loadSummary{OutDir: "load/reports/x", Pass: false, Scenarios: []scenarioResult{{
		Name: "steady",
		Runs: []runResult{{Name: "GetMasterKey", Concurrency: 50, Connections: 10, Count: 1000, RPS: 5000, P50: 1, P99: 4,
			ErrorDist: map[string]int{"rpc error: code = Unavailable": 2}, Errors: 2}},
		PeakRSS: 40 << 20, After: metricsSample{RSS: 38 << 20, Goroutines: 30}, States: "SERVING",
		Checks: []check{{Name: "errors", Want: "0", Got: "2 of 1000 calls", Pass: false}},
	}}}
	var out bytes.Buffer
	if err := printLoadReport(&out, s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"steady", "GetMasterKey", "5000", "40.0 MiB", "FAIL  steady", "error: steady/GetMasterKey: 2 x rpc error", "result: FAIL"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printLoadReport output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestLoadFlags(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "keybroker")
	if err := os.WriteFile(bin, nil, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"negative duration", []string{"--keybroker", bin, "--duration", "-1s"}, "--duration"},
		{"sample too short", []string{"--keybroker", bin, "--sample", "1ms"}, "--sample"},
		{"no binary", []string{"--keybroker", filepath.Join(dir, "nope")}, "build it with"},
		{"no scenarios", []string{"--keybroker", bin, "--scenarios-dir", dir}, "no scenario"},
		{"unknown scenario", []string{"--keybroker", bin, "--scenarios-dir", filepath.Join(root, "load"), "--scenarios", "nope"}, `no scenario "nope"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			err := runLoad(t.Context(), &env{stdout: &bytes.Buffer{}, stderr: &stderr}, tc.args)
			var ee *exitError
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ee) || ee.code != exitUsage {
				t.Fatalf("kbload load %v err = %v, want a usage error containing %q", tc.args, err, tc.want)
			}
		})
	}
}
