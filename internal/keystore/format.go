package keystore

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/keybroker/keybroker/internal/kek"
)

// The file frame. It is the same in every format version, so that a reader
// can always check the checksum before it believes the version number: a
// flipped bit in the version field is then corruption, not "written by a
// newer keybroker".
//
//	offset  size  field
//	0       8     magic "\x89KBKS\r\n\x1a" (PNG-style: a text-mode copy or a 7-bit channel breaks it)
//	8       2     format version, big-endian (1, or 2 for a key file holding KMIP object attributes)
//	10      1     file kind: 'M' keystore.meta, 'K' a key file
//	11      1     reserved, 0
//	12      4     body length n, big-endian
//	16      n     body: JSON (kept human-readable for operators: tail -c +17 file | head -c -32)
//	16+n    32    SHA-256 of bytes [0, 16+n)
const (
	magic         = "\x89KBKS\r\n\x1a"
	formatVersion = 2 // the newest version this keybroker reads
	// baseVersion is written for every file that version 1 can describe,
	// so that a keystore without KMIP objects stays readable by a
	// keybroker that predates them. Version 2 adds the "kmip" field of a
	// key file.
	baseVersion = 1
	headerLen   = 16
	sumLen      = sha256.Size
	// maxBody bounds a key file at about ten thousand versions with two
	// copies each, far beyond any rotation schedule, and keeps a damaged
	// length field from making the reader allocate gigabytes.
	maxBody = 16 << 20

	kindMeta byte = 'M'
	kindKey  byte = 'K'
)

// Limits on what a key may hold; they keep a file (and an error message)
// bounded.
const (
	maxNameLen       = 255
	maxKeyIDLen      = 1024
	maxAlgorithmLen  = 64
	maxCopies        = 64
	maxCiphertextLen = 16 << 10
)

func kindName(k byte) string {
	switch k {
	case kindMeta:
		return "keystore.meta"
	case kindKey:
		return "key"
	}
	return fmt.Sprintf("unknown (0x%02x)", k)
}

// encodeFrame wraps body in a version-1 frame.
func encodeFrame(kind byte, body []byte) []byte { return encodeFrameVersion(kind, baseVersion, body) }

// encodeFrameVersion wraps body in the frame of format version ver.
func encodeFrameVersion(kind byte, ver uint16, body []byte) []byte {
	out := make([]byte, 0, headerLen+len(body)+sumLen)
	out = append(out, magic...)
	out = binary.BigEndian.AppendUint16(out, ver)
	out = append(out, kind, 0)
	out = binary.BigEndian.AppendUint32(out, uint32(len(body)))
	out = append(out, body...)
	sum := sha256.Sum256(out)
	return append(out, sum[:]...)
}

// decodeFrame checks the frame of a file named path and returns its body.
func decodeFrame(path string, data []byte, kind byte) ([]byte, error) {
	switch {
	case len(data) == 0:
		return nil, corruptf(path, "the file is empty (0 bytes); restore it from a backup")
	case len(data) < len(magic):
		if strings.HasPrefix(magic, string(data)) {
			return nil, corruptf(path, "truncated to %d bytes; restore it from a backup", len(data))
		}
		return nil, corruptf(path, "not a keybroker keystore file (bad magic); move it out of the keystore directory")
	case string(data[:len(magic)]) != magic:
		return nil, corruptf(path, "not a keybroker keystore file (bad magic); move it out of the keystore directory")
	case len(data) < headerLen+sumLen:
		return nil, corruptf(path, "truncated to %d bytes, shorter than any keystore file; restore it from a backup", len(data))
	}
	n := binary.BigEndian.Uint32(data[12:16])
	if n > maxBody {
		return nil, corruptf(path, "the header declares a %d-byte body, more than the %d allowed; restore it from a backup", n, maxBody)
	}
	if want := headerLen + int(n) + sumLen; len(data) != want {
		if len(data) < want {
			return nil, corruptf(path, "truncated: %d bytes where the header declares %d; restore it from a backup", len(data), want)
		}
		return nil, corruptf(path, "%d unexpected bytes after the checksum; restore it from a backup", len(data)-want)
	}
	sum := sha256.Sum256(data[:headerLen+n])
	if !bytes.Equal(sum[:], data[headerLen+n:]) {
		return nil, corruptf(path, "checksum mismatch: the file changed after keybroker wrote it; restore it from a backup")
	}
	switch v := binary.BigEndian.Uint16(data[8:10]); {
	case v > formatVersion:
		return nil, fmt.Errorf("%w: %s: format version %d, this keybroker reads up to version %d; upgrade keybroker", ErrNewerFormat, path, v, formatVersion)
	case v == 0:
		return nil, corruptf(path, "format version 0 does not exist")
	}
	if data[10] != kind {
		return nil, corruptf(path, "a %s file where a %s file belongs", kindName(data[10]), kindName(kind))
	}
	if data[11] != 0 {
		return nil, corruptf(path, "reserved header byte is 0x%02x, want 0", data[11])
	}
	return data[headerLen : headerLen+n], nil
}

