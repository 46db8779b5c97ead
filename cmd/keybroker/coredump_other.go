//go:build !linux

package main

import "log/slog"

func disableCoreDumps(logger *slog.Logger) {
	logger.Warn("core dumps are not disabled on this OS: keep core files off this host")
}
