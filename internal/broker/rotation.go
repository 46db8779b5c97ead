package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/secret"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Rotation (docs/rotation.md). Three things change over a key's life:
//   - the master key gets a new version every MasterKeyInterval (Rotate);
//     old versions stay, so old blobs and snapshots keep unwrapping, until
//     an explicit retention policy removes them;
//   - the customer key (CMK) gets a new version or is replaced: every
//     retained master-key version is wrapped again under it (RotateCMK),
//     the old copies kept until FinalizeCMK or CMKCopyRetention;
//   - alerts say when either is older than it should be.
// Every change is one atomic keystore write made after the new copies were
// proven by an unwrap, and all of them hold rotateMu: one at a time, while
// reads go on.

// Defaults for the zero values of RotationConfig.
const (
	DefaultMasterKeyInterval = 90 * 24 * time.Hour
	DefaultCMKRotationAlert  = 90 * 24 * time.Hour
)

// The alert codes rotation raises in GetStatus.
const (
	AlertMasterKeyRotationDue = "MASTER_KEY_ROTATION_DUE"
	AlertCMKRotationDue       = "CMK_ROTATION_DUE"
	AlertCMKRewrapFailed      = "CMK_REWRAP_FAILED"
)

const (
	// rotationRetry is how long the scheduler waits before trying a failed
	// automatic rotation or CMK rewrap again (vault down, broker paused).
	rotationRetry = 5 * time.Minute
	// maxRotationWait caps one scheduler sleep: timers run on the monotonic
	// clock, which stops while the machine sleeps, but key ages are
	// wall-clock ages.
	maxRotationWait = time.Hour
	// rotationPassTimeout bounds the vault calls of one scheduler pass.
	rotationPassTimeout = 10 * time.Minute
)

// RotationConfig configures automatic master-key rotation, the retention of
// old versions, CMK rewraps and the rotation alerts. Zero values mean the
// documented defaults.
type RotationConfig struct {
	// MasterKeyInterval is the age at which RunRotation rotates a master
	// key, and past which MASTER_KEY_ROTATION_DUE is raised; 0 means
	// DefaultMasterKeyInterval.
	MasterKeyInterval time.Duration
	// Manual turns automatic rotation off; the alert is still raised.
	Manual bool
	// RetainVersions keeps the newest N versions of each active key; 0
	// keeps every version. 1 is taken as 2: the previous version must stay
	// while the data under it is rewrapped.
	RetainVersions int
	// RetainFor removes versions retired (superseded) longer ago than this;
	// 0 keeps them for ever. When both RetainVersions and RetainFor are set,
	// a version is removed only when both say so.
	RetainFor time.Duration
	// CMKRotationAlert raises CMK_ROTATION_DUE when the customer key version
	// is older than this; 0 means DefaultCMKRotationAlert.
	CMKRotationAlert time.Duration
	// CMKCopyRetention drops the copies wrapped by previous customer keys
	// once every version of a key has a proven copy under the current one
	// and the key has not changed for this long; 0 keeps them until
	// FinalizeCMK.
	CMKCopyRetention time.Duration
}

// rotation is the scheduler's state. Its fields are guarded by mu, except
// the configuration and kick, which are set once in New. Its timers come
// from Config.AfterFunc, so a fake clock drives it in tests.
type rotation struct {
	cfg RotationConfig
	// kick wakes RunRotation when a validity check sees a customer key
	// version that does not wrap the master key yet.
	kick chan struct{}

	mu           sync.Mutex
	cmks         map[string]kek.KeyInfo // versionless key id (lower case) -> as the vault last reported it
	pending      bool                   // a rewrap is due (new CMK version seen)
	seen         uint64                 // how many times a check found a rewrap due
	rewrapped    bool                   // a rewrap pass succeeded in this process
	targets      []string               // CMK ids a fresh wrap used, at the last rewrap pass
	rewrapErr    error
	rewrapFailed time.Time            // the last failure: the retry is due rotationRetry later
	rewrapSince  time.Time            // the first failure in a row: the alert's since
	rotateErr    map[string]error     // key id -> last automatic rotation failure
	rotateFailed map[string]time.Time // key id -> when
	raised       map[string]bool      // alerts logged as raised
}

