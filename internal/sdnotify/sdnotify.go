// Package sdnotify tells systemd about a service's state, as sd_notify(3)
// does, over the unix datagram socket systemd names in NOTIFY_SOCKET, without
// cgo or libsystemd. keybroker serve uses it for Type=notify readiness: the
// unit is "started" only once the broker listens with its keys loaded.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// Common states (sd_notify(3)).
const (
	Ready    = "READY=1"
	Stopping = "STOPPING=1"
)

// Notify sends state, newline-separated KEY=VALUE assignments such as
// "READY=1\nSTATUS=serving", to socket, the value of NOTIFY_SOCKET: a path,
// or an abstract socket name starting with '@'. An empty socket means the
// process was not started by systemd with Type=notify: Notify does nothing
// and reports false. It is safe for concurrent use.
func Notify(socket, state string) (bool, error) {
	if socket == "" {
		return false, nil
	}
	if state == "" {
		return false, errors.New("sdnotify: empty state")
	}
	name := socket
	switch {
	case strings.HasPrefix(socket, "@"):
		name = "\x00" + socket[1:]
	case !strings.HasPrefix(socket, "/"):
		return false, fmt.Errorf("sdnotify: NOTIFY_SOCKET %q is neither an absolute path nor an abstract socket (@name)", socket)
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sdnotify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		return false, fmt.Errorf("sdnotify: %w", err)
	}
	return true, nil
}
