package envelope

import (
	"bytes"
	"crypto/rand"
	"errors"
	"strings"
	"testing"
)

func testKey(t testing.TB, fill byte) []byte {
	t.Helper()
	return bytes.Repeat([]byte{fill}, KeySize)
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("rand.Read() err = %v", err)
	}
	return b
}

var testHeader = Header{KeyID: "mk-0001", VersionID: "v0003"}

func TestSealOpenRoundTrip(t *testing.T) {
	key := randomBytes(t, KeySize)
	tests := []struct {
		name string
		h    Header
		dek  []byte
		aad  []byte
	}{
		{"32-byte DEK, no aad", testHeader, randomBytes(t, 32), nil},
		{"32-byte DEK, empty aad", testHeader, randomBytes(t, 32), []byte{}},
		{"1-byte DEK", testHeader, []byte{0x42}, []byte("db=admin")},
		{"max DEK, max aad", testHeader, randomBytes(t, MaxDEKSize), randomBytes(t, MaxAADSize)},
		{"max ids", Header{KeyID: strings.Repeat("k", MaxIDSize), VersionID: strings.Repeat("~", MaxIDSize)}, randomBytes(t, 64), []byte("x")},
		{"1-char ids", Header{KeyID: "k", VersionID: "!"}, randomBytes(t, 16), nil},
		{"url-ish ids", Header{KeyID: "https://v.vault.azure.net/keys/cmk", VersionID: "0123abcd"}, randomBytes(t, 32), []byte("coll=users")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			blob, err := Seal(key, tc.h, tc.dek, tc.aad)
			if err != nil {
				t.Fatalf("Seal() err = %v, want nil", err)
			}
			if len(blob) > MaxBlobSize {
				t.Errorf("len(Seal()) = %d, want <= MaxBlobSize %d", len(blob), MaxBlobSize)
			}
			if len(tc.dek) >= 16 && bytes.Contains(blob, tc.dek) {
				t.Errorf("Seal() blob contains the plaintext DEK")
			}
			h, err := Parse(blob)
			if err != nil {
				t.Fatalf("Parse(blob) err = %v, want nil", err)
			}
			if h != tc.h {
				t.Errorf("Parse(blob) = %+v, want %+v", h, tc.h)
			}
			got, err := Open(key, blob, tc.aad)
			if err != nil {
				t.Fatalf("Open(key, blob, aad) err = %v, want nil", err)
			}
			if !bytes.Equal(got, tc.dek) {
				t.Errorf("Open(key, blob, aad) returned a different DEK")
			}
			// Random nonces: sealing twice never gives the same blob.
			again, err := Seal(key, tc.h, tc.dek, tc.aad)
			if err != nil {
				t.Fatalf("second Seal() err = %v, want nil", err)
			}
			if bytes.Equal(again, blob) {
				t.Errorf("Seal() twice gave identical blobs; want fresh nonces")
			}
		})
	}
}

func TestSealRejects(t *testing.T) {
	key := testKey(t, 1)
	dek := testKey(t, 2)
	tests := []struct {
		name string
		key  []byte
		h    Header
		dek  []byte
		aad  []byte
		want error
	}{
		{"nil key", nil, testHeader, dek, nil, ErrKeySize},
		{"16-byte key", key[:16], testHeader, dek, nil, ErrKeySize},
		{"33-byte key", append(testKey(t, 1), 0), testHeader, dek, nil, ErrKeySize},
		{"empty DEK", key, testHeader, nil, nil, ErrEmptyDEK},
		{"oversize DEK", key, testHeader, make([]byte, MaxDEKSize+1), nil, ErrTooLarge},
		{"oversize aad", key, testHeader, dek, make([]byte, MaxAADSize+1), ErrTooLarge},
		{"empty key id", key, Header{VersionID: "v"}, dek, nil, ErrInvalidID},
		{"empty version id", key, Header{KeyID: "k"}, dek, nil, ErrInvalidID},
		{"long key id", key, Header{KeyID: strings.Repeat("k", MaxIDSize+1), VersionID: "v"}, dek, nil, ErrInvalidID},
		{"long version id", key, Header{KeyID: "k", VersionID: strings.Repeat("v", MaxIDSize+1)}, dek, nil, ErrInvalidID},
		{"space in id", key, Header{KeyID: "a b", VersionID: "v"}, dek, nil, ErrInvalidID},
		{"newline in id", key, Header{KeyID: "k", VersionID: "v\n"}, dek, nil, ErrInvalidID},
		{"non-ASCII id", key, Header{KeyID: "clé", VersionID: "v"}, dek, nil, ErrInvalidID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			blob, err := Seal(tc.key, tc.h, tc.dek, tc.aad)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Seal() err = %v, want %v", err, tc.want)
			}
			if blob != nil {
				t.Errorf("Seal() blob = %d bytes, want nil on error", len(blob))
			}
		})
	}
}

