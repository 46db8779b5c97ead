package akvemu

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The 403 inner error codes RevokeAccess can produce.
const (
	CodeForbiddenByRbac     = "ForbiddenByRbac"
	CodeForbiddenByPolicy   = "ForbiddenByPolicy"
	CodeForbiddenByFirewall = "ForbiddenByFirewall"
)

// maxLatency bounds an injected delay so that a typo cannot wedge a test run.
const maxLatency = 10 * time.Minute

// Fault is an injected failure. A fault with Latency and one of Status,
// Reset or Blackhole delays, then fails; with Latency alone it only delays.
type Fault struct {
	Host       string        `json:"host"`        // vault host or alias; "login" = the Entra endpoints; "" = every host
	Op         string        `json:"op"`          // "" = every operation; else one of Ops()
	Latency    time.Duration `json:"latency"`     // added before answering (JSON: Go duration string like "250ms")
	Status     int           `json:"status"`      // answer this HTTP status with the service's error body
	Code       string        `json:"code"`        // innererror code for Status (optional; 403 defaults to ForbiddenByRbac)
	RetryAfter int           `json:"retry_after"` // seconds, sets Retry-After
	Reset      bool          `json:"reset"`       // hijack and close the connection with a TCP RST
	Blackhole  bool          `json:"blackhole"`   // never answer until the client gives up, faults are cleared or Close
	Count      int           `json:"count"`       // apply to the next Count matching requests, 0 = until cleared
}

// faultWire is Fault on the wire, with the latency as a duration string.
type faultWire struct {
	Host       string `json:"host,omitempty"`
	Op         string `json:"op,omitempty"`
	Latency    string `json:"latency,omitempty"`
	Status     int    `json:"status,omitempty"`
	Code       string `json:"code,omitempty"`
	RetryAfter int    `json:"retry_after,omitempty"`
	Reset      bool   `json:"reset,omitempty"`
	Blackhole  bool   `json:"blackhole,omitempty"`
	Count      int    `json:"count,omitempty"`
}

// MarshalJSON writes Latency as a Go duration string.
func (f Fault) MarshalJSON() ([]byte, error) {
	w := faultWire{Host: f.Host, Op: f.Op, Status: f.Status, Code: f.Code, RetryAfter: f.RetryAfter, Reset: f.Reset, Blackhole: f.Blackhole, Count: f.Count}
	if f.Latency != 0 {
		w.Latency = f.Latency.String()
	}
	return json.Marshal(w)
}

// UnmarshalJSON reads Latency as a Go duration string ("250ms", "2s").
// Unknown fields are errors, so that a misspelt field does not silently
// inject a different fault.
func (f *Fault) UnmarshalJSON(b []byte) error {
	var w faultWire
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return fmt.Errorf("fault: %w (latency is a string such as \"250ms\")", err)
	}
	var lat time.Duration
	if w.Latency != "" {
		var err error
		if lat, err = time.ParseDuration(w.Latency); err != nil {
			return fmt.Errorf("fault: latency %q is not a Go duration such as \"250ms\" or \"2s\"", truncate(w.Latency, 40))
		}
	}
	*f = Fault{Host: w.Host, Op: w.Op, Latency: lat, Status: w.Status, Code: w.Code, RetryAfter: w.RetryAfter, Reset: w.Reset, Blackhole: w.Blackhole, Count: w.Count}
	return nil
}

var codeRE = regexp.MustCompile(`^[A-Za-z0-9_]{1,64}$`)

