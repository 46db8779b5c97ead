package akvemu

import (
	"fmt"
	"net"
	"net/http"
	"strings"
)

// serveHTTPS routes by Host: vault hosts and aliases to their vault,
// anything else (127.0.0.1, localhost) to the Entra and managed-identity
// endpoints.
func (s *Server) serveHTTPS(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			// A bug, never bad input: report it as a 500 and keep serving.
			s.log.Error("akvemu: handler panic", "path", r.URL.Path, "panic", fmt.Sprint(p))
			writeJSON(w, http.StatusInternalServerError, map[string]any{"error": map[string]string{"code": "InternalServerError", "message": "The emulator failed; see its log."}})
		}
	}()
	host := hostOnly(r.Host)
	if v := s.hostVault[host]; v != nil {
		s.serveVault(w, r, v, host)
		return
	}
	s.serveLogin(w, r)
}

// hostOnly strips the port and trailing dot from a Host header and lower
// cases it.
func hostOnly(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	h = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(h, "]"), "["), ".")
	return strings.ToLower(h)
}
