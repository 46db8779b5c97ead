// Package telemetry is keybroker's observability: OpenTelemetry metrics and
// traces, exported as Prometheus text on the admin listener's /metrics and,
// when the standard OTEL_* environment variables ask for it, over OTLP.
//
// cmd/keybroker builds one Provider per process with New and passes it down:
// to the gRPC server (GRPCStatsHandler), around each regional Azure
// key wrapper (InstrumentWrapper), to the broker (BrokerMetrics, ObserveBroker)
// and to the failover wrapper's OnEvent hook (FailoverEvents). Nothing in this
// package sets or reads OpenTelemetry's global providers.
//
// Every attribute is low-cardinality (operation, region, outcome kind, state,
// configured key name); error text and key material never become attributes.
// docs/observability.md lists the series.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/otlptranslator"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/stats"
)

// ScopeName is the instrumentation scope of keybroker's own instruments.
const ScopeName = "github.com/keybroker/keybroker"

// cardinalityLimit caps the series of any one instrument: a safety net,
// since every attribute here is bounded by configuration already.
const cardinalityLimit = 2000

// Bucket boundaries, in seconds. Key RPCs served from memory take tens of
// microseconds to a few milliseconds; Azure calls tens of milliseconds to
// the per-attempt timeout. The SDK's defaults (0 to 10000, meant for
// milliseconds) would put every RPC in the first bucket.
var (
	rpcBuckets   = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	azureBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
)

// Config configures a Provider. It is not changed after New.
type Config struct {
	// ServiceName names the process in traces and target_info; "" means
	// "keybroker".
	ServiceName string
	// ServiceVersion is reported with it; "" leaves it out.
	ServiceVersion string
	// Prometheus adds a Prometheus reader whose output MetricsHandler
	// serves, with the Go runtime and process collectors beside it.
	Prometheus bool
	// Getenv supplies the OTEL_* variables that select OTLP export (see
	// OTLPSelection); nil means no OTLP. When OTLP is selected, the
	// OpenTelemetry exporters and resource detector also read their own
	// standard variables (endpoints, headers, certificates, timeouts,
	// OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES) from the process
	// environment.
	Getenv func(string) string
	// Logger receives exporter errors; nil discards them.
	Logger *slog.Logger
}

// Provider holds the process's meter and tracer providers and the
// Prometheus registry behind /metrics. It is safe for concurrent use.
type Provider struct {
	meterProvider  metric.MeterProvider
	tracerProvider trace.TracerProvider
	meter          metric.Meter
	tracer         trace.Tracer
	registry       *prometheus.Registry // nil without Prometheus
	log            *slog.Logger
	otlp           OTLPSelection
	now            func() time.Time

	instOnce sync.Once
	inst     *instruments

	shutdownOnce sync.Once
	shutdown     []func(context.Context) error
	shutdownErr  error
}

// New builds a Provider. Without Prometheus and without OTLP selected, the
// providers are no-ops and cost nothing. It does not touch the network:
// OTLP exporters connect lazily.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	p := &Provider{log: cfg.Logger, now: time.Now}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	name := cfg.ServiceName
	if name == "" {
		name = "keybroker"
	}
	if cfg.Getenv != nil {
		sel, err := SelectOTLP(cfg.Getenv)
		if err != nil {
			return nil, err
		}
		p.otlp = sel
	}

	if !cfg.Prometheus && !p.otlp.Any() {
		p.meterProvider = metricnoop.NewMeterProvider()
		p.tracerProvider = tracenoop.NewTracerProvider()
		p.meter = p.meterProvider.Meter(ScopeName)
		p.tracer = p.tracerProvider.Tracer(ScopeName)
		return p, nil
	}

	res, err := p.resource(ctx, name, cfg.ServiceVersion)
	if err != nil {
		return nil, err
	}
	mopts := []sdkmetric.Option{
		sdkmetric.WithResource(res),
		sdkmetric.WithCardinalityLimit(cardinalityLimit),
		sdkmetric.WithView(sdkmetric.NewView(
			sdkmetric.Instrument{Name: "rpc.server.call.duration"},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: rpcBuckets}},
		)),
	}
	if cfg.Prometheus {
		p.registry = prometheus.NewRegistry()
		p.registry.MustRegister(
			collectors.NewGoCollector(),
			collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		)
		exp, err := otelprom.New(
			otelprom.WithRegisterer(p.registry),
			otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
		)
		if err != nil {
			return nil, fmt.Errorf("telemetry: prometheus exporter: %w", err)
		}
		mopts = append(mopts, sdkmetric.WithReader(exp))
	}
	if p.otlp.Metrics != "" {
		r, err := newOTLPMetricReader(ctx, p.otlp.Metrics)
		if err != nil {
			return nil, err
		}
		mopts = append(mopts, sdkmetric.WithReader(r))
	}
	mp := sdkmetric.NewMeterProvider(mopts...)
	p.shutdown = append(p.shutdown, mp.Shutdown)
	p.meterProvider = mp

	if p.otlp.Traces != "" {
		exp, err := newOTLPTraceExporter(ctx, p.otlp.Traces)
		if err != nil {
			_ = mp.Shutdown(ctx)
			return nil, err
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
		p.shutdown = append(p.shutdown, tp.Shutdown)
		p.tracerProvider = tp
	} else {
		p.tracerProvider = tracenoop.NewTracerProvider()
	}
	p.meter = p.meterProvider.Meter(ScopeName)
	p.tracer = p.tracerProvider.Tracer(ScopeName)
	return p, nil
}

