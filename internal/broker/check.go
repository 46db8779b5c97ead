package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/secret"
)

// errKeyDisabled is revocation evidence from a key that answers but is disabled.
var errKeyDisabled = errors.New("broker: the customer key is disabled in Key Vault")

// errPartialRevocation marks a check in which some regions, not all, gave
// revocation evidence.
var errPartialRevocation = errors.New("broker: access to the customer key is revoked in some regions only")

// RegionChecker is implemented by key wrappers that span several regions
// (internal/failover). Their calls stop at the first region that answers,
// so the validity check asks for this instead: a revocation in one region
// must be seen while another still serves.
type RegionChecker interface {
	// CheckRegions asks every region for its key and unwraps each set of
	// copies there, then calls report once per region, in priority order:
	// with a nil error when the key is enabled and every set unwrapped,
	// else with the classified failure (a *kek.Error naming the region).
	CheckRegions(ctx context.Context, sets [][]kek.Wrapped, report func(region string, info kek.KeyInfo, err error))
}

// regionNamer is implemented by single-region wrappers (internal/akv) that
// know the name of their region, for messages.
type regionNamer interface{ Region() string }

// regionResult is one region's answer to a validity check.
type regionResult struct {
	region string
	info   kek.KeyInfo
	err    error
}

// checker is the validity checks' own state. Safe for concurrent use.
type checker struct {
	sem     chan struct{} // one check at a time; waiting honours the caller's context
	pending atomic.Bool   // a check asked for by observe is queued

	mu   sync.Mutex // guards last; never held during a check
	last checkResult

	sched *schedule // fleet-friendly scheduling: jitter, key-info cadence, start-up backoff (schedule.go)
}

// checkResult is the outcome of the latest validity check, for GetStatus.
type checkResult struct {
	at     time.Time
	ok     bool // every region answered and gave access
	err    error
	alerts []checkAlert
}

// checkAlert is a condition GetStatus reports until a check no longer sees it.
type checkAlert struct {
	code, message string
	since         time.Time
}

func newChecker(cfg Config) *checker {
	return &checker{sem: make(chan struct{}, 1), sched: newSchedule(cfg)}
}

func (c *checker) latest() checkResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// record stores r, keeping the time each alert still present was first seen.
func (c *checker) record(r checkResult) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, a := range r.alerts {
		for _, old := range c.last.alerts {
			if old.code == a.code {
				r.alerts[i].since = old.since
			}
		}
	}
	c.last = r
}

// Check runs the validity check once (DESIGN.md "States"): in every region
// it asks Key Vault for the customer's key (enabled, validity dates,
// version) and unwraps the current version of every active master key,
// bypassing the cache. Then:
//   - every region that answered gave revocation evidence, and one did at
//     least: PAUSED, every key wiped;
//   - some regions gave revocation evidence and others access: DEGRADED with
//     the REVOCATION_PARTIAL alert (GetStatus and an error log);
//   - outage in some or all regions: DEGRADED, keys in memory still
//     served; never PAUSED, however long it lasts;
//   - every region gave access: SERVING.
//
// Leaving PAUSED takes a check in which at least one region gives access:
// the keys are unwrapped again first, then RESUMED is sent (the state is
// SERVING, or DEGRADED while some regions still fail). A check that no
// region answers leaves PAUSED as it is: outage never resumes, nor pauses.
// Check returns the resulting state and the error that decided it, nil
// when every region gave access.
func (b *Broker) Check(ctx context.Context) (Event, error) { return b.check(ctx, nil, true) }

