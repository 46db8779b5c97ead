package cache

import (
	"runtime"
	"sync/atomic"
	"time"
)

// A wiped key may leave temporaries behind that only the garbage collector
// can reach: built with GOEXPERIMENT=runtimesecret, heap memory allocated
// under secret.Do (internal/wipe) is erased when a collection finds it
// unreachable. So every wipe is followed by a collection rather than
// waiting for the next one, which on an idle broker may be minutes away.

// collect runs two collections: the first frees what the wipe made
// unreachable, the second whatever only the first's sweep released.
func collect() {
	runtime.GC()
	runtime.GC()
}

// collectState is 0 when no collection is scheduled, 1 while one runs, 2
// when another must follow it (a wipe came during the first).
var collectState atomic.Int32

// collectSoon runs collect on its own goroutine: evictions happen with the
// LRU locked and must not wait for it. A wipe during a collection gets one
// more after it.
func collectSoon() {
	for {
		s := collectState.Load()
		if s == 2 {
			return
		}
		if collectState.CompareAndSwap(s, s+1) {
			if s == 0 {
				go collectLoop()
			}
			return
		}
	}
}

// collectEvery spaces the collections evictions ask for: with a tiny TTL
// (the failover benchmark runs with 1ms) every request evicts, and a
// collection per eviction would cost more than the request.
const collectEvery = time.Second

func collectLoop() {
	for {
		start := time.Now()
		collect()
		if collectState.CompareAndSwap(1, 0) {
			return
		}
		collectState.Store(1)
		time.Sleep(collectEvery - time.Since(start))
	}
}
