package telemetry

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/rpcconv"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// rpcStats is keybroker's gRPC server instrumentation: the series and spans
// otelgrpc's server handler makes (rpc.server.call.duration by rpc.method,
// rpc.system.name, rpc.response.status_code and, for server errors,
// error.type; a server span per RPC named after the method, continuing the
// caller's W3C trace context), without its per-call cost. otelgrpc builds
// and hashes a new attribute set on every RPC (about a tenth of the
// broker's CPU at full load, with the stack growth it causes); here every
// (method, status code) pair gets its attribute set, and the record option
// holding it, once, the first time it is seen, and an RPC then records with
// no allocation of its own. When no span is exported (no OTLP traces), no
// span is started and no trace context is extracted: nothing would see
// them. It is safe for concurrent use.
type rpcStats struct {
	known    *Methods
	duration metric.Float64Histogram
	tracer   trace.Tracer // nil: spans off
	props    propagation.TextMapPropagator

	mu      sync.Mutex                          // serializes writers of methods
	methods atomic.Pointer[map[string]*rpcKind] // copy on write
	other   *rpcKind                            // every method the server does not serve
}

// rpcKind is what is fixed for one method name: its span name and
// attributes, and its record options by status code, made on first use.
type rpcKind struct {
	name      string // span name and rpc.method, "pkg.Service/Method"
	spanAttrs []attribute.KeyValue
	method    attribute.KeyValue
	byCode    [numCodes]atomic.Pointer[[]metric.RecordOption]
}

// numCodes covers the canonical status codes 0 (OK) to 16 (Unauthenticated).
const numCodes = 17

// rpcCtx is the context of one RPC: the parent with the RPC's kind and
// start attached, in one allocation rather than a context.WithValue chain.
type rpcCtx struct {
	context.Context
	kind *rpcKind
}

type rpcCtxKey struct{}

func (c *rpcCtx) Value(key any) any {
	if key == (rpcCtxKey{}) {
		return c
	}
	return c.Context.Value(key)
}

// newRPCStats makes the handler; known may be filled later (Methods.Set).
func (p *Provider) newRPCStats(known *Methods) *rpcStats {
	h := &rpcStats{known: known, props: propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})}
	d, err := rpcconv.NewServerCallDuration(p.meter)
	if err != nil {
		p.log.Error("telemetry: instrument not created (a keybroker bug)", "err", err)
	}
	h.duration = d.Inst()
	if _, off := p.tracerProvider.(tracenoop.TracerProvider); !off {
		h.tracer = p.tracer
	}
	h.other = newRPCKind("/" + OtherMethod)
	empty := map[string]*rpcKind{}
	h.methods.Store(&empty)
	return h
}

func newRPCKind(fullMethod string) *rpcKind {
	name := fullMethod[1:]
	k := &rpcKind{name: name, method: semconv.RPCMethod(name)}
	k.spanAttrs = []attribute.KeyValue{k.method, semconv.RPCSystemNameGRPC}
	return k
}

