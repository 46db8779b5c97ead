package akvemu

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

const (
	stateFile    = "state.json"
	stateFormat  = "akvemu-state"
	stateVersion = 1

	recoveryLevel   = "Recoverable+Purgeable"
	recoverableDays = 90
)

// ErrCorruptState reports a state file that cannot be read back.
var ErrCorruptState = errors.New("akvemu: corrupt state file")

// errNotDeleted tells recover and purge of a live key apart from an
// unknown key; it always comes wrapped with ErrNotFound.
var errNotDeleted = errors.New("the key is not in a deleted state")

// state is everything the emulator persists. Private keys are stored in the
// clear: this is a development tool.
type state struct {
	Format         string                  `json:"format"`
	Version        int                     `json:"version"`
	TokenKey       []byte                  `json:"token_key"` // PKCS#8 ECDSA, signs access tokens
	OIDCKey        []byte                  `json:"oidc_key"`  // PKCS#8 ECDSA, signs federated tokens
	IdentityHeader string                  `json:"identity_header"`
	Vaults         map[string]*vaultState  `json:"vaults"`  // primary host -> keys
	Clients        map[string]*clientState `json:"clients"` // client ID -> credentials
}

type vaultState struct {
	Keys map[string]*keyState `json:"keys"`
}

type keyState struct {
	Versions []*versionState `json:"versions"` // oldest first
	Deleted  *deletedInfo    `json:"deleted,omitempty"`
}

type deletedInfo struct {
	Date           int64 `json:"date"`
	ScheduledPurge int64 `json:"scheduled_purge"`
}

type versionState struct {
	ID        string            `json:"id"`
	Kty       string            `json:"kty"`
	PKCS8     []byte            `json:"pkcs8"`
	Enabled   bool              `json:"enabled"`
	KeyOps    []string          `json:"key_ops"`
	NotBefore *int64            `json:"nbf,omitempty"`
	Expires   *int64            `json:"exp,omitempty"`
	Created   int64             `json:"created"`
	Updated   int64             `json:"updated"`
	Tags      map[string]string `json:"tags,omitempty"`

	priv *rsa.PrivateKey
}

type clientState struct {
	ObjectID      string            `json:"object_id"`
	Secret        string            `json:"secret"`
	SecretExpired bool              `json:"secret_expired,omitempty"`
	CertDER       []byte            `json:"cert"`
	CertKey       []byte            `json:"cert_key"`          // PKCS#8 RSA
	Revoked       map[string]string `json:"revoked,omitempty"` // vault host -> 403 inner code
}

func (st *state) key(host, name string) *keyState {
	vs := st.Vaults[host]
	if vs == nil {
		return nil
	}
	return vs.Keys[name]
}

func (k *keyState) latest() *versionState { return k.Versions[len(k.Versions)-1] }

// version returns the named version, or the latest for "".
func (k *keyState) version(id string) *versionState {
	if id == "" {
		return k.latest()
	}
	for _, v := range k.Versions {
		if v.ID == id {
			return v
		}
	}
	return nil
}

// loadState reads the state file, or makes a fresh state when there is none
// (or the emulator is ephemeral), and fills in what is missing: signing keys,
// the identity header and the default client.
func (s *Server) loadState() error {
	st := &state{Format: stateFormat, Version: stateVersion}
	if !s.ephemeral {
		b, err := os.ReadFile(s.path(stateFile))
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("akvemu: reading state: %w", err)
		default:
			if st, err = decodeState(b); err != nil {
				return fmt.Errorf("%w: %s: %v; move it away to start with fresh state", ErrCorruptState, s.path(stateFile), err)
			}
		}
	}
	if st.Vaults == nil {
		st.Vaults = map[string]*vaultState{}
	}
	if st.Clients == nil {
		st.Clients = map[string]*clientState{}
	}
	var err error
	if st.TokenKey == nil {
		if st.TokenKey, err = newECKey(); err != nil {
			return err
		}
	}
	if st.OIDCKey == nil {
		if st.OIDCKey, err = newECKey(); err != nil {
			return err
		}
	}
	if st.IdentityHeader == "" {
		st.IdentityHeader = randomString(24)
	}
	for _, v := range s.vaults {
		if st.Vaults[v.host] == nil {
			st.Vaults[v.host] = &vaultState{Keys: map[string]*keyState{}}
		}
	}
	if st.Clients[s.clientID] == nil {
		c, err := newClient(s.clientID)
		if err != nil {
			return err
		}
		st.Clients[s.clientID] = c
	}
	tk, err := x509.ParsePKCS8PrivateKey(st.TokenKey)
	if err != nil {
		return fmt.Errorf("%w: token signing key: %v", ErrCorruptState, err)
	}
	oidc, err := x509.ParsePKCS8PrivateKey(st.OIDCKey)
	if err != nil {
		return fmt.Errorf("%w: federation signing key: %v", ErrCorruptState, err)
	}
	var isEC bool
	if s.tokenKey, isEC = tk.(*ecdsa.PrivateKey); !isEC {
		return fmt.Errorf("%w: token signing key is not ECDSA", ErrCorruptState)
	}
	if s.oidcKey, isEC = oidc.(*ecdsa.PrivateKey); !isEC {
		return fmt.Errorf("%w: federation signing key is not ECDSA", ErrCorruptState)
	}
	s.st = st
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.saveLocked()
}

