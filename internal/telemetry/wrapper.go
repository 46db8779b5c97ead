package telemetry

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/keybroker/keybroker/internal/kek"
)

// KeyWrapper is the broker's key-wrapper interface, restated so a regional
// Azure adapter can be instrumented without this package importing it.
// Implementations are safe for concurrent use.
type KeyWrapper interface {
	WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error)
	UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error)
	KeyInfo(ctx context.Context) (kek.KeyInfo, error)
}

var _ KeyWrapper = (*Wrapper)(nil)

// Operations, as the keybroker_azure_* series name them.
const (
	OpGet    = "get"
	OpWrap   = "wrap"
	OpUnwrap = "unwrap"
)

// Outcomes besides the kek kinds (revoked, not_found, throttled,
// unavailable, invalid_input, unknown).
const (
	OutcomeOK       = "ok"
	OutcomeCanceled = "canceled" // the caller went away, e.g. a hedge that lost
)

// Outcome names the outcome of a call for a metric attribute: never the
// error's text, only its class.
func Outcome(err error) string {
	switch {
	case err == nil:
		return OutcomeOK
	case errors.Is(err, context.Canceled):
		return OutcomeCanceled
	}
	return kek.KindOf(err).String()
}

// Wrapper instruments one regional key wrapper (an *akv.Wrapper): a span and
// a keybroker.azure.call.duration measurement per call, by operation,
// region and outcome. It remembers the region's latest outcome (for region
// health when there is no failover wrapper) and the customer key version
// its latest KeyInfo reported (for the CMK age). It is safe for concurrent
// use.
type Wrapper struct {
	next   KeyWrapper
	region string
	inst   *instruments
	tracer trace.Tracer
	now    func() time.Time

	mu      sync.Mutex
	last    string // latest outcome, "" before any call
	cmkID   string
	created time.Time
}

// InstrumentWrapper wraps w, a wrapper for the named region ("" is reported
// as "primary", as the configuration names a single region).
func (p *Provider) InstrumentWrapper(w KeyWrapper, region string) *Wrapper {
	if region == "" {
		region = "primary"
	}
	return &Wrapper{next: w, region: region, inst: p.instruments(), tracer: p.tracer, now: time.Now}
}

// WrapKey implements KeyWrapper. With local wrapping on, the adapter may
// wrap with the cached public key and make no call; it is measured all
// the same, as the operation the broker asked for.
func (w *Wrapper) WrapKey(ctx context.Context, key []byte) (out []kek.Wrapped, err error) {
	ctx, end := w.start(ctx, OpWrap)
	defer func() { end(err) }()
	return w.next.WrapKey(ctx, key)
}

// UnwrapKey implements KeyWrapper.
func (w *Wrapper) UnwrapKey(ctx context.Context, copies []kek.Wrapped) (out []byte, err error) {
	ctx, end := w.start(ctx, OpUnwrap)
	defer func() { end(err) }()
	return w.next.UnwrapKey(ctx, copies)
}

// KeyInfo implements KeyWrapper.
func (w *Wrapper) KeyInfo(ctx context.Context) (info kek.KeyInfo, err error) {
	ctx, end := w.start(ctx, OpGet)
	defer func() {
		if err == nil && info.KeyID != "" {
			w.mu.Lock()
			w.cmkID, w.created = info.KeyID, info.Created
			w.mu.Unlock()
		}
		end(err)
	}()
	return w.next.KeyInfo(ctx)
}

// Region returns the region name the wrapper reports.
func (w *Wrapper) Region() string { return w.region }

// Health reports whether the region's latest call succeeded (or failed for
// a reason that says nothing of the region: invalid input, a cancelled
// call); known is false before any call.
func (w *Wrapper) Health() (healthy, known bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch w.last {
	case "":
		return false, false
	case OutcomeOK, OutcomeCanceled, kek.KindInvalidInput.String():
		return true, true
	}
	return false, true
}

// CMK returns the customer key version the region's latest successful
// KeyInfo reported and its creation time (zero when the vault did not say).
func (w *Wrapper) CMK() (keyID string, created time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cmkID, w.created
}

// start opens the span of one call and returns the function that ends it
// and records the measurement.
func (w *Wrapper) start(ctx context.Context, op string) (context.Context, func(error)) {
	begin := w.now()
	ctx, span := w.tracer.Start(ctx, "akv."+op,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(
			attribute.String("keybroker.operation", op),
			attribute.String("keybroker.region", w.region),
		))
	return ctx, func(err error) {
		outcome := Outcome(err)
		if outcome != OutcomeCanceled {
			w.mu.Lock()
			w.last = outcome
			w.mu.Unlock()
		}
		w.inst.azureCall.Record(context.WithoutCancel(ctx), w.now().Sub(begin).Seconds(), metric.WithAttributeSet(attribute.NewSet(
			attribute.String("operation", op),
			attribute.String("region", w.region),
			attribute.String("outcome", outcome),
		)))
		if span.IsRecording() {
			span.SetAttributes(attribute.String("keybroker.outcome", outcome))
			var ke *kek.Error
			if errors.As(err, &ke) {
				// The provider's error code and HTTP status say what went
				// wrong without the message text.
				if ke.Code != "" {
					span.SetAttributes(attribute.String("azure.error_code", ke.Code))
				}
				if ke.Status != 0 {
					span.SetAttributes(attribute.Int("http.response.status_code", ke.Status))
				}
			}
			if err != nil && outcome != OutcomeCanceled {
				span.SetStatus(codes.Error, outcome)
			}
		}
		span.End()
	}
}
