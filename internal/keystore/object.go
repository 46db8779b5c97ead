package keystore

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// ObjectType is the KMIP Object Type of a key a KMIP client created or
// registered.
type ObjectType string

// The object types the keystore holds for KMIP clients.
const (
	ObjectSymmetricKey ObjectType = "SYMMETRIC_KEY"
	ObjectSecretData   ObjectType = "SECRET_DATA"
)

// Limits on an object's attributes.
const (
	maxObjectNames  = 16
	maxOwnerLen     = 2048
	maxObjectBytes  = 512 // key material a KMIP object may hold
	maxEnumTextLen  = 32
	objectKeyPrefix = "kmip-"
)

// Object holds the KMIP attributes of a key made by a KMIP client (Create
// or Register). A key without one is a broker master key. Its material is
// one version that never changes: a KMIP Unique Identifier always names the
// same bytes, so neither rotation nor anything else adds a version.
type Object struct {
	// Owner is the client identity (mtls identity syntax) that created or
	// registered the object.
	Owner string
	Type  ObjectType
	// SecretDataType is the KMIP Secret Data Type name ("SEED",
	// "PASSWORD"); Secret Data only.
	SecretDataType string
	// Algorithm is the KMIP Cryptographic Algorithm name ("AES"); empty
	// for Secret Data without one.
	Algorithm string
	// Length is the material's length in bits (Cryptographic Length).
	Length int
	// UsageMask is the KMIP Cryptographic Usage Mask.
	UsageMask uint32
	// Names are the object's KMIP Name values, in order.
	Names []string
	// Activated is when the object became ACTIVE; zero before.
	Activated time.Time
	// Deactivated is when it was revoked; zero before.
	Deactivated time.Time
}

// Size returns the material's length in bytes.
func (o *Object) Size() int { return o.Length / 8 }

func (o *Object) clone() *Object {
	if o == nil {
		return nil
	}
	out := *o
	out.Names = slices.Clone(o.Names)
	return &out
}

// checkObject checks an object's attributes; its errors name the field.
func checkObject(o *Object) error {
	switch {
	case o.Owner == "" || len(o.Owner) > maxOwnerLen:
		return fmt.Errorf("object owner is %d bytes, want 1 to %d", len(o.Owner), maxOwnerLen)
	case o.Type != ObjectSymmetricKey && o.Type != ObjectSecretData:
		return fmt.Errorf("object type %s is not %s or %s", quote(string(o.Type)), ObjectSymmetricKey, ObjectSecretData)
	case o.Length <= 0 || o.Length%8 != 0 || o.Length/8 > maxObjectBytes:
		return fmt.Errorf("object length %d bits is not a whole number of bytes from 1 to %d", o.Length, maxObjectBytes)
	case o.Type == ObjectSymmetricKey && o.Algorithm != "AES":
		return fmt.Errorf("symmetric key algorithm %s is not AES", quote(o.Algorithm))
	case o.Type == ObjectSymmetricKey && o.Length != 128 && o.Length != 192 && o.Length != 256:
		return fmt.Errorf("AES key length %d bits is not 128, 192 or 256", o.Length)
	case o.Type == ObjectSymmetricKey && o.SecretDataType != "":
		return errors.New("a symmetric key has no secret data type")
	case len(o.SecretDataType) > maxEnumTextLen || len(o.Algorithm) > maxEnumTextLen:
		return errors.New("secret data type or algorithm name too long")
	case len(o.Names) > maxObjectNames:
		return fmt.Errorf("%d names, at most %d", len(o.Names), maxObjectNames)
	}
	for _, n := range o.Names {
		if err := checkName(n); err != nil {
			return fmt.Errorf("object name: %w", err)
		}
	}
	if (!o.Activated.IsZero() && !validTime(o.Activated)) || (!o.Deactivated.IsZero() && !validTime(o.Deactivated)) {
		return errors.New("object activation or deactivation time out of range")
	}
	return nil
}

// CreateObject adds a KMIP object in state PRE_ACTIVE or ACTIVE with first
// as its only version (its copies wrap exactly obj.Size() bytes), and
// returns it once it is on disk. Its keystore name is "kmip-" and its id.
func (s *Store) CreateObject(obj Object, state State, first Version) (Key, error) {
	if err := checkObject(&obj); err != nil {
		return Key{}, invalidf("%v", err)
	}
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.writable(); err != nil {
		return Key{}, err
	}
	if state != StatePreActive && state != StateActive {
		return Key{}, invalidf("a key is created %s or %s, not %s", StatePreActive, StateActive, quote(string(state)))
	}
	now := s.now()
	v, err := s.newVersion(first, now)
	if err != nil {
		return Key{}, err
	}
	id := NewID()
	for s.keys[id] != nil || s.names[id] != "" || s.names[objectKeyPrefix+id] != "" {
		id = NewID()
	}
	o := obj.clone()
	if state == StateActive {
		o.Activated = now.UTC()
	}
	k := &Key{ID: id, Name: objectKeyPrefix + id, State: state, Created: now, Updated: now, Versions: []Version{v}, Object: o}
	return s.commit(k, nil)
}

// UpdateObject changes the KMIP attributes of an object with f (which sees
// a copy) and persists them. Keys without an Object are ErrInvalid. f's
// error is returned as is and nothing is written.
func (s *Store) UpdateObject(id string, f func(o *Object) error) (Key, error) {
	return s.update(id, func(k *Key, _ time.Time) error {
		if k.Object == nil {
			return invalidf("key %q is a master key, not a KMIP object", k.Name)
		}
		o := k.Object.clone()
		if err := f(o); err != nil {
			return err
		}
		if err := checkObject(o); err != nil {
			return invalidf("%v", err)
		}
		k.Object = o
		return nil
	})
}

// stampObject records in a KMIP object when it was activated or
// deactivated (Activation Date, Deactivation Date).
func stampObject(k *Key, st State, now time.Time) {
	if k.Object == nil {
		return
	}
	o := k.Object.clone()
	switch st {
	case StateActive:
		o.Activated = now.UTC()
	case StateDeactivated, StateCompromised:
		if o.Deactivated.IsZero() {
			o.Deactivated = now.UTC()
		}
	}
	k.Object = o
}
