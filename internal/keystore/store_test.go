package keystore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/keybroker/keybroker/internal/kek"
)

func TestRoundTrip(t *testing.T) {
	dir := newDir(t)
	clock := newClock()
	s := mustCreate(t, dir, Options{Now: clock.Now})
	if s.ID() == "" || !validID(s.ID()) {
		t.Fatalf("ID() = %q, want 32 hex digits", s.ID())
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("Stat(%s) = %v, %v; want mode 0700", dir, fi.Mode(), err)
	}

	p1, p2, p3 := randomKey(t), randomKey(t), randomKey(t)
	m := mustCreateKey(t, s, "master", Version{Copies: wrap(t, p1, vaultA)})
	v2 := NewID()
	if _, err := s.AddVersion(m.ID, Version{ID: v2, Copies: wrap(t, p2, vaultA, vaultB)}); err != nil {
		t.Fatalf("AddVersion err = %v, want nil", err)
	}
	// A CMK rewrap of the first version: same key, new copies.
	v1 := m.Versions[0].ID
	if _, err := s.SetCopies("master", v1, wrap(t, p1, vaultA, vaultB)); err != nil {
		t.Fatalf("SetCopies err = %v, want nil", err)
	}
	pre, err := s.CreateKey("kmip-key", StatePreActive, Version{Copies: wrap(t, p3, vaultB)})
	if err != nil {
		t.Fatalf("CreateKey(PRE_ACTIVE) err = %v, want nil", err)
	}
	if _, err := s.SetState(pre.ID, StateActive); err != nil {
		t.Fatalf("SetState(ACTIVE) err = %v, want nil", err)
	}
	gone := mustCreateKey(t, s, "gone", Version{Copies: wrap(t, randomKey(t), vaultA)})
	if _, err := s.SetState("gone", StateDeactivated); err != nil {
		t.Fatalf("SetState(DEACTIVATED) err = %v, want nil", err)
	}
	if _, err := s.SetState("gone", StateDestroyed); err != nil {
		t.Fatalf("SetState(DESTROYED) err = %v, want nil", err)
	}
	want := s.Keys()
	if err := s.Close(); err != nil {
		t.Fatalf("Close err = %v, want nil", err)
	}

	for _, ro := range []bool{false, true} {
		s2 := mustOpen(t, dir, Options{ReadOnly: ro})
		got := s2.Keys()
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("Open(ReadOnly=%v).Keys() = %+v, want %+v", ro, got, want)
		}
		if s2.ID() != s.ID() {
			t.Errorf("Open().ID() = %s, want %s", s2.ID(), s.ID())
		}
		s2.Close()
	}

	// The copies unwrap to the original key bytes.
	s3 := mustOpen(t, dir, Options{ReadOnly: true})
	mk, err := s3.Key("master")
	if err != nil {
		t.Fatalf("Key(master) err = %v, want nil", err)
	}
	cur, ok := mk.Current()
	if !ok || cur.ID != v2 || cur.State != VersionActive {
		t.Fatalf("Current() = %s %s %v, want %s ACTIVE true", cur.ID, cur.State, ok, v2)
	}
	for i, pt := range [][]byte{p1, p2} {
		v := mk.Versions[i]
		if len(v.Copies) != 2 {
			t.Fatalf("version %d has %d copies, want 2", i+1, len(v.Copies))
		}
		for _, c := range v.Copies {
			if !bytes.Equal(unwrap(t, c), pt) {
				t.Errorf("version %d copy %s does not unwrap to the stored key", i+1, c.KeyID)
			}
		}
	}
	if mk.Versions[0].State != VersionRetired {
		t.Errorf("old version state = %s, want RETIRED", mk.Versions[0].State)
	}
	g, _ := s3.Key(gone.ID)
	if _, ok := g.Current(); ok || g.State != StateDestroyed || len(g.Versions) != 1 || len(g.Versions[0].Copies) != 0 {
		t.Errorf("destroyed key = %+v, want DESTROYED with one version and no copies", g)
	}

	// Nothing on disk holds a plaintext key.
	for p, e := range snapshot(t, dir) {
		for _, pt := range [][]byte{p1, p2, p3} {
			if bytes.Contains(e.data, pt) {
				t.Errorf("%s holds a plaintext master key", p)
			}
		}
		if e.mode.IsRegular() && e.mode.Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", p, e.mode.Perm())
		}
		if e.mode.IsDir() && e.mode.Perm() != 0o700 {
			t.Errorf("%s has mode %v, want 0700", p, e.mode.Perm())
		}
	}
}

