package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/keybroker/keybroker/internal/cache"
	"github.com/keybroker/keybroker/internal/envelope"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/secret"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// maxNameLen bounds key names and version ids in requests.
const maxNameLen = 128

// GetMasterKey implements keybroker.v1.KeyBrokerService.
func (b *Broker) GetMasterKey(ctx context.Context, req *keybrokerv1.GetMasterKeyRequest) (*keybrokerv1.GetMasterKeyResponse, error) {
	const method = "GetMasterKey"
	k, v, err := b.resolve(req.GetKeyName(), req.GetVersion())
	if err != nil {
		return nil, b.toStatus(ctx, method, err)
	}
	var raw []byte
	if err := b.useKey(ctx, v, func(mk []byte) { raw = bytes.Clone(mk) }); err != nil {
		clear(raw)
		return nil, b.toStatus(ctx, method, err)
	}
	return &keybrokerv1.GetMasterKeyResponse{
		Key:      raw,
		Version:  v.ID,
		CmkKeyId: firstKeyID(v.Copies),
		KeyName:  k.Name,
		Created:  timestamppb.New(v.Created),
	}, nil
}

// WrapDEK implements keybroker.v1.KeyBrokerService.
func (b *Broker) WrapDEK(ctx context.Context, req *keybrokerv1.WrapDEKRequest) (*keybrokerv1.WrapDEKResponse, error) {
	const method = "WrapDEK"
	if n := len(req.GetDek()); n == 0 || n > envelope.MaxDEKSize {
		return nil, b.toStatus(ctx, method, invalidf("dek is %d bytes: send a data key of 1 to %d bytes", n, envelope.MaxDEKSize))
	}
	if n := len(req.GetAssociatedData()); n > envelope.MaxAADSize {
		return nil, b.toStatus(ctx, method, invalidf("associated_data is %d bytes: at most %d are allowed", n, envelope.MaxAADSize))
	}
	k, v, err := b.resolve(req.GetKeyName(), "")
	if err != nil {
		return nil, b.toStatus(ctx, method, err)
	}
	var blob []byte
	var sealErr error
	err = b.useAEAD(ctx, v, func(a *envelope.AEAD) {
		blob, sealErr = a.Seal(envelope.Header{KeyID: k.ID, VersionID: v.ID}, req.GetDek(), req.GetAssociatedData())
	})
	clear(req.GetDek())
	if err != nil {
		return nil, b.toStatus(ctx, method, err)
	}
	if sealErr != nil {
		return nil, b.toStatus(ctx, method, sealErr)
	}
	return &keybrokerv1.WrapDEKResponse{WrappedDek: blob, Version: v.ID}, nil
}

// UnwrapDEK implements keybroker.v1.KeyBrokerService.
func (b *Broker) UnwrapDEK(ctx context.Context, req *keybrokerv1.UnwrapDEKRequest) (*keybrokerv1.UnwrapDEKResponse, error) {
	const method = "UnwrapDEK"
	k, v, dek, err := b.openDEK(ctx, req.GetKeyName(), req.GetWrappedDek(), req.GetAssociatedData())
	if err != nil {
		return nil, b.toStatus(ctx, method, err)
	}
	cur, _ := k.Current()
	return &keybrokerv1.UnwrapDEKResponse{Dek: dek, Version: v.ID, RewrapRecommended: cur.ID != v.ID}, nil
}

// RewrapDEK implements keybroker.v1.KeyBrokerService: the blob's data key
// sealed again under the newest version of its master key, with the same
// associated data. The data key never leaves the broker.
func (b *Broker) RewrapDEK(ctx context.Context, req *keybrokerv1.RewrapDEKRequest) (*keybrokerv1.RewrapDEKResponse, error) {
	const method = "RewrapDEK"
	k, old, dek, err := b.openDEK(ctx, req.GetKeyName(), req.GetWrappedDek(), req.GetAssociatedData())
	if err != nil {
		return nil, b.toStatus(ctx, method, err)
	}
	defer clear(dek)
	cur, ok := k.Current()
	if !ok {
		return nil, b.toStatus(ctx, method, fmt.Errorf("%w: key %q has no version", errNotFound, k.Name))
	}
	var blob []byte
	var sealErr error
	err = b.useAEAD(ctx, cur, func(a *envelope.AEAD) {
		blob, sealErr = a.Seal(envelope.Header{KeyID: k.ID, VersionID: cur.ID}, dek, req.GetAssociatedData())
	})
	if err == nil {
		err = sealErr
	}
	if err != nil {
		return nil, b.toStatus(ctx, method, err)
	}
	return &keybrokerv1.RewrapDEKResponse{WrappedDek: blob, Version: cur.ID, PreviousVersion: old.ID}, nil
}

