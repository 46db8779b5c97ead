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
	"flag"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/kek"
)

// Exit codes, documented in the README.
const (
	exitOK          = cli.ExitOK
	exitFailure     = cli.ExitFailure // anything not listed below
	exitUsage       = cli.ExitUsage   // bad flags, invalid configuration, unreadable or invalid files
	exitUnavailable = 3               // broker or Key Vault unreachable, deadline exceeded
	exitRevoked     = 4               // broker paused, customer key revoked, disabled or deleted
	exitDenied      = 5               // no or unauthorized client certificate
	exitNotFound    = 6               // key or version not found
	exitExists      = 7               // init: a keystore already exists (use --if-missing)
	exitCheckFailed = 8               // check: the pre-flight found a problem
	exitPaused      = 9               // watch --exit-on-pause: the broker paused (revocation)
	exitNotReady    = 10              // init, serve: keystore.require_mount not mounted, or keystore.dir's parent missing
)

// env is what commands may read of the process: nothing below cmd/ reads
// flags, files named by flags, or the environment on its own.
type env struct {
	stdout, stderr io.Writer
	stdin          io.Reader
	getenv         func(string) string
}

func program() *cli.Program[*env] {
	return &cli.Program[*env]{
		Name: "keybroker",
		Commands: []cli.Command[*env]{
			{Name: "serve", Summary: "run the broker from a configuration file", Run: runServe},
			{Name: "init", Summary: "create the keystore: a new master key wrapped by the customer key", Run: runInit},
			{Name: "dev", Summary: "run a self-contained broker: Key Vault emulator, dev PKI, keystore", Run: runDev},
			{Name: "check", Summary: "pre-flight: validate a configuration and Key Vault access", Run: runCheck},
			{Name: "get-master-key", Summary: "fetch the master key from a running broker", Run: runGetMasterKey},
			{Name: "status", Summary: "show a running broker's state, regions and keys", Run: runStatus},
			{Name: "rotate", Summary: "add a new master-key version (admin)", Run: runRotate},
			{Name: "revalidate", Summary: "run the validity check now, the \"Try Again\" (admin)", Run: runRevalidate},
			{Name: "watch", Summary: "print the broker's state changes as JSON lines; run commands on pause and resume", Run: runWatch},
			{Name: "rewrap", Summary: "add the wrapped copies a configured region's key lacks (broker stopped)", Run: runRewrap},
			{Name: "rotate-cmk", Summary: "rewrap the master keys under a new customer key, or drop the old copies with --finalize (broker stopped)", Run: runRotateCMK},
			{Name: "version", Summary: "print the version, VCS revision and time, and Go version of this binary", Run: runVersion},
			{Name: "kmip", Summary: "list, revoke or destroy KMIP objects over KMIP (admin): kmip list|revoke ID|destroy ID", Run: runKMIP},
		},
		NameWidth: 15,
		Footer:    "Run 'keybroker COMMAND -h' for a command's flags. Exit codes are listed in the README.",
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
func report(w io.Writer, err error) int { return cli.Report(w, "keybroker", err) }

func run(ctx context.Context, e *env, args []string) error {
	if len(args) == 1 && (args[0] == "--version" || args[0] == "-version") {
		args = []string{"version"}
	}
	return program().Run(ctx, e, e.stdout, e.stderr, args)
}

// newFlagSet makes a flag set whose errors become usage errors.
func newFlagSet(e *env, name, synopsis string) *flag.FlagSet {
	return cli.NewFlagSet(e.stderr, "keybroker", name, synopsis)
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
