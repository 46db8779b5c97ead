// Package envelope seals data keys (DEKs) under a master key with
// AES-256-GCM into self-describing blobs, and opens them again.
//
// It is the format of the blobs WrapDEK returns and UnwrapDEK accepts. A blob
// names the keystore key and master-key version that sealed it, so the broker
// can find the right version with Parse before it has any key in hand:
//
//	"KBDEK" | version (1) | len(KeyID) (1) | KeyID | len(VersionID) (1) | VersionID |
//	len(DEK) (2, big endian) | nonce (12) | ciphertext (len(DEK)) | tag (16)
//
// Everything before the nonce is the header. GCM authenticates the header
// followed by the caller's associated data, so neither the named version nor
// the associated data can be swapped without Open failing.
//
// Nonces are 96 random bits, so one master-key version should seal no more
// than about 2^32 data keys (NIST SP 800-38D); rotate the master key well
// before that. The package holds no state and is safe for concurrent use;
// an AEAD (NewAEAD) serves one master-key version for its whole life.
package envelope

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

// Limits on what Seal accepts and Parse and Open read.
const (
	// MaxDEKSize is the largest data key Seal accepts, in bytes.
	MaxDEKSize = 1024
	// MaxAADSize is the largest associated data Seal and Open accept, in bytes.
	MaxAADSize = 4096
	// MaxIDSize is the longest key id or version id, in bytes.
	MaxIDSize = 64
	// KeySize is the size of the master key, in bytes (AES-256).
	KeySize = 32
	// MaxBlobSize is the size of the largest blob Seal can produce; Parse
	// and Open reject anything longer before reading it.
	MaxBlobSize = headerFixedSize + 2*MaxIDSize + nonceSize + MaxDEKSize + tagSize
)

// Version is the format version Seal writes and the only one Open reads.
const Version byte = 1

const (
	magic = "KBDEK"
	// magic, version, two id lengths, the DEK length.
	headerFixedSize = len(magic) + 1 + 1 + 1 + 2
	nonceSize       = 12
	tagSize         = 16
)

// Errors returned, wrapped with details, by Seal, Parse and Open.
var (
	// ErrMalformed means the bytes are not a well-formed blob of this format.
	ErrMalformed = errors.New("envelope: malformed blob")
	// ErrAuthentication means the blob is well formed but does not open:
	// wrong master key, wrong associated data, or modified bytes.
	ErrAuthentication = errors.New("envelope: authentication failed")
	// ErrTooLarge means a data key, associated data or blob is over its limit.
	ErrTooLarge = errors.New("envelope: too large")
	// ErrKeySize means the master key is not KeySize bytes.
	ErrKeySize = errors.New("envelope: master key must be 32 bytes")
	// ErrEmptyDEK means Seal was given no data key.
	ErrEmptyDEK = errors.New("envelope: empty data key")
	// ErrInvalidID means a key id or version id is empty, too long, or not
	// printable ASCII.
	ErrInvalidID = errors.New("envelope: invalid key or version id")
)

// Header names the key that sealed a blob.
type Header struct {
	// KeyID is the keystore's identifier of the master key.
	KeyID string
	// VersionID is the identifier of the master-key version that sealed the blob.
	VersionID string
}

// Seal encrypts dek under masterKey and returns a blob naming h. aad is bound
// to the blob: Open needs the same bytes. masterKey must be KeySize bytes, dek
// 1 to MaxDEKSize bytes, aad at most MaxAADSize bytes and both ids 1 to
// MaxIDSize bytes of printable ASCII. Seal keeps no reference to its arguments.
func Seal(masterKey []byte, h Header, dek, aad []byte) ([]byte, error) {
	if len(masterKey) != KeySize {
		return nil, fmt.Errorf("%w, got %d bytes: pass the 256-bit master key", ErrKeySize, len(masterKey))
	}
	if err := checkSeal(h, dek, aad); err != nil {
		return nil, err
	}
	a, err := NewAEAD(masterKey)
	if err != nil {
		return nil, err
	}
	defer a.Wipe()
	return a.Seal(h, dek, aad)
}

// Parse reads the header of blob without decrypting anything, so the caller
// can find the master-key version that opens it. It checks the whole layout,
// lengths included: a blob Parse accepts fails Open only on authentication.
func Parse(blob []byte) (Header, error) {
	h, _, err := parse(blob)
	return h, err
}

