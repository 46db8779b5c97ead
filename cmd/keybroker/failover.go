package main

import (
	"log/slog"
	"strings"

	"github.com/keybroker/keybroker/internal/akv"
	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/failover"
)

// regionWrapper shows the failover wrapper's regions to the broker.
type regionWrapper struct {
	*failover.Wrapper
	vaults map[string]string // region -> vault URL
}

var _ broker.RegionReporter = regionWrapper{}

func (r regionWrapper) RegionStatus() []broker.RegionStatus {
	var out []broker.RegionStatus
	for _, s := range r.Status() {
		out = append(out, broker.RegionStatus{
			Name:          s.Name,
			VaultURL:      r.vaults[s.Name],
			KeyID:         s.KeyID,
			Healthy:       s.Healthy,
			LastErrorKind: s.LastErrorKind,
			LastError:     s.LastError,
			Latency:       s.LastLatency,
			Preferred:     s.Preferred,
			Active:        s.Active,
		})
	}
	return out
}

// newFailover puts the regional adapters, in configured order, behind the
// failover wrapper.
func newFailover(cfg *config.Config, regions []*akv.Wrapper, logger *slog.Logger, obs *observability) (broker.KeyWrapper, func(), error) {
	fc := failover.Config{
		HedgeDelay:    cfg.Azure.Failover.HedgeDelay.D(),
		FailBackAfter: cfg.Azure.Failover.FailBackAfter,
		ProbeInterval: cfg.Azure.Failover.ProbeInterval.D(),
		Logger:        logger,
		OnEvent:       obs.failoverEvents(),
	}
	if p := fc.ProbeInterval; p > 0 && p < failover.DefaultBaseBackoff {
		// The breaker's backoff is capped by the probe interval: a short
		// interval (tests, or an impatient operator) would otherwise put
		// the default base above its cap and fail failover.New.
		fc.BaseBackoff = p
	}
	vaults := make(map[string]string)
	for i, w := range regions {
		r := cfg.Azure.Regions[i]
		fc.Regions = append(fc.Regions, failover.Region{Name: r.Name, Wrapper: obs.instrument(r.Name, w), Timeout: r.Timeout.D(), KeyID: w.KeyID()})
		vaults[r.Name] = r.VaultURL
		if r.VaultURL == "" {
			vault, _, _ := strings.Cut(w.KeyID(), "/keys/")
			vaults[r.Name] = vault + "/"
		}
	}
	fw, err := failover.New(fc)
	if err != nil {
		return nil, nil, cli.WithCode(exitUsage, err)
	}
	obs.watchRegions(fw)
	return regionWrapper{Wrapper: fw, vaults: vaults}, func() { fw.Close() }, nil
}
