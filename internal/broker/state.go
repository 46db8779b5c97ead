package broker

import (
	"context"
	"sync"
	"time"

	"google.golang.org/grpc"

	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// State is the broker's serving state (DESIGN.md "States").
type State int

// The states. PAUSED is entered only on confirmed revocation.
const (
	StateServing State = iota + 1
	StateDegraded
	StatePaused
)

func (s State) String() string {
	switch s {
	case StateServing:
		return "SERVING"
	case StateDegraded:
		return "DEGRADED"
	case StatePaused:
		return "PAUSED"
	}
	return "UNKNOWN"
}

// EventKind says what a state change means to a watcher.
type EventKind int

// Event kinds, as WatchKeyState sends them.
const (
	EventCurrent  EventKind = iota + 1 // the state at subscription time
	EventServing                       // back to SERVING from DEGRADED
	EventDegraded                      // some or all regions failing; keys in memory still served
	EventPause                         // revocation confirmed: keys wiped, key RPCs refused
	EventResumed                       // PAUSED -> SERVING (or DEGRADED) after a successful revalidation
)

// String returns the kind as WatchKeyState and `keybroker watch` name it.
func (k EventKind) String() string {
	switch k {
	case EventCurrent:
		return "CURRENT"
	case EventServing:
		return "SERVING"
	case EventDegraded:
		return "DEGRADED"
	case EventPause:
		return "PAUSE"
	case EventResumed:
		return "RESUMED"
	}
	return "UNKNOWN"
}

// Event is one state change with its reason.
type Event struct {
	Kind   EventKind
	State  State
	Reason string
	Time   time.Time
}

// stateHub holds the current state and fans changes out to watchers. A slow
// watcher never blocks the broker: each has a one-slot mailbox that always
// holds the latest event, so it sees the newest state, not a backlog.
// Safe for concurrent use.
type stateHub struct {
	// changeMu serializes changes from the moment the new state becomes
	// visible until watchers are told, so they hear of changes in order.
	changeMu sync.Mutex

	mu       sync.Mutex // guards cur and watchers
	cur      Event
	watchers map[*watcher]struct{}

	done      chan struct{} // closed by close: every watch ends
	closeOnce sync.Once

	calls drain // key RPCs in flight, for a pause to wait on
}

type watcher struct {
	ch chan Event // capacity 1
}

func newStateHub(now time.Time) *stateHub {
	return &stateHub{
		cur:      Event{Kind: EventCurrent, State: StateServing, Reason: "starting", Time: now},
		watchers: make(map[*watcher]struct{}),
		done:     make(chan struct{}),
	}
}

// current returns the state and when and why it was entered.
func (h *stateHub) current() Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cur
}

// set moves to state s for reason and tells watchers. It returns the event
// sent and whether the state changed; a repeated state with a new reason
// updates the reason without an event.
func (h *stateHub) set(s State, reason string, now time.Time) (Event, bool) {
	return h.change(s, reason, now, nil, nil)
}

// change is set with two hooks. allow (nil = always) sees the state being
// left and may refuse the change, decided atomically with it: a change
// meant for SERVING must not undo a pause that came in between. apply
// (nil = none) runs once the new state is what current reports, and before
// any watcher hears of it: a pause wipes the keys there, so that nothing
// can load a key once PAUSED is visible, and no watcher sees PAUSE while a
// key is still in memory. apply runs for a repeated state too.
func (h *stateHub) change(s State, reason string, now time.Time, allow func(prev State) bool, apply func()) (Event, bool) {
	if allow != nil {
		// A refusal needs no turn: a change (a pause waiting for calls in
		// flight) may hold changeMu, and one of those calls may be asking.
		h.mu.Lock()
		ok := allow(h.cur.State)
		cur := h.cur
		h.mu.Unlock()
		if !ok {
			return cur, false
		}
	}
	h.changeMu.Lock()
	defer h.changeMu.Unlock()

	h.mu.Lock()
	prev := h.cur.State
	if allow != nil && !allow(prev) {
		cur := h.cur
		h.mu.Unlock()
		return cur, false
	}
	if prev == s {
		h.cur.Reason = reason
		cur := h.cur
		h.mu.Unlock()
		if apply != nil {
			apply()
		}
		return cur, false
	}
	ev := Event{State: s, Reason: reason, Time: now}
	switch {
	case s == StatePaused:
		ev.Kind = EventPause
	case prev == StatePaused:
		ev.Kind = EventResumed
	case s == StateDegraded:
		ev.Kind = EventDegraded
	default:
		ev.Kind = EventServing
	}
	h.cur = ev
	h.mu.Unlock()

	if apply != nil {
		apply()
	}

	h.mu.Lock()
	for w := range h.watchers {
		w.offer(ev)
	}
	h.mu.Unlock()
	return ev, true
}

