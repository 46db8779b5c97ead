package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// apiPrefix starts the method names of the keybroker API.
const apiPrefix = "keybroker.v1."

// Bounds on scraping the broker's /metrics.
const (
	scrapeTimeout  = 5 * time.Second
	maxMetricsBody = 4 << 20
)

// metricsSample is what kbload reads from one scrape of the broker's
// /metrics: the figures the soak judges and the load table shows.
type metricsSample struct {
	At         time.Time `json:"at"`
	RSS        float64   `json:"rss_bytes"`
	Goroutines float64   `json:"goroutines"`
	// RPCs counts the finished RPCs of the keybroker API by gRPC status
	// code, since the broker started. Other services are left out: ghz's
	// server reflection stream ends CANCELED every time ghz exits.
	RPCs  map[string]float64 `json:"rpcs"`
	State string             `json:"state"` // the keybroker_state series at 1
	// Checks counts the validity checks run since the broker started, each
	// a Key Vault get and one unwrap per active key; ActiveKeys is the
	// number of active master keys.
	Checks     float64 `json:"validity_checks"`
	ActiveKeys int     `json:"active_keys"`
	// Unwraps counts the successful Key Vault unwraps the broker made
	// since it started (keybroker_azure_call_duration_seconds).
	Unwraps float64 `json:"unwraps"`
}

// Key Vault operations as the emulator counts them.
var (
	akvKeyOps  = []string{"wrapkey", "unwrapkey", "encrypt", "decrypt", "get"}
	akvTokenOp = "token"
)

// akvTotals sums the emulator's counters (host -> operation -> count).
type akvTotals struct {
	KeyOps   int64                       `json:"key_ops"`
	Unwraps  int64                       `json:"unwraps"`
	Gets     int64                       `json:"gets"`
	Tokens   int64                       `json:"tokens"`
	Counters map[string]map[string]int64 `json:"counters"`
}

func sumAKV(counters map[string]map[string]int64) akvTotals {
	a := akvTotals{Counters: counters}
	for _, ops := range counters {
		for _, op := range akvKeyOps {
			a.KeyOps += ops[op]
		}
		a.Unwraps += ops["unwrapkey"]
		a.Gets += ops["get"]
		a.Tokens += ops[akvTokenOp]
	}
	return a
}

// hotPath is the key operations left once the validity checks that ran
// (checks, over activeKeys keys) are set aside: what the key RPCs cost.
func (a akvTotals) hotPath(checks float64, activeKeys int) int64 {
	n := int64(checks)
	return a.KeyOps - min(a.Gets, n) - min(a.Unwraps, n*int64(activeKeys))
}

// rpcErrors is the number of RPCs that did not end OK.
func (s metricsSample) rpcErrors() float64 {
	var n float64
	for code, c := range s.RPCs {
		if code != "OK" {
			n += c
		}
	}
	return n
}

// rpcTotal is the number of RPCs that ended.
func (s metricsSample) rpcTotal() float64 {
	var n float64
	for _, c := range s.RPCs {
		n += c
	}
	return n
}

// checkAdminURL insists on a loopback http URL: kbload scrapes only the
// broker it started.
func checkAdminURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || u.Port() == "" {
		return fmt.Errorf("keybroker dev reported admin_url %q, want http://127.0.0.1:PORT: is --keybroker a keybroker binary with the admin listener?", truncate(s, 80))
	}
	if ip, err := netip.ParseAddr(u.Hostname()); err != nil || !ip.IsLoopback() {
		return fmt.Errorf("keybroker dev reported admin_url %q, want a loopback host", truncate(s, 80))
	}
	return nil
}

