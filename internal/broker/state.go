package broker

import (
	"sync"
	"time"
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
	EventResumed                       // PAUSED -> SERVING after a successful revalidation
)

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
	mu       sync.Mutex
	cur      Event
	watchers map[*watcher]struct{}
}

type watcher struct {
	ch chan Event // capacity 1
}

func newStateHub(now time.Time) *stateHub {
	return &stateHub{
		cur:      Event{Kind: EventCurrent, State: StateServing, Reason: "starting", Time: now},
		watchers: make(map[*watcher]struct{}),
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
	h.mu.Lock()
	defer h.mu.Unlock()
	prev := h.cur.State
	if prev == s {
		h.cur.Reason = reason
		return h.cur, false
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
	for w := range h.watchers {
		w.offer(ev)
	}
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

// offer replaces whatever the watcher has not read yet with ev. Called with
// the hub's lock held, so offers to one watcher never interleave.
func (w *watcher) offer(ev Event) {
	select {
	case <-w.ch:
	default:
	}
	w.ch <- ev
}
