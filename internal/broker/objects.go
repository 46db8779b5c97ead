package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/secret"
)

// This file is the broker's protobuf-free API for KMIP objects: keys that a
// KMIP client creates or registers, and the node's master-key versions seen
// as KMIP objects. internal/kmip calls it; it speaks keys, owners and
// states, never TTLV.

// Errors of the object API, for errors.Is at the protocol edge. Vault
// failures keep their kek kinds (kek.KindOf).
var (
	// ErrNotFound: no object with that identifier is visible to the caller.
	ErrNotFound = errNotFound
	// ErrInvalid: a malformed request (a length, a type, a name).
	ErrInvalid = errInvalid
	// ErrKeyState: the object's state forbids the operation (destroying
	// an Active key, using a destroyed one).
	ErrKeyState = errKeyState
	// ErrPaused: the broker is PAUSED and serves no key material.
	ErrPaused = errPausedBase
	// ErrNotAllowed: the caller may see the object but not do that to it
	// (a master-key version is managed with rotation, not over KMIP).
	ErrNotAllowed = errors.New("not allowed")
)

// Caller is the client identity a KMIP request comes from. An engine sees
// the objects it owns and the master keys; an admin sees and manages all.
type Caller struct {
	Identity string
	Admin    bool
}

// ObjectInfo describes a KMIP object. It holds no key material.
type ObjectInfo struct {
	ID string
	keystore.Object
	// State is the state to report: while the broker is PAUSED an Active
	// object is reported Deactivated (revocation is the KMIP State).
	State keystore.State
	// Initial is the Initial Date; LastChange the Last Change Date.
	Initial, LastChange time.Time
	// MasterKey is set for a version of a broker master key: its owner is
	// empty (every engine may read it) and it cannot be renamed, revoked or
	// destroyed over KMIP.
	MasterKey bool
}

// Live reports whether the object still has key material.
func (o ObjectInfo) Live() bool { return !o.State.Destroyed() }

// ObjectFilter selects objects for LocateObjects; zero fields match all.
type ObjectFilter struct {
	Name  string
	Type  keystore.ObjectType
	State keystore.State
}

// maxObjectIDLen bounds an identifier a client sends.
const maxObjectIDLen = 64

// CreateObject makes a new random AES key of spec.Length bits (128, 192 or
// 256) for c, wraps it under every configured customer key, persists it
// Pre-Active and keeps the plaintext in the cache. spec.Owner is set to c.
func (b *Broker) CreateObject(ctx context.Context, c Caller, spec keystore.Object) (ObjectInfo, error) {
	if spec.Type != keystore.ObjectSymmetricKey || spec.Algorithm != "AES" {
		return ObjectInfo{}, invalidf("Create makes AES symmetric keys only")
	}
	switch spec.Length {
	case 128, 192, 256:
	default:
		return ObjectInfo{}, invalidf("AES key length %d bits: use 128, 192 or 256", spec.Length)
	}
	raw := make([]byte, spec.Length/8)
	defer clear(raw)
	if _, err := rand.Read(raw); err != nil {
		return ObjectInfo{}, fmt.Errorf("broker: reading random bytes: %w", err)
	}
	return b.storeObject(ctx, c, spec, raw)
}

// RegisterObject stores material (a symmetric key or secret data the
// client supplies) for c, wrapped and persisted Pre-Active before it
// returns. The caller clears material.
func (b *Broker) RegisterObject(ctx context.Context, c Caller, spec keystore.Object, material []byte) (ObjectInfo, error) {
	if len(material) == 0 {
		return ObjectInfo{}, invalidf("Register needs key material")
	}
	spec.Length = 8 * len(material)
	return b.storeObject(ctx, c, spec, material)
}

