// Command akv-emulator runs the Azure Key Vault emulator (internal/akvemu)
// on its own: HTTPS vaults, an Entra ID token endpoint and a managed
// identity endpoint, plus a plain-HTTP control API on loopback.
//
// Once ready it prints exactly one JSON line (akvemu.Info) on stdout; logs
// go to stderr. SIGINT or SIGTERM stops it. See docs/emulator.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/internal/akvemu"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "akv-emulator:", err)
		os.Exit(1)
	}
}

// errUsage reports bad flags; the flag package has already said why.
var errUsage = errors.New("akv-emulator: bad usage")

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, " ") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

const usageText = `Usage: akv-emulator [flags]

Runs an Azure Key Vault emulator speaking the REST protocol of the Azure SDK
(azkeys, azidentity): HTTPS vaults, an Entra ID token endpoint, an App
Service-style managed identity endpoint, and a plain-HTTP control API on
loopback. Once ready it prints one JSON line describing how to reach it on
stdout; logs go to stderr. SIGINT or SIGTERM stops it.

  go run ./cmd/akv-emulator --ephemeral

Flags:
`

// parseFlags turns the command line into an emulator configuration.
func parseFlags(args []string, stderr io.Writer) (akvemu.Config, slog.Level, error) {
	fs := flag.NewFlagSet("akv-emulator", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		cfg      akvemu.Config
		vaults   listFlag
		keys     listFlag
		logLevel string
	)
	fs.StringVar(&cfg.Dir, "dir", "", "data `directory`: state, CA, certificates and client credential files (required unless --ephemeral)")
	fs.BoolVar(&cfg.Ephemeral, "ephemeral", false, "keep state in memory; files go to a temporary directory removed on exit")
	fs.StringVar(&cfg.Addr, "addr", "127.0.0.1:0", "HTTPS listen `address` for every vault host and the Entra endpoints")
	fs.StringVar(&cfg.ControlAddr, "control-addr", "127.0.0.1:0", "control API listen `address` (plain HTTP, loopback only)")
	fs.Var(&vaults, "vault", "a vault `HOST[,ALIAS...]`; repeatable; aliases serve the same keys (default "+akvemu.DefaultVaultHost+")")
	fs.Var(&keys, "key", "a key `VAULT/NAME[:SIZE[-hsm]]` created at first start; SIZE 2048, 3072 or 4096 (default 3072), -hsm for an RSA-HSM key; repeatable (default "+akvemu.DefaultVaultHost+"/"+akvemu.DefaultKeyName+":3072 in the first vault)")
	fs.StringVar(&cfg.TenantID, "tenant-id", akvemu.DefaultTenantID, "Entra tenant `ID`")
	fs.StringVar(&cfg.ClientID, "client-id", akvemu.DefaultClientID, "the registered client (application) `ID`")
	fs.DurationVar(&cfg.TokenTTL, "token-ttl", akvemu.DefaultTokenTTL, "access token `lifetime`")
	fs.StringVar(&cfg.CertFile, "tls-cert", "", "serve HTTPS with this certificate `file` instead of a generated one (with --tls-key)")
	fs.StringVar(&cfg.KeyFile, "tls-key", "", "private key `file` of --tls-cert")
	fs.StringVar(&cfg.CAFile, "tls-ca", "", "CA `file` clients should trust for --tls-cert (reported as ca_file)")
	fs.StringVar(&logLevel, "log-level", "info", "log `level`: debug, info, warn or error")
	fs.BoolVar(&cfg.Throttle.Enabled, "throttle", false, "enforce Key Vault's throttling model: per vault, per 10 s window, weighted by key type, size and protection; 429 with Retry-After over the limit")
	fs.Float64Var(&cfg.Throttle.Scale, "throttle-scale", 1, "multiply every throttling limit by this `factor` (a simulation shortening its intervals by a factor scales the limits by the same one)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return cfg, 0, err
		}
		return cfg, 0, errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "akv-emulator: unexpected argument %q; every setting is a flag (see --help)\n", fs.Arg(0))
		return cfg, 0, errUsage
	}
	if cfg.Dir == "" && !cfg.Ephemeral {
		fmt.Fprintln(stderr, "akv-emulator: give a data directory with --dir, or --ephemeral to keep state in memory")
		return cfg, 0, errUsage
	}
	if cfg.Throttle.Scale <= 0 {
		fmt.Fprintf(stderr, "akv-emulator: --throttle-scale %v: use a positive factor (1 = Azure's limits)\n", cfg.Throttle.Scale)
		return cfg, 0, errUsage
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		fmt.Fprintf(stderr, "akv-emulator: --log-level %q: use debug, info, warn or error\n", logLevel)
		return cfg, 0, errUsage
	}
	for _, v := range vaults {
		spec, err := parseVault(v)
		if err != nil {
			fmt.Fprintf(stderr, "akv-emulator: --vault %q: %v\n", v, err)
			return cfg, 0, errUsage
		}
		cfg.Vaults = append(cfg.Vaults, spec)
	}
	for _, k := range keys {
		spec, err := parseKey(k)
		if err != nil {
			fmt.Fprintf(stderr, "akv-emulator: --key %q: %v\n", k, err)
			return cfg, 0, errUsage
		}
		cfg.Keys = append(cfg.Keys, spec)
	}
	return cfg, level, nil
}

// parseVault parses HOST[,ALIAS...]; host names are checked by Start.
func parseVault(s string) (akvemu.VaultSpec, error) {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		parts[i] = strings.TrimSpace(p)
		if parts[i] == "" {
			return akvemu.VaultSpec{}, errors.New("empty host name; want HOST[,ALIAS...] such as kb-east.vault.keybroker.test")
		}
	}
	return akvemu.VaultSpec{Host: parts[0], Aliases: parts[1:]}, nil
}

// parseKey parses VAULT/NAME[:SIZE[-hsm]].
func parseKey(s string) (akvemu.KeySpec, error) {
	vault, rest, ok := strings.Cut(s, "/")
	if !ok || vault == "" || rest == "" {
		return akvemu.KeySpec{}, errors.New("want VAULT/NAME[:SIZE], such as kb-east.vault.keybroker.test/cmk:3072")
	}
	name, size, hasSize := strings.Cut(rest, ":")
	spec := akvemu.KeySpec{Vault: vault, Name: name}
	if strings.Contains(name, "/") || name == "" {
		return akvemu.KeySpec{}, errors.New("the key name must be 1-127 letters, digits and dashes")
	}
	if hasSize {
		size, spec.HSM = strings.CutSuffix(size, "-hsm")
		n, err := strconv.Atoi(size)
		if err != nil || (n != 2048 && n != 3072 && n != 4096) {
			return akvemu.KeySpec{}, errors.New("SIZE must be 2048, 3072 or 4096")
		}
		spec.Size = n
	}
	return spec, nil
}

// run starts the emulator, prints its info line and serves until ctx ends.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, level, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	srv, err := akvemu.Start(startCtx, cfg)
	if err != nil {
		return err
	}
	line, err := json.Marshal(srv.Info())
	if err == nil {
		_, err = fmt.Fprintf(stdout, "%s\n", line)
	}
	if err != nil {
		_ = srv.Close()
		return fmt.Errorf("printing the info line: %w", err)
	}
	<-ctx.Done()
	cfg.Logger.Info("akv-emulator: stopping")
	return srv.Close()
}
