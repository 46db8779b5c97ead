package envelope

import (
	"bytes"
	"errors"
	"testing"
)

// fuzzKey is the master key FuzzOpen opens with; seeds sealed with it let the
// fuzzer start from blobs that open.
var fuzzKey = bytes.Repeat([]byte{0x5a}, KeySize)

func addSeeds(f *testing.F, withAAD bool) {
	f.Helper()
	seeds := []struct {
		h   Header
		dek []byte
		aad []byte
	}{
		{testHeader, bytes.Repeat([]byte{1}, 32), []byte("db=orders")},
		{Header{KeyID: "k", VersionID: "v"}, []byte{9}, nil},
		{Header{KeyID: "https://v.vault.azure.net/keys/cmk", VersionID: "0123456789abcdef"}, bytes.Repeat([]byte{2}, 64), []byte{0}},
	}
	for _, s := range seeds {
		blob, err := Seal(fuzzKey, s.h, s.dek, s.aad)
		if err != nil {
			f.Fatalf("Seal() err = %v, want nil", err)
		}
		if withAAD {
			f.Add(blob, s.aad)
		} else {
			f.Add(blob)
		}
	}
	for _, raw := range [][]byte{nil, []byte("KBDEK"), []byte("KBDEK\x01"), []byte("KBDEK\x01\x00\x00\x00\x00"), []byte("KBDEK\x01\xff")} {
		if withAAD {
			f.Add(raw, []byte(nil))
		} else {
			f.Add(raw)
		}
	}
}

// FuzzParse feeds arbitrary bytes to Parse: it never panics, and whatever it
// accepts has a valid header that re-encodes to the blob's own prefix.
func FuzzParse(f *testing.F) {
	addSeeds(f, false)
	f.Fuzz(func(t *testing.T, blob []byte) {
		h, n, err := parse(blob)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("Parse() err = %v, want %v or %v", err, ErrMalformed, ErrTooLarge)
			}
			return
		}
		if len(blob) > MaxBlobSize {
			t.Fatalf("Parse() accepted %d bytes, over MaxBlobSize %d", len(blob), MaxBlobSize)
		}
		if checkID("key id", h.KeyID) != nil || checkID("version id", h.VersionID) != nil {
			t.Fatalf("Parse() = %+v, accepted an invalid id", h)
		}
		// Re-seal a DEK of the same length under the parsed header: the header
		// bytes must come out identical.
		dekLen := len(blob) - n - nonceSize - tagSize
		again, err := Seal(fuzzKey, h, make([]byte, dekLen), nil)
		if err != nil {
			t.Fatalf("Seal(parsed header) err = %v, want nil", err)
		}
		if !bytes.Equal(again[:n], blob[:n]) {
			t.Fatalf("re-sealed header = %q, want %q", again[:n], blob[:n])
		}
	})
}

// FuzzOpen feeds arbitrary blobs and aad to Open with fuzzKey: it never
// panics, and a blob that opens re-seals and opens to the same DEK.
func FuzzOpen(f *testing.F) {
	addSeeds(f, true)
	f.Fuzz(func(t *testing.T, blob, aad []byte) {
		dek, err := Open(fuzzKey, blob, aad)
		if err != nil {
			if dek != nil {
				t.Fatalf("Open() returned a DEK with err = %v", err)
			}
			for _, want := range []error{ErrMalformed, ErrAuthentication, ErrTooLarge} {
				if errors.Is(err, want) {
					return
				}
			}
			t.Fatalf("Open() err = %v, want a sentinel error", err)
		}
		h, err := Parse(blob)
		if err != nil {
			t.Fatalf("Parse() of a blob that opens: err = %v, want nil", err)
		}
		again, err := Seal(fuzzKey, h, dek, aad)
		if err != nil {
			t.Fatalf("Seal(opened DEK) err = %v, want nil", err)
		}
		got, err := Open(fuzzKey, again, aad)
		if err != nil {
			t.Fatalf("Open(re-sealed) err = %v, want nil", err)
		}
		if !bytes.Equal(got, dek) {
			t.Fatalf("Open(re-sealed) returned a different DEK")
		}
		if len(aad) > 0 {
			if _, err := Open(fuzzKey, again, aad[1:]); !errors.Is(err, ErrAuthentication) {
				t.Fatalf("Open(re-sealed, shorter aad) err = %v, want %v", err, ErrAuthentication)
			}
		}
	})
}

// FuzzSealOpen round-trips arbitrary ids, DEKs and aad: Seal either refuses
// with a sentinel error or produces a blob that opens to the same DEK.
func FuzzSealOpen(f *testing.F) {
	f.Add("mk-0001", "v0003", []byte("0123456789abcdef0123456789abcdef"), []byte("db=orders"))
	f.Add("", "v", []byte{1}, []byte(nil))
	f.Add("k", "v\x00", []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, keyID, versionID string, dek, aad []byte) {
		h := Header{KeyID: keyID, VersionID: versionID}
		blob, err := Seal(fuzzKey, h, dek, aad)
		if err != nil {
			for _, want := range []error{ErrInvalidID, ErrEmptyDEK, ErrTooLarge} {
				if errors.Is(err, want) {
					return
				}
			}
			t.Fatalf("Seal() err = %v, want a sentinel error", err)
		}
		got, err := Parse(blob)
		if err != nil || got != h {
			t.Fatalf("Parse(Seal()) = %+v, %v, want %+v, nil", got, err, h)
		}
		out, err := Open(fuzzKey, blob, aad)
		if err != nil || !bytes.Equal(out, dek) {
			t.Fatalf("Open(Seal()) err = %v (DEK equal: %v), want nil and the same DEK", err, bytes.Equal(out, dek))
		}
	})
}