func (b *Broker) storeObject(ctx context.Context, c Caller, spec keystore.Object, raw []byte) (ObjectInfo, error) {
	defer b.hub.calls.enter()()
	if b.paused() {
		return ObjectInfo{}, errPaused{reason: b.hub.current().Reason}
	}
	if c.Identity == "" {
		return ObjectInfo{}, invalidf("the client certificate names no identity")
	}
	spec.Owner = c.Identity
	spec.Activated, spec.Deactivated = time.Time{}, time.Time{}
	copies, err := b.wrapper.WrapKey(ctx, raw)
	if err != nil {
		b.observe(err)
		return ObjectInfo{}, err
	}
	if len(copies) == 0 {
		return ObjectInfo{}, errors.New("broker: the key wrapper returned no wrapped copy")
	}
	if err := proveCopies(ctx, b.wrapper, raw, copies); err != nil {
		return ObjectInfo{}, fmt.Errorf("broker: %w", err)
	}
	k, err := b.store.CreateObject(spec, keystore.StatePreActive, keystore.Version{Created: b.now().UTC(), Copies: copies})
	if errors.Is(err, keystore.ErrInvalid) {
		return ObjectInfo{}, fmt.Errorf("%w: %w", errInvalid, err)
	}
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("broker: persisting the new object: %w", err)
	}
	v, _ := k.Current()
	if err := b.cache.Put(v.ID, secret.New(raw)); err != nil {
		b.log.Debug("new KMIP object not cached; it loads on first use", "id", k.ID, "err", err)
	}
	b.log.InfoContext(ctx, "KMIP object stored", "id", k.ID, "type", string(spec.Type), "bits", spec.Length, "owner", c.Identity)
	return b.objectInfo(k, v.ID), nil
}

// ObjectAttributes describes object id. It works while PAUSED: the State
// then says Deactivated, which is how an engine learns of the revocation.
func (b *Broker) ObjectAttributes(_ context.Context, c Caller, id string) (ObjectInfo, error) {
	info, _, err := b.findObject(c, id)
	return info, err
}

// ObjectKey returns a copy of the key material of object id, which the
// caller clears once sent. Refused while PAUSED and for a destroyed object.
func (b *Broker) ObjectKey(ctx context.Context, c Caller, id string) (ObjectInfo, []byte, error) {
	defer b.hub.calls.enter()()
	info, versionID, err := b.usableObject(c, id)
	if err != nil {
		return ObjectInfo{}, nil, err
	}
	key, err := b.cache.Get(ctx, versionID)
	if err != nil {
		return ObjectInfo{}, nil, err
	}
	out := key.Bytes()
	if out == nil {
		return ObjectInfo{}, nil, fmt.Errorf("%w: object %s was wiped while being read (the broker is pausing or shutting down); retry", errPausedBase, id)
	}
	return info, out, nil
}

// UseObject calls f with the key material of an Active symmetric key in
// place (f must not keep it), for Encrypt and Decrypt. Refused while PAUSED.
func (b *Broker) UseObject(ctx context.Context, c Caller, id string, f func(info ObjectInfo, key []byte) error) error {
	defer b.hub.calls.enter()()
	info, versionID, err := b.usableObject(c, id)
	if err != nil {
		return err
	}
	if info.Type != keystore.ObjectSymmetricKey {
		return invalidf("object %s is %s, not a symmetric key", id, info.Type)
	}
	if info.State != keystore.StateActive {
		return fmt.Errorf("%w: object %s is %s; only an Active key encrypts or decrypts (Activate it)", errKeyState, id, info.State)
	}
	var ferr error
	if _, err := b.cache.Use(ctx, versionID, func(key []byte) { ferr = f(info, key) }); err != nil {
		return err
	}
	return ferr
}

// ActivateObject moves a Pre-Active object to Active; an Active one stays.
func (b *Broker) ActivateObject(ctx context.Context, c Caller, id string) (ObjectInfo, error) {
	if b.paused() {
		return ObjectInfo{}, errPaused{reason: b.hub.current().Reason}
	}
	info, _, err := b.findObject(c, id)
	if err != nil {
		return ObjectInfo{}, err
	}
	switch {
	case info.State == keystore.StateActive:
		return info, nil
	case info.MasterKey:
		return ObjectInfo{}, fmt.Errorf("%w: %s is a master-key version; it is activated by the broker", ErrNotAllowed, id)
	case info.State != keystore.StatePreActive:
		return ObjectInfo{}, fmt.Errorf("%w: object %s is %s; only a Pre-Active object can be activated", errKeyState, id, info.State)
	}
	return b.setObjectState(ctx, id, keystore.StateActive)
}

// RevokeObject deactivates object id (Compromised when compromised is set).
// Its material stays, so that Get still returns it, until Destroy.
func (b *Broker) RevokeObject(ctx context.Context, c Caller, id string, compromised bool) (ObjectInfo, error) {
	info, _, err := b.findObject(c, id)
	if err != nil {
		return ObjectInfo{}, err
	}
	if info.MasterKey {
		return ObjectInfo{}, fmt.Errorf("%w: %s is a master-key version; manage it with the keybroker commands", ErrNotAllowed, id)
	}
	st := keystore.StateDeactivated
	if compromised {
		st = keystore.StateCompromised
	}
	return b.setObjectState(ctx, id, st)
}

