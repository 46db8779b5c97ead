package telemetry

import (
	"context"
	"time"

	otelcodes "go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// RPCInterceptors is the gRPC server instrumentation as interceptors: the
// same series and spans as GRPCStatsHandler, without a stats handler. Any
// stats handler makes grpc-go build an event for every step of every RPC
// (begin, headers with a copy of the metadata, each payload, trailer, end);
// the interceptors are called once per RPC. Install them with
// grpc.UnaryInterceptor and grpc.StreamInterceptor, which run before any
// chained interceptor, so refusals by the authorizer are measured too.
//
// What they see differs from the stats handler in two ways: the duration
// runs from the interceptor to the handler's return (the request is already
// decoded, the reply not yet written), and an RPC that fails before any
// interceptor runs (an undecodable or oversized request) is not recorded.
// Methods the server does not serve never reach an interceptor, as they
// never reach a stats handler's End.
func (p *Provider) RPCInterceptors(known *Methods) (grpc.UnaryServerInterceptor, grpc.StreamServerInterceptor) {
	h := p.newRPCStats(known)
	return h.unary, h.stream
}

func (h *rpcStats) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	begin := time.Now()
	k := h.kind(info.FullMethod)
	var span trace.Span
	if h.tracer != nil {
		ctx, span = h.startSpan(ctx, k)
	}
	resp, err := handler(ctx, req)
	h.finish(ctx, span, k, err, time.Since(begin))
	return resp, err
}

func (h *rpcStats) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	begin := time.Now()
	k := h.kind(info.FullMethod)
	var span trace.Span
	if h.tracer != nil {
		var ctx context.Context
		ctx, span = h.startSpan(ss.Context(), k)
		ss = &spanStream{ServerStream: ss, ctx: ctx}
	}
	err := handler(srv, ss)
	h.finish(ss.Context(), span, k, err, time.Since(begin))
	return err
}

type spanStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *spanStream) Context() context.Context { return s.ctx }

// startSpan starts the RPC's server span, continuing the caller's trace.
func (h *rpcStats) startSpan(ctx context.Context, k *rpcKind) (context.Context, trace.Span) {
	ctx = h.props.Extract(ctx, metadataCarrier(metadataOf(ctx)))
	ctx, span := h.tracer.Start(trace.ContextWithRemoteSpanContext(ctx, trace.SpanContextFromContext(ctx)), k.name,
		trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(k.spanAttrs...))
	if span.IsRecording() {
		if p, ok := peer.FromContext(ctx); ok && p.LocalAddr != nil {
			span.SetAttributes(serverAddrAttrs(p.LocalAddr.String())...)
		}
	}
	return ctx, span
}

// finish ends the span, if any, and records the duration.
func (h *rpcStats) finish(ctx context.Context, span trace.Span, k *rpcKind, err error, d time.Duration) {
	code := codes.OK
	var st *status.Status
	if err != nil {
		st, _ = status.FromError(err)
		code = st.Code()
	}
	if span != nil && span.IsRecording() {
		if st != nil && serverError(code) {
			span.SetStatus(otelcodes.Error, st.Message())
		}
		span.SetAttributes(semconv.RPCResponseStatusCode(canonicalCode(code)))
		span.End()
	}
	h.duration.Record(ctx, d.Seconds(), k.options(code)...)
}