// validateFault checks a fault against the served hosts.
func (s *Server) validateFault(f *Fault) error {
	f.Host = strings.ToLower(f.Host)
	if f.Host != "" && f.Host != HostLogin && s.hostVault[f.Host] == nil {
		return fmt.Errorf("%w: fault host %q is neither a served vault host, %q nor empty", ErrBadRequest, truncate(f.Host, 80), HostLogin)
	}
	if f.Op != "" && !slices.Contains(Ops(), f.Op) {
		return fmt.Errorf("%w: fault op %q: use one of %s, or empty for all", ErrBadRequest, truncate(f.Op, 40), strings.Join(Ops(), ", "))
	}
	if f.Latency < 0 || f.Latency > maxLatency {
		return fmt.Errorf("%w: fault latency %v: use 0 to %v", ErrBadRequest, f.Latency, maxLatency)
	}
	if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
		return fmt.Errorf("%w: fault status %d: use an HTTP error status from 400 to 599", ErrBadRequest, f.Status)
	}
	if f.Code != "" && (f.Status == 0 || !codeRE.MatchString(f.Code)) {
		return fmt.Errorf("%w: fault code %q needs a status and must be letters, digits or _", ErrBadRequest, truncate(f.Code, 40))
	}
	if f.RetryAfter < 0 || f.RetryAfter > 3600 {
		return fmt.Errorf("%w: fault retry_after %d: use 0 to 3600 seconds", ErrBadRequest, f.RetryAfter)
	}
	if f.Count < 0 {
		return fmt.Errorf("%w: fault count %d is negative (0 means until cleared)", ErrBadRequest, f.Count)
	}
	kinds := 0
	for _, on := range []bool{f.Status != 0, f.Reset, f.Blackhole} {
		if on {
			kinds++
		}
	}
	if kinds > 1 {
		return fmt.Errorf("%w: a fault is one of status, reset or blackhole (plus optional latency)", ErrBadRequest)
	}
	if kinds == 0 && f.Latency == 0 {
		return fmt.Errorf("%w: the fault does nothing: set latency, status, reset or blackhole", ErrBadRequest)
	}
	return nil
}

// faultTable holds the active faults. Safe for concurrent use.
type faultTable struct {
	mu      sync.Mutex
	list    []*activeFault
	cleared chan struct{} // closed and replaced by clear
}

type activeFault struct {
	f    Fault
	left int // requests left when f.Count > 0
}

func newFaultTable() *faultTable { return &faultTable{cleared: make(chan struct{})} }

func (t *faultTable) add(f Fault) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.list = append(t.list, &activeFault{f: f, left: f.Count})
}

// clear removes every fault and releases the requests they hold.
func (t *faultTable) clear() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.list = nil
	close(t.cleared)
	t.cleared = make(chan struct{})
}

// take returns the first fault matching a request, consuming one use of a
// counted fault, and the channel closed when faults are cleared.
func (t *faultTable) take(host, op string) (Fault, <-chan struct{}, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, a := range t.list {
		if (a.f.Host == "" || a.f.Host == host) && (a.f.Op == "" || a.f.Op == op) {
			if a.f.Count > 0 {
				a.left--
				if a.left == 0 {
					t.list = slices.Delete(t.list, i, i+1)
				}
			}
			return a.f, t.cleared, true
		}
	}
	return Fault{}, nil, false
}