// DestroyObject drops the material of object id: refused while it is
// Active (revoke it first). The object keeps its identifier and says
// Destroyed from then on.
func (b *Broker) DestroyObject(ctx context.Context, c Caller, id string) (ObjectInfo, error) {
	info, _, err := b.findObject(c, id)
	if err != nil {
		return ObjectInfo{}, err
	}
	if info.MasterKey {
		return ObjectInfo{}, fmt.Errorf("%w: %s is a master-key version; manage it with the keybroker commands", ErrNotAllowed, id)
	}
	k, err := b.store.Key(id)
	if err != nil {
		return ObjectInfo{}, fmt.Errorf("%w: object %s", errNotFound, id)
	}
	if k.State == keystore.StateActive {
		return ObjectInfo{}, fmt.Errorf("%w: object %s is Active: Revoke it first, then Destroy", errKeyState, id)
	}
	st := keystore.StateDestroyed
	if k.State == keystore.StateCompromised {
		st = keystore.StateDestroyedCompromised
	}
	out, err := b.setObjectState(ctx, id, st)
	if err == nil {
		for _, v := range k.Versions {
			b.cache.Remove(v.ID)
		}
	}
	return out, err
}

// SetObjectNames replaces the Name values of object id with what f returns
// (Add, Modify and Delete Attribute on Name).
func (b *Broker) SetObjectNames(_ context.Context, c Caller, id string, f func(names []string) ([]string, error)) (ObjectInfo, error) {
	info, _, err := b.findObject(c, id)
	if err != nil {
		return ObjectInfo{}, err
	}
	if info.MasterKey {
		return ObjectInfo{}, fmt.Errorf("%w: %s is a master-key version; its name is the keystore key's", ErrNotAllowed, id)
	}
	k, err := b.store.UpdateObject(id, func(o *keystore.Object) error {
		names, err := f(slices.Clone(o.Names))
		if err != nil {
			return err
		}
		o.Names = names
		return nil
	})
	if errors.Is(err, keystore.ErrInvalid) {
		return ObjectInfo{}, fmt.Errorf("%w: %w", errInvalid, err)
	}
	if err != nil {
		return ObjectInfo{}, err
	}
	v, _ := k.Current()
	return b.objectInfo(k, v.ID), nil
}

// LocateObjects returns the identifiers of the objects c may see that match
// f, oldest first: KMIP objects and the current version of each master key.
func (b *Broker) LocateObjects(_ context.Context, c Caller, f ObjectFilter) []string {
	type hit struct {
		id string
		at time.Time
	}
	var hits []hit
	for _, k := range b.store.Keys() {
		var info ObjectInfo
		if k.Object == nil {
			v, ok := k.Current()
			if !ok {
				continue
			}
			info = b.objectInfo(k, v.ID)
		} else {
			if !c.Admin && k.Object.Owner != c.Identity {
				continue
			}
			info = b.objectInfo(k, "")
		}
		if (f.Name != "" && !slices.Contains(info.Names, f.Name)) ||
			(f.Type != "" && info.Type != f.Type) || (f.State != "" && info.State != f.State) {
			continue
		}
		hits = append(hits, hit{info.ID, info.Initial})
	}
	slices.SortStableFunc(hits, func(a, b hit) int { return a.at.Compare(b.at) })
	out := make([]string, len(hits))
	for i, h := range hits {
		out[i] = h.id
	}
	return out
}

// MasterKeyObjectID returns the KMIP identifier of the current version of
// the default master key: its version id. It names the same bytes forever;
// after a rotation the new version has a new identifier.
func (b *Broker) MasterKeyObjectID() (string, error) {
	return MasterKeyObjectID(b.store, b.defaultKey)
}

// MasterKeyObjectID is Broker.MasterKeyObjectID over a keystore, for
// commands that have no running broker ("" name means DefaultKeyName).
func MasterKeyObjectID(store *keystore.Store, name string) (string, error) {
	if name == "" {
		name = DefaultKeyName
	}
	k, err := store.Key(name)
	if err != nil {
		return "", err
	}
	v, ok := k.Current()
	if !ok {
		return "", fmt.Errorf("%w: key %q has no version", errNotFound, name)
	}
	return v.ID, nil
}