func TestKeyLookupAndCopies(t *testing.T) {
	f := newFixture(t)
	s := mustOpen(t, f.dir, Options{})
	for _, q := range []string{"master", f.master.ID} {
		k, err := s.Key(q)
		if err != nil || k.ID != f.master.ID {
			t.Errorf("Key(%q) = %s, %v; want %s, nil", q, k.ID, err, f.master.ID)
		}
	}
	if _, err := s.Key("nope"); !errors.Is(err, ErrKeyNotFound) {
		t.Errorf("Key(nope) err = %v, want ErrKeyNotFound", err)
	}
	keys := s.Keys()
	if len(keys) != 2 || keys[0].Name != "master" || keys[1].Name != "other" {
		t.Fatalf("Keys() names = %v, want [master other]", keys)
	}
	// Returned keys are deep copies: changing them changes nothing inside.
	keys[0].Versions[0].Copies[0].Ciphertext[0] ^= 0xff
	keys[0].Versions[0].Copies[0].KeyID = "x"
	keys[0].Name = "y"
	again, _ := s.Key("master")
	if !reflect.DeepEqual(again, f.master) {
		t.Errorf("Key(master) after changing a returned copy = %+v, want %+v", again, f.master)
	}
	if v, ok := again.Version(f.master.Versions[0].ID); !ok || v.ID != f.master.Versions[0].ID {
		t.Errorf("Version(%s) = %v, %v; want it found", f.master.Versions[0].ID, v.ID, ok)
	}
	for _, want := range []Key{f.master, f.other} {
		for _, wv := range want.Versions {
			k, v, err := s.FindVersion(wv.ID)
			if err != nil || k.ID != want.ID || !reflect.DeepEqual(v, wv) {
				t.Errorf("FindVersion(%s) = %s, %s, %v; want key %s and its version", wv.ID, k.ID, v.ID, err, want.ID)
			}
		}
	}
	if _, _, err := s.FindVersion(NewID()); !errors.Is(err, ErrVersionNotFound) {
		t.Errorf("FindVersion(unknown) err = %v, want ErrVersionNotFound", err)
	}
	if _, ok := again.Version("nope"); ok {
		t.Errorf("Version(nope) found, want not found")
	}
}