// scrapeMetrics fetches and reads adminURL/metrics.
func scrapeMetrics(ctx context.Context, hc *http.Client, adminURL string) (metricsSample, error) {
	ctx, cancel := context.WithTimeout(ctx, scrapeTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, adminURL+"/metrics", nil)
	if err != nil {
		return metricsSample{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return metricsSample{}, fmt.Errorf("scraping the broker's /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return metricsSample{}, fmt.Errorf("scraping the broker's /metrics: HTTP %d", resp.StatusCode)
	}
	s, err := parseMetrics(io.LimitReader(resp.Body, maxMetricsBody))
	if err != nil {
		return metricsSample{}, err
	}
	s.At = time.Now()
	return s, nil
}

// parseMetrics reads the series kbload uses from a Prometheus text
// exposition. Missing series are an error: a broker without them cannot be
// judged, and a soak that silently read zeros would pass.
func parseMetrics(r io.Reader) (metricsSample, error) {
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return metricsSample{}, fmt.Errorf("the broker's /metrics is not Prometheus text: %v", err)
	}
	s := metricsSample{RPCs: map[string]float64{}}
	gauge := func(name string) (float64, error) {
		f := fams[name]
		if f == nil || len(f.GetMetric()) == 0 {
			return 0, fmt.Errorf("the broker's /metrics has no %s: is it a keybroker of this tree?", name)
		}
		return value(f.GetMetric()[0]), nil
	}
	if s.RSS, err = gauge("process_resident_memory_bytes"); err != nil {
		return metricsSample{}, err
	}
	if s.Goroutines, err = gauge("go_goroutines"); err != nil {
		return metricsSample{}, err
	}
	if f := fams["rpc_server_call_duration_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			if strings.HasPrefix(label(m, "rpc_method"), apiPrefix) {
				s.RPCs[label(m, "rpc_response_status_code")] += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	if f := fams["keybroker_validity_checks_total"]; f != nil {
		for _, m := range f.GetMetric() {
			s.Checks += value(m)
		}
	}
	if f := fams["keybroker_azure_call_duration_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			if label(m, "operation") == "unwrap" && label(m, "outcome") == "ok" {
				s.Unwraps += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	if f := fams["keybroker_master_key_age_seconds"]; f != nil {
		s.ActiveKeys = len(f.GetMetric())
	}
	if f := fams["keybroker_state"]; f != nil {
		for _, m := range f.GetMetric() {
			if value(m) == 1 {
				s.State = label(m, "state")
			}
		}
	}
	if s.State == "" {
		return metricsSample{}, fmt.Errorf("the broker's /metrics has no keybroker_state at 1: is it a keybroker of this tree?")
	}
	return s, nil
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetUntyped() != nil:
		return m.GetUntyped().GetValue()
	}
	return 0
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// mib is bytes in MiB, for tables.
func mib(b float64) float64 { return b / (1 << 20) }

// sampler scrapes /metrics every interval until stopped, keeping every
// sample; a failed scrape is kept as an error, not a zero sample.
type sampler struct {
	samples []metricsSample
	errs    []string
	done    chan struct{}
	stop    context.CancelFunc
}

// startSampler scrapes at once and then every interval.
func startSampler(ctx context.Context, hc *http.Client, adminURL string, interval time.Duration) *sampler {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{done: make(chan struct{}), stop: cancel}
	go func() {
		defer close(s.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			m, err := scrapeMetrics(ctx, hc, adminURL)
			switch {
			case ctx.Err() != nil:
				return
			case err != nil:
				s.errs = append(s.errs, err.Error())
			default:
				s.samples = append(s.samples, m)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return s
}

// Stop ends the sampling and returns what was gathered.
func (s *sampler) Stop() ([]metricsSample, []string) {
	s.stop()
	<-s.done
	return s.samples, s.errs
}

// peak is the highest RSS and goroutine count over samples.
func peak(samples []metricsSample) (rss, goroutines float64) {
	for _, m := range samples {
		rss = max(rss, m.RSS)
		goroutines = max(goroutines, m.Goroutines)
	}
	return rss, goroutines
}

// statesSeen lists the distinct states over samples, in order of appearance.
func statesSeen(samples []metricsSample) []string {
	var out []string
	for _, m := range samples {
		if len(out) == 0 || out[len(out)-1] != m.State {
			out = append(out, m.State)
		}
	}
	return out
}

// joinStates is statesSeen for a table: "SERVING" or "SERVING>DEGRADED>SERVING".
func joinStates(samples []metricsSample) string {
	s := strings.Join(statesSeen(samples), ">")
	if s == "" {
		return "?"
	}
	return s
}
