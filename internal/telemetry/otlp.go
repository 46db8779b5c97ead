package telemetry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// OTLP protocols, as OTEL_EXPORTER_OTLP_PROTOCOL names them.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http/protobuf"
)

// ErrOTLPEnv is wrapped by SelectOTLP's errors: the OTEL_* variables ask for
// something keybroker cannot do.
var ErrOTLPEnv = errors.New("telemetry: unsupported OTEL_* setting")

// EnvNames are the variables SelectOTLP reads; cmd/keybroker passes their
// values from the environment.
var EnvNames = []string{
	"OTEL_SDK_DISABLED",
	"OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
}

// OTLPSelection says which signals go out over OTLP and with which
// protocol; "" means not exported.
type OTLPSelection struct {
	Traces  string
	Metrics string
}

// Any reports whether any signal is exported over OTLP.
func (s OTLPSelection) Any() bool { return s.Traces != "" || s.Metrics != "" }

// SelectOTLP decides from the standard OTEL_* variables whether traces and
// metrics are exported over OTLP. Unlike the specification's default
// (export to localhost), keybroker exports only when asked: a signal is on
// when OTEL_{TRACES,METRICS}_EXPORTER lists "otlp", or, with that variable
// unset, when an OTLP endpoint is set for it (OTEL_EXPORTER_OTLP_ENDPOINT or
// the per-signal one). "none" turns a signal off, OTEL_SDK_DISABLED=true
// turns both off. The protocol is grpc or http/protobuf (the default); the
// endpoint, headers, TLS files and timeouts are read by the exporters
// themselves from their standard variables.
func SelectOTLP(getenv func(string) string) (OTLPSelection, error) {
	get := func(k string) string { return strings.TrimSpace(getenv(k)) }
	if strings.EqualFold(get("OTEL_SDK_DISABLED"), "true") {
		return OTLPSelection{}, nil
	}
	var sel OTLPSelection
	var errs []error
	for _, sig := range []struct {
		name string
		dst  *string
		// other exporters the specification names for the signal that
		// keybroker serves otherwise (Prometheus: the admin /metrics).
		servedElsewhere []string
	}{
		{"TRACES", &sel.Traces, nil},
		{"METRICS", &sel.Metrics, []string{"prometheus"}},
	} {
		on, err := signalOn(get, sig.name, sig.servedElsewhere)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !on {
			continue
		}
		proto := get("OTEL_EXPORTER_OTLP_" + sig.name + "_PROTOCOL")
		if proto == "" {
			proto = get("OTEL_EXPORTER_OTLP_PROTOCOL")
		}
		switch proto {
		case "", ProtocolHTTP:
			*sig.dst = ProtocolHTTP
		case ProtocolGRPC:
			*sig.dst = ProtocolGRPC
		default:
			errs = append(errs, fmt.Errorf("%w: OTLP protocol %q for %s: use grpc or http/protobuf", ErrOTLPEnv, proto, strings.ToLower(sig.name)))
		}
	}
	if len(errs) > 0 {
		return OTLPSelection{}, errors.Join(errs...)
	}
	return sel, nil
}

// signalOn reads OTEL_{sig}_EXPORTER, falling back to whether an OTLP
// endpoint is configured.
func signalOn(get func(string) string, sig string, servedElsewhere []string) (bool, error) {
	name := "OTEL_" + sig + "_EXPORTER"
	v := get(name)
	if v == "" {
		return get("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || get("OTEL_EXPORTER_OTLP_"+sig+"_ENDPOINT") != "", nil
	}
	on := false
	for _, e := range strings.Split(v, ",") {
		switch e = strings.TrimSpace(e); {
		case e == "otlp":
			on = true
		case e == "none", e == "", slices.Contains(servedElsewhere, e):
		default:
			return false, fmt.Errorf("%w: %s=%q: keybroker exports %s with otlp (or none)", ErrOTLPEnv, name, v, strings.ToLower(sig))
		}
	}
	return on, nil
}

func newOTLPMetricReader(ctx context.Context, proto string) (sdkmetric.Reader, error) {
	var exp sdkmetric.Exporter
	var err error
	if proto == ProtocolGRPC {
		exp, err = otlpmetricgrpc.New(ctx)
	} else {
		exp, err = otlpmetrichttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP metric exporter (%s): %w", proto, err)
	}
	return sdkmetric.NewPeriodicReader(exp), nil
}

func newOTLPTraceExporter(ctx context.Context, proto string) (sdktrace.SpanExporter, error) {
	var exp sdktrace.SpanExporter
	var err error
	if proto == ProtocolGRPC {
		exp, err = otlptracegrpc.New(ctx)
	} else {
		exp, err = otlptracehttp.New(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("telemetry: OTLP trace exporter (%s): %w", proto, err)
	}
	return exp, nil
}
