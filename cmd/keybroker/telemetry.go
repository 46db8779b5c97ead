package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"

	"github.com/keybroker/keybroker/internal/akv"
	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/failover"
	"github.com/keybroker/keybroker/internal/telemetry"
)

// telemetryShutdown bounds the final flush of OTLP exporters.
const telemetryShutdown = 5 * time.Second

// observability is serve's telemetry: the OpenTelemetry provider, the
// instrumented regional wrappers, and the admin HTTP listener (/metrics,
// /healthz, /readyz). The nil *observability instruments nothing, for the
// commands that build a wrapper without serving (check, init).
type observability struct {
	tel     *telemetry.Provider
	methods telemetry.Methods
	log     *slog.Logger
	serving atomic.Bool // the gRPC listeners are up

	interceptOnce sync.Once // makes unary and stream, the gRPC instrumentation
	unary         grpc.UnaryServerInterceptor
	stream        grpc.StreamServerInterceptor

	mu         sync.Mutex
	regions    []*telemetry.Wrapper
	failover   *failover.Wrapper // nil with one region
	admin      *http.Server
	unregister func() error
}

// newObservability builds the telemetry provider: Prometheus when the
// admin listener is configured, OTLP when the OTEL_* variables ask for it.
func newObservability(ctx context.Context, cfg *config.Config, logger *slog.Logger) (*observability, error) {
	tel, err := telemetry.New(ctx, telemetry.Config{
		ServiceVersion: buildVersion(),
		Prometheus:     cfg.Admin.Address != "",
		Getenv:         func(k string) string { return cfg.Telemetry.OTEL[k] },
		Logger:         logger,
	})
	if err != nil {
		return nil, cli.WithCode(exitUsage, fmt.Errorf("telemetry: %w (see docs/observability.md)", err))
	}
	if sel := tel.OTLP(); sel.Any() {
		logger.Info("exporting telemetry over OTLP", "traces", sel.Traces, "metrics", sel.Metrics)
	}
	return &observability{tel: tel, log: logger}, nil
}

// buildVersion is the module version the binary was built from, "" for a
// development build.
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return ""
}

// instrument wraps one regional Azure adapter with spans and metrics.
func (o *observability) instrument(region string, w *akv.Wrapper) broker.KeyWrapper {
	if o == nil {
		return w
	}
	iw := o.tel.InstrumentWrapper(w, region)
	o.mu.Lock()
	o.regions = append(o.regions, iw)
	o.mu.Unlock()
	return iw
}

// failoverEvents is failover.Config.OnEvent.
func (o *observability) failoverEvents() func(failover.Event) {
	if o == nil {
		return nil
	}
	return o.tel.FailoverEvents()
}

// watchRegions makes region health come from the failover wrapper.
func (o *observability) watchRegions(fw *failover.Wrapper) {
	if o != nil {
		o.mu.Lock()
		o.failover = fw
		o.mu.Unlock()
	}
}

// brokerMetrics is broker.Config.Metrics.
func (o *observability) brokerMetrics() broker.Metrics {
	if o == nil {
		return nil
	}
	return o.tel.BrokerMetrics()
}

// serverOption and streamOption are the gRPC server's instrumentation
// (telemetry.RPCInterceptors: rpc.server.call.duration and server spans),
// as the outermost unary and stream interceptors, so the authorizer's
// refusals are measured too.
func (o *observability) serverOption() grpc.ServerOption {
	if o == nil {
		return grpc.EmptyServerOption{}
	}
	o.interceptOnce.Do(o.makeInterceptors)
	return grpc.UnaryInterceptor(o.unary)
}

func (o *observability) streamOption() grpc.ServerOption {
	if o == nil {
		return grpc.EmptyServerOption{}
	}
	o.interceptOnce.Do(o.makeInterceptors)
	return grpc.StreamInterceptor(o.stream)
}

func (o *observability) makeInterceptors() { o.unary, o.stream = o.tel.RPCInterceptors(&o.methods) }

// registered learns the methods srv serves, so that only those name RPC
// series; call it once the services are registered.
func (o *observability) registered(srv *grpc.Server) {
	if o != nil {
		o.methods.Set(srv.GetServiceInfo())
	}
}