// decodeState parses and checks a state file, including every private key,
// so that a damaged file is reported at start, never misread later.
func decodeState(b []byte) (*state, error) {
	var st state
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return nil, fmt.Errorf("not valid JSON: %v", err)
	}
	if dec.More() {
		return nil, errors.New("trailing data after the JSON object")
	}
	if st.Format != stateFormat {
		return nil, fmt.Errorf("format %q, want %q", st.Format, stateFormat)
	}
	if st.Version != stateVersion {
		return nil, fmt.Errorf("version %d, this emulator reads version %d", st.Version, stateVersion)
	}
	for host, vs := range st.Vaults {
		if vs == nil || vs.Keys == nil {
			return nil, fmt.Errorf("vault %q has no key table", host)
		}
		for name, k := range vs.Keys {
			if k == nil || len(k.Versions) == 0 {
				return nil, fmt.Errorf("key %s/%s has no versions", host, name)
			}
			if !validKeyName(name) {
				return nil, fmt.Errorf("key name %q is invalid", name)
			}
			for _, v := range k.Versions {
				if v == nil || !validVersion(v.ID) {
					return nil, fmt.Errorf("key %s/%s has a bad version", host, name)
				}
				p, err := x509.ParsePKCS8PrivateKey(v.PKCS8)
				if err != nil {
					return nil, fmt.Errorf("key %s/%s/%s: %v", host, name, v.ID, err)
				}
				priv, ok := p.(*rsa.PrivateKey)
				if !ok {
					return nil, fmt.Errorf("key %s/%s/%s is not RSA", host, name, v.ID)
				}
				v.priv = priv
			}
		}
	}
	for id, c := range st.Clients {
		if c == nil || !validClientID(id) {
			return nil, fmt.Errorf("client %q is invalid", id)
		}
		if _, err := x509.ParseCertificate(c.CertDER); err != nil {
			return nil, fmt.Errorf("client %s certificate: %v", id, err)
		}
		if _, err := x509.ParsePKCS8PrivateKey(c.CertKey); err != nil {
			return nil, fmt.Errorf("client %s certificate key: %v", id, err)
		}
	}
	return &st, nil
}

// saveLocked persists the state; the caller holds s.mu for writing.
func (s *Server) saveLocked() error {
	if s.ephemeral {
		return nil
	}
	b, err := json.MarshalIndent(s.st, "", " ")
	if err != nil {
		return fmt.Errorf("akvemu: encoding state: %w", err)
	}
	return writeFileAtomic(s.path(stateFile), b, 0o600)
}

// writeFileAtomic writes a file so that a crash leaves the old or the new
// content, never a torn one: temp file, fsync, rename, fsync of the dir.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("akvemu: writing %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return fmt.Errorf("akvemu: writing %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("akvemu: writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("akvemu: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("akvemu: writing %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("akvemu: writing %s: %w", path, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync() // best effort: not every file system syncs directories
		_ = d.Close()
	}
	return nil
}

func newECKey() ([]byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("akvemu: generating signing key: %w", err)
	}
	return x509.MarshalPKCS8PrivateKey(k)
}

func newVersionID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func validVersion(v string) bool {
	if len(v) != 32 {
		return false
	}
	_, err := hex.DecodeString(v)
	return err == nil
}

