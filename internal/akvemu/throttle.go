package akvemu

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// ThrottleWindow is the length of Key Vault's throttling window: limits are
// per vault per 10 seconds.
const ThrottleWindow = 10 * time.Second

// throttleHistory is the number of past windows whose counters are kept (one hour).
const throttleHistory = 360

// Azure's published Key Vault service limits, transactions per vault per
// 10 s, for "all other transactions" (get, wrap, unwrap, encrypt, decrypt,
// and the vault's other calls) by key type, size and protection. Azure
// enforces their weighted sum: with RSA 2048 software (4,000) as the unit,
// an RSA 3072 HSM call (500) weighs 8.
var otherLimits = map[bool]map[int]int{
	false: {2048: 4000, 3072: 1000, 4096: 500}, // software-protected keys
	true:  {2048: 2000, 3072: 500, 4096: 250},  // HSM-protected keys
}

// Key creation is limited apart: 10 software or 5 HSM creates per vault per
// 10 s (weighted the same way: one HSM create weighs 2).
var createLimits = map[bool]int{false: 10, true: 5}

const (
	otherBudget  = 4000 // weight units per window, before Throttle.Scale
	createBudget = 10
)

// Throttle turns on Key Vault's throttling model. The zero value is off.
type Throttle struct {
	// Enabled turns throttling on.
	Enabled bool `json:"enabled"`
	// Scale multiplies every limit (0 means 1): a simulation that shortens
	// its intervals by a factor scales the vault's limits by the same one.
	Scale float64 `json:"scale"`
}

// ThrottleCounts are one window's counters for one vault. Admitted and
// Throttled count calls; Units is the weighted sum admitted, against Limit.
type ThrottleCounts struct {
	Vault            string    `json:"vault"`
	Start            time.Time `json:"start"`
	Admitted         int64     `json:"admitted"`
	Throttled        int64     `json:"throttled"`
	Units            int64     `json:"units"`
	Limit            int64     `json:"limit"`
	CreatesAdmitted  int64     `json:"creates_admitted"`
	CreatesThrottled int64     `json:"creates_throttled"`
}

// throttler applies Throttle per vault per window. Safe for concurrent use.
type throttler struct {
	mu      sync.Mutex
	cfg     Throttle
	windows map[string][]*ThrottleCounts // by vault host, oldest first
}

func newThrottler(cfg Throttle) *throttler {
	return &throttler{cfg: cfg, windows: map[string][]*ThrottleCounts{}}
}

func validThrottle(t Throttle) error {
	if t.Scale < 0 || math.IsNaN(t.Scale) || math.IsInf(t.Scale, 0) || t.Scale > 1e6 {
		return fmt.Errorf("%w: throttle scale %v: use a positive factor (1 = Azure's limits), or 0 for 1", ErrBadRequest, t.Scale)
	}
	return nil
}

func (t *throttler) set(cfg Throttle) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cfg = cfg
}

func (t *throttler) get() Throttle {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cfg
}

// scaled returns budget × scale, at least 1.
func (t *throttler) scaled(budget int) int64 {
	s := t.cfg.Scale
	if s == 0 {
		s = 1
	}
	return max(1, int64(math.Round(float64(budget)*s)))
}

// weight returns the cost of one call on a key of the given protection and
// size, in units of the budget, for creates or other calls.
func weight(hsm bool, size int, create bool) int64 {
	if create {
		return int64(createBudget / createLimits[hsm])
	}
	l, ok := otherLimits[hsm][size]
	if !ok {
		return 1
	}
	return int64(otherBudget / l)
}

// admit counts a call of the given weight on vault at now and reports
// whether it is admitted; when not, retryAfter is the time left in the
// window. Calls are never counted when throttling is off.
func (t *throttler) admit(vault string, now time.Time, w int64, create bool) (ok bool, retryAfter time.Duration) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.cfg.Enabled {
		return true, 0
	}
	start := now.Truncate(ThrottleWindow)
	ws := t.windows[vault]
	var c *ThrottleCounts
	if n := len(ws); n > 0 && ws[n-1].Start.Equal(start) {
		c = ws[n-1]
	} else {
		c = &ThrottleCounts{Vault: vault, Start: start, Limit: t.scaled(otherBudget)}
		ws = append(ws, c)
		if len(ws) > throttleHistory {
			ws = ws[len(ws)-throttleHistory:]
		}
		t.windows[vault] = ws
	}
	if create {
		if c.CreatesAdmitted*w+w > t.scaled(createBudget) {
			c.CreatesThrottled++
			return false, start.Add(ThrottleWindow).Sub(now)
		}
		c.CreatesAdmitted++
		return true, 0
	}
	if c.Units+w > c.Limit {
		c.Throttled++
		return false, start.Add(ThrottleWindow).Sub(now)
	}
	c.Units += w
	c.Admitted++
	return true, 0
}

