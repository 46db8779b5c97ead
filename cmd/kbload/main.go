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
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // the run could not be carried out
	exitUsage   = 2 // bad flags
	exitTargets = 3 // the run completed but missed a target (see --no-fail)
)

// exitError carries the process exit code with an error.
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

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		{"bench", "throughput of the key RPCs against Health/Check, and zero Key Vault calls on the hot path", runBench},
		{"bench-revocation", "revoke the key under GetMasterKey load: time to the PAUSE event, keys served after it (docs/revocation.md)", runBenchRevocation},
		{"load", "the ghz scenarios of load/ (steady, mix, burst, cold-start storm), with a table and HTML reports", runLoad},
		{"soak", "steady load for --duration, sampling /metrics: no failed call, no growing memory or goroutines", runSoak},
		{"bench-failover", "the cold path while the primary region is black-holed, then answers 503: errors, p50/p99 (docs/failover.md)", runBenchFailover},
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
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errTargets):
		fmt.Fprintln(w, err)
		return exitTargets
	}
	fmt.Fprintln(w, "kbload:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return exitFailure
}

func run(ctx context.Context, e *env, args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		printUsage(e.stdout)
		if len(args) == 0 {
			return usageErrorf("no command given")
		}
		return nil
	}
	for _, c := range commands() {
		if c.name == args[0] {
			return c.run(ctx, e, args[1:])
		}
	}
	printUsage(e.stderr)
	return usageErrorf("unknown command %q", args[0])
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "usage: kbload COMMAND [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'kbload COMMAND -h' for a command's flags; docs/bench.md explains the output.")
}

// newFlagSet makes a flag set whose errors become usage errors.
func newFlagSet(e *env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: kbload %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &exitError{code: exitUsage, err: err}
	}
	if fs.NArg() > 0 {
		return usageErrorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}