// openDEK checks and opens a blob made by WrapDEK: the key it belongs to,
// the master-key version it names, and the data key, which the caller
// clears.
func (b *Broker) openDEK(ctx context.Context, name string, blob, aad []byte) (keystore.Key, keystore.Version, []byte, error) {
	fail := func(err error) (keystore.Key, keystore.Version, []byte, error) {
		return keystore.Key{}, keystore.Version{}, nil, err
	}
	if n := len(aad); n > envelope.MaxAADSize {
		return fail(invalidf("associated_data is %d bytes: at most %d are allowed", n, envelope.MaxAADSize))
	}
	if b.paused() {
		return fail(errPaused{reason: b.hub.current().Reason})
	}
	h, err := envelope.Parse(blob)
	if err != nil {
		return fail(fmt.Errorf("wrapped_dek: %w", err))
	}
	k, err := b.store.Key(h.KeyID)
	if err != nil {
		return fail(invalidf("wrapped_dek was not made by this broker: its master key %q is not in the keystore", h.KeyID))
	}
	if name != "" && name != k.Name && name != k.ID {
		return fail(invalidf("wrapped_dek belongs to key %q, not %q", k.Name, name))
	}
	v, ok := k.Version(h.VersionID)
	if !ok {
		return fail(fmt.Errorf("%w: wrapped_dek names master-key version %q of key %q, which the keystore does not hold (removed by retention, or the blob comes from another node's keystore)", errNotFound, h.VersionID, k.Name))
	}
	if err := usable(k); err != nil {
		return fail(err)
	}
	var dek []byte
	var openErr error
	err = b.useAEAD(ctx, v, func(a *envelope.AEAD) {
		dek, openErr = a.Open(blob, aad)
	})
	if err != nil {
		clear(dek)
		return fail(err)
	}
	if openErr != nil {
		return fail(fmt.Errorf("wrapped_dek: %w (check the associated data, and that the blob was not altered)", openErr))
	}
	return k, v, dek, nil
}

// RotateDEK implements keybroker.v1.KeyBrokerService: a new master-key
// version, wrapped under every configured CMK, checked, and persisted
// before it is ever served.
func (b *Broker) RotateDEK(ctx context.Context, req *keybrokerv1.RotateDEKRequest) (*keybrokerv1.RotateDEKResponse, error) {
	const method = "RotateDEK"
	k, v, err := b.Rotate(ctx, req.GetKeyName())
	if err != nil {
		return nil, b.toStatus(ctx, method, err)
	}
	prev := ""
	if n := len(k.Versions); n >= 2 {
		prev = k.Versions[n-2].ID
	}
	b.log.InfoContext(ctx, "master key rotated", "key", k.Name, "version", v.ID, "previous", prev)
	return &keybrokerv1.RotateDEKResponse{Version: v.ID, PreviousVersion: prev, Created: timestamppb.New(v.Created)}, nil
}

// Rotate adds a new master-key version to the named key ("" = default).
func (b *Broker) Rotate(ctx context.Context, name string) (keystore.Key, keystore.Version, error) {
	if len(name) > maxNameLen {
		return keystore.Key{}, keystore.Version{}, invalidf("key_name is %d bytes, at most %d", len(name), maxNameLen)
	}
	if name == "" {
		name = b.defaultKey
	}
	b.rotateMu.Lock()
	defer b.rotateMu.Unlock()
	return b.rotateLocked(ctx, name)
}