// resource describes the process. The OTEL_* resource variables are read
// only when OTLP export was asked for, since only then did the operator
// set them for this process.
func (p *Provider) resource(ctx context.Context, name, version string) (*resource.Resource, error) {
	attrs := []attribute.KeyValue{attribute.String("service.name", name)}
	if version != "" {
		attrs = append(attrs, attribute.String("service.version", version))
	}
	opts := []resource.Option{resource.WithAttributes(attrs...), resource.WithTelemetrySDK()}
	if p.otlp.Any() {
		opts = append(opts, resource.WithFromEnv())
	}
	res, err := resource.New(ctx, opts...)
	if err != nil && res == nil {
		return nil, fmt.Errorf("telemetry: resource: %w", err)
	}
	// A partial error (a malformed OTEL_RESOURCE_ATTRIBUTES entry) still
	// yields a usable resource: log it rather than refuse to start.
	if err != nil {
		p.log.Warn("telemetry: some resource attributes were ignored", "err", err)
	}
	return res, nil
}

// MeterProvider returns the meter provider (a no-op one when nothing
// exports metrics).
func (p *Provider) MeterProvider() metric.MeterProvider { return p.meterProvider }

// TracerProvider returns the tracer provider (a no-op one unless OTLP
// traces were selected).
func (p *Provider) TracerProvider() trace.TracerProvider { return p.tracerProvider }

// OTLP reports which signals are exported over OTLP, and how.
func (p *Provider) OTLP() OTLPSelection { return p.otlp }

// MetricsHandler serves the Prometheus exposition of every metric; it
// answers 404 when the Provider was built without Prometheus.
func (p *Provider) MetricsHandler() http.Handler {
	if p.registry == nil {
		return http.NotFoundHandler()
	}
	return promhttp.HandlerFor(p.registry, promhttp.HandlerOpts{
		// A failing collector must not hide every other series.
		ErrorHandling: promhttp.ContinueOnError,
	})
}

// Shutdown flushes and stops the exporters. It is safe to call more than
// once; later calls return the first result.
func (p *Provider) Shutdown(ctx context.Context) error {
	p.shutdownOnce.Do(func() {
		var errs []error
		for _, f := range p.shutdown {
			if err := f(ctx); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			p.shutdownErr = fmt.Errorf("telemetry: shutdown: %w", errors.Join(errs...))
		}
	})
	return p.shutdownErr
}

// GRPCStatsHandler is the gRPC server instrumentation: a span per RPC
// (continuing the caller's W3C trace context) and rpc.server.call.duration
// by method and status code, the series and spans otelgrpc makes, from
// keybroker's own handler (rpcstats.go) that takes otelgrpc's per-call
// attribute work off the hot path. Method names the server does not serve
// are recorded as "_OTHER", so a client sending made-up names cannot create
// series without bound; known may be nil until the services are registered
// (see Methods).
func (p *Provider) GRPCStatsHandler(known *Methods) stats.Handler {
	return p.newRPCStats(known)
}

// OtelgrpcStatsHandler is the otelgrpc server handler keybroker used before
// GRPCStatsHandler, with unknown methods renamed the same way; kept for the
// comparison benchmarks (BenchmarkStatsHandlers).
func (p *Provider) OtelgrpcStatsHandler(known *Methods) stats.Handler {
	h := otelgrpc.NewServerHandler(
		otelgrpc.WithMeterProvider(p.meterProvider),
		otelgrpc.WithTracerProvider(p.tracerProvider),
		otelgrpc.WithPropagators(propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})),
	)
	return methodNormalizer{Handler: h, known: known}
}
