package akv

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrKeyID is wrapped by every key identifier parsing error.
var ErrKeyID = errors.New("akv: invalid key identifier")

// KeyID is a parsed Key Vault or Managed HSM key identifier,
// https://{vault}.{suffix}/keys/{name}[/{version}]. Host is lower-case; Name
// keeps its case (Key Vault compares names without it). It is a plain value,
// safe to copy and share.
type KeyID struct {
	VaultURL   string // https://{host}/
	Host       string // {vault}.{suffix}
	Name       string
	Version    string // "" when versionless
	ManagedHSM bool   // the host is under the environment's Managed HSM suffix
}

const keyIDForm = "https://{vault}.{suffix}/keys/{name}[/{version}]"

func keyIDErr(s, format string, args ...any) error {
	return fmt.Errorf("%w %q: %s", ErrKeyID, clip(s, 200), fmt.Sprintf(format, args...))
}

// ParseKeyID parses s, a key identifier in the full Azure form
// https://{vault}.{suffix}/keys/{name}[/{version}], where suffix is env's
// VaultSuffix or ManagedHSMSuffix. The version may be absent. Errors say what
// is wrong and how to fix it.
func ParseKeyID(s string, env Environment) (KeyID, error) {
	if s == "" {
		return KeyID{}, fmt.Errorf("%w: empty: give %s", ErrKeyID, keyIDForm)
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return KeyID{}, keyIDErr(s, "contains spaces or control characters: remove them")
		}
		if r > unicode.MaxASCII {
			return KeyID{}, keyIDErr(s, "contains non-ASCII characters: key identifiers are plain ASCII, %s", keyIDForm)
		}
	}
	if strings.Contains(s, "?") {
		return KeyID{}, keyIDErr(s, "has a query (?...): remove it")
	}
	if strings.Contains(s, "#") {
		return KeyID{}, keyIDErr(s, "has a fragment (#...): remove it")
	}
	if strings.Contains(s, "%") {
		return KeyID{}, keyIDErr(s, "has percent-encoded characters: key names and versions use only letters, digits and '-'")
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return KeyID{}, keyIDErr(s, "is not a URL: give %s", keyIDForm)
	}
	switch strings.ToLower(scheme) {
	case "https":
	case "http":
		return KeyID{}, keyIDErr(s, "uses http: Key Vault is reached over https only, write https://")
	default:
		return KeyID{}, keyIDErr(s, "scheme %q is not https: give %s", scheme, keyIDForm)
	}
	host, path, _ := strings.Cut(rest, "/")
	if strings.Contains(host, "@") {
		return KeyID{}, keyIDErr(s, "has user information before the host: remove it")
	}
	if strings.HasPrefix(host, "[") {
		return KeyID{}, keyIDErr(s, "host is an IP address: give the vault's host name, %s", keyIDForm)
	}
	if strings.Contains(host, ":") {
		return KeyID{}, keyIDErr(s, "has a port: remove it (a key identifier names the vault, not an endpoint; to reach the vault through another host or port, such as a private endpoint, set vault_url)")
	}
	host = strings.ToLower(host)
	vault, hsm, err := splitVaultHost(s, host, env)
	if err != nil {
		return KeyID{}, err
	}
	if err := checkVaultName(vault); err != nil {
		return KeyID{}, keyIDErr(s, "vault name %q %v", vault, err)
	}
	segs := strings.Split(path, "/")
	if path == "" || segs[0] == "" {
		return KeyID{}, keyIDErr(s, "has no /keys/{name} path: give %s", keyIDForm)
	}
	switch segs[0] {
	case "keys":
	case "secrets", "certificates", "storage":
		return KeyID{}, keyIDErr(s, "is a %s identifier, not a key: give the key's identifier, %s", strings.TrimSuffix(segs[0], "s"), keyIDForm)
	case "deletedkeys":
		return KeyID{}, keyIDErr(s, "names a deleted key: recover the key, then give its identifier, %s", keyIDForm)
	default:
		return KeyID{}, keyIDErr(s, "path must start with /keys/, not /%s/: give %s", segs[0], keyIDForm)
	}
	if len(segs) < 2 || segs[1] == "" {
		return KeyID{}, keyIDErr(s, "has an empty key name: give %s", keyIDForm)
	}
	if len(segs) > 3 {
		return KeyID{}, keyIDErr(s, "has extra path segments after /keys/{name}/{version}: remove them")
	}
	name := segs[1]
	if err := checkKeyName(name); err != nil {
		return KeyID{}, keyIDErr(s, "key name %v", err)
	}
	version := ""
	if len(segs) == 3 {
		version = segs[2]
		if version == "" {
			return KeyID{}, keyIDErr(s, "ends with a slash: remove it, or add the key version after it")
		}
		if err := checkVersion(version); err != nil {
			return KeyID{}, keyIDErr(s, "key version %v", err)
		}
	}
	return KeyID{VaultURL: "https://" + host + "/", Host: host, Name: name, Version: version, ManagedHSM: hsm}, nil
}