// applyFault injects the fault matching a request, if any. It reports
// whether the request has been answered (or its connection dropped).
func (s *Server) applyFault(w http.ResponseWriter, r *http.Request, host, op string) bool {
	f, cleared, ok := s.faults.take(host, op)
	if !ok {
		return false
	}
	s.log.Info("akvemu: injecting fault", "host", host, "op", op, "latency", f.Latency, "status", f.Status, "reset", f.Reset, "blackhole", f.Blackhole)
	if f.Latency > 0 {
		t := time.NewTimer(f.Latency)
		defer t.Stop()
		select {
		case <-t.C:
		case <-cleared:
			return false
		case <-r.Context().Done():
			panic(http.ErrAbortHandler)
		case <-s.closing:
			panic(http.ErrAbortHandler)
		}
	}
	switch {
	case f.Blackhole:
		if h := s.onHold.Load(); h != nil {
			(*h)()
		}
		select {
		case <-cleared:
			return false
		case <-r.Context().Done():
			panic(http.ErrAbortHandler)
		case <-s.closing:
			panic(http.ErrAbortHandler)
		}
	case f.Reset:
		resetConnection(w)
		return true
	case f.Status != 0:
		if f.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(f.RetryAfter))
		}
		if host == HostLogin {
			writeEntraError(w, r, faultTokenError(f))
			return true
		}
		e := faultAKVError(f)
		if e.status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer authorization="`+s.authority+s.tenant+`", resource="`+VaultResource+`"`)
		}
		writeAKVError(w, e)
		return true
	}
	return false
}

// resetConnection drops the connection with a TCP RST (SO_LINGER 0), the
// way a broken middlebox or a crashed front end does.
func resetConnection(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	raw := conn
	if tc, ok := conn.(*tls.Conn); ok {
		raw = tc.NetConn()
	}
	if tcp, ok := raw.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = raw.Close()
}

// faultAKVError is the Key Vault answer for an injected status.
func faultAKVError(f Fault) *akvError {
	e := &akvError{status: f.Status, inner: f.Code}
	switch f.Status {
	case http.StatusTooManyRequests:
		e.code, e.msg = "Throttled", "Request was not processed because too many requests were received. Reason: injected by the emulator. Retry after the number of seconds in Retry-After."
	case http.StatusServiceUnavailable:
		e.code, e.msg = "ServiceUnavailable", "The service is temporarily unavailable (injected fault). Retry later."
	case http.StatusInternalServerError:
		e.code, e.msg = "InternalServerError", "An unexpected error occurred (injected fault)."
	case http.StatusForbidden:
		e.code, e.msg = "Forbidden", "Caller is not authorized to perform action on resource (injected fault)."
		if e.inner == "" {
			e.inner = CodeForbiddenByRbac
		}
	case http.StatusUnauthorized:
		e.code, e.msg = "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token (injected fault)."
	case http.StatusNotFound:
		e.code, e.msg = "KeyNotFound", "A key was not found in this key vault (injected fault)."
	case http.StatusBadRequest:
		e.code, e.msg = "BadParameter", "The request was rejected (injected fault)."
	default:
		e.code = strings.ReplaceAll(http.StatusText(f.Status), " ", "")
		if e.code == "" {
			e.code = "Error" + strconv.Itoa(f.Status)
		}
		e.msg = "HTTP " + strconv.Itoa(f.Status) + " (injected fault)."
	}
	return e
}

// faultTokenError is the Entra answer for an injected status.
func faultTokenError(f Fault) *tokenError {
	e := &tokenError{status: f.Status, name: f.Code}
	switch {
	case f.Status == http.StatusTooManyRequests || f.Status >= 500:
		e.code, e.desc = 90033, "A transient error has occurred. Please try again. (injected fault)"
		if e.name == "" {
			e.name = "temporarily_unavailable"
		}
	case f.Status == http.StatusUnauthorized:
		e.code, e.desc = 7000215, "Invalid client secret provided. (injected fault)"
		if e.name == "" {
			e.name = "invalid_client"
		}
	default:
		e.code, e.desc = 9002313, "Invalid request. Request is malformed or invalid. (injected fault)"
		if e.name == "" {
			e.name = "invalid_request"
		}
	}
	return e
}

// counterTable counts requests per requested host and operation. Safe for
// concurrent use.
type counterTable struct {
	mu sync.Mutex
	m  map[string]map[string]int64
}

func newCounterTable() *counterTable { return &counterTable{m: map[string]map[string]int64{}} }

func (c *counterTable) add(host, op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[host] == nil {
		c.m[host] = map[string]int64{}
	}
	c.m[host][op]++
}

func (c *counterTable) snapshot() map[string]map[string]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]map[string]int64, len(c.m))
	for h, ops := range c.m {
		out[h] = make(map[string]int64, len(ops))
		for op, n := range ops {
			out[h][op] = n
		}
	}
	return out
}

func (c *counterTable) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m = map[string]map[string]int64{}
}
