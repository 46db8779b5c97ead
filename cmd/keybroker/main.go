// Command keybroker is the per-node key broker: it keeps the storage
// engine's master key wrapped by a customer-managed key in Azure Key Vault,
// unwraps it at start and serves it over mutually authenticated TLS gRPC.
//
// Subcommands: serve, init, dev (the broker), and get-master-key, status,
// rotate, revalidate, check (for node bootstrap scripts). Run
// `keybroker help` for the list and `keybroker CMD -h` for each one's flags.
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

	"github.com/keybroker/keybroker/internal/kek"
)

// Exit codes, documented in the README.
const (
	exitOK          = 0
	exitFailure     = 1 // anything not listed below
	exitUsage       = 2 // bad flags, invalid configuration, unreadable or invalid files
	exitUnavailable = 3 // broker or Key Vault unreachable, deadline exceeded
	exitRevoked     = 4 // broker paused, customer key revoked, disabled or deleted
	exitDenied      = 5 // no or unauthorized client certificate
	exitNotFound    = 6 // key or version not found
	exitExists      = 7 // init: a keystore already exists (use --if-missing)
	exitCheckFailed = 8 // check: the pre-flight found a problem
	exitPaused      = 9 // watch --exit-on-pause: the broker paused (revocation)
)

// exitError carries the process exit code with an error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

func usageErrorf(format string, args ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, args...))
}

// env is what commands may read of the process: nothing below cmd/ reads
// flags, files named by flags, or the environment on its own.
type env struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	getenv         func(string) string
}

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		{"serve", "run the broker from a configuration file", runServe},
		{"init", "create the keystore: a new master key wrapped by the customer key", runInit},
		{"dev", "run a self-contained broker: Key Vault emulator, dev PKI, keystore", runDev},
		{"check", "pre-flight: validate a configuration and Key Vault access", runCheck},
		{"get-master-key", "fetch the master key from a running broker", runGetMasterKey},
		{"status", "show a running broker's state, regions and keys", runStatus},
		{"rotate", "add a new master-key version (admin)", runRotate},
		{"revalidate", "run the validity check now, the \"Try Again\" (admin)", runRevalidate},
		{"watch", "print the broker's state changes as JSON lines; run commands on pause and resume", runWatch},
		{"rewrap", "add the wrapped copies a configured region's key lacks (broker stopped)", runRewrap},
		{"rotate-cmk", "rewrap the master keys under a new customer key, or drop the old copies with --finalize (broker stopped)", runRotateCMK},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	e := &env{stdout: os.Stdout, stderr: os.Stderr, stdin: os.Stdin, getenv: os.Getenv}
	err := run(ctx, e, os.Args[1:])
	stop()
	os.Exit(report(e.stderr, err))
}

// report prints err and returns the exit code it carries.
func report(w io.Writer, err error) int {
	if err == nil {
		return exitOK
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintln(w, "keybroker:", err)
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
			return withCode(exitUsage, errors.New("no command given"))
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
	fmt.Fprintln(w, "usage: keybroker COMMAND [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-15s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nRun 'keybroker COMMAND -h' for a command's flags. Exit codes are listed in the README.")
}

// newFlagSet makes a flag set whose errors become usage errors.
func newFlagSet(e *env, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: keybroker %s %s\n\nflags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return withCode(exitUsage, err)
	}
	if fs.NArg() > 0 {
		return usageErrorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// vaultExitCode picks the exit code for a failed Key Vault operation.
func vaultExitCode(err error) int {
	switch kek.KindOf(err) {
	case kek.KindRevoked, kek.KindNotFound:
		return exitRevoked
	case kek.KindUnavailable, kek.KindThrottled:
		return exitUnavailable
	case kek.KindInvalidInput:
		return exitUsage
	}
	return exitFailure
}