// check is Check; started, if set, runs once this check holds the lock.
// Without withInfo a region is asked for an unwrap only, when there is a
// copy to unwrap (scheduled checks: one Key Vault call per key per region).
func (b *Broker) check(ctx context.Context, started func(), withInfo bool) (Event, error) {
	select {
	case b.checks.sem <- struct{}{}:
	case <-ctx.Done():
		return b.hub.current(), fmt.Errorf("broker: waiting for the validity check under way: %w", ctx.Err())
	}
	defer func() { <-b.checks.sem }()
	if started != nil {
		started()
	}

	began := time.Now()
	results := b.checkRegions(ctx, withInfo)
	if errors.Is(ctx.Err(), context.Canceled) {
		// The caller went away: nothing was learned.
		return b.hub.current(), ctx.Err()
	}
	var ok, revoked, failed []regionResult
	for _, r := range results {
		if r.info.KeyID != "" {
			b.noteKeyInfo(r.info) // rotation: a new customer key version makes a rewrap due
		}
		switch {
		case r.err == nil:
			ok = append(ok, r)
		case kek.KindOf(r.err).IsRevocation():
			revoked = append(revoked, r)
		default:
			failed = append(failed, r)
		}
	}
	now := b.now()
	b.checks.sched.rememberInfo(ok, now)
	res := checkResult{at: now, alerts: b.dateAlerts(ok, now)}
	paused := b.hub.current().State == StatePaused
	var err error
	switch {
	case len(ok) == 0 && len(revoked) > 0:
		err = revoked[0].err
		b.transition(StatePaused, pauseReason(revoked, failed), nil)
	case len(ok) == 0:
		err = checkError(failed)
		if !paused {
			b.transition(StateDegraded, b.degradedReason(failed, err), nil)
		}
	default:
		state, reason := StateServing, "validity check passed in every region"
		if bad := slices.Concat(revoked, failed); len(bad) > 0 {
			err = checkError(bad)
			state, reason = StateDegraded, b.degradedReason(bad, err)
		}
		if len(revoked) > 0 {
			msg := fmt.Sprintf("access to the customer key is revoked in %s but not in %s: check the key's state, access policies and RBAC in every region; the broker pauses only when every region that answers denies access",
				regionList(revoked, true), regionList(ok, false))
			res.alerts = append(res.alerts, checkAlert{code: "REVOCATION_PARTIAL", message: msg, since: now})
			reason = "ALERT: " + msg + "; serving keys held in memory"
			b.log.Error("partial revocation", "revoked", regionList(revoked, true), "serving", regionList(ok, false))
		}
		if paused {
			if rerr := b.reload(ctx); rerr != nil {
				err = rerr
				break
			}
			reason = "access to the customer key restored, keys unwrapped again: " + reason
		}
		b.transition(state, reason, nil)
	}
	res.ok, res.err = err == nil, err
	b.checks.record(res)
	if len(ok) > 0 && b.hub.current().State != StatePaused {
		b.lastGood.Store(now.UnixNano())
	}
	if b.metrics != nil {
		b.metrics.ValidityCheck(err, time.Since(began))
	}
	return b.hub.current(), err
}

// checkRegions runs the check in every region: through the wrapper's own
// RegionChecker when it spans several, else on the wrapper itself.
func (b *Broker) checkRegions(ctx context.Context, withInfo bool) []regionResult {
	var sets [][]kek.Wrapped
	for _, v := range b.activeVersions() {
		sets = append(sets, v.Copies)
	}
	withInfo = withInfo || len(sets) == 0
	if rc, ok := b.wrapper.(unwrapChecker); ok && !withInfo {
		var out []regionResult
		rc.CheckRegionsUnwrap(ctx, sets, func(region string, info kek.KeyInfo, err error) {
			out = append(out, regionResult{region: region, info: info, err: err})
		})
		if len(out) > 0 {
			return out
		}
	}
	if rc, ok := b.wrapper.(RegionChecker); ok {
		var out []regionResult
		rc.CheckRegions(ctx, sets, func(region string, info kek.KeyInfo, err error) {
			out = append(out, regionResult{region: region, info: info, err: err})
		})
		if len(out) > 0 {
			return out
		}
	}
	name := ""
	if n, ok := b.wrapper.(regionNamer); ok {
		name = n.Region()
	}
	info, err := b.checkOne(ctx, name, sets, withInfo)
	if name == "" {
		var e *kek.Error
		if errors.As(err, &e) {
			name = e.Region
		}
	}
	return []regionResult{{region: name, info: info, err: err}}
}