func newRotation(cfg RotationConfig) *rotation {
	if cfg.MasterKeyInterval <= 0 {
		cfg.MasterKeyInterval = DefaultMasterKeyInterval
	}
	if cfg.CMKRotationAlert <= 0 {
		cfg.CMKRotationAlert = DefaultCMKRotationAlert
	}
	if cfg.RetainVersions == 1 {
		cfg.RetainVersions = 2
	}
	cfg.RetainVersions = max(cfg.RetainVersions, 0)
	cfg.RetainFor = max(cfg.RetainFor, 0)
	cfg.CMKCopyRetention = max(cfg.CMKCopyRetention, 0)
	return &rotation{
		cfg:          cfg,
		kick:         make(chan struct{}, 1),
		rotateErr:    make(map[string]error),
		rotateFailed: make(map[string]time.Time),
		raised:       make(map[string]bool),
		cmks:         make(map[string]kek.KeyInfo),
	}
}

// CMKReport says what RotateCMK or FinalizeCMK did.
type CMKReport struct {
	// Targets are the customer key identifiers, with version, that a fresh
	// wrap uses now: one per configured key.
	Targets []string
	// Rewrapped lists the versions given copies under Targets.
	Rewrapped []VersionRef
	// Finalized lists the versions whose copies under other keys or key
	// versions were dropped, and Dropped those keys' identifiers.
	Finalized []VersionRef
	Dropped   []string
	// Current counts the versions that needed nothing.
	Current int
}

// VersionRef names one master-key version.
type VersionRef struct {
	Key, Version string
}

// KeyAges is how old the keys are now, for metrics.
type KeyAges struct {
	// MasterKeys has the age of the current version of every active key.
	MasterKeys []MasterKeyAge
	// CMKs has the age of the current version of every customer key the
	// vault has described (by a validity check, or the scheduler at
	// start), sorted by identifier; empty until then.
	CMKs []CMKAge
}

// MasterKeyAge is the age of one key's current version.
type MasterKeyAge struct {
	Name, Version string
	Age           time.Duration
}

// CMKAge is the age of one customer key version.
type CMKAge struct {
	KeyID string // with version
	// Age is 0 when the vault gave no creation time.
	Age time.Duration
}

// KeyAges reports the ages of the master keys and of the customer key, for
// a metrics exporter to read on collection. It makes no vault call.
func (b *Broker) KeyAges() KeyAges {
	now := b.now()
	var ages KeyAges
	for _, k := range b.store.Keys() {
		if k.State != keystore.StateActive || k.Object != nil {
			continue
		}
		if v, ok := k.Current(); ok {
			ages.MasterKeys = append(ages.MasterKeys, MasterKeyAge{Name: k.Name, Version: v.ID, Age: now.Sub(v.Created)})
		}
	}
	for _, info := range b.rot.customerKeys() {
		a := CMKAge{KeyID: info.KeyID}
		if !info.Created.IsZero() {
			a.Age = now.Sub(info.Created)
		}
		ages.CMKs = append(ages.CMKs, a)
	}
	return ages
}

// customerKeys returns what the vault last said of each customer key,
// sorted by identifier.
func (r *rotation) customerKeys() []kek.KeyInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]kek.KeyInfo, 0, len(r.cmks))
	for _, info := range r.cmks {
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b kek.KeyInfo) int { return strings.Compare(a.KeyID, b.KeyID) })
	return out
}

