package sdnotify

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen opens a unix datagram socket as systemd does for NOTIFY_SOCKET.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatalf("ListenUnixgram(%q) err = %v", name, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func read(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("reading the notification: %v", err)
	}
	return string(buf[:n])
}

func TestNotify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify.sock")
	abstract := "keybroker-test-" + strings.ReplaceAll(t.Name(), "/", "-") + time.Now().Format("150405.000000000")
	tests := []struct {
		name   string
		socket string
		listen string
	}{
		{"path", path, path},
		{"abstract", "@" + abstract, "@" + abstract},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := listen(t, tc.listen)
			sent, err := Notify(tc.socket, Ready+"\nSTATUS=serving")
			if !sent || err != nil {
				t.Fatalf("Notify(%q) = %v, %v; want true, nil", tc.socket, sent, err)
			}
			if got := read(t, c); got != "READY=1\nSTATUS=serving" {
				t.Errorf("systemd read %q, want %q", got, "READY=1\nSTATUS=serving")
			}
		})
	}
}

func TestNotifyErrors(t *testing.T) {
	tests := []struct {
		name, socket, state string
		sent                bool
		wantErr             string
	}{
		{"not under systemd", "", Ready, false, ""},
		{"relative path", "notify.sock", Ready, false, "neither an absolute path"},
		{"no listener", filepath.Join(t.TempDir(), "absent.sock"), Ready, false, "sdnotify: "},
		{"empty state", "/run/systemd/notify", "", false, "empty state"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sent, err := Notify(tc.socket, tc.state)
			if sent != tc.sent {
				t.Errorf("Notify(%q, %q) sent = %v, want %v", tc.socket, tc.state, sent, tc.sent)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Errorf("Notify(%q) err = %v, want nil", tc.socket, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Notify(%q, %q) err = %v, want one containing %q", tc.socket, tc.state, err, tc.wantErr)
			}
		})
	}
}