// checkOne checks a single-region wrapper.
func (b *Broker) checkOne(ctx context.Context, region string, sets [][]kek.Wrapped, withInfo bool) (kek.KeyInfo, error) {
	var info kek.KeyInfo
	if withInfo {
		var err error
		if info, err = b.wrapper.KeyInfo(ctx); err != nil {
			return info, err
		}
		if !info.Enabled {
			return info, &kek.Error{Kind: kek.KindRevoked, Op: "get", Region: region, KeyID: info.KeyID, Code: "KeyDisabled", Err: errKeyDisabled}
		}
	}
	for _, copies := range sets {
		raw, err := b.wrapper.UnwrapKey(ctx, copies)
		n := len(raw)
		clear(raw)
		if err != nil {
			return info, err
		}
		if n != MasterKeySize {
			return info, fmt.Errorf("broker: a master key unwrapped to %d bytes, want %d: the keystore copy is not a keybroker master key", n, MasterKeySize)
		}
	}
	return info, nil
}

// activeVersions returns the current version of every active key: what the
// check unwraps and a resume loads again.
func (b *Broker) activeVersions() []keystore.Version {
	var out []keystore.Version
	for _, k := range b.store.Keys() {
		if k.State != keystore.StateActive || k.Object != nil { // KMIP objects load on demand (objects.go)
			continue
		}
		if v, ok := k.Current(); ok {
			out = append(out, v)
		}
	}
	return out
}

// reload unwraps the current version of every active key into the cache
// while still PAUSED, so that the engine's first request after RESUMED
// finds its key in memory. Any failure wipes what it loaded.
func (b *Broker) reload(ctx context.Context) error {
	for _, v := range b.activeVersions() {
		raw, err := b.wrapper.UnwrapKey(ctx, v.Copies)
		if err == nil && len(raw) != MasterKeySize {
			err = fmt.Errorf("broker: master-key version %s unwrapped to %d bytes, want %d", v.ID, len(raw), MasterKeySize)
		}
		if err != nil {
			clear(raw)
			b.cache.Purge()
			return err
		}
		key := secret.New(raw)
		clear(raw)
		_ = b.cache.Put(v.ID, key) // the cache owns key even when Put fails (shutting down)
	}
	b.reloadObjects(ctx) // objects.go
	return nil
}

// dateAlerts reports keys that answer but are outside their validity
// dates. Key Vault still unwraps with such a key (only encrypt and wrapKey
// are refused), so data wrapped while it was valid stays readable: the
// customer did not withdraw the key, and the broker keeps serving. But new
// master-key versions cannot be wrapped until the dates are fixed.
func (b *Broker) dateAlerts(ok []regionResult, now time.Time) []checkAlert {
	var out []checkAlert
	for _, r := range ok {
		i := r.info
		switch {
		case !i.Expires.IsZero() && !now.Before(i.Expires):
			out = append(out, checkAlert{code: "KEY_EXPIRED", since: now, message: fmt.Sprintf(
				"the customer key %s%s expired at %s: Key Vault still unwraps with it, so keys are served, but RotateDEK fails: extend its expiry date or rotate to a new key version",
				i.KeyID, inRegion(r.region), i.Expires.UTC().Format(time.RFC3339))})
		case !i.NotBefore.IsZero() && now.Before(i.NotBefore):
			out = append(out, checkAlert{code: "KEY_NOT_YET_VALID", since: now, message: fmt.Sprintf(
				"the customer key %s%s is not valid before %s: Key Vault still unwraps with it, so keys are served, but RotateDEK fails until then: check the key's activation date and the node's clock",
				i.KeyID, inRegion(r.region), i.NotBefore.UTC().Format(time.RFC3339))})
		default:
			continue
		}
		b.log.Warn("customer key outside its validity dates", "key_id", i.KeyID, "region", r.region, "alert", out[len(out)-1].code)
	}
	return out
}

// checkError is the error of a check that did not pass: the region's own
// error when one region failed, else a summary naming every failed region.
func checkError(failed []regionResult) error {
	if len(failed) == 1 {
		return failed[0].err
	}
	kind, revoked := kek.KindThrottled, false
	for _, r := range failed {
		k := kek.KindOf(r.err)
		revoked = revoked || k.IsRevocation()
		if k != kek.KindThrottled {
			kind = kek.KindUnavailable
		}
	}
	err := fmt.Errorf("the validity check failed in %s", regionList(failed, true))
	if revoked {
		err = fmt.Errorf("%w: %w", errPartialRevocation, err)
	}
	return &kek.Error{Kind: kind, Op: "check", Err: err}
}