func TestWriteErrors(t *testing.T) {
	f := newFixture(t)
	s := mustOpen(t, f.dir, Options{})
	ok := wrap(t, randomKey(t), vaultA)
	usedVersion := f.other.Versions[0].ID
	cases := []struct {
		name string
		op   func() error
		want error
	}{
		{"empty name", func() error { _, err := s.CreateKey("", StateActive, Version{Copies: ok}); return err }, ErrInvalid},
		{"control char in name", func() error { _, err := s.CreateKey("a\nb", StateActive, Version{Copies: ok}); return err }, ErrInvalid},
		{"blank around name", func() error { _, err := s.CreateKey(" a", StateActive, Version{Copies: ok}); return err }, ErrInvalid},
		{"long name", func() error {
			_, err := s.CreateKey(strings.Repeat("n", maxNameLen+1), StateActive, Version{Copies: ok})
			return err
		}, ErrInvalid},
		{"name taken", func() error { _, err := s.CreateKey("master", StateActive, Version{Copies: ok}); return err }, ErrNameTaken},
		{"name is another key's id", func() error { _, err := s.CreateKey(f.other.ID, StateActive, Version{Copies: ok}); return err }, ErrNameTaken},
		{"created DEACTIVATED", func() error { _, err := s.CreateKey("n", StateDeactivated, Version{Copies: ok}); return err }, ErrInvalid},
		{"unknown state", func() error { _, err := s.CreateKey("n", "ON", Version{Copies: ok}); return err }, ErrInvalid},
		{"no copies", func() error { _, err := s.CreateKey("n", StateActive, Version{}); return err }, ErrInvalid},
		{"key id without version", func() error {
			_, err := s.CreateKey("n", StateActive, Version{Copies: []kek.Wrapped{{KeyID: "https://v.vault.azure.net/keys/cmk", Algorithm: "RSA-OAEP-256", Ciphertext: []byte{1}}}})
			return err
		}, ErrInvalid},
		{"http key id", func() error {
			_, err := s.CreateKey("n", StateActive, Version{Copies: []kek.Wrapped{{KeyID: "http://v.vault.azure.net/keys/cmk/1", Algorithm: "RSA-OAEP-256", Ciphertext: []byte{1}}}})
			return err
		}, ErrInvalid},
		{"empty algorithm", func() error {
			_, err := s.CreateKey("n", StateActive, Version{Copies: []kek.Wrapped{{KeyID: vaultA, Ciphertext: []byte{1}}}})
			return err
		}, ErrInvalid},
		{"empty ciphertext", func() error {
			_, err := s.CreateKey("n", StateActive, Version{Copies: []kek.Wrapped{{KeyID: vaultA, Algorithm: "RSA-OAEP"}}})
			return err
		}, ErrInvalid},
		{"two copies by one CMK", func() error {
			_, err := s.CreateKey("n", StateActive, Version{Copies: append(wrap(t, []byte{1}, vaultA), ok...)})
			return err
		}, ErrInvalid},
		{"bad version id", func() error { _, err := s.CreateKey("n", StateActive, Version{ID: "v1", Copies: ok}); return err }, ErrInvalid},
		{"version id of another key", func() error { _, err := s.AddVersion("master", Version{ID: usedVersion, Copies: ok}); return err }, ErrInvalid},
		{"add version to unknown key", func() error { _, err := s.AddVersion("nope", Version{Copies: ok}); return err }, ErrKeyNotFound},
		{"set copies of unknown version", func() error { _, err := s.SetCopies("master", NewID(), ok); return err }, ErrVersionNotFound},
		{"set no copies", func() error { _, err := s.SetCopies("master", f.master.Versions[0].ID, nil); return err }, ErrInvalid},
		{"remove current version", func() error { _, err := s.RemoveVersion("master", f.master.Versions[1].ID); return err }, ErrCurrentVersion},
		{"remove unknown version", func() error { _, err := s.RemoveVersion("master", NewID()); return err }, ErrVersionNotFound},
		{"destroy an active key", func() error { _, err := s.SetState("master", StateDestroyed); return err }, ErrState},
		{"unknown target state", func() error { _, err := s.SetState("master", "GONE"); return err }, ErrInvalid},
	}
	before := snapshot(t, f.dir)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if d := diffSnapshots(before, snapshot(t, f.dir)); d != "" {
		t.Errorf("failed writes changed the keystore: %s", d)
	}
	if got := s.Keys(); !reflect.DeepEqual(got, []Key{f.master, f.other}) {
		t.Errorf("Keys() after failed writes = %+v, want the fixture", got)
	}
}

func TestSetState(t *testing.T) {
	all := []State{StatePreActive, StateActive, StateDeactivated, StateCompromised, StateDestroyed, StateDestroyedCompromised}
	// paths reach each state from a new PRE_ACTIVE key.
	paths := map[State][]State{
		StatePreActive:            nil,
		StateActive:               {StateActive},
		StateDeactivated:          {StateActive, StateDeactivated},
		StateCompromised:          {StateActive, StateCompromised},
		StateDestroyed:            {StateDestroyed},
		StateDestroyedCompromised: {StateDestroyed, StateDestroyedCompromised},
	}
	allowed := map[[2]State]bool{
		{StatePreActive, StateActive}: true, {StatePreActive, StateDeactivated}: true,
		{StatePreActive, StateCompromised}: true, {StatePreActive, StateDestroyed}: true,
		{StateActive, StateDeactivated}: true, {StateActive, StateCompromised}: true,
		{StateDeactivated, StateCompromised}: true, {StateDeactivated, StateDestroyed}: true,
		{StateCompromised, StateDestroyedCompromised}: true, {StateDestroyed, StateDestroyedCompromised}: true,
	}
	s := mustCreate(t, newDir(t), Options{Now: newClock().Now})
	for _, from := range all {
		for _, to := range all {
			t.Run(string(from)+"->"+string(to), func(t *testing.T) {
				k, err := s.CreateKey(NewID()[:8], StatePreActive, Version{Copies: wrap(t, randomKey(t), vaultA)})
				if err != nil {
					t.Fatalf("CreateKey err = %v, want nil", err)
				}
				for _, st := range paths[from] {
					if k, err = s.SetState(k.ID, st); err != nil {
						t.Fatalf("SetState(%s) err = %v, want nil", st, err)
					}
				}
				got, err := s.SetState(k.ID, to)
				switch {
				case from == to:
					if err != nil || !reflect.DeepEqual(got, k) {
						t.Fatalf("SetState(%s) on a %s key = %v, want no change", to, from, err)
					}
				case allowed[[2]State{from, to}]:
					if err != nil || got.State != to {
						t.Fatalf("SetState(%s) = %s, %v; want %s, nil", to, got.State, err, to)
					}
					_, hasCurrent := got.Current()
					if hasCurrent == to.Destroyed() {
						t.Errorf("after SetState(%s) Current() ok = %v, want %v", to, hasCurrent, !to.Destroyed())
					}
				default:
					if !errors.Is(err, ErrState) {
						t.Fatalf("SetState(%s) on a %s key err = %v, want ErrState", to, from, err)
					}
				}
			})
		}
	}
	// Only live keys get versions.
	k := mustCreateKey(t, s, "live", Version{Copies: wrap(t, randomKey(t), vaultA)})
	if _, err := s.SetState(k.ID, StateDeactivated); err != nil {
		t.Fatalf("SetState err = %v", err)
	}
	if _, err := s.AddVersion(k.ID, Version{Copies: wrap(t, randomKey(t), vaultA)}); !errors.Is(err, ErrState) {
		t.Errorf("AddVersion on a DEACTIVATED key err = %v, want ErrState", err)
	}
	if _, err := s.SetState(k.ID, StateDestroyed); err != nil {
		t.Fatalf("SetState err = %v", err)
	}
	if _, err := s.SetCopies(k.ID, k.Versions[0].ID, wrap(t, randomKey(t), vaultA)); !errors.Is(err, ErrState) {
		t.Errorf("SetCopies on a DESTROYED key err = %v, want ErrState", err)
	}
}

