package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

// TestVersion runs `keybroker version` and `--version`: both print the
// module version and the Go version the binary was built with.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, errOut, code := runCLI(t, args...)
		if code != exitOK || errOut != "" {
			t.Fatalf("keybroker %v exit %d, stderr %q; want 0 and nothing", args, code, errOut)
		}
		for _, want := range []string{"keybroker ", "module: github.com/keybroker/keybroker", "revision: ", "commit time: ", "go: " + runtime.Version()} {
			if !strings.Contains(out, want) {
				t.Errorf("keybroker %v printed %q, want it to contain %q", args, out, want)
			}
		}
	}
}

func TestReadBuildInfo(t *testing.T) {
	tests := []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want []string
	}{
		{"release", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/keybroker/keybroker", Version: "v1.2.3"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.time", Value: "2026-12-04T16:00:00Z"}, {Key: "vcs.modified", Value: "false"}}}, true,
			[]string{"keybroker v1.2.3\n", "revision: abc123\n", "commit time: 2026-12-04T16:00:00Z\n", "go: go1.26.8\n"}},
		{"modified tree", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/keybroker/keybroker", Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}}, true,
			[]string{"keybroker (devel)\n", "revision: abc123 (modified)\n", "commit time: unknown\n"}},
		{"no vcs", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/keybroker/keybroker"}}, true,
			[]string{"keybroker (devel)\n", "revision: unknown (built outside a git checkout, or with -buildvcs=false)\n"}},
		{"no build info", nil, false, []string{"keybroker unknown (built without module support)\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			readBuildInfo(func() (*debug.BuildInfo, bool) { return tc.bi, tc.ok }).print(&b)
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("printed %q, want it to contain %q", b.String(), w)
				}
			}
		})
	}
}

// TestBadFlagPrintedOnce: a bad flag's error reads once, after the usage.
func TestBadFlagPrintedOnce(t *testing.T) {
	for _, cmd := range []string{"serve", "init", "check", "status", "version"} {
		_, errOut, code := runCLI(t, cmd, "--bogus")
		if code != exitUsage {
			t.Errorf("keybroker %s --bogus exit %d, want %d", cmd, code, exitUsage)
		}
		if n := strings.Count(errOut, "flag provided but not defined: -bogus"); n != 1 {
			t.Errorf("keybroker %s --bogus printed the error %d times, want once:\n%s", cmd, n, errOut)
		}
		if !strings.Contains(errOut, "usage: keybroker "+cmd) {
			t.Errorf("keybroker %s --bogus stderr %q lacks the usage", cmd, errOut)
		}
	}
}