// subscribe registers a watcher whose mailbox starts with the current state.
func (h *stateHub) subscribe() *watcher {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := &watcher{ch: make(chan Event, 1)}
	first := h.cur
	first.Kind = EventCurrent
	w.ch <- first
	h.watchers[w] = struct{}{}
	return w
}

func (h *stateHub) unsubscribe(w *watcher) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.watchers, w)
}

// close ends every watch, present and future. Safe to call more than once.
func (h *stateHub) close() { h.closeOnce.Do(func() { close(h.done) }) }

// offer replaces whatever the watcher has not read yet with ev. Called with
// the hub's lock held, so offers to one watcher never interleave.
func (w *watcher) offer(ev Event) {
	select {
	case <-w.ch:
	default:
	}
	w.ch <- ev
}

// Shutdown prepares a graceful stop: health turns NOT_SERVING and every
// WatchKeyState stream ends with UNAVAILABLE, so that a server waiting for
// RPCs in flight does not wait for watchers (they reconnect to the next
// instance). Key RPCs keep being served until Close. Safe to call more than
// once.
func (b *Broker) Shutdown() {
	b.health.Shutdown()
	b.hub.close()
}

// pauseDrainWait bounds how long a pause waits for the key RPCs already
// in their handler before it tells watchers: long enough for a reply
// served from memory, short enough that a call stuck on a slow vault (it
// will be refused anyway) does not hold the PAUSE event back.
const pauseDrainWait = 250 * time.Millisecond

// pauseFlushMargin is how long a pause waits after those calls returned:
// gRPC writes a reply after its handler returns and tells nobody when it
// has left, so the replies get this head start on the PAUSE event, on
// their own connections, to reach their clients first.
const pauseFlushMargin = 50 * time.Millisecond

// keyMethods are the RPCs that use, and may return, key material.
var keyMethods = map[string]bool{
	keybrokerv1.KeyBrokerService_GetMasterKey_FullMethodName: true,
	keybrokerv1.KeyBrokerService_WrapDEK_FullMethodName:      true,
	keybrokerv1.KeyBrokerService_UnwrapDEK_FullMethodName:    true,
	keybrokerv1.KeyBrokerService_RotateDEK_FullMethodName:    true,
	keybrokerv1.KeyBrokerService_RewrapDEK_FullMethodName:    true,
}

// UnaryInterceptor tracks the key RPCs in flight. A key RPC that passed
// its last PAUSED check just before a pause still returns its key; with
// this interceptor installed the pause waits for such calls (up to 250 ms)
// before it tells watchers, so that their replies are on their way before
// the PAUSE event is. Install it after authorization.
func (b *Broker) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if !keyMethods[info.FullMethod] {
			return handler(ctx, req)
		}
		defer b.hub.calls.enter()()
		return handler(ctx, req)
	}
}

// drain counts calls by epoch, so that a pause can wait for the calls that
// started before it without waiting for those that keep arriving. The zero
// value is ready. Safe for concurrent use.
type drain struct {
	mu  sync.Mutex
	cur *sync.WaitGroup
}

// enter counts a call in the current epoch; the caller calls leave once done.
func (d *drain) enter() (leave func()) {
	d.mu.Lock()
	if d.cur == nil {
		d.cur = new(sync.WaitGroup)
	}
	wg := d.cur
	wg.Add(1)
	d.mu.Unlock()
	return wg.Done
}

// wait starts a new epoch and waits, at most limit, for the calls of the
// previous one to leave, then margin more if there were any: their replies
// are still being written.
func (d *drain) wait(limit, margin time.Duration) { waitEpoch(d.flip(), limit, margin) }

// flip starts a new epoch and returns the previous one, nil if it had no call.
func (d *drain) flip() *sync.WaitGroup {
	d.mu.Lock()
	defer d.mu.Unlock()
	wg := d.cur
	d.cur = nil
	return wg
}

func waitEpoch(wg *sync.WaitGroup, limit, margin time.Duration) {
	if wg == nil {
		return
	}
	left := make(chan struct{})
	go func() { wg.Wait(); close(left) }()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-left:
	case <-t.C:
	}
	time.Sleep(margin)
}
