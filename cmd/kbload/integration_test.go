package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// integration is what a test against a real keybroker built from this tree
// has to work with.
type integration struct {
	ctx       context.Context
	root      string // the repository root
	keybroker string // the built binary
	ghz       string // the built ghz; empty when not asked for
}

// startIntegration skips the test unless KBLOAD_INTEGRATION=1 and not
// -short (these tests are slow: builds, a broker, ghz runs), then builds
// keybroker, and ghz when withGhz. what completes the skip message "set
// ... to run WHAT"; the context ends after timeout or with the test.
func startIntegration(t *testing.T, what string, timeout time.Duration, withGhz bool) integration {
	t.Helper()
	if testing.Short() || os.Getenv("KBLOAD_INTEGRATION") != "1" {
		t.Skip("set KBLOAD_INTEGRATION=1 (and no -short) to run " + what)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/keybroker")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/keybroker: %v\n%s", err, out)
	}
	in := integration{ctx: ctx, root: root, keybroker: filepath.Join(bin, "keybroker")}
	if withGhz {
		if in.ghz, err = buildGhz(ctx, root, bin); err != nil {
			t.Fatal(err)
		}
	}
	return in
}

// kbload runs kbload in-process with args and returns what it printed.
func (in integration) kbload(args ...string) (stdout, stderr string, err error) {
	var o, e bytes.Buffer
	err = run(in.ctx, &env{stdout: &o, stderr: &e}, args)
	return o.String(), e.String(), err
}

// readSummary reads the summary.json a run wrote into out.
func readSummary[T any](t *testing.T, out string) T {
	t.Helper()
	var s T
	b, err := os.ReadFile(filepath.Join(out, "summary.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("summary.json: %v", err)
	}
	return s
}
