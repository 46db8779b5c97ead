package keystore

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

const (
	metaName = "keystore.meta"
	lockName = "keystore.lock"
	keysName = "keys"
	keyExt   = ".key"
)

// Options configures a Store. The zero value is a writable store on the
// real clock that does not log.
type Options struct {
	// Now is the clock for created and updated times; nil means time.Now.
	Now func() time.Time
	// ReadOnly opens without the lock: writes return ErrReadOnly, leftover
	// temp files are left alone, and the Store is a snapshot taken at Open
	// (it does not see later writes by the process that holds the lock).
	ReadOnly bool
	// Logger receives the few things worth telling an operator (leftover
	// temp files removed at Open); nil means no logging.
	Logger *slog.Logger
}

// Store is an open keystore directory. It is safe for concurrent use:
// readers never wait for the disk, writers are serialized.
type Store struct {
	dir      string
	keysDir  string
	now      func() time.Time
	readOnly bool
	log      *slog.Logger
	id       string
	lock     *os.File

	// hook runs before each step of every atomic write; tests only.
	hook func(step string) error

	// writeMu serializes writers and is held across their disk I/O. A writer
	// reads the maps below without mu: only writers change them.
	writeMu sync.Mutex
	closed  bool  // guarded by writeMu
	failed  error // guarded by writeMu: a write whose outcome on disk is unknown

	// mu guards the maps; it is never held across disk I/O. A *Key in keys
	// is never modified once stored: writers store a new one.
	mu       sync.RWMutex
	keys     map[string]*Key   // by key id
	names    map[string]string // name -> key id
	versions map[string]string // version id -> key id
}

func newStore(dir string, opts Options) *Store {
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Store{
		dir:      dir,
		keysDir:  filepath.Join(dir, keysName),
		now:      func() time.Time { return now().UTC() },
		readOnly: opts.ReadOnly,
		log:      log,
		keys:     map[string]*Key{},
		names:    map[string]string{},
		versions: map[string]string{},
	}
}

// Exists reports whether dir holds a keystore. A missing directory is
// (false, nil). Key files without keystore.meta are ErrCorrupt: that is a
// damaged keystore, not an empty directory to create one in.
func Exists(dir string) (bool, error) {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("keystore: %w", err)
	}
	if !fi.IsDir() {
		return false, fmt.Errorf("keystore: %s is not a directory", dir)
	}
	metaPath := filepath.Join(dir, metaName)
	if _, err := os.Lstat(metaPath); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("keystore: %w", err)
	}
	keysDir := filepath.Join(dir, keysName)
	ents, err := os.ReadDir(keysDir)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("keystore: %w", err)
	}
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), keyExt) && !isTemp(e.Name()) {
			return false, corruptf(metaPath, "missing, but %s holds key files; restore %s from a backup (creating a new keystore here is refused so that no key is lost)", keysDir, metaName)
		}
	}
	return false, nil
}

// Create makes a new keystore in dir, creating dir with mode 0700 if it is
// absent, and returns it open for writing. It fails with ErrExists if dir
// already holds one, and with ErrPermissions if an existing dir is open to
// group or others.
func Create(dir string, opts Options) (*Store, error) {
	return create(dir, opts, nil)
}