// rotateLocked is Rotate with rotateMu held, for the scheduler, which
// decides and rotates under one hold.
func (b *Broker) rotateLocked(ctx context.Context, name string) (keystore.Key, keystore.Version, error) {
	if b.paused() {
		return keystore.Key{}, keystore.Version{}, errPaused{reason: b.hub.current().Reason}
	}
	k, err := b.store.Key(name)
	if err != nil {
		return keystore.Key{}, keystore.Version{}, err
	}
	if err := usable(k); err != nil {
		return keystore.Key{}, keystore.Version{}, err
	}
	key, copies, err := newMasterKey(ctx, b.wrapper)
	if err != nil {
		b.observe(err)
		return keystore.Key{}, keystore.Version{}, err
	}
	v := keystore.Version{ID: keystore.NewID(), Created: b.now().UTC(), Copies: copies}
	k, err = b.store.AddVersion(k.ID, v)
	if err != nil {
		key.Wipe()
		return keystore.Key{}, keystore.Version{}, fmt.Errorf("broker: persisting the new master-key version: %w", err)
	}
	if err := b.cache.Put(v.ID, key); err != nil {
		// Persisted but not cached (shutting down): the next request loads it.
		key.Wipe()
	}
	v, _ = k.Version(v.ID)
	return k, v, nil
}

// resolve finds the key and version a request names ("" = default key,
// newest version) and checks the key may be served.
func (b *Broker) resolve(name, version string) (keystore.Key, keystore.Version, error) {
	if len(name) > maxNameLen || len(version) > maxNameLen {
		return keystore.Key{}, keystore.Version{}, invalidf("key_name and version are limited to %d bytes", maxNameLen)
	}
	if b.paused() {
		return keystore.Key{}, keystore.Version{}, errPaused{reason: b.hub.current().Reason}
	}
	if name == "" {
		name = b.defaultKey
	}
	k, err := b.store.Key(name)
	if err != nil {
		return keystore.Key{}, keystore.Version{}, fmt.Errorf("%w: key %q is not in the keystore", errNotFound, name)
	}
	if err := usable(k); err != nil {
		return keystore.Key{}, keystore.Version{}, err
	}
	if version == "" {
		v, ok := k.Current()
		if !ok {
			return keystore.Key{}, keystore.Version{}, fmt.Errorf("%w: key %q has no version", errNotFound, k.Name)
		}
		return k, v, nil
	}
	v, ok := k.Version(version)
	if !ok {
		return keystore.Key{}, keystore.Version{}, fmt.Errorf("%w: key %q has no version %q (list versions with keybroker status)", errNotFound, k.Name, version)
	}
	return k, v, nil
}

// usable refuses keys whose KMIP state forbids serving them.
func usable(k keystore.Key) error {
	if k.State != keystore.StateActive {
		return fmt.Errorf("%w: key %q is %s, only ACTIVE keys are served", errKeyState, k.Name, k.State)
	}
	return nil
}

// useKey calls f with the plaintext of one master-key version, from the
// cache or loaded through the vault on a miss. It refuses once PAUSED, even
// if the pause came while the key was in use, so no reply leaves after the
// PAUSE event with a key in it.
func (b *Broker) useKey(ctx context.Context, v keystore.Version, f func(key []byte)) error {
	_, err := b.cache.Use(ctx, v.ID, f)
	if b.paused() {
		return errPaused{reason: b.hub.current().Reason}
	}
	if errors.Is(err, cache.ErrPurged) || errors.Is(err, cache.ErrWiped) {
		// Wiped under us by a pause that has not been announced yet, or
		// by shutdown.
		return fmt.Errorf("%w: the key was wiped while in use: retry", kek.ErrUnavailable)
	}
	return err
}

// useAEAD is useKey for the AES-GCM of one master-key version: made once
// from the cached key, held with it and wiped with it.
func (b *Broker) useAEAD(ctx context.Context, v keystore.Version, f func(a *envelope.AEAD)) error {
	_, err := b.cache.UseAttached(ctx, v.ID, newAttachedAEAD, func(a secret.Attachment) { f(a.(*envelope.AEAD)) })
	if b.paused() {
		return errPaused{reason: b.hub.current().Reason}
	}
	if errors.Is(err, cache.ErrPurged) || errors.Is(err, cache.ErrWiped) {
		return fmt.Errorf("%w: the key was wiped while in use: retry", kek.ErrUnavailable)
	}
	return err
}

func newAttachedAEAD(key []byte) (secret.Attachment, error) { return envelope.NewAEAD(key) }

func (b *Broker) paused() bool { return b.hub.current().State == StatePaused }

func firstKeyID(copies []kek.Wrapped) string {
	if len(copies) == 0 {
		return ""
	}
	return copies[0].KeyID
}
