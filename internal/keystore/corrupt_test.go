package keystore

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// body returns the JSON body of a keystore file, trusting its frame.
func body(t testing.TB, data []byte) []byte {
	t.Helper()
	b, err := decodeFrame("test", data, data[10])
	if err != nil {
		t.Fatalf("decodeFrame err = %v, want nil", err)
	}
	return b
}

// editKeyFile rewrites a key file with a correct frame and checksum around
// a body changed by edit: the corruption only the semantic checks can see.
func editKeyFile(t testing.TB, path string, edit func(j *keyJSON)) {
	t.Helper()
	var j keyJSON
	if err := json.Unmarshal(body(t, readBytes(t, path)), &j); err != nil {
		t.Fatal(err)
	}
	edit(&j)
	b, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	writeBytes(t, path, encodeFrame(kindKey, b))
}

// reframe rebuilds a file with the given header fields and a correct checksum.
func reframe(version uint16, kind, reserved byte, b []byte) []byte {
	out := encodeFrame(kind, b)
	binary.BigEndian.PutUint16(out[8:10], version)
	out[11] = reserved
	out = out[:len(out)-sumLen]
	sum := sha256.Sum256(out)
	return append(out, sum[:]...)
}

func TestOpenCorrupt(t *testing.T) {
	golden := newFixture(t)
	mk := func(f fixture) string { return f.keyFile(f.master) }
	ot := func(f fixture) string { return f.keyFile(f.other) }
	meta := func(f fixture) string { return f.metaFile() }
	keysDir := func(f fixture) string { return filepath.Join(f.dir, keysName) }

	cases := []struct {
		name   string
		file   func(f fixture) string // the file the error must name
		mutate func(t *testing.T, f fixture)
		want   error
	}{
		{"empty key file", mk, func(t *testing.T, f fixture) { writeBytes(t, mk(f), nil) }, ErrCorrupt},
		{"empty meta file", meta, func(t *testing.T, f fixture) { writeBytes(t, meta(f), nil) }, ErrCorrupt},
		{"wrong magic", mk, func(t *testing.T, f fixture) {
			b := readBytes(t, mk(f))
			copy(b, "KBKS0001")
			writeBytes(t, mk(f), b)
		}, ErrCorrupt},
		{"a JSON file instead", mk, func(t *testing.T, f fixture) { writeBytes(t, mk(f), body(t, readBytes(t, mk(f)))) }, ErrCorrupt},
		{"newer format version", mk, func(t *testing.T, f fixture) {
			b := readBytes(t, mk(f))
			writeBytes(t, mk(f), reframe(formatVersion+1, kindKey, 0, body(t, b)))
		}, ErrNewerFormat},
		{"newer meta format", meta, func(t *testing.T, f fixture) {
			b := readBytes(t, meta(f))
			writeBytes(t, meta(f), reframe(7, kindMeta, 0, body(t, b)))
		}, ErrNewerFormat},
		{"format version 0", mk, func(t *testing.T, f fixture) {
			writeBytes(t, mk(f), reframe(0, kindKey, 0, body(t, readBytes(t, mk(f)))))
		}, ErrCorrupt},
		{"reserved byte set", mk, func(t *testing.T, f fixture) {
			writeBytes(t, mk(f), reframe(formatVersion, kindKey, 1, body(t, readBytes(t, mk(f)))))
		}, ErrCorrupt},
		{"meta file where a key belongs", mk, func(t *testing.T, f fixture) { writeBytes(t, mk(f), readBytes(t, meta(f))) }, ErrCorrupt},
		{"key file where the meta belongs", meta, func(t *testing.T, f fixture) { writeBytes(t, meta(f), readBytes(t, mk(f))) }, ErrCorrupt},
		{"bad checksum", mk, func(t *testing.T, f fixture) {
			b := readBytes(t, mk(f))
			b[len(b)-1] ^= 1
			writeBytes(t, mk(f), b)
		}, ErrCorrupt},
		{"body length too large", mk, func(t *testing.T, f fixture) {
			b := readBytes(t, mk(f))
			binary.BigEndian.PutUint32(b[12:16], maxBody+1)
			writeBytes(t, mk(f), b)
		}, ErrCorrupt},
		{"trailing bytes", mk, func(t *testing.T, f fixture) { writeBytes(t, mk(f), append(readBytes(t, mk(f)), 0)) }, ErrCorrupt},
		{"bad JSON behind a correct checksum", mk, func(t *testing.T, f fixture) {
			writeBytes(t, mk(f), encodeFrame(kindKey, []byte(`{"id": "`)))
		}, ErrCorrupt},
		{"JSON null behind a correct checksum", mk, func(t *testing.T, f fixture) {
			writeBytes(t, mk(f), encodeFrame(kindKey, []byte(`null`)))
		}, ErrCorrupt},
		{"trailing JSON behind a correct checksum", mk, func(t *testing.T, f fixture) {
			b := body(t, readBytes(t, mk(f)))
			writeBytes(t, mk(f), encodeFrame(kindKey, append(b, []byte(` {}`)...)))
		}, ErrCorrupt},
		{"unknown field behind a correct checksum", mk, func(t *testing.T, f fixture) {
			var m map[string]any
			json.Unmarshal(body(t, readBytes(t, mk(f))), &m)
			m["plaintext"] = "oops"
			b, _ := json.Marshal(m)
			writeBytes(t, mk(f), encodeFrame(kindKey, b))
		}, ErrCorrupt},
		{"bad base64 ciphertext", mk, func(t *testing.T, f fixture) {
			b := string(body(t, readBytes(t, mk(f))))
			ct := base64.StdEncoding.EncodeToString(f.master.Versions[0].Copies[0].Ciphertext)
			b = strings.Replace(b, ct, "!!"+ct[2:], 1)
			writeBytes(t, mk(f), encodeFrame(kindKey, []byte(b)))
		}, ErrCorrupt},
		{"bad meta store id", meta, func(t *testing.T, f fixture) {
			writeBytes(t, meta(f), encodeFrame(kindMeta, []byte(`{"store_id":"x","created":"2025-01-01T00:00:00Z"}`)))
		}, ErrCorrupt},
		{"meta without created time", meta, func(t *testing.T, f fixture) {
			writeBytes(t, meta(f), encodeFrame(kindMeta, []byte(`{"store_id":"`+NewID()+`"}`)))
		}, ErrCorrupt},
		{"empty key id", mk, func(t *testing.T, f fixture) { editKeyFile(t, mk(f), func(j *keyJSON) { j.ID = "" }) }, ErrCorrupt},
		{"key id unlike its file name", mk, func(t *testing.T, f fixture) { editKeyFile(t, mk(f), func(j *keyJSON) { j.ID = NewID() }) }, ErrCorrupt},
		{"empty name", mk, func(t *testing.T, f fixture) { editKeyFile(t, mk(f), func(j *keyJSON) { j.Name = "" }) }, ErrCorrupt},
		{"unknown key state", mk, func(t *testing.T, f fixture) { editKeyFile(t, mk(f), func(j *keyJSON) { j.State = "ENABLED" }) }, ErrCorrupt},
		{"no created time", mk, func(t *testing.T, f fixture) { editKeyFile(t, mk(f), func(j *keyJSON) { j.Created = time.Time{} }) }, ErrCorrupt},
		{"no versions", mk, func(t *testing.T, f fixture) { editKeyFile(t, mk(f), func(j *keyJSON) { j.Versions = nil }) }, ErrCorrupt},
		{"missing copies", mk, func(t *testing.T, f fixture) { editKeyFile(t, mk(f), func(j *keyJSON) { j.Versions[0].Copies = nil }) }, ErrCorrupt},
		{"empty version id", mk, func(t *testing.T, f fixture) { editKeyFile(t, mk(f), func(j *keyJSON) { j.Versions[0].ID = "" }) }, ErrCorrupt},
		{"duplicate version ids in a key", mk, func(t *testing.T, f fixture) {
			editKeyFile(t, mk(f), func(j *keyJSON) { j.Versions[1].ID = j.Versions[0].ID })
		}, ErrCorrupt},
		{"two active versions", mk, func(t *testing.T, f fixture) {
			editKeyFile(t, mk(f), func(j *keyJSON) { j.Versions[0].State = VersionActive })
		}, ErrCorrupt},
		{"destroyed key with copies", mk, func(t *testing.T, f fixture) {
			editKeyFile(t, mk(f), func(j *keyJSON) { j.State = StateDestroyed })
		}, ErrCorrupt},
		{"key id without version", mk, func(t *testing.T, f fixture) {
			editKeyFile(t, mk(f), func(j *keyJSON) { j.Versions[0].Copies[0].KeyID = "https://vault-a.vault.azure.net/keys/cmk" })
		}, ErrCorrupt},
		{"empty algorithm", mk, func(t *testing.T, f fixture) {
			editKeyFile(t, mk(f), func(j *keyJSON) { j.Versions[0].Copies[1].Algorithm = "" })
		}, ErrCorrupt},
		{"empty ciphertext", mk, func(t *testing.T, f fixture) {
			editKeyFile(t, mk(f), func(j *keyJSON) { j.Versions[1].Copies[0].Ciphertext = nil })
		}, ErrCorrupt},
		{"duplicate version ids across keys", ot, func(t *testing.T, f fixture) {
			editKeyFile(t, ot(f), func(j *keyJSON) { j.Versions[0].ID = f.master.Versions[0].ID })
		}, ErrCorrupt},
		{"duplicate names across keys", mk, func(t *testing.T, f fixture) {
			// Whichever file is read second is named; both are keys files.
			editKeyFile(t, ot(f), func(j *keyJSON) { j.Name = "master" })
		}, ErrCorrupt},
		{"a name equal to another key's id", ot, func(t *testing.T, f fixture) {
			editKeyFile(t, ot(f), func(j *keyJSON) { j.Name = f.master.ID })
		}, ErrCorrupt},
		{"unexpected file in keys", func(f fixture) string { return filepath.Join(keysDir(f), "backup.key.bak") }, func(t *testing.T, f fixture) {
			writeBytes(t, filepath.Join(keysDir(f), "backup.key.bak"), readBytes(t, mk(f)))
		}, ErrCorrupt},
		{"symlink in keys", func(f fixture) string { return filepath.Join(keysDir(f), NewIDFixed+keyExt) }, func(t *testing.T, f fixture) {
			if err := os.Symlink(mk(f), filepath.Join(keysDir(f), NewIDFixed+keyExt)); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt},
		{"directory in keys", func(f fixture) string { return filepath.Join(keysDir(f), NewIDFixed+keyExt) }, func(t *testing.T, f fixture) {
			if err := os.Mkdir(filepath.Join(keysDir(f), NewIDFixed+keyExt), 0o700); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt},
		{"keys directory missing", keysDir, func(t *testing.T, f fixture) {
			if err := os.RemoveAll(keysDir(f)); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt},
		{"meta missing beside key files", meta, func(t *testing.T, f fixture) {
			if err := os.Remove(meta(f)); err != nil {
				t.Fatal(err)
			}
		}, ErrCorrupt},
		{"key file readable by group", mk, func(t *testing.T, f fixture) { os.Chmod(mk(f), 0o640) }, ErrPermissions},
		{"meta file writable by others", meta, func(t *testing.T, f fixture) { os.Chmod(meta(f), 0o602) }, ErrPermissions},
		{"keys directory open to group", keysDir, func(t *testing.T, f fixture) { os.Chmod(keysDir(f), 0o750) }, ErrPermissions},
		{"keystore directory open to others", func(f fixture) string { return f.dir }, func(t *testing.T, f fixture) { os.Chmod(f.dir, 0o705) }, ErrPermissions},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := golden
			f.dir = newDir(t)
			copyTree(t, golden.dir, f.dir)
			tc.mutate(t, f)
			before := snapshot(t, f.dir)
			for _, ro := range []bool{false, true} {
				s, err := Open(f.dir, Options{ReadOnly: ro})
				if err == nil {
					s.Close()
				}
				if !errors.Is(err, tc.want) {
					t.Fatalf("Open(ReadOnly=%v) err = %v, want %v", ro, err, tc.want)
				}
				if name := tc.file(f); !strings.Contains(err.Error(), name) {
					t.Errorf("Open(ReadOnly=%v) err = %q, want it to name %s", ro, err, name)
				}
				checkNoSecrets(t, err, golden)
				if d := diffSnapshots(before, snapshot(t, f.dir)); d != "" {
					t.Fatalf("a failed Open(ReadOnly=%v) changed the keystore: %s", ro, d)
				}
			}
		})
	}
}

// NewIDFixed is a well-formed key id no fixture key has.
const NewIDFixed = "00000000000000000000000000000000"

// checkNoSecrets fails if err prints any wrapped copy of the fixture.
func checkNoSecrets(t testing.TB, err error, f fixture) {
	t.Helper()
	for _, k := range []Key{f.master, f.other} {
		for _, v := range k.Versions {
			for _, c := range v.Copies {
				ct := base64.StdEncoding.EncodeToString(c.Ciphertext)
				if strings.Contains(err.Error(), ct[:16]) || strings.Contains(err.Error(), string(c.Ciphertext[:8])) {
					t.Errorf("error %q prints a wrapped copy", err)
				}
			}
		}
	}
	for _, p := range [][]byte{f.plain1, f.plain2} {
		if strings.Contains(err.Error(), string(p)) {
			t.Errorf("error %q prints a plaintext key", err)
		}
	}
}

// TestOpenDamagedFiles damages a real key file and the meta file in every
// way a disk can: truncated at every length, and one bit flipped anywhere.
func TestOpenDamagedFiles(t *testing.T) {
	golden := newFixture(t)
	for _, which := range []string{"key", "meta"} {
		t.Run(which, func(t *testing.T) {
			f := golden
			f.dir = newDir(t)
			copyTree(t, golden.dir, f.dir)
			path := f.metaFile()
			if which == "key" {
				path = f.keyFile(f.master)
			}
			orig := readBytes(t, path)
			try := func(what string, data []byte) {
				writeBytes(t, path, data)
				before := snapshot(t, f.dir)
				s, err := Open(f.dir, Options{})
				if err == nil {
					s.Close()
					t.Fatalf("Open with %s %s err = nil, want ErrCorrupt", which, what)
				}
				if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
					t.Fatalf("Open with %s %s err = %v, want ErrCorrupt naming %s", which, what, err, path)
				}
				if d := diffSnapshots(before, snapshot(t, f.dir)); d != "" {
					t.Fatalf("Open with %s %s changed the keystore: %s", which, what, d)
				}
			}
			for n := range len(orig) {
				try("truncated to "+strconv.Itoa(n)+" bytes", orig[:n])
			}
			// Every bit through the decoder, one bit per byte through Open
			// (which also proves the files are left as they were).
			decode := func(b []byte) error { _, err := decodeKey(path, b); return err }
			if which == "meta" {
				decode = func(b []byte) error { _, err := decodeMeta(path, b); return err }
			}
			for i := range len(orig) * 8 {
				b := append([]byte(nil), orig...)
				b[i/8] ^= 1 << (i % 8)
				if err := decode(b); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
					t.Fatalf("decoding %s with bit %d flipped err = %v, want ErrCorrupt naming %s", which, i, err, path)
				}
				if i%8 == (i/8)%8 {
					try("bit "+strconv.Itoa(i)+" flipped", b)
				}
			}
			writeBytes(t, path, orig)
			mustOpen(t, f.dir, Options{ReadOnly: true})
		})
	}
}