// markServing makes /readyz follow the broker's state from now on.
func (o *observability) markServing() {
	if o != nil {
		o.serving.Store(true)
	}
}

// start registers the observations of b and, when addr is set, starts the
// admin listener on it; it returns the listener's URL ("" when there is
// none). Until markServing, and again once ctx ends, /readyz answers 503.
func (o *observability) start(ctx context.Context, addr string, b *broker.Broker) (string, error) {
	unregister, err := o.tel.Observe(o.observed(b))
	if err != nil {
		return "", err
	}
	o.mu.Lock()
	o.unregister = unregister
	o.mu.Unlock()
	if addr == "" {
		return "", nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return "", fmt.Errorf("admin.address: listening on %s: %w", addr, err)
	}
	srv := telemetry.NewAdminServer(telemetry.Admin{
		Metrics: o.tel.MetricsHandler(),
		Ready:   func() (bool, string) { return o.ready(ctx, b) },
	})
	o.mu.Lock()
	o.admin = srv
	o.mu.Unlock()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			o.log.Error("admin listener stopped", "err", err)
		}
	}()
	url := "http://" + l.Addr().String()
	o.log.Info("admin listener", "url", url, "paths", "/metrics /healthz /readyz")
	return url, nil
}

// ready is /readyz: SERVING and DEGRADED take traffic (keys in memory are
// served); PAUSED, starting and stopping do not.
func (o *observability) ready(ctx context.Context, b *broker.Broker) (bool, string) {
	switch {
	case ctx.Err() != nil:
		return false, "shutting down"
	case !o.serving.Load():
		return false, "starting: loading keys through Key Vault"
	}
	ev := b.State()
	if ev.State == broker.StatePaused {
		return false, "PAUSED: " + ev.Reason
	}
	return true, ev.State.String()
}

// observed is what the observable instruments read on each collection.
func (o *observability) observed(b *broker.Broker) telemetry.Observed {
	obs := telemetry.Observed{
		State:  func() broker.State { return b.State().State },
		Broker: b.Stats,
		MasterKeys: func() []telemetry.KeyAge {
			var out []telemetry.KeyAge
			for _, k := range b.KeyAges().MasterKeys {
				out = append(out, telemetry.KeyAge{Name: k.Name, Age: k.Age})
			}
			return out
		},
		CMKs: func() []telemetry.KeyAge {
			var out []telemetry.KeyAge
			for _, r := range o.instrumented() {
				if _, created := r.CMK(); !created.IsZero() {
					out = append(out, telemetry.KeyAge{Name: r.Region(), Age: time.Since(created)})
				}
			}
			return out
		},
	}
	o.mu.Lock()
	fw := o.failover
	o.mu.Unlock()
	if fw != nil {
		obs.Regions = func() []telemetry.RegionHealth {
			var out []telemetry.RegionHealth
			for _, s := range fw.Status() {
				out = append(out, telemetry.RegionHealth{Name: s.Name, Healthy: s.Healthy, Active: s.Active})
			}
			return out
		}
	} else {
		// One region: healthy is what its latest call said.
		obs.Regions = func() []telemetry.RegionHealth {
			var out []telemetry.RegionHealth
			for _, r := range o.instrumented() {
				if healthy, known := r.Health(); known {
					out = append(out, telemetry.RegionHealth{Name: r.Region(), Healthy: healthy, Active: true})
				}
			}
			return out
		}
	}
	return obs
}

func (o *observability) instrumented() []*telemetry.Wrapper {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]*telemetry.Wrapper(nil), o.regions...)
}

// close stops the admin listener and flushes the exporters.
func (o *observability) close() {
	if o == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), telemetryShutdown)
	defer cancel()
	o.mu.Lock()
	admin, unregister := o.admin, o.unregister
	o.mu.Unlock()
	if admin != nil {
		_ = admin.Shutdown(ctx)
	}
	if unregister != nil {
		_ = unregister()
	}
	if err := o.tel.Shutdown(ctx); err != nil {
		o.log.Warn("telemetry: flushing exporters at shutdown", "err", err)
	}
}
