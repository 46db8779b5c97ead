// Command kbload drives load against a keybroker: it starts `keybroker dev`
// (the broker with its in-process Key Vault emulator) as a child process,
// runs ghz against it and judges the results.
//
// Subcommands: bench (the throughput benchmark of docs/bench.md). Later load
// scenarios (failover, revocation, soak) are added to commands(). Run
// `kbload help` for the list and `kbload CMD -h` for each one's flags.
//
// It is a development tool: it talks only to the loopback broker it starts.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/keybroker/keybroker/internal/cli"
)

// Exit codes.
const (
	exitOK      = cli.ExitOK
	exitFailure = cli.ExitFailure // the run could not be carried out
	exitUsage   = cli.ExitUsage   // bad flags
	exitTargets = 3               // the run completed but missed a target (see --no-fail)
)

// exitError carries the process exit code with an error. It is
// cli.ExitError under the name and field the scenarios' tests read;
// exitCode gives it its code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// errTargets reports a run that completed but missed at least one target.
var errTargets = errors.New("kbload: targets missed: see the checks above (--no-fail only reports)")

// env is what commands may use of the process, so tests can run them
// in-process.
type env struct {
	stdout, stderr io.Writer
}

func program() *cli.Program[*env] {
	return &cli.Program[*env]{
		Name: "kbload",
		Commands: []cli.Command[*env]{
			{Name: "bench", Summary: "throughput of the key RPCs against Health/Check, and zero Key Vault calls on the hot path", Run: runBench},
			{Name: "bench-revocation", Summary: "revoke the key under GetMasterKey load: time to the PAUSE event, keys served after it (docs/revocation.md)", Run: runBenchRevocation},
			{Name: "load", Summary: "the ghz scenarios of load/ (steady, mix, burst, cold-start storm), with a table and HTML reports", Run: runLoad},
			{Name: "soak", Summary: "steady load for --duration, sampling /metrics: no failed call, no growing memory or goroutines", Run: runSoak},
			{Name: "bench-kmip", Summary: "KMIP Get (1 and N connections) and new-connection State polls against keybroker and pykmip-server, and gRPC GetMasterKey (docs/kmip.md)", Run: runBenchKMIP},
			{Name: "bench-failover", Summary: "the cold path while the primary region is black-holed, then answers 503: errors, p50/p99 (docs/failover.md)", Run: runBenchFailover},
			{Name: "bench-fleet", Summary: "N broker cores against one throttled emulator vault: steady-state calls, cold start of the whole fleet (docs/capacity.md)", Run: runBenchFleet},
		},
		NameWidth: 8,
		Footer:    "Run 'kbload COMMAND -h' for a command's flags; docs/bench.md explains the output.",
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	e := &env{stdout: os.Stdout, stderr: os.Stderr}
	err := run(ctx, e, os.Args[1:])
	stop()
	os.Exit(exitCode(e.stderr, err))
}

// exitCode prints err and returns the exit code it carries.
func exitCode(w io.Writer, err error) int {
	if !errors.Is(err, flag.ErrHelp) && errors.Is(err, errTargets) {
		fmt.Fprintln(w, err)
		return exitTargets
	}
	var ee *exitError
	if errors.As(err, &ee) {
		err = cli.WithCode(ee.code, err)
	}
	return cli.Report(w, "kbload", err)
}

func run(ctx context.Context, e *env, args []string) error {
	return program().Run(ctx, e, e.stdout, e.stderr, args)
}

// newFlagSet makes a flag set whose errors become usage errors.
func newFlagSet(e *env, name, synopsis string) *flag.FlagSet {
	return cli.NewFlagSet(e.stderr, "kbload", name, synopsis)
}

func parseFlags(fs *flag.FlagSet, args []string) error { return cli.ParseFlags(fs, args) }
