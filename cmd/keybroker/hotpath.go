package main

import (
	"log/slog"
	"os"
	"runtime/debug"

	"google.golang.org/grpc"
)

// streamWorkers is the number of goroutines that serve RPCs and stay:
// without them grpc-go starts a goroutine per RPC, whose stack then grows
// (runtime.morestack, copystack) through the interceptors, codec and
// handler on every call. With 20 calls in flight on 2 cores, 32 workers
// are rarely all busy; when they are, grpc-go starts a goroutine as before.
const streamWorkers = 32

// defaultGCPercent is the GC target the broker runs with unless GOGC is set.
// Its live heap is a few MB, so at the default of 100 a busy broker collects
// about twenty times a second, and each cycle's fixed costs (its goroutine
// stacks and the large binary's globals) dominate; at 400 the heap stays
// around 20 MB. Key material does not depend on it: key buffers are wiped
// explicitly, and the cache forces collections after evictions.
const defaultGCPercent = 400

// hotPathOption is the gRPC server option for the hot path (docs/bench.md).
func hotPathOption() grpc.ServerOption { return grpc.NumStreamWorkers(streamWorkers) }

// tuneGC sets the GC target to defaultGCPercent unless the operator set
// GOGC (or GOMEMLIMIT, which then governs).
func tuneGC(logger *slog.Logger) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetGCPercent(defaultGCPercent)
	logger.Debug("GC target set", "gogc", defaultGCPercent)
}