func create(dir string, opts Options, hook func(string) error) (*Store, error) {
	if opts.ReadOnly {
		return nil, invalidf("Create cannot open the new keystore read-only")
	}
	s := newStore(dir, opts)
	s.hook = hook
	// The directories MkdirAll makes must survive a power loss too: their
	// entries live in their parents, which are synced below.
	var made []string
	for p := filepath.Clean(dir); ; p = filepath.Dir(p) {
		if _, err := os.Lstat(p); err == nil || !errors.Is(err, fs.ErrNotExist) || filepath.Dir(p) == p {
			break
		}
		made = append(made, p)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	for _, p := range made {
		if err := syncDir(filepath.Dir(p)); err != nil {
			return nil, err
		}
	}
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	// Asked before locking too, so that an existing keystore in use is
	// reported as existing rather than as locked.
	if found, err := Exists(dir); err != nil {
		return nil, err
	} else if found {
		return nil, fmt.Errorf("%w in %s; open it instead", ErrExists, dir)
	}
	if err := s.takeLock(); err != nil {
		return nil, err
	}
	if err := s.create(); err != nil {
		s.lock.Close()
		return nil, err
	}
	return s, nil
}

func (s *Store) create() error {
	// Checked under the lock: another process may have created it meanwhile.
	found, err := Exists(s.dir)
	if err != nil {
		return err
	}
	if found {
		return fmt.Errorf("%w in %s; open it instead", ErrExists, s.dir)
	}
	if err := os.Mkdir(s.keysDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("keystore: %w", err)
	}
	if err := checkDir(s.keysDir); err != nil {
		return err
	}
	if err := s.removeTemps(); err != nil { // left by an earlier Create that crashed
		return err
	}
	if err := syncDir(s.dir); err != nil {
		return err
	}
	m := meta{StoreID: NewID(), Created: s.now()}
	data, err := encodeMeta(m)
	if err != nil {
		return err
	}
	// The meta file goes last: until it is there, the directory is not a keystore.
	if _, err := writeFileAtomic(filepath.Join(s.dir, metaName), data, s.hook); err != nil {
		return err
	}
	s.id = m.StoreID
	return nil
}

// Open opens the keystore in dir. It reads and checks every file before it
// returns, and changes nothing on disk except removing leftover temp files
// (writers only, and only once everything checked out). Errors:
// ErrNotExist when dir holds no keystore; ErrCorrupt naming the bad file
// and what is wrong; ErrNewerFormat; ErrPermissions with the chmod to run;
// ErrLocked when another writer has it open.
func Open(dir string, opts Options) (*Store, error) {
	return open(dir, opts, nil)
}

func open(dir string, opts Options, hook func(string) error) (*Store, error) {
	s := newStore(dir, opts)
	s.hook = hook
	found, err := Exists(dir)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("%w in %s; create one first", ErrNotExist, dir)
	}
	if err := checkDir(dir); err != nil {
		return nil, err
	}
	if !s.readOnly {
		if err := s.takeLock(); err != nil {
			return nil, err
		}
	}
	if err := s.load(); err != nil {
		s.Close()
		return nil, err
	}
	if !s.readOnly {
		if err := s.removeTemps(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func checkDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("keystore: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("keystore: %s is not a directory", dir)
	}
	return checkPrivate(dir, fi)
}

func (s *Store) takeLock() error {
	f, err := lockDir(s.dir, filepath.Join(s.dir, lockName))
	if err != nil {
		return err
	}
	s.lock = f
	return nil
}

func (s *Store) removeTemps() error {
	for _, d := range []string{s.dir, s.keysDir} {
		removed, err := removeTemps(d)
		for _, p := range removed {
			s.log.Info("keystore: removed a temporary file left by an interrupted write", "file", p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// load reads every file. It fills the maps only when all of them check out.
func (s *Store) load() error {
	metaPath := filepath.Join(s.dir, metaName)
	data, err := readFile(metaPath)
	if err != nil {
		return err
	}
	m, err := decodeMeta(metaPath, data)
	if err != nil {
		return err
	}
	fi, err := os.Lstat(s.keysDir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return corruptf(s.keysDir, "missing: every keystore has a keys directory; restore it from a backup")
	case err != nil:
		return fmt.Errorf("keystore: %w", err)
	case !fi.IsDir():
		return corruptf(s.keysDir, "not a directory; restore it from a backup")
	}
	if err := checkPrivate(s.keysDir, fi); err != nil {
		return err
	}
	ents, err := os.ReadDir(s.keysDir)
	if err != nil {
		return fmt.Errorf("keystore: %w", err)
	}
	keys := map[string]*Key{}
	names := map[string]string{}
	versions := map[string]string{}
	for _, e := range ents {
		p := filepath.Join(s.keysDir, e.Name())
		if isTemp(e.Name()) {
			continue
		}
		id, ok := strings.CutSuffix(e.Name(), keyExt)
		if !ok || !validID(id) {
			return corruptf(p, "unexpected entry: only <32 hex digits>%s files belong in %s; move it elsewhere", keyExt, s.keysDir)
		}
		data, err := readFile(p)
		if err != nil {
			return err
		}
		k, err := decodeKey(p, data)
		if err != nil {
			return err
		}
		if k.ID != id {
			return corruptf(p, "holds key %s: a key file must be named after its key; restore it from a backup", k.ID)
		}
		if other, dup := names[k.Name]; dup {
			return corruptf(p, "key name %q is also the name of key %s", k.Name, s.keyPath(other))
		}
		names[k.Name] = k.ID
		for _, v := range k.Versions {
			if other, dup := versions[v.ID]; dup {
				return corruptf(p, "version %s also belongs to %s; version ids are unique across keys", v.ID, s.keyPath(other))
			}
			versions[v.ID] = k.ID
		}
		keys[k.ID] = k
	}
	for name, id := range names {
		if other, ok := keys[name]; ok && other.ID != id {
			return corruptf(s.keyPath(id), "key name %q is the id of the key in %s; names and ids must not overlap", name, s.keyPath(other.ID))
		}
	}
	s.mu.Lock()
	s.id, s.keys, s.names, s.versions = m.StoreID, keys, names, versions
	s.mu.Unlock()
	return nil
}

func (s *Store) keyPath(id string) string { return filepath.Join(s.keysDir, id+keyExt) }

// ID returns the store's random identifier, fixed at Create.
func (s *Store) ID() string { return s.id }

// Dir returns the keystore directory.
func (s *Store) Dir() string { return s.dir }

// Close releases the lock. Reads keep working on the keys in memory;
// writes return ErrClosed. Close waits for a write in progress.
func (s *Store) Close() error {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	if s.lock == nil {
		return nil
	}
	if err := s.lock.Close(); err != nil {
		return fmt.Errorf("keystore: releasing the lock: %w", err)
	}
	return nil
}

// Keys returns deep copies of every key, sorted by name.
func (s *Store) Keys() []Key {
	s.mu.RLock()
	list := make([]*Key, 0, len(s.keys))
	for _, k := range s.keys {
		list = append(list, k)
	}
	s.mu.RUnlock()
	slices.SortFunc(list, func(a, b *Key) int { return cmp.Compare(a.Name, b.Name) })
	out := make([]Key, len(list))
	for i, k := range list {
		out[i] = k.clone()
	}
	return out
}

// Key returns a deep copy of the key with that id or name (ids are tried
// first; a name never equals another key's id). ErrKeyNotFound otherwise.
func (s *Store) Key(nameOrID string) (Key, error) {
	k, err := s.find(nameOrID)
	if err != nil {
		return Key{}, err
	}
	return k.clone(), nil
}

// FindVersion returns deep copies of the version with that id and of the
// key it belongs to (version ids are unique across keys), or
// ErrVersionNotFound. This is how a wrapped data key that names only its
// version finds its master key.
func (s *Store) FindVersion(versionID string) (Key, Version, error) {
	s.mu.RLock()
	k := s.keys[s.versions[versionID]]
	s.mu.RUnlock()
	if k != nil {
		if v, ok := k.Version(versionID); ok {
			return k.clone(), v.clone(), nil
		}
	}
	return Key{}, Version{}, fmt.Errorf("%w: no key has version %s", ErrVersionNotFound, quote(versionID))
}

func (s *Store) find(nameOrID string) (*Key, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if k, ok := s.keys[nameOrID]; ok {
		return k, nil
	}
	if id, ok := s.names[nameOrID]; ok {
		return s.keys[id], nil
	}
	return nil, fmt.Errorf("%w: no key is named or identified %s", ErrKeyNotFound, quote(nameOrID))
}

// writable is called with writeMu held.
func (s *Store) writable() error {
	switch {
	case s.readOnly:
		return fmt.Errorf("%w: %s", ErrReadOnly, s.dir)
	case s.closed:
		return ErrClosed
	case s.failed != nil:
		return fmt.Errorf("%w (%v); close the keystore and open it again", ErrWriteFailed, s.failed)
	}
	return nil
}

// CreateKey adds a key named name in state PRE_ACTIVE or ACTIVE, with first
// as its only version, and returns it once it is on disk. The Store assigns
// the key id; first.ID may be empty (the Store assigns one) or a NewID not
// used by any version; a zero first.Created means now. ErrNameTaken if the
// name is in use, ErrInvalid for a bad name, state or version.
func (s *Store) CreateKey(name string, state State, first Version) (Key, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.writable(); err != nil {
		return Key{}, err
	}
	if err := checkName(name); err != nil {
		return Key{}, invalidf("%v", err)
	}
	if state != StatePreActive && state != StateActive {
		return Key{}, invalidf("a key is created %s or %s, not %s", StatePreActive, StateActive, quote(string(state)))
	}
	if _, ok := s.names[name]; ok {
		return Key{}, fmt.Errorf("%w: %q", ErrNameTaken, name)
	}
	if _, ok := s.keys[name]; ok {
		return Key{}, fmt.Errorf("%w: %q is the id of another key", ErrNameTaken, name)
	}
	now := s.now()
	v, err := s.newVersion(first, now)
	if err != nil {
		return Key{}, err
	}
	id := NewID()
	for s.keys[id] != nil || s.names[id] != "" {
		id = NewID()
	}
	k := &Key{ID: id, Name: name, State: state, Created: now, Updated: now, Versions: []Version{v}}
	return s.commit(k, nil)
}

// newVersion checks a caller's version and fills in what the Store owns.
func (s *Store) newVersion(v Version, now time.Time) (Version, error) {
	v = v.clone()
	switch {
	case v.ID == "":
		v.ID = NewID()
		for s.versions[v.ID] != "" {
			v.ID = NewID()
		}
	case !validID(v.ID):
		return Version{}, invalidf("version id %s is not 32 lower-case hex digits; use NewID", quote(v.ID))
	case s.versions[v.ID] != "":
		return Version{}, invalidf("version id %s is already used by key %s", v.ID, s.versions[v.ID])
	}
	if v.Created.IsZero() {
		v.Created = now
	}
	v.Created = v.Created.UTC()
	if err := checkCopies(v.Copies); err != nil {
		return Version{}, invalidf("version %s: %v", v.ID, err)
	}
	v.State = VersionActive
	return v, nil
}

// errNoChange tells update that there is nothing to write.
var errNoChange = errors.New("no change")

// update applies f to a copy of the key and commits it.
func (s *Store) update(nameOrID string, f func(k *Key, now time.Time) error) (Key, error) {
	s.writeMu.Lock()
	defer s.writeMu.Unlock()
	if err := s.writable(); err != nil {
		return Key{}, err
	}
	prev, err := s.find(nameOrID)
	if err != nil {
		return Key{}, err
	}
	k := prev.clone()
	now := s.now()
	if err := f(&k, now); errors.Is(err, errNoChange) {
		return k, nil
	} else if err != nil {
		return Key{}, err
	}
	k.Updated = now
	return s.commit(&k, prev)
}

// commit writes k and, once it is durable, publishes it. Called with
// writeMu held.
func (s *Store) commit(k, prev *Key) (Key, error) {
	if err := validateKey(k); err != nil {
		return Key{}, invalidf("%v", err) // the methods check their arguments; this is the backstop
	}
	data, err := encodeKey(k)
	if err != nil {
		return Key{}, err
	}
	committed, err := writeFileAtomic(s.keyPath(k.ID), data, s.hook)
	if err != nil {
		if committed {
			// The rename happened, its durability is unknown: in memory the
			// old state stays, and no later write may build on either.
			s.failed = err
			return Key{}, fmt.Errorf("%w: key %s may or may not be saved: %w", ErrWriteFailed, k.ID, err)
		}
		return Key{}, err
	}
	s.mu.Lock()
	if prev != nil {
		for _, v := range prev.Versions {
			delete(s.versions, v.ID)
		}
	}
	for _, v := range k.Versions {
		s.versions[v.ID] = k.ID
	}
	s.keys[k.ID] = k
	s.names[k.Name] = k.ID
	s.mu.Unlock()
	return k.clone(), nil
}

// AddVersion appends v as the key's new current version, retiring the
// previous one, and returns only once it is on disk: a version is thus
// persisted before anyone can serve it. v.ID and v.Created are filled in as
// for CreateKey. Only PRE_ACTIVE and ACTIVE keys get new versions (ErrState).
func (s *Store) AddVersion(nameOrID string, v Version) (Key, error) {
	return s.update(nameOrID, func(k *Key, now time.Time) error {
		if k.Object != nil {
			return fmt.Errorf("%w: key %q is a KMIP object: its identifier always names the same bytes, so it gets no new version", ErrState, k.Name)
		}
		if k.State != StatePreActive && k.State != StateActive {
			return fmt.Errorf("%w: key %q is %s; only %s and %s keys get new versions", ErrState, k.Name, k.State, StatePreActive, StateActive)
		}
		nv, err := s.newVersion(v, now)
		if err != nil {
			return err
		}
		k.Versions[len(k.Versions)-1].State = VersionRetired
		k.Versions = append(k.Versions, nv)
		return nil
	})
}

// SetCopies replaces the wrapped copies of one version, for a CMK rewrap:
// the key material is the same, wrapped anew. To add a copy, pass the old
// copies plus the new one; to drop one, leave it out. At least one copy
// must remain, and a destroyed key has none to set (ErrState).
func (s *Store) SetCopies(nameOrID, versionID string, copies []kek.Wrapped) (Key, error) {
	return s.update(nameOrID, func(k *Key, _ time.Time) error {
		if k.State.Destroyed() {
			return fmt.Errorf("%w: key %q is %s; it has no key material to rewrap", ErrState, k.Name, k.State)
		}
		i := slices.IndexFunc(k.Versions, func(v Version) bool { return v.ID == versionID })
		if i < 0 {
			return fmt.Errorf("%w: key %q has no version %s", ErrVersionNotFound, k.Name, quote(versionID))
		}
		if err := checkCopies(copies); err != nil {
			return invalidf("version %s: %v", versionID, err)
		}
		k.Versions[i].Copies = cloneCopies(copies)
		return nil
	})
}

// SetState moves the key to st along KMIP's transitions:
//
//	PRE_ACTIVE  -> ACTIVE, DEACTIVATED, COMPROMISED, DESTROYED
//	ACTIVE      -> DEACTIVATED, COMPROMISED
//	DEACTIVATED -> COMPROMISED, DESTROYED
//	COMPROMISED -> DESTROYED_COMPROMISED
//	DESTROYED   -> DESTROYED_COMPROMISED
//
// Setting the state the key already has changes nothing. Any other change
// is ErrState. Entering DESTROYED or DESTROYED_COMPROMISED deletes every
// wrapped copy: the versions stay as metadata only. That is the one way
// this package drops key material, and it needs two deliberate calls for a
// key in use (deactivate, then destroy).
func (s *Store) SetState(nameOrID string, st State) (Key, error) {
	if !st.Valid() {
		return Key{}, invalidf("unknown key state %s", quote(string(st)))
	}
	return s.update(nameOrID, func(k *Key, now time.Time) error {
		if k.State == st {
			return errNoChange
		}
		if !canMove(k.State, st) {
			hint := ""
			if k.State == StateActive && st.Destroyed() {
				hint = "; deactivate it first"
			}
			return fmt.Errorf("%w: key %q cannot go from %s to %s%s", ErrState, k.Name, k.State, st, hint)
		}
		if st.Destroyed() {
			for i := range k.Versions {
				k.Versions[i].Copies = nil
				k.Versions[i].State = VersionDestroyed
			}
		}
		k.State = st
		stampObject(k, st, now)
		return nil
	})
}

// RemoveVersion deletes one version of a key, for explicit retention only:
// data still wrapped under it becomes unreadable. The newest version is
// never removed (ErrCurrentVersion).
func (s *Store) RemoveVersion(nameOrID, versionID string) (Key, error) {
	return s.update(nameOrID, func(k *Key, _ time.Time) error {
		i := slices.IndexFunc(k.Versions, func(v Version) bool { return v.ID == versionID })
		switch {
		case i < 0:
			return fmt.Errorf("%w: key %q has no version %s", ErrVersionNotFound, k.Name, quote(versionID))
		case i == len(k.Versions)-1:
			return fmt.Errorf("%w: version %s of key %q is its newest", ErrCurrentVersion, versionID, k.Name)
		}
		k.Versions = slices.Delete(k.Versions, i, i+1)
		return nil
	})
}
