package envelope

import (
	"bytes"
	"crypto/rand"
	"errors"
	"runtime"
	"testing"
)

// TestAEADWipe: the memory NewAEAD records holds the key schedule (it
// starts with the key), Wipe zeroes it, and a wiped AEAD refuses work.
func TestAEADWipe(t *testing.T) {
	key := make([]byte, KeySize)
	rand.Read(key)
	a, err := NewAEAD(key)
	if err != nil {
		t.Fatalf("NewAEAD err = %v, want nil", err)
	}
	if runtime.GOARCH == "amd64" || runtime.GOARCH == "arm64" {
		if !a.Wipeable() {
			t.Fatalf("Wipeable() = false on %s, want true", runtime.GOARCH)
		}
		if !bytes.Contains(a.state[0], key[:16]) {
			t.Fatalf("the recorded state does not hold the key schedule")
		}
	}
	h := Header{KeyID: "k", VersionID: "v1"}
	blob, err := a.Seal(h, []byte("data key"), []byte("aad"))
	if err != nil {
		t.Fatalf("Seal err = %v, want nil", err)
	}
	if dek, err := Open(key, blob, []byte("aad")); err != nil || string(dek) != "data key" {
		t.Fatalf("Open(AEAD.Seal blob) = %q, %v; want the data key", dek, err)
	}
	if a.page == nil && runtime.GOOS == "linux" {
		t.Errorf("the key schedule was not moved to a locked page")
	}
	state, stillMapped := a.state, a.page == nil || a.locked
	a.Wipe()
	if !stillMapped {
		return // an unlocked page is unmapped by Wipe
	}
	for _, st := range state {
		if !bytes.Equal(st, make([]byte, len(st))) {
			t.Fatalf("after Wipe the key schedule is not all zeros")
		}
	}
	if _, err := a.Open(blob, []byte("aad")); !errors.Is(err, errWiped) {
		t.Errorf("Open after Wipe err = %v, want %v", err, errWiped)
	}
	if _, err := NewAEAD(key[:16]); !errors.Is(err, ErrKeySize) {
		t.Errorf("NewAEAD(16 bytes) err = %v, want %v", err, ErrKeySize)
	}
}

func BenchmarkSealPerCall(b *testing.B) {
	key := make([]byte, KeySize)
	h := Header{KeyID: "k", VersionID: "v1"}
	for b.Loop() {
		if _, err := Seal(key, h, key, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSealHeldAEAD(b *testing.B) {
	key := make([]byte, KeySize)
	a, _ := NewAEAD(key)
	h := Header{KeyID: "k", VersionID: "v1"}
	for b.Loop() {
		if _, err := a.Seal(h, key, nil); err != nil {
			b.Fatal(err)
		}
	}
}