// ParseVersionedKeyID is ParseKeyID for places that need a specific key
// version, such as the identifier stored with a wrapped copy.
func ParseVersionedKeyID(s string, env Environment) (KeyID, error) {
	id, err := ParseKeyID(s, env)
	if err != nil {
		return KeyID{}, err
	}
	if id.Version == "" {
		return KeyID{}, keyIDErr(s, "has no version: a specific version is required here, %s", "https://{vault}.{suffix}/keys/{name}/{version}")
	}
	return id, nil
}

// splitVaultHost returns the vault name of host and whether host is a
// Managed HSM, or an error naming the suffixes env expects.
func splitVaultHost(s, host string, env Environment) (vault string, hsm bool, err error) {
	if host == "" {
		return "", false, keyIDErr(s, "has no host: give %s", keyIDForm)
	}
	type suffix struct {
		s   string
		hsm bool
	}
	suffixes := []suffix{{env.VaultSuffix, false}, {env.ManagedHSMSuffix, true}}
	if len(env.ManagedHSMSuffix) > len(env.VaultSuffix) {
		// The longer suffix first, in case one ends the other.
		suffixes[0], suffixes[1] = suffixes[1], suffixes[0]
	}
	for _, sf := range suffixes {
		if sf.s == "" {
			continue
		}
		if v, ok := strings.CutSuffix(host, "."+strings.ToLower(sf.s)); ok {
			return v, sf.hsm, nil
		}
	}
	want := "{vault}." + env.VaultSuffix
	if env.ManagedHSMSuffix != "" {
		want += " or {hsm}." + env.ManagedHSMSuffix
	}
	hint := ""
	for _, name := range []string{EnvAzure, EnvAzureChina, EnvAzureGovernment} {
		o := azureEnvironments[name]
		if name != env.Name && (strings.HasSuffix(host, "."+o.VaultSuffix) || strings.HasSuffix(host, "."+o.ManagedHSMSuffix)) {
			hint = fmt.Sprintf(" (it is a %s host: set the environment to %s)", name, name)
		}
	}
	envName := env.Name
	if envName == "" {
		envName = "(unnamed)"
	}
	return "", false, keyIDErr(s, "host %q is not a vault of environment %s, which expects %s%s", clip(host, 100), envName, want, hint)
}

// checkVaultName applies Azure's vault and Managed HSM naming rules: 3-24
// letters, digits and hyphens, starting with a letter, ending with a letter
// or digit, no consecutive hyphens.
func checkVaultName(v string) error {
	switch {
	case v == "":
		return errors.New("is empty: give {vault}.{suffix}")
	case strings.Contains(v, "."):
		return errors.New("contains a dot: a vault name is a single DNS label")
	case len(v) < 3 || len(v) > 24:
		return errors.New("must be 3 to 24 characters long")
	case !(v[0] >= 'a' && v[0] <= 'z'):
		return errors.New("must start with a letter")
	case v[len(v)-1] == '-':
		return errors.New("must end with a letter or digit")
	case strings.Contains(v, "--"):
		return errors.New("must not contain consecutive hyphens")
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("has the character %q: use only letters, digits and '-'", c)
		}
	}
	return nil
}

// checkKeyName applies Key Vault's key naming rule: 1-127 letters, digits
// and hyphens.
func checkKeyName(n string) error {
	if len(n) > 127 {
		return errors.New("is longer than 127 characters")
	}
	for i := 0; i < len(n); i++ {
		if c := n[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return fmt.Errorf("%q has the character %q: use only letters, digits and '-'", clip(n, 64), c)
		}
	}
	return nil
}

// checkVersion accepts Key Vault's versions (32 hexadecimal digits) and, for
// private clouds, any 1-64 letters and digits.
func checkVersion(v string) error {
	if len(v) > 64 {
		return errors.New("is longer than 64 characters")
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return fmt.Errorf("%q has the character %q: a version is letters and digits only (32 hex digits in Azure)", clip(v, 64), c)
		}
	}
	return nil
}

// String returns the identifier in its canonical form, with the version if
// there is one; "" for the zero KeyID.
func (k KeyID) String() string {
	if k.Host == "" {
		return ""
	}
	if k.Version == "" {
		return k.Versionless()
	}
	return "https://" + k.Host + "/keys/" + k.Name + "/" + k.Version
}

// Versionless returns the identifier without its version.
func (k KeyID) Versionless() string {
	if k.Host == "" {
		return ""
	}
	return "https://" + k.Host + "/keys/" + k.Name
}

// WithVersion returns k naming version v.
func (k KeyID) WithVersion(v string) KeyID {
	k.Version = v
	return k
}

// SameKey reports whether k and o name the same key in the same vault, of
// any version. Key Vault names are case-insensitive.
func (k KeyID) SameKey(o KeyID) bool {
	return strings.EqualFold(k.Host, o.Host) && strings.EqualFold(k.Name, o.Name)
}

// clip shortens s for an error message.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}
