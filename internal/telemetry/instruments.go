package telemetry

import (
	"go.opentelemetry.io/otel/metric"
)

// instruments are the synchronous instruments, made once per Provider.
type instruments struct {
	azureCall       metric.Float64Histogram
	validityChecks  metric.Int64Counter
	validityLatency metric.Float64Histogram
	stateChanges    metric.Int64Counter
	switches        metric.Int64Counter
	regionEvents    metric.Int64Counter
}

// instruments makes the instruments on first use. The OpenTelemetry API
// reports a bad instrument definition (a bug here, not a runtime
// condition) by returning a working no-op instrument with the error; the
// error goes to the log.
func (p *Provider) instruments() *instruments {
	p.instOnce.Do(func() {
		m := p.meter
		in := &instruments{}
		var errs []error
		note := func(err error) {
			if err != nil {
				errs = append(errs, err)
			}
		}
		var err error
		in.azureCall, err = m.Float64Histogram("keybroker.azure.call.duration",
			metric.WithUnit("s"),
			metric.WithDescription("Calls to Azure Key Vault (through the Azure adapter, one per region), by operation (get, wrap, unwrap), region and outcome (ok or the failure kind)."),
			metric.WithExplicitBucketBoundaries(azureBuckets...))
		note(err)
		in.validityChecks, err = m.Int64Counter("keybroker.validity_checks",
			metric.WithUnit("{check}"),
			metric.WithDescription("Validity checks run (scheduled, on demand, or after revocation evidence), by outcome (ok or the failure kind)."))
		note(err)
		in.validityLatency, err = m.Float64Histogram("keybroker.validity_check.duration",
			metric.WithUnit("s"),
			metric.WithDescription("Duration of validity checks, by outcome."),
			metric.WithExplicitBucketBoundaries(azureBuckets...))
		note(err)
		in.stateChanges, err = m.Int64Counter("keybroker.state.changes",
			metric.WithUnit("{change}"),
			metric.WithDescription("Broker state changes, by the state entered (SERVING, DEGRADED, PAUSED)."))
		note(err)
		in.switches, err = m.Int64Counter("keybroker.failover.switches",
			metric.WithUnit("{switch}"),
			metric.WithDescription("Changes of the active region of the failover wrapper, by previous and new region."))
		note(err)
		in.regionEvents, err = m.Int64Counter("keybroker.region.events",
			metric.WithUnit("{event}"),
			metric.WithDescription("Health events of the failover wrapper's regions, by region and event (region_down, region_up, partial_revocation, partial_revocation_cleared)."))
		note(err)
		for _, err := range errs {
			p.log.Error("telemetry: instrument not created (a keybroker bug)", "err", err)
		}
		p.inst = in
	})
	return p.inst
}