// noteKeyInfo records what the vault reports about a customer key (the
// validity check calls it for every region that answered). A version that
// wraps no copy of a current master-key version yet makes a rewrap due:
// RunRotation is woken, and Revalidate does it at once.
func (b *Broker) noteKeyInfo(info kek.KeyInfo) {
	base, _, ok := cutVersion(info.KeyID)
	if !ok {
		return
	}
	r := b.rot
	r.mu.Lock()
	r.cmks[strings.ToLower(base)] = info
	due := info.Enabled && !b.wrapsCurrent(info.KeyID)
	if due {
		r.pending = true
		r.seen++
	}
	r.mu.Unlock()
	if due {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// wrapsCurrent reports whether the current version of every key holding key
// material has a copy wrapped by cmkID.
func (b *Broker) wrapsCurrent(cmkID string) bool {
	for _, k := range b.store.Keys() {
		if v, ok := k.Current(); ok && !hasCopy(v.Copies, cmkID) {
			return false
		}
	}
	return true
}

// cutVersion splits https://{vault}/keys/{name}/{version} at its last
// slash.
func cutVersion(keyID string) (base, version string, ok bool) {
	i := strings.LastIndexByte(keyID, '/')
	if i < 0 || i == len(keyID)-1 || !strings.Contains(keyID[:i], "/keys/") {
		return "", "", false
	}
	return keyID[:i], keyID[i+1:], true
}

func hasCopy(copies []kek.Wrapped, keyID string) bool {
	return slices.ContainsFunc(copies, func(c kek.Wrapped) bool { return strings.EqualFold(c.KeyID, keyID) })
}

// rewrapsSeen counts the validity checks that found a customer key version
// wrapping no copy of a current master-key version: Revalidate compares it
// before and after its check. RunRotation may have started that rewrap
// already; RotateCMK then waits for it and finds little or nothing to do.
func (b *Broker) rewrapsSeen() uint64 {
	r := b.rot
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen
}

// cmkTargets asks the wrapper which customer key versions a wrap uses now,
// by wrapping 32 throwaway random bytes: one identifier per configured key.
func (b *Broker) cmkTargets(ctx context.Context) ([]string, error) {
	probe := make([]byte, MasterKeySize)
	defer clear(probe)
	if _, err := rand.Read(probe); err != nil {
		return nil, fmt.Errorf("broker: reading random bytes: %w", err)
	}
	copies, err := b.wrapper.WrapKey(ctx, probe)
	if err != nil {
		return nil, err
	}
	if len(copies) == 0 {
		return nil, errors.New("broker: the key wrapper returned no wrapped copy")
	}
	ids := make([]string, 0, len(copies))
	for _, c := range copies {
		ids = append(ids, c.KeyID)
	}
	return ids, nil
}

// RotateCMK wraps every retained master-key version, of every key that
// holds key material, under the customer key versions the configuration
// names now, when it is not already. Each version is unwrapped through the
// vault, wrapped again, the new copies proven by an unwrap, and then
// persisted in one atomic write ahead of the old copies, which are kept (so
// the previous customer key version must stay enabled until FinalizeCMK).
// The master key itself never changes. A failure leaves every version
// readable: the versions done so far keep both copies, the others theirs.
func (b *Broker) RotateCMK(ctx context.Context) (CMKReport, error) {
	b.rotateMu.Lock()
	defer b.rotateMu.Unlock()
	rep, err := b.rotateCMKLocked(ctx)
	r := b.rot
	r.mu.Lock()
	if err != nil {
		now := b.now()
		if r.rewrapErr == nil {
			r.rewrapSince = now
		}
		r.rewrapErr, r.rewrapFailed = err, now
	} else {
		r.rewrapErr = nil
		r.rewrapped = true
		r.targets = rep.Targets
	}
	r.mu.Unlock()
	return rep, err
}

func (b *Broker) rotateCMKLocked(ctx context.Context) (CMKReport, error) {
	if b.paused() {
		return CMKReport{}, errPaused{reason: b.hub.current().Reason}
	}
	targets, err := b.cmkTargets(ctx)
	if err != nil {
		b.observe(err)
		return CMKReport{}, fmt.Errorf("broker: asking which customer key version wraps now: %w", err)
	}
	rep := CMKReport{Targets: targets}
	for _, k := range b.store.Keys() {
		// Newest first: the version in use gets its new copy first.
		for _, v := range slices.Backward(k.Versions) {
			if len(v.Copies) == 0 {
				continue
			}
			if slices.IndexFunc(targets, func(id string) bool { return !hasCopy(v.Copies, id) }) < 0 {
				rep.Current++
				continue
			}
			fresh, err := b.rewrapVersion(ctx, k, v)
			if err != nil {
				return rep, err
			}
			// New copies first: an unwrap tries copies in order, and the
			// old version may be disabled any time after this write.
			copies := fresh
			for _, c := range v.Copies {
				if !hasCopy(fresh, c.KeyID) {
					copies = append(copies, c)
				}
			}
			if _, err := b.store.SetCopies(k.ID, v.ID, copies); err != nil {
				return rep, fmt.Errorf("broker: persisting the rewrapped copies of key %q version %s: %w", k.Name, v.ID, err)
			}
			b.log.Info("master-key version rewrapped under the customer key; the copies under the previous key stay until rotate-cmk --finalize",
				"key", k.Name, "version", v.ID, "cmk", copyIDs(fresh), "kept", copyIDs(copies[len(fresh):]))
			rep.Rewrapped = append(rep.Rewrapped, VersionRef{Key: k.Name, Version: v.ID})
		}
	}
	return rep, nil
}

// rewrapVersion unwraps v through the vault and wraps the same bytes under
// the customer key versions configured now, proving the new copies.
func (b *Broker) rewrapVersion(ctx context.Context, k keystore.Key, v keystore.Version) ([]kek.Wrapped, error) {
	raw, err := b.wrapper.UnwrapKey(ctx, v.Copies)
	if err != nil {
		b.observe(err)
		return nil, fmt.Errorf("broker: unwrapping key %q version %s to rewrap it: %w", k.Name, v.ID, err)
	}
	defer clear(raw)
	if len(raw) != keySize(k) {
		return nil, fmt.Errorf("broker: key %q version %s unwrapped to %d bytes, want %d: the keystore copy is not the key it describes", k.Name, v.ID, len(raw), keySize(k))
	}
	fresh, err := b.wrapper.WrapKey(ctx, raw)
	if err == nil && len(fresh) == 0 {
		err = errors.New("broker: the key wrapper returned no wrapped copy")
	}
	if err == nil {
		err = proveCopies(ctx, b.wrapper, raw, fresh)
	}
	if err != nil {
		b.observe(err)
		return nil, fmt.Errorf("broker: rewrapping key %q version %s (nothing was written): %w", k.Name, v.ID, err)
	}
	return fresh, nil
}

// proveCopies checks that each copy, on its own, unwraps through the vault
// to raw.
func proveCopies(ctx context.Context, w KeyWrapper, raw []byte, copies []kek.Wrapped) error {
	want := secret.New(raw)
	defer want.Wipe()
	for _, c := range copies {
		back, err := w.UnwrapKey(ctx, []kek.Wrapped{c})
		if err != nil {
			return fmt.Errorf("checking the copy wrapped by %s: %w", c.KeyID, err)
		}
		got := secret.New(back)
		clear(back)
		same := got.Equal(want)
		got.Wipe()
		if !same {
			return fmt.Errorf("the copy wrapped by %s does not unwrap to the key that was wrapped", c.KeyID)
		}
	}
	return nil
}

// FinalizeCMK drops, from every version of every key, the copies wrapped by
// customer keys or key versions that a fresh wrap no longer uses, once the
// customer has moved to a new one. It first checks that every version has a
// copy under each current customer key version and that each such copy
// unwraps through the vault to the same key; if any does not, it changes
// nothing and says which (run RotateCMK first). After it, the previous
// customer key version can be disabled; keystore backups taken before it
// still need that version to restore.
func (b *Broker) FinalizeCMK(ctx context.Context) (CMKReport, error) {
	b.rotateMu.Lock()
	defer b.rotateMu.Unlock()
	if b.paused() {
		return CMKReport{}, errPaused{reason: b.hub.current().Reason}
	}
	targets, err := b.cmkTargets(ctx)
	if err != nil {
		b.observe(err)
		return CMKReport{}, fmt.Errorf("broker: asking which customer key version wraps now: %w", err)
	}
	return b.finalizeLocked(ctx, targets, b.store.Keys())
}

// finalizeLocked is FinalizeCMK for the given keys, with rotateMu held.
func (b *Broker) finalizeLocked(ctx context.Context, targets []string, keys []keystore.Key) (CMKReport, error) {
	rep := CMKReport{Targets: targets}
	type drop struct {
		k    keystore.Key
		v    keystore.Version
		keep []kek.Wrapped
	}
	var plan []drop
	dropped := make(map[string]bool)
	for _, k := range keys {
		for _, v := range k.Versions {
			if len(v.Copies) == 0 {
				continue
			}
			var keep []kek.Wrapped
			for _, id := range targets {
				i := slices.IndexFunc(v.Copies, func(c kek.Wrapped) bool { return strings.EqualFold(c.KeyID, id) })
				if i < 0 {
					return rep, fmt.Errorf("%w: key %q version %s has no copy wrapped by %s yet: nothing was dropped; rewrap first (keybroker rotate-cmk without --finalize, or restart the broker)", errKeyState, k.Name, v.ID, id)
				}
				keep = append(keep, v.Copies[i])
			}
			if len(keep) == len(v.Copies) {
				rep.Current++
				continue
			}
			for _, c := range v.Copies {
				if !hasCopy(keep, c.KeyID) {
					dropped[c.KeyID] = true
				}
			}
			plan = append(plan, drop{k: k, v: v, keep: keep})
		}
	}
	// Prove every copy that stays before dropping anything.
	for _, p := range plan {
		raw, err := b.wrapper.UnwrapKey(ctx, p.keep[:1])
		if err == nil && len(raw) != keySize(p.k) {
			err = fmt.Errorf("unwrapped to %d bytes, want %d", len(raw), keySize(p.k))
		}
		if err == nil {
			err = proveCopies(ctx, b.wrapper, raw, p.keep[1:])
		}
		clear(raw)
		if err != nil {
			b.observe(err)
			return rep, fmt.Errorf("broker: checking the copies of key %q version %s under the current customer key (nothing was dropped): %w", p.k.Name, p.v.ID, err)
		}
	}
	for _, p := range plan {
		if _, err := b.store.SetCopies(p.k.ID, p.v.ID, p.keep); err != nil {
			return rep, fmt.Errorf("broker: dropping the old copies of key %q version %s: %w", p.k.Name, p.v.ID, err)
		}
		b.log.Info("copies under the previous customer key dropped", "key", p.k.Name, "version", p.v.ID, "kept", copyIDs(p.keep))
		rep.Finalized = append(rep.Finalized, VersionRef{Key: p.k.Name, Version: p.v.ID})
	}
	for id := range dropped {
		rep.Dropped = append(rep.Dropped, id)
	}
	slices.Sort(rep.Dropped)
	return rep, nil
}

func copyIDs(copies []kek.Wrapped) []string {
	ids := make([]string, 0, len(copies))
	for _, c := range copies {
		ids = append(ids, c.KeyID)
	}
	return ids
}

// RunRotation runs the rotation scheduler until ctx ends: automatic
// master-key rotation every MasterKeyInterval, the retention policy, the
// CMK rewrap when a validity check sees a new customer key version (and
// once at start, unless RotateCMK already ran), old CMK copies dropped after
// CMKCopyRetention, and the rotation alerts logged when raised and cleared.
// Failed steps are retried after a few minutes. Call it once.
func (b *Broker) RunRotation(ctx context.Context) {
	r := b.rot
	start := true
	for {
		b.rotationPass(ctx, start)
		start = false
		fired := make(chan struct{}, 1)
		stop := b.afterFunc(b.nextRotationWake(b.now()), func() {
			select {
			case fired <- struct{}{}:
			default:
			}
		})
		select {
		case <-ctx.Done():
			stop()
			return
		case <-fired:
		case <-r.kick:
			stop()
		}
	}
}

// rotationPass does whatever is due now.
func (b *Broker) rotationPass(ctx context.Context, start bool) {
	ctx, cancel := context.WithTimeout(ctx, rotationPassTimeout)
	defer cancel()
	r := b.rot
	now := b.now()
	// No key-info call at start: a fleet restarting at once must cost the
	// vault one unwrap per node, and nodes already serving must not take
	// the budget of those still loading. The validity checks' key-info
	// schedule (Config.KeyInfoInterval, first at a random point of it)
	// brings the customer key's version and dates.
	r.mu.Lock()
	rewrap := r.pending || (start && !r.rewrapped) ||
		(r.rewrapErr != nil && !now.Before(r.rewrapFailed.Add(rotationRetry)))
	r.pending = false
	r.mu.Unlock()
	if rewrap && ctx.Err() == nil {
		if rep, err := b.RotateCMK(ctx); err != nil {
			b.log.Error("rewrapping the master keys under the customer key failed; retrying in a few minutes. Keep the previous customer key version enabled meanwhile", "err", err, "rewrapped", len(rep.Rewrapped))
		} else if len(rep.Rewrapped) > 0 {
			b.log.Info("master keys rewrapped under the customer key", "cmk", rep.Targets, "versions", len(rep.Rewrapped))
		}
	}
	if ctx.Err() != nil {
		return
	}
	b.rotateMu.Lock()
	b.rotateDueLocked(ctx, now)
	b.applyRetentionLocked(now)
	b.dropOldCopiesLocked(ctx, now)
	b.rotateMu.Unlock()
	b.logAlerts(now)
}

// rotateDueLocked rotates every active key whose current version is
// MasterKeyInterval old, unless its last attempt failed moments ago.
func (b *Broker) rotateDueLocked(ctx context.Context, now time.Time) {
	r := b.rot
	if r.cfg.Manual {
		return
	}
	for _, k := range b.store.Keys() {
		cur, ok := k.Current()
		if k.State != keystore.StateActive || !ok || k.Object != nil || now.Sub(cur.Created) < r.cfg.MasterKeyInterval {
			continue
		}
		r.mu.Lock()
		failed, retry := r.rotateFailed[k.ID]
		r.mu.Unlock()
		if retry && now.Before(failed.Add(rotationRetry)) {
			continue
		}
		_, v, err := b.rotateLocked(ctx, k.ID)
		r.mu.Lock()
		if err != nil {
			r.rotateFailed[k.ID], r.rotateErr[k.ID] = now, err
		} else {
			delete(r.rotateFailed, k.ID)
			delete(r.rotateErr, k.ID)
		}
		r.mu.Unlock()
		if err != nil {
			b.log.Warn("automatic master-key rotation failed; retrying in a few minutes", "key", k.Name, "version", cur.ID, "age", now.Sub(cur.Created).Round(time.Second).String(), "err", err)
			continue
		}
		b.log.Info("master key rotated automatically", "key", k.Name, "version", v.ID, "previous", cur.ID, "interval", r.cfg.MasterKeyInterval.String())
	}
}

// applyRetentionLocked removes the versions the retention policy no longer
// keeps, from active keys only, never the current version, each logged.
// Data still wrapped under a removed version can no longer be unwrapped:
// that is why the policy is off unless configured.
func (b *Broker) applyRetentionLocked(now time.Time) {
	cfg := b.rot.cfg
	if cfg.RetainVersions == 0 && cfg.RetainFor == 0 {
		return
	}
	for _, k := range b.store.Keys() {
		if k.State != keystore.StateActive {
			continue
		}
		last := len(k.Versions) - 1
		for i, v := range k.Versions[:max(last, 0)] {
			byCount := cfg.RetainVersions > 0 && last-i >= cfg.RetainVersions
			retired := k.Versions[i+1].Created
			byAge := cfg.RetainFor > 0 && now.Sub(retired) >= cfg.RetainFor
			if (cfg.RetainVersions > 0 && !byCount) || (cfg.RetainFor > 0 && !byAge) {
				continue
			}
			if _, err := b.store.RemoveVersion(k.ID, v.ID); err != nil {
				b.log.Error("retention: removing a master-key version failed", "key", k.Name, "version", v.ID, "err", err)
				continue
			}
			b.cache.Remove(v.ID)
			b.log.Warn("master-key version removed by the retention policy: data and snapshots still wrapped under it can no longer be unwrapped",
				"key", k.Name, "version", v.ID, "created", v.Created, "retired", retired,
				"retain_versions", cfg.RetainVersions, "retain_for", cfg.RetainFor.String())
		}
	}
}

// dropOldCopiesLocked drops the copies under previous customer keys of the
// keys that have not changed for CMKCopyRetention since their rewrap. A
// key's Updated time is never earlier than its last rewrap, so the period
// is never cut short; a later rotation only makes it longer.
func (b *Broker) dropOldCopiesLocked(ctx context.Context, now time.Time) {
	r := b.rot
	r.mu.Lock()
	targets, ok := r.targets, r.rewrapped && r.rewrapErr == nil
	r.mu.Unlock()
	if r.cfg.CMKCopyRetention == 0 || !ok {
		return
	}
	var due []keystore.Key
	for _, k := range b.store.Keys() {
		if hasOldCopies(k, targets) && !now.Before(k.Updated.Add(r.cfg.CMKCopyRetention)) {
			due = append(due, k)
		}
	}
	if len(due) == 0 {
		return
	}
	if rep, err := b.finalizeLocked(ctx, targets, due); err != nil {
		b.log.Warn("dropping the copies under the previous customer key failed; retrying later", "err", err)
	} else {
		b.log.Info("copies under the previous customer key dropped after the retention period", "dropped", rep.Dropped, "versions", len(rep.Finalized), "cmk_copy_retention", r.cfg.CMKCopyRetention.String())
	}
}

func hasOldCopies(k keystore.Key, targets []string) bool {
	for _, v := range k.Versions {
		for _, c := range v.Copies {
			if !slices.ContainsFunc(targets, func(id string) bool { return strings.EqualFold(id, c.KeyID) }) {
				return true
			}
		}
	}
	return false
}

// nextRotationWake returns how long the scheduler may sleep: until the next
// thing that falls due, at most maxRotationWait. Only future times count:
// whatever was due has been done, or has a retry time.
func (b *Broker) nextRotationWake(now time.Time) time.Duration {
	r := b.rot
	next := now.Add(maxRotationWait)
	at := func(t time.Time) {
		if t.After(now) && t.Before(next) {
			next = t
		}
	}
	r.mu.Lock()
	for _, t := range r.rotateFailed {
		at(t.Add(rotationRetry))
	}
	if r.rewrapErr != nil {
		at(r.rewrapFailed.Add(rotationRetry))
	}
	for _, info := range r.cmks {
		if !info.Created.IsZero() {
			at(info.Created.Add(r.cfg.CMKRotationAlert))
		}
	}
	targets := r.targets
	r.mu.Unlock()
	for _, k := range b.store.Keys() {
		if cur, ok := k.Current(); ok && k.State == keystore.StateActive && k.Object == nil {
			at(cur.Created.Add(r.cfg.MasterKeyInterval))
			if r.cfg.RetainFor > 0 {
				for _, v := range k.Versions[1:] {
					at(v.Created.Add(r.cfg.RetainFor))
				}
			}
		}
		if r.cfg.CMKCopyRetention > 0 && hasOldCopies(k, targets) {
			at(k.Updated.Add(r.cfg.CMKCopyRetention))
		}
	}
	return next.Sub(now)
}

// rotationAlert is one rotation alert; subject tells apart alerts of one
// code.
type rotationAlert struct {
	code, subject, message string
	since                  time.Time
}

// rotationAlerts returns the rotation alerts open at now.
func (b *Broker) rotationAlerts(now time.Time) []rotationAlert {
	r := b.rot
	var out []rotationAlert
	days := func(d time.Duration) int { return int(d / (24 * time.Hour)) }
	cmks := r.customerKeys()
	r.mu.Lock()
	rewrapErr, rewrapSince := r.rewrapErr, r.rewrapSince
	rotateErr := make(map[string]error, len(r.rotateErr))
	for k, v := range r.rotateErr {
		rotateErr[k] = v
	}
	r.mu.Unlock()
	for _, k := range b.store.Keys() {
		cur, ok := k.Current()
		if k.State != keystore.StateActive || !ok || k.Object != nil {
			continue
		}
		age := now.Sub(cur.Created)
		if age < r.cfg.MasterKeyInterval {
			continue
		}
		why := "automatic rotation is off (rotation.automatic: false): rotate it with keybroker rotate (admin)"
		if !r.cfg.Manual {
			why = "automatic rotation has not succeeded yet"
			if err := rotateErr[k.ID]; err != nil {
				why += " (" + err.Error() + ")"
			}
			why += ": check Key Vault access and the broker's state, or rotate it with keybroker rotate (admin)"
		}
		out = append(out, rotationAlert{
			code: AlertMasterKeyRotationDue, subject: k.ID, since: cur.Created.Add(r.cfg.MasterKeyInterval),
			message: fmt.Sprintf("master key %q version %s is %d days old, past its %d-day rotation interval: %s",
				k.Name, cur.ID, days(age), days(r.cfg.MasterKeyInterval), why),
		})
	}
	for _, cmk := range cmks {
		if cmk.Created.IsZero() || now.Sub(cmk.Created) < r.cfg.CMKRotationAlert {
			continue
		}
		out = append(out, rotationAlert{
			code: AlertCMKRotationDue, subject: cmk.KeyID, since: cmk.Created.Add(r.cfg.CMKRotationAlert),
			message: fmt.Sprintf("the customer key version %s was created %d days ago (alert after %d days): rotate it in Key Vault, as a new version (followed by itself when azure.key_id has no version) or a new key named in azure.key_id; the broker then rewraps the master key under it (docs/rotation.md)",
				cmk.KeyID, days(now.Sub(cmk.Created)), days(r.cfg.CMKRotationAlert)),
		})
	}
	if rewrapErr != nil {
		out = append(out, rotationAlert{
			code: AlertCMKRewrapFailed, since: rewrapSince,
			message: "the master key is not yet wrapped by every customer key version configured now: " + rewrapErr.Error() +
				"; keep the previous customer key version enabled, fix the cause (access to the new key: get, wrapKey, unwrapKey), the broker retries every few minutes",
		})
	}
	return out
}

// rotationAlertsProto is rotationAlerts for GetStatus.
func (b *Broker) rotationAlertsProto() []*keybrokerv1.Alert {
	var out []*keybrokerv1.Alert
	for _, a := range b.rotationAlerts(b.now()) {
		out = append(out, &keybrokerv1.Alert{Code: a.code, Message: a.message, Since: timestamppb.New(a.since)})
	}
	return out
}

// logAlerts logs each rotation alert once when it is raised, and again
// when it clears.
func (b *Broker) logAlerts(now time.Time) {
	alerts := b.rotationAlerts(now)
	open := make(map[string]bool)
	var raised []rotationAlert
	var cleared []string
	r := b.rot
	r.mu.Lock()
	for _, a := range alerts {
		id := a.code + " " + a.subject
		open[id] = true
		if !r.raised[id] {
			r.raised[id] = true
			raised = append(raised, a)
		}
	}
	for id := range r.raised {
		if !open[id] {
			delete(r.raised, id)
			cleared = append(cleared, id)
		}
	}
	r.mu.Unlock()
	for _, a := range raised {
		b.log.Warn("rotation alert", "alert", a.code, "message", a.message)
	}
	for _, id := range cleared {
		code, subject, _ := strings.Cut(id, " ")
		b.log.Info("rotation alert cleared", "alert", code, "subject", subject)
	}
}
