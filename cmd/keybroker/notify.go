package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/keybroker/keybroker/internal/sdnotify"
)

// systemdReady returns serve's ready callback for a broker run by systemd
// with Type=notify (deploy/keybroker.service): READY=1 once it listens with
// its keys loaded, STOPPING=1 when ctx ends. Without NOTIFY_SOCKET it is nil.
func systemdReady(ctx context.Context, e *env, logger *slog.Logger) func(listening) {
	socket := e.getenv("NOTIFY_SOCKET")
	if socket == "" {
		return nil
	}
	return func(at listening) {
		status := fmt.Sprintf("STATUS=%s; address %s, unix %s", at.Broker.State().State, at.Address, at.Unix)
		if _, err := sdnotify.Notify(socket, sdnotify.Ready+"\n"+status); err != nil {
			logger.Error("telling systemd the broker is ready failed: the unit will time out in 'activating'", "err", err)
			return
		}
		go func() {
			<-ctx.Done()
			sdnotify.Notify(socket, sdnotify.Stopping)
		}()
	}
}