// Open checks and decrypts a blob made by Seal with the same masterKey and
// aad, and returns the data key. The caller owns the returned slice and
// should clear it after use.
func Open(masterKey []byte, blob, aad []byte) ([]byte, error) {
	if len(masterKey) != KeySize {
		return nil, fmt.Errorf("%w, got %d bytes: pass the 256-bit master key", ErrKeySize, len(masterKey))
	}
	if len(aad) > MaxAADSize {
		return nil, fmt.Errorf("%w: associated data is %d bytes, the limit is %d", ErrTooLarge, len(aad), MaxAADSize)
	}
	if _, _, err := parse(blob); err != nil {
		return nil, err
	}
	a, err := NewAEAD(masterKey)
	if err != nil {
		return nil, err
	}
	defer a.Wipe()
	return a.Open(blob, aad)
}

// parse validates the layout of blob and returns its header and the length of
// the header bytes.
func parse(blob []byte) (Header, int, error) {
	if len(blob) > MaxBlobSize {
		return Header{}, 0, fmt.Errorf("%w: blob is %d bytes, the limit is %d", ErrTooLarge, len(blob), MaxBlobSize)
	}
	s := cryptobyte.String(blob)
	var (
		m          []byte
		version    uint8
		keyID, ver cryptobyte.String
		dekLen     uint16
	)
	if !s.ReadBytes(&m, len(magic)) || string(m) != magic {
		return Header{}, 0, fmt.Errorf("%w: it does not start with %q; pass the blob WrapDEK returned, unmodified", ErrMalformed, magic)
	}
	if !s.ReadUint8(&version) {
		return Header{}, 0, fmt.Errorf("%w: truncated before the format version", ErrMalformed)
	}
	if version != Version {
		return Header{}, 0, fmt.Errorf("%w: format version %d, this broker reads version %d", ErrMalformed, version, Version)
	}
	if !s.ReadUint8LengthPrefixed(&keyID) {
		return Header{}, 0, fmt.Errorf("%w: truncated in the key id", ErrMalformed)
	}
	if !s.ReadUint8LengthPrefixed(&ver) {
		return Header{}, 0, fmt.Errorf("%w: truncated in the version id", ErrMalformed)
	}
	if !s.ReadUint16(&dekLen) {
		return Header{}, 0, fmt.Errorf("%w: truncated before the data key length", ErrMalformed)
	}
	h := Header{KeyID: string(keyID), VersionID: string(ver)}
	if err := checkID("key id", h.KeyID); err != nil {
		return Header{}, 0, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if err := checkID("version id", h.VersionID); err != nil {
		return Header{}, 0, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if dekLen == 0 || dekLen > MaxDEKSize {
		return Header{}, 0, fmt.Errorf("%w: data key length %d is outside 1..%d", ErrMalformed, dekLen, MaxDEKSize)
	}
	headerLen := len(blob) - len(s)
	if want := nonceSize + int(dekLen) + tagSize; len(s) != want {
		what := "truncated"
		if len(s) > want {
			what = "trailing bytes"
		}
		return Header{}, 0, fmt.Errorf("%w: %s: the sealed part is %d bytes, want %d; pass the blob WrapDEK returned, unmodified",
			ErrMalformed, what, len(s), want)
	}
	return h, headerLen, nil
}

// checkID keeps ids short and printable, since they end up in errors and logs.
func checkID(what, id string) error {
	if id == "" {
		return fmt.Errorf("%w: the %s is empty", ErrInvalidID, what)
	}
	if len(id) > MaxIDSize {
		return fmt.Errorf("%w: the %s is %d bytes, the limit is %d", ErrInvalidID, what, len(id), MaxIDSize)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c < 0x21 || c > 0x7e {
			return fmt.Errorf("%w: the %s has byte 0x%02x at offset %d; use printable ASCII without spaces", ErrInvalidID, what, c, i)
		}
	}
	return nil
}

// additionalData is header || aad. The header carries its own lengths, so the
// split between the two is unambiguous.
func additionalData(header, aad []byte) []byte {
	ad := make([]byte, 0, len(header)+len(aad))
	ad = append(ad, header...)
	return append(ad, aad...)
}
