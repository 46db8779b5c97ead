package keystore

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// A real RSA CMK, generated once: the wrapped copies in these tests are real
// RSA-OAEP-256 ciphertexts, so a round trip can prove the bytes survived.
var (
	cmkOnce sync.Once
	cmk     *rsa.PrivateKey
)

func testCMK(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	cmkOnce.Do(func() {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		cmk = k
	})
	return cmk
}

const (
	vaultA = "https://vault-a.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef"
	vaultB = "https://vault-b.vault.azure.net/keys/cmk/fedcba9876543210fedcba9876543210"
)

// wrap wraps plaintext under the test CMK once per key id.
func wrap(t testing.TB, plaintext []byte, keyIDs ...string) []kek.Wrapped {
	t.Helper()
	var out []kek.Wrapped
	for _, id := range keyIDs {
		ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &testCMK(t).PublicKey, plaintext, []byte(id))
		if err != nil {
			t.Fatalf("EncryptOAEP err = %v, want nil", err)
		}
		out = append(out, kek.Wrapped{KeyID: id, Algorithm: "RSA-OAEP-256", Ciphertext: ct})
	}
	return out
}

func unwrap(t testing.TB, w kek.Wrapped) []byte {
	t.Helper()
	pt, err := rsa.DecryptOAEP(sha256.New(), nil, testCMK(t), w.Ciphertext, []byte(w.KeyID))
	if err != nil {
		t.Fatalf("DecryptOAEP(copy by %s) err = %v, want nil", w.KeyID, err)
	}
	return pt
}

func randomKey(t testing.TB) []byte {
	t.Helper()
	b := make([]byte, 32)
	rand.Read(b)
	return b
}

// fakeClock advances one second per reading, so every time stamp differs.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock {
	return &fakeClock{t: time.Date(2025, 3, 1, 12, 0, 0, 123456789, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Second)
	return c.t
}

// newDir returns a fresh directory path (not created) inside t.TempDir.
func newDir(t testing.TB) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "ks")
}

func mustCreate(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Create(dir, opts)
	if err != nil {
		t.Fatalf("Create(%s) err = %v, want nil", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustOpen(t testing.TB, dir string, opts Options) *Store {
	t.Helper()
	s, err := Open(dir, opts)
	if err != nil {
		t.Fatalf("Open(%s) err = %v, want nil", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func mustCreateKey(t testing.TB, s *Store, name string, v Version) Key {
	t.Helper()
	k, err := s.CreateKey(name, StateActive, v)
	if err != nil {
		t.Fatalf("CreateKey(%q) err = %v, want nil", name, err)
	}
	return k
}

// fixture is a closed keystore with two keys: "master" (two versions, two
// copies each) and "other" (one version).
type fixture struct {
	dir            string
	master, other  Key
	object         Key // set by fuzzSeeds only: a KMIP object
	plain1, plain2 []byte
}

func newFixture(t testing.TB) fixture {
	t.Helper()
	f := fixture{dir: newDir(t), plain1: randomKey(t), plain2: randomKey(t)}
	s, err := Create(f.dir, Options{Now: newClock().Now})
	if err != nil {
		t.Fatalf("Create err = %v, want nil", err)
	}
	defer s.Close()
	mustCreateKey(t, s, "master", Version{Copies: wrap(t, f.plain1, vaultA, vaultB)})
	if f.master, err = s.AddVersion("master", Version{Copies: wrap(t, f.plain2, vaultA, vaultB)}); err != nil {
		t.Fatalf("AddVersion err = %v, want nil", err)
	}
	f.other = mustCreateKey(t, s, "other", Version{Copies: wrap(t, randomKey(t), vaultA)})
	return f
}

func (f fixture) keyFile(k Key) string { return filepath.Join(f.dir, keysName, k.ID+keyExt) }
func (f fixture) metaFile() string     { return filepath.Join(f.dir, metaName) }

// entry is one thing in a directory tree, as a snapshot sees it.
type entry struct {
	mode fs.FileMode
	data []byte // file content or symlink target
}

// snapshot records every file, directory and symlink under dir.
func snapshot(t testing.TB, dir string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		e := entry{mode: fi.Mode()}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.data = []byte(target)
		case fi.Mode().IsRegular():
			if e.data, err = os.ReadFile(p); err != nil {
				return err
			}
		}
		out[p] = e
		return nil
	})
	if err != nil {
		t.Fatalf("snapshot(%s) err = %v", dir, err)
	}
	return out
}

func diffSnapshots(a, b map[string]entry) string {
	for p, ea := range a {
		eb, ok := b[p]
		switch {
		case !ok:
			return p + " disappeared"
		case ea.mode != eb.mode:
			return fmt.Sprintf("%s: mode %v became %v", p, ea.mode, eb.mode)
		case !bytes.Equal(ea.data, eb.data):
			return p + ": content changed"
		}
	}
	for p := range b {
		if _, ok := a[p]; !ok {
			return p + " appeared"
		}
	}
	return ""
}

// copyTree copies a keystore directory (files, dirs, symlinks, modes).
func copyTree(t testing.TB, src, dst string) {
	t.Helper()
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		to := filepath.Join(dst, rel)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.IsDir():
			return os.Mkdir(to, fi.Mode().Perm())
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, to)
		default:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			return os.WriteFile(to, b, fi.Mode().Perm())
		}
	})
	if err != nil {
		t.Fatalf("copyTree err = %v", err)
	}
}

func readBytes(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("ReadFile(%s) err = %v", p, err)
	}
	return b
}

// writeBytes replaces p with a new file. Removing first, rather than
// truncating, keeps ext4 from flushing the file to disk on close
// (auto_da_alloc), which made the damage tests crawl.
func writeBytes(t testing.TB, p string, b []byte) {
	t.Helper()
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Remove(%s) err = %v", p, err)
	}
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatalf("WriteFile(%s) err = %v", p, err)
	}
}

// tempFiles lists leftover temporary files under dir.
func tempFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	for p := range snapshot(t, dir) {
		if isTemp(filepath.Base(p)) {
			out = append(out, p)
		}
	}
	return out
}