func TestOpenRejects(t *testing.T) {
	key := randomBytes(t, KeySize)
	aad := []byte("db=orders")
	blob, err := Seal(key, testHeader, randomBytes(t, 32), aad)
	if err != nil {
		t.Fatalf("Seal() err = %v, want nil", err)
	}
	sameHeaderOtherVersion := func() []byte {
		b, err := Seal(key, Header{KeyID: testHeader.KeyID, VersionID: "v0004"}, randomBytes(t, 32), aad)
		if err != nil {
			t.Fatalf("Seal() err = %v, want nil", err)
		}
		return b
	}()
	// Splice the sealed part of one blob under another header: the version
	// named must be the version that sealed it.
	hl := len(blob) - nonceSize - 32 - tagSize
	spliced := append(append([]byte{}, sameHeaderOtherVersion[:len(sameHeaderOtherVersion)-nonceSize-32-tagSize]...), blob[hl:]...)
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte{}, blob...)) }

	tests := []struct {
		name string
		key  []byte
		blob []byte
		aad  []byte
		want error
	}{
		{"wrong key", randomBytes(t, KeySize), blob, aad, ErrAuthentication},
		{"short key", key[:31], blob, aad, ErrKeySize},
		{"wrong aad", key, blob, []byte("db=orderz"), ErrAuthentication},
		{"missing aad", key, blob, nil, ErrAuthentication},
		{"extra aad", key, blob, append(append([]byte{}, aad...), 0), ErrAuthentication},
		{"oversize aad", key, blob, make([]byte, MaxAADSize+1), ErrTooLarge},
		{"empty blob", key, nil, aad, ErrMalformed},
		{"wrong magic", key, mod(func(b []byte) []byte { b[0] = 'X'; return b }), aad, ErrMalformed},
		{"wrong version", key, mod(func(b []byte) []byte { b[5] = 2; return b }), aad, ErrMalformed},
		{"trailing garbage", key, append(append([]byte{}, blob...), 0), aad, ErrMalformed},
		{"oversize blob", key, make([]byte, MaxBlobSize+1), aad, ErrTooLarge},
		{"header swapped", key, spliced, aad, ErrAuthentication},
		{"zero DEK length", key, mod(func(b []byte) []byte {
			b[hl-2], b[hl-1] = 0, 0
			return b[:len(b)-32]
		}), aad, ErrMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dek, err := Open(tc.key, tc.blob, tc.aad)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open() err = %v, want %v", err, tc.want)
			}
			if dek != nil {
				t.Errorf("Open() DEK = %d bytes, want nil on error", len(dek))
			}
		})
	}
}

// TestEveryTruncationFails cuts a real blob at every length.
func TestEveryTruncationFails(t *testing.T) {
	key := randomBytes(t, KeySize)
	blob, err := Seal(key, testHeader, randomBytes(t, 32), []byte("aad"))
	if err != nil {
		t.Fatalf("Seal() err = %v, want nil", err)
	}
	for n := 0; n < len(blob); n++ {
		if _, err := Open(key, blob[:n], []byte("aad")); !errors.Is(err, ErrMalformed) {
			t.Errorf("Open(key, blob[:%d], aad) err = %v, want %v", n, err, ErrMalformed)
		}
		if _, err := Parse(blob[:n]); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(blob[:%d]) err = %v, want %v", n, err, ErrMalformed)
		}
	}
}