// On-disk JSON. Separate from the API types so that either can change
// without silently changing the other; a change here is a format version.
type (
	metaJSON struct {
		StoreID string    `json:"store_id"`
		Created time.Time `json:"created"`
	}
	keyJSON struct {
		ID       string        `json:"id"`
		Name     string        `json:"name"`
		State    State         `json:"state"`
		Created  time.Time     `json:"created"`
		Updated  time.Time     `json:"updated"`
		Versions []versionJSON `json:"versions"`
		Object   *objectJSON   `json:"kmip,omitempty"` // format version 2
	}
	objectJSON struct {
		Owner          string     `json:"owner"`
		Type           ObjectType `json:"type"`
		SecretDataType string     `json:"secret_data_type,omitempty"`
		Algorithm      string     `json:"algorithm,omitempty"`
		Length         int        `json:"length"`
		UsageMask      uint32     `json:"usage_mask"`
		Names          []string   `json:"names,omitempty"`
		Activated      *time.Time `json:"activated,omitempty"`
		Deactivated    *time.Time `json:"deactivated,omitempty"`
	}
	versionJSON struct {
		ID      string       `json:"id"`
		Created time.Time    `json:"created"`
		State   VersionState `json:"state"`
		Copies  []copyJSON   `json:"copies"`
	}
	copyJSON struct {
		KeyID      string `json:"key_id"`
		Algorithm  string `json:"algorithm"`
		Ciphertext []byte `json:"ciphertext"`
	}
)

// decodeJSON is strict: an unknown field or trailing data is corruption,
// since the format version, not guesswork, says what a file may hold.
func decodeJSON(path string, body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return corruptf(path, "the body is not valid keystore JSON (%v) although its checksum matches: a bug wrote it; restore it from a backup", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return corruptf(path, "unexpected data after the JSON body although its checksum matches: a bug wrote it; restore it from a backup")
	}
	return nil
}

type meta struct {
	StoreID string
	Created time.Time
}

func encodeMeta(m meta) ([]byte, error) {
	body, err := json.Marshal(metaJSON{StoreID: m.StoreID, Created: m.Created.UTC()})
	if err != nil {
		return nil, fmt.Errorf("keystore: encoding keystore.meta: %w", err)
	}
	return encodeFrame(kindMeta, body), nil
}

func decodeMeta(path string, data []byte) (meta, error) {
	body, err := decodeFrame(path, data, kindMeta)
	if err != nil {
		return meta{}, err
	}
	var j metaJSON
	if err := decodeJSON(path, body, &j); err != nil {
		return meta{}, err
	}
	if !validID(j.StoreID) {
		return meta{}, corruptf(path, "store_id %s is not 32 lower-case hex digits", quote(j.StoreID))
	}
	if !validTime(j.Created.UTC()) {
		return meta{}, corruptf(path, "created time is missing or out of range")
	}
	return meta{StoreID: j.StoreID, Created: j.Created.UTC()}, nil
}

// encodeKey returns the file for k. k must be valid: encoding never
// validates, so that a bug cannot hide behind a re-validation here.
func encodeKey(k *Key) ([]byte, error) {
	j := keyJSON{ID: k.ID, Name: k.Name, State: k.State, Created: k.Created.UTC(), Updated: k.Updated.UTC()}
	for _, v := range k.Versions {
		vj := versionJSON{ID: v.ID, Created: v.Created.UTC(), State: v.State}
		for _, c := range v.Copies {
			vj.Copies = append(vj.Copies, copyJSON{KeyID: c.KeyID, Algorithm: c.Algorithm, Ciphertext: c.Ciphertext})
		}
		j.Versions = append(j.Versions, vj)
	}
	ver := uint16(baseVersion)
	if o := k.Object; o != nil {
		ver = 2
		j.Object = &objectJSON{Owner: o.Owner, Type: o.Type, SecretDataType: o.SecretDataType, Algorithm: o.Algorithm,
			Length: o.Length, UsageMask: o.UsageMask, Names: o.Names, Activated: optTime(o.Activated), Deactivated: optTime(o.Deactivated)}
	}
	body, err := json.Marshal(j)
	if err != nil {
		return nil, fmt.Errorf("keystore: encoding key %s: %w", k.ID, err)
	}
	return encodeFrameVersion(kindKey, ver, body), nil
}

