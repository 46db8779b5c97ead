package keystore

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"slices"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// State is a key's lifecycle state, named after KMIP's (KMIP 1.x, section
// "State"), so that a KMIP front-end can map it one to one.
type State string

// The KMIP states. A key is created PRE_ACTIVE or ACTIVE and moves forward
// only; see SetState for the transitions allowed.
const (
	StatePreActive            State = "PRE_ACTIVE"
	StateActive               State = "ACTIVE"
	StateDeactivated          State = "DEACTIVATED"
	StateCompromised          State = "COMPROMISED"
	StateDestroyed            State = "DESTROYED"
	StateDestroyedCompromised State = "DESTROYED_COMPROMISED"
)

// Valid reports whether s is one of the KMIP states above.
func (s State) Valid() bool {
	switch s {
	case StatePreActive, StateActive, StateDeactivated, StateCompromised, StateDestroyed, StateDestroyedCompromised:
		return true
	}
	return false
}

// Destroyed reports whether the key material of a key in state s is gone
// (DESTROYED or DESTROYED_COMPROMISED): its versions keep their ids and
// times, but no wrapped copy.
func (s State) Destroyed() bool { return s == StateDestroyed || s == StateDestroyedCompromised }

// transitions are KMIP's allowed state changes. Only Destroy drops key
// material, and it is refused for an ACTIVE key: it must be deactivated
// (KMIP Revoke) first, so no single call can lose a key in use.
var transitions = map[State][]State{
	StatePreActive:   {StateActive, StateDeactivated, StateCompromised, StateDestroyed},
	StateActive:      {StateDeactivated, StateCompromised},
	StateDeactivated: {StateCompromised, StateDestroyed},
	StateCompromised: {StateDestroyedCompromised},
	StateDestroyed:   {StateDestroyedCompromised},
}

func canMove(from, to State) bool { return slices.Contains(transitions[from], to) }

// VersionState says what a version is for. The Store sets it; a value the
// caller passes in a Version is ignored.
type VersionState string

// The version states.
const (
	// VersionActive is the newest version of a live key: new wraps use it.
	VersionActive VersionState = "ACTIVE"
	// VersionRetired is an older version, kept so that data wrapped under
	// it stays readable.
	VersionRetired VersionState = "RETIRED"
	// VersionDestroyed is a version of a destroyed key: metadata only.
	VersionDestroyed VersionState = "DESTROYED"
)

// Key is one named key with its versions. It holds no plaintext: only
// copies wrapped by customer-managed keys. Values returned by a Store are
// deep copies the caller owns.
type Key struct {
	// ID is the stable identifier (32 lower-case hex digits) the Store
	// assigned at creation; KMIP's Unique Identifier.
	ID string
	// Name is unique within the Store.
	Name    string
	State   State
	Created time.Time
	Updated time.Time
	// Versions are oldest first; the last is the current one.
	Versions []Version
	// Object is set for a key a KMIP client created or registered, and
	// nil for a broker master key.
	Object *Object
}

// Version is one version of a key's material, as wrapped copies.
type Version struct {
	// ID is unique across all keys of the Store: a wrapped data key names
	// the version it was wrapped under, and nothing else.
	ID      string
	Created time.Time
	State   VersionState
	// Copies are the same key material wrapped by each configured CMK, in
	// the order the caller gave them. Empty only for a destroyed key.
	Copies []kek.Wrapped
}

// Current returns the newest version that still has key material, and
// false for a key without one (a destroyed key). It does not look at the
// key's State: callers that serve keys check State themselves.
func (k Key) Current() (Version, bool) {
	if n := len(k.Versions); n > 0 && k.Versions[n-1].State == VersionActive {
		return k.Versions[n-1], true
	}
	return Version{}, false
}

// Version returns the version with the given id.
func (k Key) Version(id string) (Version, bool) {
	for _, v := range k.Versions {
		if v.ID == id {
			return v, true
		}
	}
	return Version{}, false
}

// LogValue describes the key for log/slog without its wrapped copies.
func (k Key) LogValue() slog.Value {
	cur := ""
	if v, ok := k.Current(); ok {
		cur = v.ID
	}
	return slog.GroupValue(
		slog.String("id", k.ID),
		slog.String("name", k.Name),
		slog.String("state", string(k.State)),
		slog.Int("versions", len(k.Versions)),
		slog.String("current", cur),
	)
}

func (k Key) clone() Key {
	out := k
	out.Versions = make([]Version, len(k.Versions))
	for i, v := range k.Versions {
		out.Versions[i] = v.clone()
	}
	if len(out.Versions) == 0 {
		out.Versions = nil
	}
	out.Object = k.Object.clone()
	return out
}

func (v Version) clone() Version {
	out := v
	out.Copies = cloneCopies(v.Copies)
	return out
}

func cloneCopies(cs []kek.Wrapped) []kek.Wrapped {
	if len(cs) == 0 {
		return nil
	}
	out := make([]kek.Wrapped, len(cs))
	for i, c := range cs {
		out[i] = kek.Wrapped{KeyID: c.KeyID, Algorithm: c.Algorithm, Ciphertext: slices.Clone(c.Ciphertext)}
	}
	return out
}

// NewID returns a fresh random identifier for a key or a version: 16 bytes
// from crypto/rand as 32 lower-case hex digits.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24: it crashes the program instead
	return hex.EncodeToString(b[:])
}
