package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/secret"
)

// errKeyDisabled is revocation evidence from a key that answers but is disabled.
var errKeyDisabled = errors.New("broker: the customer key is disabled in Key Vault")

// Check runs the validity check once: it asks the vault for the customer's
// key and unwraps the current version of every active master key, bypassing
// the cache. Revocation evidence pauses the broker (keys wiped), outage
// evidence degrades it (keys in memory still served), success serves again
// and, after a pause, loads the keys back. It returns the resulting state and
// the error that decided it, if any.
func (b *Broker) Check(ctx context.Context) (Event, error) {
	b.checkMu.Lock()
	defer b.checkMu.Unlock()

	err := b.validate(ctx)
	b.lastCheck = checkResult{at: b.now(), ok: err == nil, err: err}
	switch kind := kek.KindOf(err); {
	case err == nil:
		b.transition(StateServing, "validity check passed")
	case kind.IsRevocation():
		b.transition(StatePaused, pauseReason(err))
	case errors.Is(err, context.Canceled):
		// The caller went away; nothing was learned.
	default:
		if b.hub.current().State != StatePaused {
			reason := "validity check failed, serving keys held in memory: " + err.Error()
			if b.partialRevocation() {
				reason = "ALERT: access to the customer key is revoked in some regions but not all, serving keys held in memory: " + err.Error()
				b.log.Error("partial revocation: some regions deny access to the customer key; the broker pauses only when every answering region does", "err", err)
			}
			b.transition(StateDegraded, reason)
		}
	}
	return b.hub.current(), err
}

// validate is the check itself; after a pause it also reloads the keys.
func (b *Broker) validate(ctx context.Context) error {
	info, err := b.wrapper.KeyInfo(ctx)
	if err != nil {
		return err
	}
	if !info.Enabled {
		return &kek.Error{Kind: kek.KindRevoked, Op: "get", KeyID: info.KeyID, Code: "KeyDisabled", Err: errKeyDisabled}
	}
	paused := b.hub.current().State == StatePaused
	for _, k := range b.store.Keys() {
		if k.State != keystore.StateActive {
			continue
		}
		v, ok := k.Current()
		if !ok {
			continue
		}
		raw, err := b.wrapper.UnwrapKey(ctx, v.Copies)
		if err != nil {
			return err
		}
		if len(raw) != MasterKeySize {
			clear(raw)
			return fmt.Errorf("broker: key %q version %s unwrapped to %d bytes, want %d", k.Name, v.ID, len(raw), MasterKeySize)
		}
		if paused {
			key := secret.New(raw)
			if err := b.cache.Put(v.ID, key); err != nil {
				key.Wipe()
			}
		}
		clear(raw)
	}
	return nil
}

// observe feeds the outcome of a vault call made while serving into the
// state: an outage degrades, a success after an outage serves again, and
// revocation evidence starts a validity check, which alone may pause.
func (b *Broker) observe(err error) {
	cur := b.hub.current().State
	switch kind := kek.KindOf(err); {
	case err == nil:
		if cur == StateDegraded && b.lastCheck.ok {
			b.transition(StateServing, "vault reachable again")
		}
	case kind.IsOutage():
		if cur == StateServing {
			b.transition(StateDegraded, "key vault unreachable, serving keys held in memory: "+err.Error())
		}
	case kind.IsRevocation():
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
			defer cancel()
			_, _ = b.Check(ctx)
		}()
	}
}

// transition moves to state s, wiping keys on a pause, and logs the change.
func (b *Broker) transition(s State, reason string) {
	if s == StatePaused {
		// Wipe before anyone can see PAUSED and before the health flips, so
		// no reply after the event carries a key.
		b.cache.Purge()
	}
	ev, changed := b.hub.set(s, reason, b.now())
	if !changed {
		return
	}
	b.setHealth(s)
	level := slog.LevelInfo
	if s != StateServing {
		level = slog.LevelWarn
	}
	b.log.Log(context.Background(), level, "state changed", "state", s.String(), "reason", ev.Reason)
}

// pauseReason tells an operator what was revoked and how to recover.
func pauseReason(err error) string {
	var e *kek.Error
	code, where := "", ""
	if errors.As(err, &e) {
		code = e.Code
		if e.Region != "" {
			where = " in region " + e.Region
		}
	}
	if code == "" {
		code = kek.KindOf(err).String()
	}
	return fmt.Sprintf("access to the customer key was revoked%s (%s): restore access in Azure (enable or recover the key, grant the broker's identity wrapKey/unwrapKey, renew its credential), then call Revalidate (keybroker revalidate) or wait for the next validity check", where, code)
}

// partialRevocation asks a multi-region wrapper whether revocation was seen
// in only some regions.
func (b *Broker) partialRevocation() bool {
	rr, ok := b.wrapper.(RegionReporter)
	return ok && rr.PartialRevocation()
}

// RunChecks runs the validity check every interval until ctx ends. A zero or
// negative interval disables scheduled checks.
func (b *Broker) RunChecks(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			cctx, cancel := context.WithTimeout(ctx, min(interval, checkTimeout))
			if _, err := b.Check(cctx); err != nil {
				b.log.Warn("validity check failed", "err", err)
			}
			cancel()
		}
	}
}