// decodeKey parses and validates one key file. It does not check the file
// name against the key id; the loader does.
func decodeKey(path string, data []byte) (*Key, error) {
	body, err := decodeFrame(path, data, kindKey)
	if err != nil {
		return nil, err
	}
	var j keyJSON
	if err := decodeJSON(path, body, &j); err != nil {
		return nil, err
	}
	k := &Key{ID: j.ID, Name: j.Name, State: j.State, Created: j.Created.UTC(), Updated: j.Updated.UTC()}
	for _, vj := range j.Versions {
		v := Version{ID: vj.ID, Created: vj.Created.UTC(), State: vj.State}
		for _, c := range vj.Copies {
			ct := c.Ciphertext
			if ct == nil {
				ct = []byte{}
			}
			v.Copies = append(v.Copies, kek.Wrapped{KeyID: c.KeyID, Algorithm: c.Algorithm, Ciphertext: ct})
		}
		k.Versions = append(k.Versions, v)
	}
	if o := j.Object; o != nil {
		if binary.BigEndian.Uint16(data[8:10]) < 2 {
			return nil, corruptf(path, "format version 1 has no \"kmip\" field although its checksum matches: a bug wrote it; restore it from a backup")
		}
		k.Object = &Object{Owner: o.Owner, Type: o.Type, SecretDataType: o.SecretDataType, Algorithm: o.Algorithm,
			Length: o.Length, UsageMask: o.UsageMask, Names: o.Names, Activated: fromOptTime(o.Activated), Deactivated: fromOptTime(o.Deactivated)}
	}
	if k.Object != nil && len(k.Object.Names) == 0 {
		k.Object.Names = nil // "names": [] and no names are the same
	}
	if err := validateKey(k); err != nil {
		return nil, corruptf(path, "%v; restore it from a backup", err)
	}
	return k, nil
}

// validateKey checks everything a single key must satisfy. Its errors name
// the field and never print a ciphertext.
func validateKey(k *Key) error {
	if !validID(k.ID) {
		return fmt.Errorf("key id %s is not 32 lower-case hex digits", quote(k.ID))
	}
	if err := checkName(k.Name); err != nil {
		return fmt.Errorf("key %s: %w", k.ID, err)
	}
	if !k.State.Valid() {
		return fmt.Errorf("key %s: unknown state %s", k.ID, quote(string(k.State)))
	}
	if !validTime(k.Created) || !validTime(k.Updated) {
		return fmt.Errorf("key %s: created or updated time is missing or out of range", k.ID)
	}
	if len(k.Versions) == 0 {
		return fmt.Errorf("key %s: has no version", k.ID)
	}
	if k.Object != nil {
		if err := checkObject(k.Object); err != nil {
			return fmt.Errorf("key %s: %w", k.ID, err)
		}
		if len(k.Versions) != 1 {
			return fmt.Errorf("key %s: a KMIP object has exactly one version, not %d", k.ID, len(k.Versions))
		}
	}
	seen := make(map[string]bool, len(k.Versions))
	for i, v := range k.Versions {
		if !validID(v.ID) {
			return fmt.Errorf("key %s: version %d: id %s is not 32 lower-case hex digits", k.ID, i+1, quote(v.ID))
		}
		if seen[v.ID] {
			return fmt.Errorf("key %s: version id %s appears twice", k.ID, v.ID)
		}
		seen[v.ID] = true
		if !validTime(v.Created) {
			return fmt.Errorf("key %s: version %s: created time is missing or out of range", k.ID, v.ID)
		}
		want := VersionRetired
		switch {
		case k.State.Destroyed():
			want = VersionDestroyed
		case i == len(k.Versions)-1:
			want = VersionActive
		}
		if v.State != want {
			return fmt.Errorf("key %s: version %s: state %s, want %s", k.ID, v.ID, quote(string(v.State)), want)
		}
		if want == VersionDestroyed {
			if len(v.Copies) != 0 {
				return fmt.Errorf("key %s: version %s: the key is %s but the version still has wrapped copies", k.ID, v.ID, k.State)
			}
			continue
		}
		if err := checkCopies(v.Copies); err != nil {
			return fmt.Errorf("key %s: version %s: %w", k.ID, v.ID, err)
		}
	}
	return nil
}