// validKeyName is AKV's rule: 1-127 letters, digits and dashes.
func validKeyName(n string) bool {
	if n == "" || len(n) > 127 {
		return false
	}
	for _, c := range n {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// defaultKeyOps are the operations AKV allows on a new RSA key.
var defaultKeyOps = []string{"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"}

// knownKeyOps are the JsonWebKeyOperation values AKV accepts.
var knownKeyOps = []string{"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export"}

// createParams are the parameters of a new key version.
type createParams struct {
	Kty       string
	Size      int
	KeyOps    []string
	Enabled   *bool
	NotBefore *int64
	Expires   *int64
	Tags      map[string]string
	priv      *rsa.PrivateKey // imported key; nil = generate
}

// createKey adds a version to a key, creating the key when absent. With
// mustBeNew it fails with ErrConflict when the key exists. Key generation
// runs outside the lock: RSA-4096 takes seconds.
func (s *Server) createKey(v *vault, name string, p createParams, mustBeNew bool) (*versionState, error) {
	priv := p.priv
	if priv == nil {
		var err error
		if priv, err = rsa.GenerateKey(rand.Reader, p.Size); err != nil {
			return nil, fmt.Errorf("akvemu: generating RSA-%d key: %w", p.Size, err)
		}
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("akvemu: encoding key: %w", err)
	}
	now := s.now().Unix()
	ver := &versionState{
		ID:        newVersionID(),
		Kty:       p.Kty,
		PKCS8:     der,
		Enabled:   p.Enabled == nil || *p.Enabled,
		KeyOps:    p.KeyOps,
		NotBefore: p.NotBefore,
		Expires:   p.Expires,
		Created:   now,
		Updated:   now,
		Tags:      p.Tags,
		priv:      priv,
	}
	if ver.Kty == "" {
		ver.Kty = "RSA"
	}
	if ver.KeyOps == nil {
		ver.KeyOps = slices.Clone(defaultKeyOps)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	vs := s.st.Vaults[v.host]
	k := vs.Keys[name]
	switch {
	case k != nil && k.Deleted != nil:
		return nil, fmt.Errorf("%w: key %s is currently in a deleted but recoverable state, and its name cannot be reused; in this state, the key can only be recovered or purged", ErrConflict, name)
	case k != nil && mustBeNew:
		return nil, fmt.Errorf("%w: key %s already exists in vault %s; rotate it for a new version", ErrConflict, name, v.host)
	case k == nil:
		k = &keyState{}
		vs.Keys[name] = k
	}
	k.Versions = append(k.Versions, ver)
	if err := s.saveLocked(); err != nil {
		k.Versions = k.Versions[:len(k.Versions)-1]
		if len(k.Versions) == 0 {
			delete(vs.Keys, name)
		}
		return nil, err
	}
	s.log.Info("akvemu: key version created", "kid", keyID(v.host, name, ver.ID))
	return ver, nil
}

// rotateParams returns the parameters of a new version like the latest one.
func rotateParams(k *keyState) createParams {
	l := k.latest()
	return createParams{Kty: l.Kty, Size: l.priv.N.BitLen(), KeyOps: slices.Clone(l.KeyOps)}
}

// setEnabled enables or disables every version of a key.
func (s *Server) setEnabled(v *vault, name string, enabled bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.st.key(v.host, name)
	if k == nil || k.Deleted != nil {
		return fmt.Errorf("%w: key %s in vault %s", ErrNotFound, name, v.host)
	}
	now := s.now().Unix()
	old := make([]bool, len(k.Versions))
	for i, ver := range k.Versions {
		old[i] = ver.Enabled
		ver.Enabled, ver.Updated = enabled, now
	}
	if err := s.saveLocked(); err != nil {
		for i, ver := range k.Versions {
			ver.Enabled = old[i]
		}
		return err
	}
	return nil
}

// deleteKey soft-deletes a key.
func (s *Server) deleteKey(v *vault, name string) (*keyState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.st.key(v.host, name)
	if k == nil || k.Deleted != nil {
		return nil, fmt.Errorf("%w: key %s in vault %s", ErrNotFound, name, v.host)
	}
	now := s.now().Unix()
	k.Deleted = &deletedInfo{Date: now, ScheduledPurge: now + recoverableDays*24*3600}
	if err := s.saveLocked(); err != nil {
		k.Deleted = nil
		return nil, err
	}
	return k, nil
}

// recoverKey undoes a soft delete.
func (s *Server) recoverKey(v *vault, name string) (*keyState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.st.key(v.host, name)
	if k == nil || k.Deleted == nil {
		return nil, fmt.Errorf("%w: key %s in vault %s: %w", ErrNotFound, name, v.host, errNotDeleted)
	}
	d := k.Deleted
	k.Deleted = nil
	if err := s.saveLocked(); err != nil {
		k.Deleted = d
		return nil, err
	}
	return k, nil
}

// purgeKey removes a soft-deleted key for good.
func (s *Server) purgeKey(v *vault, name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	vs := s.st.Vaults[v.host]
	k := vs.Keys[name]
	if k == nil || k.Deleted == nil {
		return fmt.Errorf("%w: key %s in vault %s: %w", ErrNotFound, name, v.host, errNotDeleted)
	}
	delete(vs.Keys, name)
	if err := s.saveLocked(); err != nil {
		vs.Keys[name] = k
		return err
	}
	return nil
}
