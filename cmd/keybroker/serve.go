package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cache"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/mtls"
	"github.com/keybroker/keybroker/internal/wipe"
)

// shutdownGrace bounds how long a SIGTERM waits for RPCs in flight.
const shutdownGrace = 10 * time.Second

func runServe(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "serve", "--config FILE")
	cfgPath := configFlag(fs)
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	if *cfgPath == "" {
		return cli.UsageErrorf("serve: --config is required")
	}
	cfg, logger, err := loadConfigAndLogger(*cfgPath, e)
	if err != nil {
		return err
	}
	return serve(ctx, cfg, logger, systemdReady(ctx, e, logger)) // notify.go
}

// configFlag declares --config, the configuration file of the commands
// that work from one.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "configuration file (YAML; see the README)")
}

// loadConfigAndLogger loads the configuration file and makes the logger it
// configures, writing to e.stderr: the start of the commands that work from
// the configuration file.
func loadConfigAndLogger(path string, e *env) (*config.Config, *slog.Logger, error) {
	cfg, err := loadConfig(path, e)
	if err != nil {
		return nil, nil, err
	}
	logger, err := newLogger(e.stderr, cfg.Log)
	if err != nil {
		return nil, nil, err
	}
	return cfg, logger, nil
}

// loadConfig reads and validates a configuration file.
func loadConfig(path string, e *env) (*config.Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, cli.UsageErrorf("reading the configuration: %w", err)
	}
	cfg, err := config.Parse(path, data, e.getenv)
	if err != nil {
		return nil, cli.WithCode(exitUsage, err)
	}
	return cfg, nil
}

func newLogger(w io.Writer, c config.Log) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, cli.UsageErrorf("log.level %q: want debug, info, warn or error", c.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return slog.New(slog.NewJSONHandler(w, opts)), nil
}

// listening reports the addresses a started broker listens on.
type listening struct {
	Address string // TCP host:port, "" when not configured
	Unix    string // socket path, "" when not configured
	Admin   string // admin listener URL (http://host:port), "" when not configured
	// Broker is the running service, for in-process tests that look at
	// what it holds in memory.
	Broker *broker.Broker
	KMIP   string // KMIP host:port, "" when kmip.address is not set
}

