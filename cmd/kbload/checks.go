package main

import (
	"context"
	"maps"
	"sync"
	"time"

	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// statusPollInterval is how often the watcher asks GetStatus: a few calls
// against thousands per second, and far shorter than any check interval.
const statusPollInterval = time.Second

// statusWatcher follows the broker through GetStatus while load runs. The
// broker runs a validity check on a schedule (a Key Vault get of the
// customer key and an unwrap per active key: config validation.interval,
// 60s by default), so a long enough bench sees some. Those calls are the
// broker doing its job, not the hot path reaching Azure; the watcher
// counts the checks, by their last_validation times, so the judgement can
// tell the two apart. It also notes any state other than SERVING.
type statusWatcher struct {
	client keybrokerv1.KeyBrokerServiceClient

	mu         sync.Mutex
	last       time.Time // last_validation seen most recently
	checks     int       // distinct last_validation times seen after the start
	activeKeys int       // keys that are ACTIVE with a current version
	states     map[string]int
	pollErrors int

	cancel context.CancelFunc
	done   chan struct{}
}

// watchStatus polls once (the baseline, before the counters are reset), then
// keeps polling in the background until stop.
func watchStatus(ctx context.Context, client keybrokerv1.KeyBrokerServiceClient) *statusWatcher {
	w := &statusWatcher{client: client, states: map[string]int{}, done: make(chan struct{})}
	w.poll(ctx, true)
	ctx, w.cancel = context.WithCancel(ctx)
	go func() {
		defer close(w.done)
		t := time.NewTicker(statusPollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				w.poll(ctx, false)
			}
		}
	}()
	return w
}

func (w *statusWatcher) poll(ctx context.Context, baseline bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := w.client.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if ctx.Err() == nil {
			w.pollErrors++
		}
		return
	}
	w.states[st.GetState().String()]++
	active := 0
	for _, k := range st.GetKeys() {
		if k.GetState() == "ACTIVE" && k.GetCurrentVersion() != "" {
			active++
		}
	}
	w.activeKeys = max(w.activeKeys, active)
	var lv time.Time
	if ts := st.GetLastValidation(); ts != nil {
		lv = ts.AsTime()
	}
	if !baseline && !lv.IsZero() && !lv.Equal(w.last) {
		w.checks++
	}
	w.last = lv
}

// brokerActivity is what the watcher saw.
type brokerActivity struct {
	Checks     int            `json:"scheduled_checks"`
	ActiveKeys int            `json:"active_keys"`
	States     map[string]int `json:"states"` // GetStatus polls per state
	PollErrors int            `json:"poll_errors"`
}

// stop polls a last time (after the counters were read, so no check whose
// calls were counted is missed) and returns what the watcher saw.
func (w *statusWatcher) stop(ctx context.Context) brokerActivity {
	w.cancel()
	<-w.done
	w.poll(ctx, false)
	w.mu.Lock()
	defer w.mu.Unlock()
	return brokerActivity{Checks: w.checks, ActiveKeys: w.activeKeys, States: maps.Clone(w.states), PollErrors: w.pollErrors}
}
