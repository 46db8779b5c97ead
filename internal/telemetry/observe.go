package telemetry

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/failover"
)

// KeyAge is the age of the version in use of one key.
type KeyAge struct {
	Name string // the master key's name, or the region of a customer key
	Age  time.Duration
}

// RegionHealth is one region's health.
type RegionHealth struct {
	Name    string
	Healthy bool
	Active  bool // calls go to it first
}

// Observed is what the observable instruments read at each collection (a
// scrape of /metrics, an OTLP export). Nil fields are not reported. Every
// func must return quickly and be safe for concurrent use.
type Observed struct {
	// State is the broker's state.
	State func() broker.State
	// Broker is a snapshot of the broker's counters (Broker.Stats).
	Broker func() broker.Stats
	// MasterKeys are the ages of the current versions of the active master
	// keys, by key name.
	MasterKeys func() []KeyAge
	// CMKs are the ages of the customer key versions in use, by region;
	// leave out those whose age is unknown.
	CMKs func() []KeyAge
	// Regions are the regions of the customer key and their health.
	Regions func() []RegionHealth
}

// states are every state the keybroker.state gauge reports, so a
// dashboard sees 0 for the states not held rather than no series.
var states = []broker.State{broker.StateServing, broker.StateDegraded, broker.StatePaused}

// Observe registers the observable instruments over o: broker state, the
// age of the last successful validity check, cache counters and size,
// master-key and customer-key version ages, region health. Call the
// returned function to unregister them.
func (p *Provider) Observe(o Observed) (unregister func() error, err error) {
	m := p.meter
	var errs []error
	gauge := func(name, unit, desc string) metric.Float64ObservableGauge {
		g, err := m.Float64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return g
	}
	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	state := gauge("keybroker.state", "", "1 for the state the broker is in (SERVING, DEGRADED, PAUSED), 0 for the others.")
	validationAge := gauge("keybroker.validation.age", "s", "Seconds since the last successful validity check (or start-up key load through Key Vault).")
	cacheSize := gauge("keybroker.cache.size", "{key}", "Master-key versions held in memory.")
	cacheHits := counter("keybroker.cache.hits", "{lookup}", "Key lookups served from memory.")
	cacheMisses := counter("keybroker.cache.misses", "{lookup}", "Key lookups that needed a load through Key Vault (absent, expired or wiped).")
	cacheLoads := counter("keybroker.cache.loads", "{load}", "Loads (unwraps through Key Vault) by the cache, by outcome (ok, error).")
	cacheStale := counter("keybroker.cache.stale_serves", "{lookup}", "Keys served past their TTL because Key Vault was unreachable.")
	cacheEvictions := counter("keybroker.cache.evictions", "{key}", "Keys wiped from memory (expiry, eviction, pause, shutdown).")
	mkAge := gauge("keybroker.master_key.age", "s", "Age of the current version of each active master key, by key name.")
	cmkAge := gauge("keybroker.cmk.age", "s", "Age of the customer key version in use, by region, as Key Vault reports it.")
	healthy := gauge("keybroker.region.healthy", "", "1 when the region answers (closed circuit, no revocation evidence), else 0.")
	active := gauge("keybroker.region.active", "", "1 for the region calls go to first, else 0.")
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("telemetry: observable instruments: %w", err)
	}

	reg, err := m.RegisterCallback(func(_ context.Context, obs metric.Observer) error {
		now := p.now()
		if o.State != nil {
			cur := o.State()
			for _, s := range states {
				obs.ObserveFloat64(state, b2f(s == cur), metric.WithAttributes(attribute.String("state", s.String())))
			}
		}
		if o.Broker != nil {
			st := o.Broker()
			if !st.LastGoodValidation.IsZero() {
				obs.ObserveFloat64(validationAge, max(0, now.Sub(st.LastGoodValidation).Seconds()))
			}
			obs.ObserveFloat64(cacheSize, float64(st.CachedKeys))
			obs.ObserveInt64(cacheHits, int64(st.Cache.Hits))
			obs.ObserveInt64(cacheMisses, int64(st.Cache.Misses))
			obs.ObserveInt64(cacheLoads, int64(st.Cache.Loads-st.Cache.LoadErrors), metric.WithAttributes(attribute.String("outcome", "ok")))
			obs.ObserveInt64(cacheLoads, int64(st.Cache.LoadErrors), metric.WithAttributes(attribute.String("outcome", "error")))
			obs.ObserveInt64(cacheStale, int64(st.Cache.StaleServes))
			obs.ObserveInt64(cacheEvictions, int64(st.Cache.Evictions))
		}
		if o.MasterKeys != nil {
			for _, k := range o.MasterKeys() {
				obs.ObserveFloat64(mkAge, max(0, k.Age.Seconds()), metric.WithAttributes(attribute.String("key", k.Name)))
			}
		}
		if o.CMKs != nil {
			for _, k := range o.CMKs() {
				obs.ObserveFloat64(cmkAge, max(0, k.Age.Seconds()), metric.WithAttributes(attribute.String("region", k.Name)))
			}
		}
		if o.Regions != nil {
			for _, r := range o.Regions() {
				attrs := metric.WithAttributes(attribute.String("region", r.Name))
				obs.ObserveFloat64(healthy, b2f(r.Healthy), attrs)
				obs.ObserveFloat64(active, b2f(r.Active), attrs)
			}
		}
		return nil
	}, state, validationAge, cacheSize, cacheHits, cacheMisses, cacheLoads, cacheStale, cacheEvictions, mkAge, cmkAge, healthy, active)
	if err != nil {
		return nil, fmt.Errorf("telemetry: registering observations: %w", err)
	}
	return reg.Unregister, nil
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// BrokerRecorder records what the broker reports as it happens; it is what
// broker.Config.Metrics takes. It is safe for concurrent use.
type BrokerRecorder struct{ in *instruments }

var _ broker.Metrics = BrokerRecorder{}

// BrokerMetrics returns the recorder for broker.Config.Metrics.
func (p *Provider) BrokerMetrics() BrokerRecorder { return BrokerRecorder{p.instruments()} }

// ValidityCheck counts one validity check by outcome (ok, or the kind of
// the error that decided it) and records its duration.
func (m BrokerRecorder) ValidityCheck(err error, d time.Duration) {
	attrs := metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", Outcome(err))))
	ctx := context.Background()
	m.in.validityChecks.Add(ctx, 1, attrs)
	m.in.validityLatency.Record(ctx, d.Seconds(), attrs)
}

// StateChange counts a change of the broker's state by the state entered.
func (m BrokerRecorder) StateChange(to broker.State) {
	m.in.stateChanges.Add(context.Background(), 1, metric.WithAttributes(attribute.String("state", to.String())))
}

// FailoverEvents returns the function for failover.Config.OnEvent: it
// counts switches of the active region and regions' health events.
func (p *Provider) FailoverEvents() func(failover.Event) {
	in := p.instruments()
	return func(ev failover.Event) {
		ctx := context.Background()
		if ev.Kind == failover.EventSwitch {
			in.switches.Add(ctx, 1, metric.WithAttributes(attribute.String("from", ev.From), attribute.String("to", ev.Region)))
			return
		}
		in.regionEvents.Add(ctx, 1, metric.WithAttributes(attribute.String("region", ev.Region), attribute.String("event", ev.Kind.String())))
	}
}