// kind returns the rpcKind of fullMethod: its own for a served method,
// the shared _OTHER one for any other name.
func (h *rpcStats) kind(fullMethod string) *rpcKind {
	if k, ok := (*h.methods.Load())[fullMethod]; ok {
		return k
	}
	if !h.known.Has(fullMethod) {
		return h.other
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	old := *h.methods.Load()
	if k, ok := old[fullMethod]; ok {
		return k
	}
	m := make(map[string]*rpcKind, len(old)+1)
	for name, k := range old {
		m[name] = k
	}
	k := newRPCKind(fullMethod)
	m[fullMethod] = k
	h.methods.Store(&m)
	return k
}

// options returns the record options for code, made once per kind and code.
func (k *rpcKind) options(code codes.Code) []metric.RecordOption {
	i := int(code)
	if i < 0 || i >= numCodes {
		// Not a canonical code: no caching, as otelgrpc would record it.
		return []metric.RecordOption{metric.WithAttributeSet(k.attrSet(code))}
	}
	if o := k.byCode[i].Load(); o != nil {
		return *o
	}
	o := []metric.RecordOption{metric.WithAttributeSet(k.attrSet(code))}
	k.byCode[i].Store(&o) // a race makes two equal sets, harmlessly
	return o
}

func (k *rpcKind) attrSet(code codes.Code) attribute.Set {
	attrs := []attribute.KeyValue{k.method, semconv.RPCSystemNameGRPC, semconv.RPCResponseStatusCode(canonicalCode(code))}
	if serverError(code) {
		attrs = append(attrs, semconv.ErrorTypeKey.String(canonicalCode(code)))
	}
	return attribute.NewSet(attrs...)
}

// TagConn implements stats.Handler.
func (h *rpcStats) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

// HandleConn implements stats.Handler.
func (h *rpcStats) HandleConn(context.Context, stats.ConnStats) {}

// TagRPC implements stats.Handler.
func (h *rpcStats) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	k := h.kind(info.FullMethodName)
	if h.tracer != nil {
		ctx = h.props.Extract(ctx, metadataCarrier(metadataOf(ctx)))
		ctx, _ = h.tracer.Start(trace.ContextWithRemoteSpanContext(ctx, trace.SpanContextFromContext(ctx)), k.name,
			trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(k.spanAttrs...))
	}
	return &rpcCtx{Context: ctx, kind: k}
}

// HandleRPC implements stats.Handler.
func (h *rpcStats) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	switch rs := rs.(type) {
	case *stats.InHeader:
		if h.tracer != nil && rs.LocalAddr != nil {
			if span := trace.SpanFromContext(ctx); span.IsRecording() {
				span.SetAttributes(serverAddrAttrs(rs.LocalAddr.String())...)
			}
		}
	case *stats.End:
		rc, _ := ctx.Value(rpcCtxKey{}).(*rpcCtx)
		k := h.other
		if rc != nil {
			k = rc.kind
		}
		code := codes.OK
		var st *status.Status
		if rs.Error != nil {
			st, _ = status.FromError(rs.Error)
			code = st.Code()
		}
		if h.tracer != nil {
			if span := trace.SpanFromContext(ctx); span.IsRecording() {
				if st != nil && serverError(code) {
					span.SetStatus(otelcodes.Error, st.Message())
				}
				span.SetAttributes(semconv.RPCResponseStatusCode(canonicalCode(code)))
				span.End()
			}
		}
		elapsed := float64(rs.EndTime.Sub(rs.BeginTime)) / float64(time.Second)
		h.duration.Record(ctx, elapsed, k.options(code)...)
	}
}

// serverError is otelgrpc's rule for a server: these codes are the
// server's failures (span status Error, error.type set); the others are
// the client's (a bad argument, a refused caller).
func serverError(c codes.Code) bool {
	switch c {
	case codes.Unknown, codes.DeadlineExceeded, codes.Unimplemented, codes.Internal, codes.Unavailable, codes.DataLoss:
		return true
	}
	return false
}

// canonicalCode is the status code as the metric names it ("OK",
// "CANCELLED", ...), as otelgrpc writes it.
func canonicalCode(c codes.Code) string {
	if int(c) >= 0 && int(c) < numCodes {
		return codeNames[c]
	}
	return "CODE(" + strconv.FormatInt(int64(c), 10) + ")"
}

var codeNames = [numCodes]string{
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
	"PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
}

// serverAddrAttrs are server.address and server.port of a host:port.
func serverAddrAttrs(hostport string) []attribute.KeyValue {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return []attribute.KeyValue{semconv.ServerAddress(hostport)}
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return []attribute.KeyValue{semconv.ServerAddress(h)}
	}
	return []attribute.KeyValue{semconv.ServerAddress(h), semconv.ServerPort(port)}
}

func metadataOf(ctx context.Context) metadata.MD {
	md, _ := metadata.FromIncomingContext(ctx)
	return md
}

// metadataCarrier reads W3C trace context from incoming gRPC metadata.
type metadataCarrier metadata.MD

func (c metadataCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

func (c metadataCarrier) Set(key, value string) { metadata.MD(c).Set(key, value) }

func (c metadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