// TestLeftoverTempFiles: whatever a crash leaves in a temp file, even a
// valid key file, is never read as a key; a writer's Open removes it.
func TestLeftoverTempFiles(t *testing.T) {
	golden := newFixture(t)
	other := newFixture(t) // a valid key file the keystore has never seen
	cases := []struct {
		name string
		dir  func(f fixture) string
		data func(t *testing.T) []byte
	}{
		{"torn key file", func(f fixture) string { return filepath.Join(f.dir, keysName) }, func(t *testing.T) []byte {
			b := readBytes(t, golden.keyFile(golden.master))
			return b[:len(b)/2]
		}},
		{"empty temp file", func(f fixture) string { return filepath.Join(f.dir, keysName) }, func(t *testing.T) []byte { return nil }},
		{"complete foreign key file", func(f fixture) string { return filepath.Join(f.dir, keysName) }, func(t *testing.T) []byte {
			return readBytes(t, other.keyFile(other.master))
		}},
		{"torn meta file", func(f fixture) string { return f.dir }, func(t *testing.T) []byte { return readBytes(t, golden.metaFile())[:20] }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := golden
			f.dir = newDir(t)
			copyTree(t, golden.dir, f.dir)
			tmp := filepath.Join(tc.dir(f), tempPrefix+"x.key.123")
			writeBytes(t, tmp, tc.data(t))

			before := snapshot(t, f.dir)
			ro := mustOpen(t, f.dir, Options{ReadOnly: true})
			if got := ro.Keys(); len(got) != 2 || got[0].ID != f.master.ID || got[1].ID != f.other.ID {
				t.Fatalf("Open(ReadOnly).Keys() = %v, want the fixture's two keys", got)
			}
			if d := diffSnapshots(before, snapshot(t, f.dir)); d != "" {
				t.Fatalf("a read-only Open changed the keystore: %s", d)
			}
			w := mustOpen(t, f.dir, Options{})
			if len(w.Keys()) != 2 {
				t.Fatalf("Open().Keys() = %d keys, want 2", len(w.Keys()))
			}
			if left := tempFiles(t, f.dir); len(left) != 0 {
				t.Errorf("after a writer's Open, temp files remain: %v", left)
			}
		})
	}
}

func TestCreateOverOrphanedKeys(t *testing.T) {
	f := newFixture(t)
	if err := os.Remove(f.metaFile()); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, f.dir)
	if _, err := Exists(f.dir); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Exists err = %v, want ErrCorrupt", err)
	}
	if _, err := Create(f.dir, Options{}); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), metaName) {
		t.Fatalf("Create over key files err = %v, want ErrCorrupt naming %s", err, metaName)
	}
	if d := diffSnapshots(before, snapshot(t, f.dir)); d != "" {
		// keystore.lock is the one file Create may touch, and it existed.
		t.Errorf("a refused Create changed the directory: %s", d)
	}
}