// snapshot returns every kept window, per vault oldest first.
func (t *throttler) snapshot() []ThrottleCounts {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []ThrottleCounts
	for _, v := range sortedKeys(t.windows) {
		for _, c := range t.windows[v] {
			out = append(out, *c)
		}
	}
	return out
}

func (t *throttler) reset() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.windows = map[string][]*ThrottleCounts{}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	for i := 1; i < len(out); i++ { // few vaults: insertion sort
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

// applyThrottle counts a vault call against its vault's window and, over the
// limit, answers 429 with Retry-After and Azure's body. It reports whether it
// answered.
func (s *Server) applyThrottle(w http.ResponseWriter, v *vault, rt vaultRoute) bool {
	if !s.throttle.get().Enabled {
		return false
	}
	hsm, size := false, 0
	if rt.name != "" {
		s.mu.RLock()
		if k := s.st.key(v.host, rt.name); k != nil && len(k.Versions) > 0 {
			l := k.latest()
			hsm, size = l.Kty == "RSA-HSM", l.priv.N.BitLen()
		}
		s.mu.RUnlock()
	}
	create := rt.op == OpCreate || rt.op == OpImport || rt.op == OpRotate
	// A create weighs by the existing key's protection (new versions,
	// rotations); a brand-new key counts as software.
	ok, left := s.throttle.admit(v.host, s.now(), weight(hsm, size, create), create)
	if ok {
		return false
	}
	secs := max(1, int(math.Ceil(left.Seconds())))
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	w.Header().Set("x-ms-request-id", newGUID())
	writeAKVError(w, &akvError{http.StatusTooManyRequests, "Throttled", "",
		"Request was not processed because too many requests were received. Reason: the vault's limit of transactions per 10 seconds for this key type was exceeded. Retry after the number of seconds in Retry-After, with jitter."})
	s.log.Debug("akvemu: throttled", "host", v.host, "op", rt.op, "retry_after_s", secs)
	return true
}

// SetThrottle turns the throttling model on or off, or changes its scale.
// Counters are kept.
func (s *Server) SetThrottle(t Throttle) error {
	if err := validThrottle(t); err != nil {
		return err
	}
	s.throttle.set(t)
	return nil
}

// ThrottleCounters returns the admitted and throttled calls of every vault
// per 10-second window, for the last hour in which throttling was on.
func (s *Server) ThrottleCounters() []ThrottleCounts { return s.throttle.snapshot() }

// throttleState is the control API's view: the setting and the windows.
type throttleState struct {
	Throttle
	Windows []ThrottleCounts `json:"windows"`
}

func (s *Server) ctlGetThrottle(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, throttleState{Throttle: s.throttle.get(), Windows: s.throttle.snapshot()})
}

func (s *Server) ctlSetThrottle(w http.ResponseWriter, r *http.Request) {
	var t Throttle
	if err := decodeControl(r, &t); err != nil {
		ctlError(w, err)
		return
	}
	if err := s.SetThrottle(t); err != nil {
		ctlError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, t)
}

// SetThrottle turns the throttling model on or off (POST /throttle).
func (c *Control) SetThrottle(ctx context.Context, t Throttle) error {
	return c.do(ctx, http.MethodPost, "/throttle", t, nil)
}

// Throttle returns the throttling setting and per-window counters (GET /throttle).
func (c *Control) Throttle(ctx context.Context) (Throttle, []ThrottleCounts, error) {
	var st throttleState
	err := c.do(ctx, http.MethodGet, "/throttle", nil, &st)
	return st.Throttle, st.Windows, err
}

// ResetThrottleCounters forgets every window's counters (DELETE /throttle).
func (c *Control) ResetThrottleCounters(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, "/throttle", nil, nil)
}

// CallLimit returns how many get, wrap or unwrap calls on one key of the
// given protection and size a vault admits per 10-second window at the
// given scale (0 means 1), when nothing else is called.
func CallLimit(hsm bool, size int, scale float64) int {
	t := newThrottler(Throttle{Enabled: true, Scale: scale})
	return int(t.scaled(otherBudget) / weight(hsm, size, false))
}