// degradedReason explains a check that failed in the regions bad.
func (b *Broker) degradedReason(bad []regionResult, err error) string {
	r := "validity check failed in " + regionList(bad, true) + ", " + b.memoryNote()
	if len(bad) == 1 {
		r += ": " + err.Error()
	}
	return r
}

// regionList names regions for a message, with each one's failure kind and
// Azure error code when withErr.
func regionList(rs []regionResult, withErr bool) string {
	parts := make([]string, 0, len(rs))
	for _, r := range rs {
		p := "the vault"
		if r.region != "" {
			p = "region " + r.region
		}
		if withErr && r.err != nil {
			p += " (" + errDetail(r.err) + ")"
		}
		parts = append(parts, p)
	}
	return strings.Join(parts, ", ")
}

// errDetail is a region's failure in a few words: kind, Azure code, HTTP
// status. Never the underlying text, which may be long.
func errDetail(err error) string {
	var e *kek.Error
	if !errors.As(err, &e) {
		if errors.Is(err, context.DeadlineExceeded) {
			return "no answer before the check's deadline"
		}
		return "unclassified error"
	}
	d := []string{e.Kind.String()}
	if e.Code != "" {
		d = append(d, e.Code)
	}
	if e.Status != 0 {
		d = append(d, fmt.Sprintf("HTTP %d", e.Status))
	}
	if e.Code == "" && errors.Is(err, context.DeadlineExceeded) {
		d = append(d, "no answer before the check's deadline")
	}
	return strings.Join(d, ", ")
}

func inRegion(r string) string {
	if r == "" {
		return ""
	}
	return " in region " + r
}

// recovery says how to undo a revocation, by Azure error code.
var recovery = map[string]string{
	"ForbiddenByRbac":       "grant the broker's identity a role allowing get, wrapKey and unwrapKey on the key (Key Vault Crypto Service Encryption User)",
	"ForbiddenByPolicy":     "add get, wrapKey and unwrapKey for the broker's identity to the vault's access policy",
	"ForbiddenByFirewall":   "allow this node's network in the vault's firewall or private endpoint settings",
	"ForbiddenByConnection": "allow this node's network in the vault's firewall or private endpoint settings",
	"KeyDisabled":           "enable the key in Key Vault",
	"KeyOperationForbidden": "add wrapKey and unwrapKey to the key's permitted operations",
	"KeyNotFound":           "recover the deleted key from soft delete (or restore it from a backup)",
	"AADSTS7000222":         "create a new client secret for the broker's application and put it in the broker's secret file (the broker rereads it), then Revalidate",
	"AADSTS7000215":         "put the current client secret value (not its ID) in the broker's secret file (the broker rereads it), then Revalidate",
	"AADSTS700016":          "restore the broker's application in Entra ID (or configure the right client and tenant)",
	"AADSTS7000112":         "enable the broker's application in Entra ID",
	"AADSTS700027":          "register the broker's certificate with its application in Entra ID",
}

// pauseReason tells an operator what was revoked, where, and how to
// recover. unanswered are the regions that gave no answer.
func pauseReason(revoked, unanswered []regionResult) string {
	var how []string
	seen := map[string]bool{}
	for _, r := range revoked {
		code := ""
		var e *kek.Error
		if errors.As(r.err, &e) {
			code = e.Code
		}
		h, ok := recovery[code]
		if !ok {
			h = "restore the broker's access to the key in Azure"
		}
		if !seen[h] {
			seen[h] = true
			how = append(how, h)
		}
	}
	msg := "access to the customer key was revoked in " + regionList(revoked, true)
	if len(unanswered) > 0 {
		msg += " (no answer from " + regionList(unanswered, true) + ")"
	}
	return msg + ": every plaintext key was wiped, the keystore on disk is untouched; to recover, " +
		strings.Join(how, "; ") + "; then call Revalidate (keybroker revalidate) or wait for the next scheduled validity check"
}

// observe feeds the outcome of a vault call made while serving into the
// state: an outage degrades, a success after an outage serves again, and
// revocation evidence starts a validity check, which alone may pause.
func (b *Broker) observe(err error) {
	switch kind := kek.KindOf(err); {
	case err == nil:
		b.transition(StateServing, "vault reachable again", func(prev State) bool {
			return prev == StateDegraded && b.checks.latest().ok
		})
	case kind.IsOutage():
		b.transition(StateDegraded, "key vault unreachable, "+b.memoryNote()+": "+err.Error(), func(prev State) bool {
			return prev == StateServing
		})
	case kind.IsRevocation():
		b.checkSoon()
	}
}

