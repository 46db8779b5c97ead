package telemetry

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
)

// KMIPRecorder measures the KMIP front-end (internal/kmip's Metrics):
// operations by name and result reason, their latency, open connections,
// and a span per operation beside the gRPC ones. Safe for concurrent use.
type KMIPRecorder struct {
	ops     metric.Int64Counter
	latency metric.Float64Histogram
	conns   metric.Int64UpDownCounter
	tracer  trace.Tracer
	now     func() time.Time
}

// KMIPMetrics returns the recorder for kmip.Config.Metrics. Attributes
// are KMIP enumeration names, a bounded set: operation, and reason
// ("Success" or a Result Reason).
func (p *Provider) KMIPMetrics() *KMIPRecorder {
	r := &KMIPRecorder{tracer: p.tracer, now: time.Now}
	var errs []error
	var err error
	r.ops, err = p.meter.Int64Counter("keybroker.kmip.operations",
		metric.WithUnit("{operation}"),
		metric.WithDescription("KMIP operations (batch items) answered, by operation and result reason (Success or the KMIP Result Reason)."))
	errs = append(errs, err)
	r.latency, err = p.meter.Float64Histogram("keybroker.kmip.operation.duration",
		metric.WithUnit("s"),
		metric.WithDescription("Duration of KMIP operations inside keybroker, by operation and result reason."),
		metric.WithExplicitBucketBoundaries(azureBuckets...))
	errs = append(errs, err)
	r.conns, err = p.meter.Int64UpDownCounter("keybroker.kmip.connections",
		metric.WithUnit("{connection}"),
		metric.WithDescription("Open KMIP connections."))
	errs = append(errs, err)
	for _, err := range errs {
		if err != nil {
			p.log.Error("telemetry: KMIP instrument not created (a keybroker bug)", "err", err)
		}
	}
	return r
}

// Operation starts a span for one KMIP operation; done records it.
func (r *KMIPRecorder) Operation(ctx context.Context, op string) (context.Context, func(reason string)) {
	start := r.now()
	ctx, span := r.tracer.Start(ctx, "kmip."+op, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("rpc.system", "kmip"), attribute.String("rpc.method", op)))
	return ctx, func(reason string) {
		if reason == "" {
			reason = "Success"
		} else {
			span.SetStatus(codes.Error, reason)
		}
		span.SetAttributes(attribute.String("kmip.result_reason", reason))
		span.End()
		attrs := metric.WithAttributeSet(attribute.NewSet(attribute.String("operation", op), attribute.String("reason", reason)))
		r.ops.Add(context.Background(), 1, attrs)
		r.latency.Record(context.Background(), r.now().Sub(start).Seconds(), attrs)
	}
}

// Connections adds delta to the open connections.
func (r *KMIPRecorder) Connections(delta int) {
	r.conns.Add(context.Background(), int64(delta))
}
