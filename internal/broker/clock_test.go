package broker

import (
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeClock drives the broker's schedulers (RunChecks, RunRotation) without
// real sleeps: Now, and AfterFunc timers that fire only when Advance moves
// the clock past them. Every AfterFunc call is announced on armed, which is
// how a test knows a scheduler has finished a pass (it arms its next timer
// right after).
type fakeClock struct {
	what string // the scheduler under test, for the failure message

	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
	armed  chan time.Duration
}

type fakeTimer struct {
	at            time.Time
	f             func()
	fired, halted bool
}

func newFakeClock(start time.Time, what string) *fakeClock {
	return &fakeClock{what: what, now: start, armed: make(chan time.Duration, 1024)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	t := &fakeTimer{at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	c.mu.Unlock()
	c.armed <- d
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		was := !t.fired && !t.halted
		t.halted = true
		return was
	}
}

// Advance moves the clock by d and runs the timers that came due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []*fakeTimer
	for _, t := range c.timers {
		if !t.fired && !t.halted && !t.at.After(c.now) {
			t.fired = true
			due = append(due, t)
		}
	}
	c.timers = slices.DeleteFunc(c.timers, func(t *fakeTimer) bool { return t.fired || t.halted })
	c.mu.Unlock()
	for _, t := range due {
		t.f()
	}
}

// waitArmed waits until the code under test arms a timer.
func (c *fakeClock) waitArmed(t *testing.T) time.Duration {
	t.Helper()
	const limit = 30 * time.Second
	select {
	case d := <-c.armed:
		return d
	case <-time.After(limit):
		t.Fatalf("%s armed no timer within %v: it is stuck", c.what, limit)
		return 0
	}
}

// noJitter is Config.Rand for tests that want the schedule's exact times.
func noJitter(time.Duration) time.Duration { return 0 }