// checkSoon runs a validity check in the background, unless one asked for
// this way is already waiting to run: a burst of failing loads makes one
// check, not one each.
func (b *Broker) checkSoon() {
	if !b.checks.pending.CompareAndSwap(false, true) {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
		defer cancel()
		if _, err := b.check(ctx, func() { b.checks.pending.Store(false) }, true); err != nil {
			b.log.Warn("validity check after revocation evidence", "state", b.hub.current().State.String(), "err", err)
		}
		b.checks.pending.Store(false) // if the wait for the lock timed out
	}()
}

// transition moves to state s, wiping the keys on a pause, and logs the
// change. allow (nil = always) may refuse it given the state being left.
// The new state is visible to every RPC before the keys are wiped, and the
// keys are wiped, and the key RPCs that had passed their last check
// returned (UnaryInterceptor), before any watcher hears of it: once PAUSED,
// nothing loads a key, and no call that starts after the PAUSE event gets
// one.
func (b *Broker) transition(s State, reason string, allow func(prev State) bool) (Event, bool) {
	ev, changed := b.hub.change(s, reason, b.now(), allow, func() {
		if s == StatePaused {
			b.cache.Purge()
			b.hub.calls.wait(pauseDrainWait, pauseFlushMargin)
		}
		b.setHealth(s)
	})
	if changed && b.metrics != nil {
		b.metrics.StateChange(s)
	}
	if changed {
		level := slog.LevelInfo
		if s != StateServing {
			level = slog.LevelWarn
		}
		b.log.Log(context.Background(), level, "state changed", "state", s.String(), "event", ev.Kind.String(), "reason", ev.Reason)
	}
	return ev, changed
}

// RunChecks runs the validity check every interval until ctx ends, each
// bounded by the interval (at most 30 s), so a check never overlaps the
// next. A zero or negative interval disables scheduled checks. The timer
// comes from Config.AfterFunc.
//
// So that a fleet's checks do not align, the first check comes at a random
// point of the first interval (Config.Rand), the next ones an interval
// apart. A scheduled check unwraps each key's current copy once per region
// and asks for the key's info only every Config.KeyInfoInterval (first at a
// random point of it): one Key Vault call per key per region per interval. A throttled check is not
// retried: the next one waits for the interval or Retry-After, whichever
// is longer, plus jitter. No check runs while start-up is retrying to
// load the keys after a throttled attempt (WarmUntilLoaded): its attempts
// are the checks then; nor within an interval of a successful start-up
// load (Warm), which proved the key as a check would: a fleet restarting
// at once leaves the vault's budget to the nodes still loading, and a
// check comes at most two intervals after the load.
func (b *Broker) RunChecks(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	wait := b.checks.sched.firstWait(interval)
	for {
		fired := make(chan struct{})
		stop := b.afterFunc(wait, func() { close(fired) })
		select {
		case <-ctx.Done():
			stop()
			return
		case <-fired:
		}
		if b.checks.sched.warming() {
			wait = interval
			continue
		}
		if left := b.checks.sched.sinceLoad(b.now(), interval); left > 0 {
			wait = left
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, min(interval, checkTimeout))
		ev, err := b.check(cctx, nil, b.checks.sched.infoDue(b.now()))
		cancel()
		if err != nil && ctx.Err() == nil {
			b.log.Warn("validity check failed", "state", ev.State.String(), "err", err)
		}
		wait = b.checks.sched.nextWait(interval, err)
	}
}

// HeldKeys returns the key buffers held in memory now, for tests proving
// that a pause or Close leaves every one of them zero (secret.Bytes.Raw).
// A key past its TTL is loaded again first, as a request would.
// Production code has no use for it.
func (b *Broker) HeldKeys(ctx context.Context) []*secret.Bytes {
	var out []*secret.Bytes
	for _, id := range b.cache.Keys() {
		if k, err := b.cache.Get(ctx, id); err == nil {
			out = append(out, k)
		}
	}
	return out
}
