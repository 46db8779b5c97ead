package envelope

import (
	"crypto/aes"
	"crypto/cipher"
	"errors"
	"fmt"
	"reflect"
	"unsafe"

	"golang.org/x/crypto/cryptobyte"

	"github.com/keybroker/keybroker/internal/secret"
	"github.com/keybroker/keybroker/internal/wipe"
)

// AEAD is the AES-256-GCM of one master-key version, made once and used for
// every Seal and Open under that version, so that no call builds (and
// leaves behind) a key schedule of its own. Wipe zeroes the key schedule
// and the GHASH table in place. It is safe for concurrent use, but Wipe
// must not run while Seal or Open does: the owner (secret.Bytes'
// attachment) serialises them.
type AEAD struct {
	aead  cipher.AEAD
	state [][]byte // the pointer-free memory holding the key schedule
	// page is the locked page the key schedule was moved to (secret.Page),
	// nil when it stayed on the heap.
	page   []byte
	locked bool
}

// NewAEAD makes the AEAD of masterKey, which must be KeySize bytes. The
// caller keeps masterKey.
func NewAEAD(masterKey []byte) (*AEAD, error) {
	if len(masterKey) != KeySize {
		return nil, fmt.Errorf("%w, got %d bytes: pass the 256-bit master key", ErrKeySize, len(masterKey))
	}
	block, err := aes.NewCipher(masterKey)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKeySize, err)
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil {
		wipe.Value(block)
		return nil, fmt.Errorf("envelope: creating AES-GCM: %w", err)
	}
	// The GCM holds its own copy of the block's key schedule: the block
	// itself is garbage from here on, so wipe it now.
	wipe.Value(block)
	a := &AEAD{aead: aead}
	if st := wipe.Memory(aead); st != nil {
		a.state = append(a.state, st)
		a.moveToPage()
	}
	return a, nil
}

// moveToPage moves the key schedule into a locked page of its own, so it
// never reaches swap: the GCM value is a pointer to pointer-free memory, so
// a copy of that memory behind a new pointer is the same cipher. The heap
// copy is zeroed. Nothing changes when no page is available.
func (a *AEAD) moveToPage() {
	st := a.state[0]
	rv := reflect.ValueOf(a.aead)
	if rv.Kind() != reflect.Struct || rv.NumField() != 1 || rv.Field(0).Kind() != reflect.Pointer {
		return
	}
	page, locked := secret.Page()
	if page == nil {
		return
	}
	if len(st) > len(page) {
		secret.Release(page, locked)
		return
	}
	moved := reflect.New(rv.Type()).Elem()
	copy(page, st)
	*(*unsafe.Pointer)(unsafe.Pointer(moved.Field(0).UnsafeAddr())) = unsafe.Pointer(&page[0])
	aead, ok := moved.Interface().(cipher.AEAD)
	if !ok {
		clear(page)
		secret.Release(page, locked)
		return
	}
	clear(st)
	a.aead, a.state, a.page, a.locked = aead, [][]byte{page[:len(st)]}, page, locked
}

// Seal is the package's Seal with this AEAD's key.
func (a *AEAD) Seal(h Header, dek, aad []byte) ([]byte, error) {
	if err := checkSeal(h, dek, aad); err != nil {
		return nil, err
	}
	return seal(a.aead, h, dek, aad)
}

// Open is the package's Open with this AEAD's key.
func (a *AEAD) Open(blob, aad []byte) ([]byte, error) {
	return open(a.aead, blob, aad)
}

// Wipe zeroes the key schedule. The AEAD must not be used afterwards.
func (a *AEAD) Wipe() {
	for _, b := range a.state {
		clear(b)
	}
	a.aead, a.state = nil, nil
	if a.page != nil {
		secret.Release(a.page, a.locked)
		a.page = nil
	}
}

// Wipeable reports whether Wipe reaches the key schedule on this platform
// and Go version (the standard library's AES-GCM holds it in pointer-free
// memory that can be found); when it does not, the schedule stays until
// the garbage collector reuses its memory.
func (a *AEAD) Wipeable() bool { return len(a.state) > 0 }

// checkSeal validates Seal's arguments other than the key.
func checkSeal(h Header, dek, aad []byte) error {
	if err := checkID("key id", h.KeyID); err != nil {
		return err
	}
	if err := checkID("version id", h.VersionID); err != nil {
		return err
	}
	switch {
	case len(dek) == 0:
		return fmt.Errorf("%w: pass the data key to wrap", ErrEmptyDEK)
	case len(dek) > MaxDEKSize:
		return fmt.Errorf("%w: data key is %d bytes, the limit is %d", ErrTooLarge, len(dek), MaxDEKSize)
	case len(aad) > MaxAADSize:
		return fmt.Errorf("%w: associated data is %d bytes, the limit is %d", ErrTooLarge, len(aad), MaxAADSize)
	}
	return nil
}

func seal(aead cipher.AEAD, h Header, dek, aad []byte) ([]byte, error) {
	if aead == nil {
		return nil, errWiped
	}
	var b cryptobyte.Builder
	b.AddBytes([]byte(magic))
	b.AddUint8(Version)
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(h.KeyID)) })
	b.AddUint8LengthPrefixed(func(b *cryptobyte.Builder) { b.AddBytes([]byte(h.VersionID)) })
	b.AddUint16(uint16(len(dek)))
	header, err := b.Bytes()
	if err != nil {
		// Unreachable: every length was checked.
		return nil, fmt.Errorf("envelope: encoding header: %w", err)
	}
	blob := make([]byte, len(header), len(header)+aead.Overhead()+len(dek))
	copy(blob, header)
	// The random-nonce AEAD writes nonce || ciphertext || tag.
	return aead.Seal(blob, nil, dek, additionalData(header, aad)), nil
}

func open(aead cipher.AEAD, blob, aad []byte) ([]byte, error) {
	if aead == nil {
		return nil, errWiped
	}
	if len(aad) > MaxAADSize {
		return nil, fmt.Errorf("%w: associated data is %d bytes, the limit is %d", ErrTooLarge, len(aad), MaxAADSize)
	}
	_, headerLen, err := parse(blob)
	if err != nil {
		return nil, err
	}
	header := blob[:headerLen]
	dek, err := aead.Open(nil, nil, blob[headerLen:], additionalData(header, aad))
	if err != nil {
		// Never say more: which of key, aad or bytes is wrong is what an
		// attacker would like to learn.
		return nil, fmt.Errorf("%w: wrong master key version, wrong associated data, or the blob was modified", ErrAuthentication)
	}
	return dek, nil
}

// errWiped means an AEAD was used after Wipe (a bug of the caller).
var errWiped = errors.New("envelope: AEAD used after Wipe")