// TestEveryBitFlipFails flips each bit of a real blob in turn.
func TestEveryBitFlipFails(t *testing.T) {
	key := randomBytes(t, KeySize)
	aad := []byte("db=orders")
	blob, err := Seal(key, testHeader, randomBytes(t, 32), aad)
	if err != nil {
		t.Fatalf("Seal() err = %v, want nil", err)
	}
	for i := range blob {
		for bit := range 8 {
			b := append([]byte{}, blob...)
			b[i] ^= 1 << bit
			dek, err := Open(key, b, aad)
			if !errors.Is(err, ErrAuthentication) && !errors.Is(err, ErrMalformed) {
				t.Errorf("Open(blob with byte %d bit %d flipped) err = %v, want %v or %v", i, bit, err, ErrAuthentication, ErrMalformed)
			}
			if dek != nil {
				t.Errorf("Open(blob with byte %d bit %d flipped) returned a DEK", i, bit)
			}
		}
	}
}

// TestErrorsCarryNoSecrets checks that no error echoes key, DEK or aad bytes.
func TestErrorsCarryNoSecrets(t *testing.T) {
	key := []byte(strings.Repeat("K", KeySize))
	dek := []byte(strings.Repeat("D", 32))
	aad := []byte(strings.Repeat("A", 16))
	blob, err := Seal(key, testHeader, dek, aad)
	if err != nil {
		t.Fatalf("Seal() err = %v, want nil", err)
	}
	var errs []error
	_, err = Seal(key[:31], testHeader, dek, aad)
	errs = append(errs, err)
	_, err = Seal(key, testHeader, append(dek, make([]byte, MaxDEKSize)...), aad)
	errs = append(errs, err)
	_, err = Open([]byte(strings.Repeat("X", KeySize)), blob, aad)
	errs = append(errs, err)
	_, err = Open(key, blob, []byte("other"))
	errs = append(errs, err)
	_, err = Open(key, blob[:len(blob)-1], aad)
	errs = append(errs, err)
	for i, err := range errs {
		if err == nil {
			t.Fatalf("case %d: err = nil, want an error", i)
		}
		msg := err.Error()
		for _, s := range []string{"KKKK", "DDDD", "AAAA", "XXXX"} {
			if strings.Contains(msg, s) {
				t.Errorf("case %d: error %q contains input bytes %q", i, msg, s)
			}
		}
	}
}

// TestKnownLayout pins the byte layout, so a change to the format is a
// deliberate one (and gets a new Version).
func TestKnownLayout(t *testing.T) {
	key := testKey(t, 7)
	blob, err := Seal(key, Header{KeyID: "k1", VersionID: "v22"}, []byte{1, 2, 3}, nil)
	if err != nil {
		t.Fatalf("Seal() err = %v, want nil", err)
	}
	wantHeader := []byte("KBDEK\x01\x02k1\x03v22\x00\x03")
	if !bytes.HasPrefix(blob, wantHeader) {
		t.Errorf("Seal() header = %q, want %q", blob[:min(len(blob), len(wantHeader))], wantHeader)
	}
	if want := len(wantHeader) + nonceSize + 3 + tagSize; len(blob) != want {
		t.Errorf("len(Seal()) = %d, want %d", len(blob), want)
	}
}

func BenchmarkSeal(b *testing.B) {
	key := randomBytes(b, KeySize)
	dek := randomBytes(b, 32)
	aad := []byte("db=orders")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Seal(key, testHeader, dek, aad); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	key := randomBytes(b, KeySize)
	aad := []byte("db=orders")
	blob, err := Seal(key, testHeader, randomBytes(b, 32), aad)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Open(key, blob, aad); err != nil {
			b.Fatal(err)
		}
	}
}
