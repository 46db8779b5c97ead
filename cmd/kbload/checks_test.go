package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// fakeStatus answers GetStatus from a script, one answer per call; the last
// answer repeats. Only GetStatus is implemented.
type fakeStatus struct {
	keybrokerv1.KeyBrokerServiceClient
	mu      sync.Mutex
	answers []statusAnswer
	calls   int
}

type statusAnswer struct {
	state keybrokerv1.State
	last  time.Time // zero = no validation yet
	err   error
}

func (f *fakeStatus) GetStatus(ctx context.Context, _ *keybrokerv1.GetStatusRequest, _ ...grpc.CallOption) (*keybrokerv1.GetStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.answers[min(f.calls, len(f.answers)-1)]
	f.calls++
	if a.err != nil {
		return nil, a.err
	}
	resp := &keybrokerv1.GetStatusResponse{
		State: a.state,
		Keys: []*keybrokerv1.KeyStatus{
			{Name: "master", State: "ACTIVE", CurrentVersion: "v2"},
			{Name: "old", State: "DEACTIVATED", CurrentVersion: "v1"},
			{Name: "new", State: "ACTIVE"}, // no version yet: nothing to unwrap
		},
	}
	if !a.last.IsZero() {
		resp.LastValidation = timestamppb.New(a.last)
	}
	return resp, nil
}

func TestStatusWatcherPoll(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)
	serv := keybrokerv1.State_STATE_SERVING
	tests := []struct {
		name    string
		answers []statusAnswer // the first is the baseline
		want    brokerActivity
	}{
		{
			name:    "no check",
			answers: []statusAnswer{{state: serv}, {state: serv}, {state: serv}},
			want:    brokerActivity{Checks: 0, ActiveKeys: 1, States: map[string]int{"STATE_SERVING": 3}},
		},
		{
			name:    "a check before the start is not counted",
			answers: []statusAnswer{{state: serv, last: t0}, {state: serv, last: t0}, {state: serv, last: t0}},
			want:    brokerActivity{Checks: 0, ActiveKeys: 1, States: map[string]int{"STATE_SERVING": 3}},
		},
		{
			name: "two checks, each seen twice",
			answers: []statusAnswer{
				{state: serv, last: t0},
				{state: serv, last: t0.Add(time.Minute)}, {state: serv, last: t0.Add(time.Minute)},
				{state: serv, last: t0.Add(2 * time.Minute)}, {state: serv, last: t0.Add(2 * time.Minute)},
			},
			want: brokerActivity{Checks: 2, ActiveKeys: 1, States: map[string]int{"STATE_SERVING": 5}},
		},
		{
			name: "first check ever, then degraded, then a failed poll",
			answers: []statusAnswer{
				{state: serv},
				{state: keybrokerv1.State_STATE_DEGRADED, last: t0},
				{err: status.Error(codes.Unavailable, "down")},
			},
			want: brokerActivity{Checks: 1, ActiveKeys: 1, PollErrors: 1, States: map[string]int{"STATE_SERVING": 1, "STATE_DEGRADED": 1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := &fakeStatus{answers: tc.answers}
			w := &statusWatcher{client: f, states: map[string]int{}}
			ctx := context.Background()
			w.poll(ctx, true)
			for range tc.answers[1:] {
				w.poll(ctx, false)
			}
			got := brokerActivity{Checks: w.checks, ActiveKeys: w.activeKeys, States: w.states, PollErrors: w.pollErrors}
			if got.Checks != tc.want.Checks || got.ActiveKeys != tc.want.ActiveKeys || got.PollErrors != tc.want.PollErrors ||
				len(got.States) != len(tc.want.States) {
				t.Fatalf("after %d polls: %+v, want %+v", len(tc.answers), got, tc.want)
			}
			for k, v := range tc.want.States {
				if got.States[k] != v {
					t.Errorf("after %d polls: states %v, want %v", len(tc.answers), got.States, tc.want.States)
				}
			}
		})
	}
}

func TestWatchStatusStop(t *testing.T) {
	t0 := time.Date(2026, 11, 23, 13, 0, 0, 0, time.UTC)
	f := &fakeStatus{answers: []statusAnswer{
		{state: keybrokerv1.State_STATE_SERVING, last: t0},
		{state: keybrokerv1.State_STATE_SERVING, last: t0.Add(time.Minute)},
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w := watchStatus(ctx, f)
	// Stop polls once more: a check that ended just before it is counted
	// even when no tick came.
	got := w.stop(ctx)
	if got.Checks != 1 || got.States["STATE_SERVING"] < 2 || got.PollErrors != 0 {
		t.Errorf("watchStatus().stop() = %+v, want 1 check, at least 2 SERVING polls", got)
	}
	// Polls after stop would need a running watcher: none may happen.
	f.mu.Lock()
	n := f.calls
	f.mu.Unlock()
	select {
	case <-w.done:
	default:
		t.Errorf("stop() returned before the poller ended")
	}
	if n < 2 {
		t.Errorf("GetStatus called %d times, want the baseline and the final poll", n)
	}
}

func TestStatusWatcherCancelledPollIsNoError(t *testing.T) {
	f := &fakeStatus{answers: []statusAnswer{{err: context.Canceled}}}
	w := &statusWatcher{client: f, states: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w.poll(ctx, false)
	if w.pollErrors != 0 {
		t.Errorf("poll(cancelled ctx) counted %d errors, want 0: kbload stopping is not a broker failure", w.pollErrors)
	}
}