func TestRemoveVersion(t *testing.T) {
	f := newFixture(t)
	s := mustOpen(t, f.dir, Options{})
	old := f.master.Versions[0].ID
	k, err := s.RemoveVersion("master", old)
	if err != nil {
		t.Fatalf("RemoveVersion err = %v, want nil", err)
	}
	if _, ok := k.Version(old); ok || len(k.Versions) != 1 {
		t.Fatalf("after RemoveVersion, versions = %+v, want only the current one", k.Versions)
	}
	// Its id is free again for nothing else to collide with; reopen agrees.
	s.Close()
	s2 := mustOpen(t, f.dir, Options{ReadOnly: true})
	got, _ := s2.Key("master")
	if !reflect.DeepEqual(got, k) {
		t.Errorf("reopened key = %+v, want %+v", got, k)
	}
}

func TestModesAndLifecycle(t *testing.T) {
	f := newFixture(t)
	ok := wrap(t, randomKey(t), vaultA)

	ro := mustOpen(t, f.dir, Options{ReadOnly: true})
	if _, err := ro.AddVersion("master", Version{Copies: ok}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("AddVersion on a read-only store err = %v, want ErrReadOnly", err)
	}

	s := mustOpen(t, f.dir, Options{})
	if err := s.Close(); err != nil {
		t.Fatalf("Close err = %v, want nil", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close err = %v, want nil", err)
	}
	if _, err := s.AddVersion("master", Version{Copies: ok}); !errors.Is(err, ErrClosed) {
		t.Errorf("AddVersion after Close err = %v, want ErrClosed", err)
	}
	if _, err := s.Key("master"); err != nil {
		t.Errorf("Key after Close err = %v, want nil (reads keep working)", err)
	}

	// Create refuses an existing keystore and a read-only request.
	if _, err := Create(f.dir, Options{}); !errors.Is(err, ErrExists) {
		t.Errorf("Create on a keystore err = %v, want ErrExists", err)
	}
	if _, err := Create(newDir(t), Options{ReadOnly: true}); !errors.Is(err, ErrInvalid) {
		t.Errorf("Create(ReadOnly) err = %v, want ErrInvalid", err)
	}
}

func TestOpenMissing(t *testing.T) {
	empty := t.TempDir()
	if err := os.Chmod(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(t.TempDir(), "file")
	writeBytes(t, notDir, []byte("x"))
	cases := []struct {
		name   string
		dir    string
		exists bool
		want   error // from Open
	}{
		{"no directory", filepath.Join(t.TempDir(), "absent"), false, ErrNotExist},
		{"empty directory", empty, false, ErrNotExist},
		{"a keystore", newFixture(t).dir, true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Exists(tc.dir)
			if err != nil || got != tc.exists {
				t.Fatalf("Exists(%s) = %v, %v; want %v, nil", tc.dir, got, err, tc.exists)
			}
			s, err := Open(tc.dir, Options{})
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open(%s) err = %v, want %v", tc.dir, err, tc.want)
			}
			if err == nil {
				s.Close()
			}
		})
	}
	if _, err := Exists(notDir); err == nil {
		t.Errorf("Exists(a file) err = nil, want an error")
	}
}