// serve runs the broker until ctx ends: open the keystore, load the keys
// through Key Vault, listen with mTLS, serve, and on shutdown stop gracefully
// and wipe every key. ready, if set, is called once listening.
func serve(ctx context.Context, cfg *config.Config, logger *slog.Logger, ready func(listening)) error {
	disableCoreDumps(logger)
	tuneGC(logger) // hotpath.go

	// Every file and setting is checked before anything listens: a broken
	// configuration must not leave an admin port up that says "alive".
	if err := checkMount(cfg.Keystore); err != nil { // preflight.go
		return err
	}
	if err := checkFiles(cfg); err != nil {
		return err
	}
	tlsCfg, err := mtls.ServerTLS(mtls.ServerConfig{CertFile: cfg.TLS.CertFile, KeyFile: cfg.TLS.KeyFile, ClientCAFile: cfg.TLS.ClientCAFile})
	if err != nil {
		return cli.WithCode(exitUsage, err)
	}
	authz, err := mtls.NewAuthorizer(roles(cfg.Authorization), mtls.DefaultMethodRoles(), logger)
	if err != nil {
		return cli.WithCode(exitUsage, err)
	}

	store, err := openKeystore(cfg, keystore.Options{}, "", "")
	if err != nil {
		return err
	}
	defer store.Close()
	addCopiesAtStart(ctx, cfg, store, logger)

	obs, err := newObservability(ctx, cfg, logger) // telemetry.go
	if err != nil {
		return err
	}
	defer obs.close()

	wrapper, closeWrapper, err := buildObservedWrapper(cfg, logger, obs)
	if err != nil {
		return err
	}
	defer closeWrapper()
	if wrapper, err = withPreviousKeys(cfg, store, wrapper, logger); err != nil { // rotatecmk.go
		return err
	}

	b, err := broker.New(broker.Config{
		Store:      store,
		Wrapper:    wrapper,
		DefaultKey: cfg.Keystore.DefaultKey,
		Cache: cache.Config{
			Size:     cfg.Cache.Size,
			TTL:      cfg.Cache.TTL.D(),
			MaxStale: cfg.Cache.MaxStale.D(),
		},
		Logger:   logger,
		Rotation: rotationConfig(cfg.Rotation),
		Metrics:  obs.brokerMetrics(),
	})
	if err != nil {
		return cli.WithCode(exitUsage, err)
	}
	defer b.Close()
	adminURL, err := obs.start(ctx, cfg.Admin.Address, b)
	if err != nil {
		return cli.WithCode(exitUsage, err)
	}

	// Load the keys before listening: the engine's first request must not
	// wait on Key Vault. An outage is not fatal (the broker starts DEGRADED
	// and loads on demand); revocation is reported and the broker serves
	// PAUSED so the engine learns why.
	warmCtx, cancel := context.WithTimeout(ctx, 2*cfg.Azure.Timeout.D()+5*time.Second)
	if err := b.Warm(warmCtx); err != nil {
		logger.Warn("keys not loaded at start", "err", err)
		if kek.KindOf(err) != kek.KindThrottled { // a throttled vault would throttle the check too
			if _, cerr := b.Check(warmCtx); cerr != nil {
				logger.Warn("validity check at start failed", "state", b.State().State.String(), "err", cerr)
			}
		}
		if !kek.KindOf(err).IsRevocation() && b.State().State != broker.StatePaused {
			// Throttled or unreachable: retry with jittered backoff until the
			// keys load, never giving up; engines get UNAVAILABLE meanwhile.
			wctx, stopWarming := context.WithCancel(ctx)
			done := b.StartWarming(wctx, err)
			defer func() { stopWarming(); <-done }()
		}
	}
	cancel()
	defer startRotation(ctx, b, logger)() // rotatecmk.go: CMK rewrap at start, then the rotation scheduler

	srv := grpc.NewServer(
		grpc.Creds(authz.Credentials(wipe.Creds(credentials.NewTLS(tlsCfg)))), // authz: clients identified once per connection
		grpc.ForceServerCodecV2(wipe.NewCodec(broker.SecretMessage, broker.ScrubMessage)),
		grpc.ChainUnaryInterceptor(authz.UnaryInterceptor(), b.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(authz.StreamInterceptor()),
		grpc.MaxRecvMsgSize(64<<10),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		obs.serverOption(), obs.streamOption(), // the outermost interceptors: gRPC metrics and spans
		hotPathOption(), // hotpath.go: stream workers
	)
	b.Register(srv)
	reflection.Register(srv)
	obs.registered(srv)

	var lis []net.Listener
	closeAll := func() {
		for _, l := range lis {
			l.Close()
		}
	}
	at := listening{Broker: b, Admin: adminURL}
	if cfg.Listen.Address != "" {
		l, err := net.Listen("tcp", cfg.Listen.Address)
		if err != nil {
			return cli.WithCode(exitUsage, fmt.Errorf("listening on %s: %w", cfg.Listen.Address, err))
		}
		lis = append(lis, l)
		at.Address = l.Addr().String()
	}
	if cfg.Listen.Unix != "" {
		l, err := listenUnix(cfg.Listen.Unix)
		if err != nil {
			closeAll()
			return cli.WithCode(exitUsage, err)
		}
		lis = append(lis, l)
		at.Unix = cfg.Listen.Unix
	}
	kmipAddr, stopKMIP, err := startKMIP(cfg, b, logger, obs.kmipMetrics()) // kmip.go
	if err != nil {
		closeAll()
		return err
	}
	defer stopKMIP()
	at.KMIP = kmipAddr

	checks, stopChecks := context.WithCancel(ctx)
	defer stopChecks()
	go b.RunChecks(checks, cfg.Validation.Interval.D())

	errc := make(chan error, len(lis))
	for _, l := range lis {
		go func() { errc <- srv.Serve(l) }()
	}
	obs.markServing()
	logger.Info("serving", "address", at.Address, "unix", at.Unix, "admin", at.Admin, "state", b.State().State.String())
	if ready != nil {
		ready(at)
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		closeAll()
		return fmt.Errorf("serving: %w", err)
	}
	logger.Info("shutting down: finishing RPCs in flight, then wiping keys")
	stopped := make(chan struct{})
	b.Shutdown() // ends the WatchKeyState streams, which would hold GracefulStop
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(shutdownGrace):
		srv.Stop()
	}
	if at.Unix != "" {
		os.Remove(at.Unix)
	}
	return nil
}

// openKeystore opens the configured keystore for writing, with errors an
// operator can act on. locked, when set, is the error for a keystore another
// process holds (otherwise it is reported as any other failure); create
// follows "create it with 'keybroker init --config FILE'" when there is none.
func openKeystore(cfg *config.Config, opts keystore.Options, locked, create string) (*keystore.Store, error) {
	store, err := keystore.Open(cfg.Keystore.Dir, opts)
	switch {
	case err == nil:
		return store, nil
	case locked != "" && errors.Is(err, keystore.ErrLocked):
		return nil, cli.WithCode(exitFailure, fmt.Errorf("the keystore in %s is in use, %s", cfg.Keystore.Dir, locked))
	case errors.Is(err, keystore.ErrNotExist):
		return nil, cli.WithCode(exitUsage, fmt.Errorf("no keystore in %s: create it with 'keybroker init --config FILE'%s", cfg.Keystore.Dir, create))
	}
	return nil, cli.WithCode(exitUsage, fmt.Errorf("opening the keystore: %w (nothing was changed on disk)", err))
}

// listenUnix listens on a unix socket readable only by the owner, removing
// a stale socket left by a crash (but never a regular file).
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen.unix: %s exists and is not a socket: choose another path", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen.unix: another process serves %s: stop it first", path)
		}
		os.Remove(path)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("listen.unix: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen.unix: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen.unix: %w", err)
	}
	return l, nil
}

// roles turns the configuration's role lists into identity -> roles.
func roles(a config.Authorization) map[string][]string {
	m := make(map[string][]string)
	for _, id := range a.Engine {
		m[id] = append(m[id], mtls.RoleEngine)
	}
	for _, id := range a.Admin {
		m[id] = append(m[id], mtls.RoleAdmin)
	}
	return m
}
