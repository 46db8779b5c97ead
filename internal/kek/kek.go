// Package kek describes data keys wrapped by a key-encryption key that is
// held elsewhere (a customer-managed key in Azure Key Vault or Managed HSM),
// and the kinds of failure a key-encryption-key provider reports.
//
// It is the vocabulary shared by the broker, the Azure adapter and the
// failover wrapper; it knows nothing of Azure or gRPC itself.
package kek

import (
	"errors"
	"fmt"
	"time"
)

// Wrapped is one copy of a key wrapped by one key-encryption key.
type Wrapped struct {
	// KeyID is the full identifier, with version, of the key that wrapped
	// the copy, e.g. https://myvault.vault.azure.net/keys/cmk/0123abcd.
	KeyID string
	// Algorithm is the wrapping algorithm, e.g. RSA-OAEP-256.
	Algorithm string
	// Ciphertext is the wrapped key.
	Ciphertext []byte
}

// KeyInfo describes a key-encryption key as its provider reports it.
type KeyInfo struct {
	KeyID     string // full identifier with version
	Enabled   bool
	NotBefore time.Time // zero when unset
	Expires   time.Time // zero when unset
	Created   time.Time // zero when unknown
	KeyType   string    // e.g. RSA, RSA-HSM
	KeyOps    []string
}

// Kind is the class of a provider failure. The broker decides what to do from
// the kind alone: revocation pauses, outage fails over, invalid input is the
// caller's fault.
type Kind int

// The kinds, from most to least definitive.
const (
	KindUnknown      Kind = iota
	KindRevoked           // access denied, key disabled or credential invalid: revocation evidence
	KindNotFound          // the key (or version) does not exist: revocation evidence
	KindThrottled         // 429 after bounded retries: outage evidence
	KindUnavailable       // timeouts, resets, DNS, 408, 5xx: outage evidence
	KindInvalidInput      // malformed request; neither revocation nor outage
)

// Sentinel errors, one per kind, for errors.Is.
var (
	ErrRevoked      = errors.New("kek: access to the key is revoked")
	ErrNotFound     = errors.New("kek: key not found")
	ErrThrottled    = errors.New("kek: throttled")
	ErrUnavailable  = errors.New("kek: key vault unavailable")
	ErrInvalidInput = errors.New("kek: invalid input")
)

func (k Kind) sentinel() error {
	switch k {
	case KindRevoked:
		return ErrRevoked
	case KindNotFound:
		return ErrNotFound
	case KindThrottled:
		return ErrThrottled
	case KindUnavailable:
		return ErrUnavailable
	case KindInvalidInput:
		return ErrInvalidInput
	}
	return nil
}

// String returns a short lower-case name, fit for a metric attribute.
func (k Kind) String() string {
	switch k {
	case KindRevoked:
		return "revoked"
	case KindNotFound:
		return "not_found"
	case KindThrottled:
		return "throttled"
	case KindUnavailable:
		return "unavailable"
	case KindInvalidInput:
		return "invalid_input"
	}
	return "unknown"
}

// IsRevocation reports whether the kind is definitive evidence that the
// customer withdrew the key.
func (k Kind) IsRevocation() bool { return k == KindRevoked || k == KindNotFound }

// IsOutage reports whether the kind is transient evidence: retry elsewhere or later.
func (k Kind) IsOutage() bool { return k == KindThrottled || k == KindUnavailable }

// Error is a classified provider failure. It never carries key material.
type Error struct {
	Kind       Kind
	Op         string        // operation: get, wrap, unwrap, token
	Region     string        // region name, or "" for a single-vault setup
	KeyID      string        // key identifier involved, if any
	Code       string        // provider error code, e.g. ForbiddenByRbac, KeyDisabled, AADSTS7000215
	Status     int           // HTTP status, 0 when none was received
	RetryAfter time.Duration // server's Retry-After hint, 0 when none
	Err        error         // underlying error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("kek: %s", e.Op)
	if e.Region != "" {
		msg += " in region " + e.Region
	}
	if e.KeyID != "" {
		msg += " of " + e.KeyID
	}
	msg += ": " + e.Kind.String()
	if e.Code != "" {
		msg += " (" + e.Code + ")"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrRevoked) and friends match by kind.
func (e *Error) Is(target error) bool {
	s := e.Kind.sentinel()
	return s != nil && s == target
}

// KindOf returns the kind of err: the Kind of the first *Error in its chain,
// or the kind named by a sentinel, or KindUnknown.
func KindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}
	for _, k := range []Kind{KindRevoked, KindNotFound, KindThrottled, KindUnavailable, KindInvalidInput} {
		if errors.Is(err, k.sentinel()) {
			return k
		}
	}
	return KindUnknown
}