// usableObject finds an object whose material may be served now.
func (b *Broker) usableObject(c Caller, id string) (ObjectInfo, string, error) {
	if b.paused() {
		return ObjectInfo{}, "", errPaused{reason: b.hub.current().Reason}
	}
	info, versionID, err := b.findObject(c, id)
	if err != nil {
		return ObjectInfo{}, "", err
	}
	if !info.Live() {
		return ObjectInfo{}, "", fmt.Errorf("%w: object %s is %s: its key material is gone", errKeyState, id, info.State)
	}
	return info, versionID, nil
}

// findObject resolves id for c: a KMIP object's key id, or a master-key
// version id. An object owned by another engine is not found.
func (b *Broker) findObject(c Caller, id string) (ObjectInfo, string, error) {
	if id == "" || len(id) > maxObjectIDLen {
		return ObjectInfo{}, "", invalidf("a Unique Identifier is 1 to %d characters", maxObjectIDLen)
	}
	notFound := fmt.Errorf("%w: no object %q", errNotFound, id)
	if k, err := b.store.Key(id); err == nil && k.ID == id && k.Object != nil {
		if !c.Admin && k.Object.Owner != c.Identity {
			return ObjectInfo{}, "", notFound
		}
		v := k.Versions[0]
		return b.objectInfo(k, ""), v.ID, nil
	}
	k, v, err := b.store.FindVersion(id)
	if err != nil || k.Object != nil {
		return ObjectInfo{}, "", notFound
	}
	return b.objectInfo(k, v.ID), v.ID, nil
}

// objectInfo describes k; for a master key, versionID selects the version.
func (b *Broker) objectInfo(k keystore.Key, versionID string) ObjectInfo {
	st := k.State
	if st == keystore.StateActive && b.paused() {
		st = keystore.StateDeactivated
	}
	if k.Object != nil {
		return ObjectInfo{ID: k.ID, Object: *k.Object, State: st, Initial: k.Created, LastChange: k.Updated}
	}
	v, _ := k.Version(versionID)
	return ObjectInfo{
		ID: v.ID,
		Object: keystore.Object{
			Type: keystore.ObjectSymmetricKey, Algorithm: "AES", Length: 8 * MasterKeySize,
			UsageMask: 12, // Encrypt | Decrypt, what mongod asks for
			Names:     []string{k.Name}, Activated: v.Created,
		},
		State: st, Initial: v.Created, LastChange: k.Updated, MasterKey: true,
	}
}

// setObjectState persists a state change and describes the result.
func (b *Broker) setObjectState(ctx context.Context, id string, st keystore.State) (ObjectInfo, error) {
	k, err := b.store.SetState(id, st)
	if errors.Is(err, keystore.ErrState) {
		return ObjectInfo{}, fmt.Errorf("%w: %w", errKeyState, err)
	}
	if err != nil {
		return ObjectInfo{}, err
	}
	b.log.InfoContext(ctx, "KMIP object state changed", "id", id, "state", string(st))
	return b.objectInfo(k, ""), nil
}

// keySize is how many bytes a key's versions unwrap to.
func keySize(k keystore.Key) int {
	if k.Object != nil {
		return k.Object.Size()
	}
	return MasterKeySize
}

// Objects returns the keystore keys that are KMIP objects, oldest first,
// for the admin listing. They hold wrapped copies only.
func (b *Broker) Objects() []keystore.Key {
	var out []keystore.Key
	for _, k := range b.store.Keys() {
		if k.Object != nil {
			out = append(out, k)
		}
	}
	slices.SortStableFunc(out, func(a, b keystore.Key) int { return a.Created.Compare(b.Created) })
	return out
}

// reloadObjects loads the Active KMIP objects back into memory on resume,
// as Warm does at start, so that engines' Gets after RESUMED make no Key
// Vault call. Best effort: an object that fails to load is logged and
// loads on its first use.
func (b *Broker) reloadObjects(ctx context.Context) {
	for _, k := range b.store.Keys() {
		if k.Object == nil || k.State != keystore.StateActive {
			continue
		}
		v := k.Versions[0]
		raw, err := b.wrapper.UnwrapKey(ctx, v.Copies)
		if err == nil && len(raw) != keySize(k) {
			err = fmt.Errorf("broker: KMIP object %s unwrapped to %d bytes, want %d", k.ID, len(raw), keySize(k))
		}
		if err != nil {
			clear(raw)
			b.log.WarnContext(ctx, "KMIP object not reloaded on resume; it loads on first use", "id", k.ID, "err", err)
			continue
		}
		key := secret.New(raw)
		clear(raw)
		_ = b.cache.Put(v.ID, key)
	}
}