func TestCreatePermissions(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Create(dir, Options{})
	if !errors.Is(err, ErrPermissions) || !strings.Contains(err.Error(), "chmod 700 "+dir) {
		t.Fatalf("Create(0755 dir) err = %v, want ErrPermissions telling to chmod 700 %s", err, dir)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a refused Create left %d entries in %s", len(ents), dir)
	}
	// Once fixed, it works, and a nested path is made private all the way.
	os.Chmod(dir, 0o700)
	nested := filepath.Join(dir, "a", "b")
	mustCreate(t, nested, Options{})
	if fi, err := os.Stat(filepath.Join(dir, "a")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("parent made by Create has mode %v, %v; want 0700", fi.Mode().Perm(), err)
	}
}

func TestSecondWriterRefused(t *testing.T) {
	f := newFixture(t)
	s := mustOpen(t, f.dir, Options{})
	_, err := Open(f.dir, Options{})
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), f.dir) {
		t.Fatalf("second Open err = %v, want ErrLocked naming %s", err, f.dir)
	}
	if _, err := Create(f.dir, Options{}); !errors.Is(err, ErrExists) {
		t.Errorf("Create on a keystore in use err = %v, want ErrExists", err)
	}
	// Readers are not locked out.
	mustOpen(t, f.dir, Options{ReadOnly: true})
	s.Close()
	mustOpen(t, f.dir, Options{})
}

func TestConcurrentReadersAndWriter(t *testing.T) {
	f := newFixture(t)
	s := mustOpen(t, f.dir, Options{})
	const adds = 40
	copies := wrap(t, randomKey(t), vaultA)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 8)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := 0
			for {
				select {
				case <-stop:
					return
				default:
				}
				k, err := s.Key("master")
				if err != nil {
					errs <- err
					return
				}
				cur, ok := k.Current()
				if !ok || cur.ID != k.Versions[len(k.Versions)-1].ID || len(k.Versions) < last {
					errs <- errors.New("reader saw an inconsistent key")
					return
				}
				last = len(k.Versions)
				for _, kk := range s.Keys() {
					_ = kk.LogValue()
				}
			}
		}()
	}
	for i := range adds {
		if _, err := s.AddVersion("master", Version{Copies: copies}); err != nil {
			t.Errorf("AddVersion #%d err = %v, want nil", i, err)
			break
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	k, _ := s.Key("master")
	if want := len(f.master.Versions) + adds; len(k.Versions) != want {
		t.Errorf("master has %d versions, want %d", len(k.Versions), want)
	}
}

func TestNewID(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		id := NewID()
		if !validID(id) || seen[id] {
			t.Fatalf("NewID() = %q: invalid or repeated", id)
		}
		seen[id] = true
	}
}

func TestCheckKeyID(t *testing.T) {
	cases := []struct {
		id string
		ok bool
	}{
		{vaultA, true},
		{"https://myhsm.managedhsm.azure.net/keys/cmk-1/0123456789abcdef0123456789abcdef", true},
		{"https://127.0.0.1:8443/keys/cmk/1", true},
		{"https://[::1]:8443/keys/cmk/abc", true},
		{"https://v.vault.azure.net/keys/cmk", false},
		{"https://v.vault.azure.net/keys/cmk/", false},
		{"https://v.vault.azure.net/secrets/cmk/1", false},
		{"https://v.vault.azure.net/keys/cmk/1/extra", false},
		{"https://v.vault.azure.net/keys/cmk/1?api-version=7.4", false},
		{"https://v.vault.azure.net/keys/cmk/1#x", false},
		{"https://user@v.vault.azure.net/keys/cmk/1", false},
		{"https://v.vault.azure.net/keys/c%2Fmk/1", false},
		{"https://v.vault.azure.net/keys/c_mk/1", false},
		{"http://v.vault.azure.net/keys/cmk/1", false},
		{"HTTPS://v.vault.azure.net/keys/cmk/1", false},
		{"https:///keys/cmk/1", false},
		{"cmk/1", false},
		{"", false},
	}
	for _, tc := range cases {
		t.Run(tc.id, func(t *testing.T) {
			err := checkKeyID(tc.id)
			if (err == nil) != tc.ok {
				t.Fatalf("checkKeyID(%q) err = %v, want ok=%v", tc.id, err, tc.ok)
			}
		})
	}
}