// checkCopies checks the wrapped copies of a live version.
func checkCopies(cs []kek.Wrapped) error {
	if len(cs) == 0 {
		return errors.New("no wrapped copy: every version needs at least one")
	}
	if len(cs) > maxCopies {
		return fmt.Errorf("%d wrapped copies, at most %d", len(cs), maxCopies)
	}
	seen := make(map[string]bool, len(cs))
	for i, c := range cs {
		if err := checkKeyID(c.KeyID); err != nil {
			return fmt.Errorf("copy %d: %w", i+1, err)
		}
		if seen[c.KeyID] {
			return fmt.Errorf("copy %d: a second copy wrapped by %s", i+1, c.KeyID)
		}
		seen[c.KeyID] = true
		if !validAlgorithm(c.Algorithm) {
			return fmt.Errorf("copy %d (%s): algorithm %s is not 1 to %d letters, digits, '-' or '_'", i+1, c.KeyID, quote(c.Algorithm), maxAlgorithmLen)
		}
		if len(c.Ciphertext) == 0 || len(c.Ciphertext) > maxCiphertextLen {
			return fmt.Errorf("copy %d (%s): ciphertext is %d bytes, want 1 to %d", i+1, c.KeyID, len(c.Ciphertext), maxCiphertextLen)
		}
	}
	return nil
}

// validTime reports whether t is set and fits RFC 3339 in UTC: a time
// that could not be written back is as bad as a missing one.
func validTime(t time.Time) bool {
	if t.IsZero() {
		return false
	}
	y := t.UTC().Year()
	return y >= 1 && y <= 9999
}

// validID reports whether s has NewID's form. Key ids become file names,
// so nothing looser is accepted.
func validID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// checkName refuses names that would be ambiguous or unsafe in a log line:
// empty, too long, invalid UTF-8, control characters, or blanks at either end.
func checkName(s string) error {
	switch {
	case s == "":
		return errors.New("the name is empty")
	case len(s) > maxNameLen:
		return fmt.Errorf("the name is %d bytes, at most %d", len(s), maxNameLen)
	case !utf8.ValidString(s):
		return errors.New("the name is not valid UTF-8")
	case strings.TrimSpace(s) != s:
		return fmt.Errorf("the name %q starts or ends with a blank", s)
	case strings.IndexFunc(s, unicode.IsControl) >= 0:
		return fmt.Errorf("the name %q contains a control character", s)
	}
	return nil
}

// checkKeyID checks the full Azure key identifier form
// https://{vault host}[:port]/keys/{name}/{version}, Managed HSM included.
// A copy without a version could not be unwrapped once the CMK rotates.
func checkKeyID(s string) error {
	bad := fmt.Errorf("key id %s is not a full key identifier https://{vault}/keys/{name}/{version}", quote(s))
	if s == "" || len(s) > maxKeyIDLen {
		return bad
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Opaque != "" || u.User != nil || u.Hostname() == "" ||
		u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawPath != "" || u.String() != s {
		return bad
	}
	parts := strings.Split(u.Path, "/")
	if len(parts) != 4 || parts[0] != "" || parts[1] != "keys" || !validKeyName(parts[2]) || !validKeyVersion(parts[3]) {
		return bad
	}
	return nil
}

// validKeyName: Key Vault object names are 1-127 letters, digits and '-'.
func validKeyName(s string) bool {
	if len(s) == 0 || len(s) > 127 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(isAlnum(c) || c == '-') {
			return false
		}
	}
	return true
}

// validKeyVersion: Key Vault versions are 32 hex digits; accept any short
// alphanumeric string so emulators and future formats still fit.
func validKeyVersion(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isAlnum(s[i]) {
			return false
		}
	}
	return true
}

func validAlgorithm(s string) bool {
	if len(s) == 0 || len(s) > maxAlgorithmLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(isAlnum(c) || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// quote bounds and quotes a value read from a file for an error message.
func quote(s string) string {
	const max = 80
	if len(s) > max {
		return fmt.Sprintf("%q... (%d bytes)", s[:max], len(s))
	}
	return fmt.Sprintf("%q", s)
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

func fromOptTime(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.UTC()
}
