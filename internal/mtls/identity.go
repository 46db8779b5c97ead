package mtls

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"strings"
)

// Identity prefixes. A URI SAN is written as is (spiffe://keybroker.dev/engine),
// a DNS SAN as "dns:" + the lower-cased name and the subject CN as "cn:" + the
// CN. Because URI SANs with the schemes "dns" or "cn" are ignored, every
// identity string names exactly one kind of certificate field.
const (
	DNSPrefix = "dns:"
	CNPrefix  = "cn:"
)

// maxIdentityLen bounds configured identities; real ones are far shorter.
const maxIdentityLen = 2048

// Identities returns the identities a client certificate presents, in order:
// every URI SAN as is, every DNS SAN as "dns:NAME" (lower case, since DNS
// names compare case-insensitively) and the subject CN as "cn:CN". URI SANs
// whose scheme is "dns" or "cn" are skipped, since they would read like the
// other two kinds. It returns nil for a nil certificate.
func Identities(cert *x509.Certificate) []string {
	if cert == nil {
		return nil
	}
	var ids []string
	for _, u := range cert.URIs {
		if u == nil || isReservedScheme(u.Scheme) {
			continue
		}
		if s := u.String(); s != "" {
			ids = append(ids, s)
		}
	}
	for _, d := range cert.DNSNames {
		if d != "" {
			ids = append(ids, DNSPrefix+strings.ToLower(d))
		}
	}
	if cn := cert.Subject.CommonName; cn != "" {
		ids = append(ids, CNPrefix+cn)
	}
	return ids
}

func isReservedScheme(scheme string) bool {
	return strings.EqualFold(scheme, "dns") || strings.EqualFold(scheme, "cn")
}

// ParseIdentity checks a configured identity and returns its canonical form,
// the one Identities produces: "dns:" names are lower-cased, and the "dns:"
// and "cn:" prefixes may be written in any case. A URI must already be in the
// form Go prints it (lower-case scheme, minimal escaping); the error says
// what to write instead.
func ParseIdentity(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: empty identity: write a URI (spiffe://keybroker.dev/engine), dns:NAME or cn:NAME", ErrInvalidIdentity)
	}
	if len(s) > maxIdentityLen {
		return "", fmt.Errorf("%w: identity of %d bytes is longer than %d", ErrInvalidIdentity, len(s), maxIdentityLen)
	}
	if strings.TrimSpace(s) != s {
		return "", fmt.Errorf("%w: identity %q has leading or trailing space; remove it", ErrInvalidIdentity, s)
	}
	scheme, rest, ok := strings.Cut(s, ":")
	if !ok || scheme == "" {
		return "", fmt.Errorf("%w: identity %q has no type: write a URI (spiffe://keybroker.dev/%s), dns:%s or cn:%s", ErrInvalidIdentity, s, s, s, s)
	}
	switch {
	case strings.EqualFold(scheme, "dns"):
		name := strings.ToLower(rest)
		if !validDNSName(name) {
			return "", fmt.Errorf("%w: identity %q: %q is not a DNS name (letters, digits, '-', '_' in dot-separated labels; '*' as the first label)", ErrInvalidIdentity, s, rest)
		}
		return DNSPrefix + name, nil
	case strings.EqualFold(scheme, "cn"):
		if rest == "" || strings.ContainsFunc(rest, func(r rune) bool { return r < 0x20 || r == 0x7f || r == 0xfffd }) {
			return "", fmt.Errorf("%w: identity %q: a CN must be non-empty, valid UTF-8 without control characters", ErrInvalidIdentity, s)
		}
		return CNPrefix + rest, nil
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r >= 0x7f }) {
		return "", fmt.Errorf("%w: identity %q: a URI holds printable ASCII only; percent-encode other characters", ErrInvalidIdentity, s)
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%w: identity %q is not a URI: %w", ErrInvalidIdentity, s, err)
	}
	if u.Host == "" && u.Opaque == "" {
		return "", fmt.Errorf("%w: identity %q: a URI needs an authority or a body, e.g. spiffe://keybroker.dev/engine", ErrInvalidIdentity, s)
	}
	if strings.EqualFold(u.Scheme, "spiffe") && (u.Host == "" || u.User != nil || u.Port() != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "") {
		return "", fmt.Errorf("%w: identity %q is not a SPIFFE ID: write spiffe://TRUST-DOMAIN/PATH with no user, port, query or fragment", ErrInvalidIdentity, s)
	}
	if c := u.String(); c != s {
		return "", fmt.Errorf("%w: identity %q is not in canonical form; write %q, as certificates present it", ErrInvalidIdentity, s, c)
	}
	return s, nil
}

// validDNSName accepts lower-case host names, with '_' (service names) and a
// leading '*' label (wildcard SANs), as certificates carry them.
func validDNSName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	for i, l := range labels {
		if l == "*" && i == 0 && len(labels) > 1 {
			continue
		}
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}
