package telemetry

import (
	"fmt"
	"net/http"
	"time"
)

// Admin configures the admin HTTP handler.
type Admin struct {
	// Metrics serves /metrics; nil answers 404 there.
	Metrics http.Handler
	// Ready reports whether the service takes traffic and, when it does
	// not, why; nil means always ready. It must return quickly.
	Ready func() (ready bool, reason string)
}

// Admin timeouts: the listener is for scrapers and probes on the node, not
// for slow clients.
const (
	AdminReadHeaderTimeout = 5 * time.Second
	AdminWriteTimeout      = 30 * time.Second
	AdminIdleTimeout       = 60 * time.Second
)

// Handler returns the admin listener's handler:
//
//	GET /metrics  the Prometheus exposition
//	GET /healthz  200 while the process runs (liveness)
//	GET /readyz   200 when Ready says so, else 503 with the reason (readiness)
//
// Anything else is 404; a method other than GET or HEAD is 405.
func (a Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	metrics := a.Metrics
	if metrics == nil {
		metrics = http.NotFoundHandler()
	}
	mux.Handle("GET /metrics", metrics)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		plain(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if a.Ready == nil {
			plain(w, http.StatusOK, "ready")
			return
		}
		ok, reason := a.Ready()
		if ok {
			plain(w, http.StatusOK, "ready: "+reason)
			return
		}
		plain(w, http.StatusServiceUnavailable, "not ready: "+reason)
	})
	return mux
}

// NewAdminServer is an http.Server for the admin handler with timeouts set.
func NewAdminServer(a Admin) *http.Server {
	return &http.Server{
		Handler:           a.Handler(),
		ReadHeaderTimeout: AdminReadHeaderTimeout,
		WriteTimeout:      AdminWriteTimeout,
		IdleTimeout:       AdminIdleTimeout,
	}
}

func plain(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	fmt.Fprintln(w, msg)
}
