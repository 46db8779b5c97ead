package main

import (
	"log/slog"

	"golang.org/x/sys/unix"
)

// disableCoreDumps keeps key bytes out of core files: no core size, and the
// process marked non-dumpable (which also stops other users' ptrace).
func disableCoreDumps(logger *slog.Logger) {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		logger.Warn("could not disable core dumps", "err", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		logger.Warn("could not mark the process non-dumpable", "err", err)
	}
}
