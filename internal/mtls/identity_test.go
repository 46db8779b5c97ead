package mtls

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatalf("url.Parse(%q) err = %v, want nil", s, err)
	}
	return u
}

func TestIdentities(t *testing.T) {
	tests := []struct {
		name string
		uris []string
		dns  []string
		cn   string
		want []string
	}{
		{"nothing", nil, nil, "", nil},
		{"CN only", nil, nil, "engine", []string{"cn:engine"}},
		{"URI only", []string{"spiffe://keybroker.dev/engine"}, nil, "", []string{"spiffe://keybroker.dev/engine"}},
		{"DNS only, lower-cased", nil, []string{"Engine.Local"}, "", []string{"dns:engine.local"}},
		{"URI, DNS and CN in order", []string{"spiffe://keybroker.dev/engine"}, []string{"engine.local", "db1.local"}, "engine",
			[]string{"spiffe://keybroker.dev/engine", "dns:engine.local", "dns:db1.local", "cn:engine"}},
		{"two URIs", []string{"spiffe://a.dev/x", "urn:keybroker:y"}, nil, "", []string{"spiffe://a.dev/x", "urn:keybroker:y"}},
		{"URI with dns scheme skipped", []string{"dns:evil.local", "DNS:evil2.local", "cn:admin"}, nil, "", nil},
		{"CN is case-sensitive", nil, nil, "Engine", []string{"cn:Engine"}},
		{"wildcard DNS", nil, []string{"*.nodes.local"}, "", []string{"dns:*.nodes.local"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &x509.Certificate{Subject: pkix.Name{CommonName: tc.cn}, DNSNames: tc.dns}
			for _, s := range tc.uris {
				c.URIs = append(c.URIs, mustURL(t, s))
			}
			if got := Identities(c); !slices.Equal(got, tc.want) {
				t.Errorf("Identities() = %q, want %q", got, tc.want)
			}
		})
	}
	if got := Identities(nil); got != nil {
		t.Errorf("Identities(nil) = %q, want nil", got)
	}
}

func TestParseIdentity(t *testing.T) {
	ok := []struct{ in, want string }{
		{"spiffe://keybroker.dev/engine", "spiffe://keybroker.dev/engine"},
		{"spiffe://keybroker.dev/ns/prod/sa/mongod", "spiffe://keybroker.dev/ns/prod/sa/mongod"},
		{"urn:keybroker:engine", "urn:keybroker:engine"},
		{"https://id.example.com/engine", "https://id.example.com/engine"},
		{"dns:engine.local", "dns:engine.local"},
		{"DNS:Engine.Local", "dns:engine.local"},
		{"dns:*.nodes.local", "dns:*.nodes.local"},
		{"dns:_svc.local", "dns:_svc.local"},
		{"cn:engine", "cn:engine"},
		{"CN:Engine Node", "cn:Engine Node"},
		{"cn:ingénieur", "cn:ingénieur"},
	}
	for _, tc := range ok {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseIdentity(tc.in)
			if err != nil || got != tc.want {
				t.Errorf("ParseIdentity(%q) = %q, %v, want %q, nil", tc.in, got, err, tc.want)
			}
		})
	}
	bad := []struct{ in, wantMsg string }{
		{"", "empty identity"},
		{"engine", "has no type"},
		{":engine", "has no type"},
		{" cn:engine", "leading or trailing space"},
		{"cn:", "CN must be non-empty"},
		{"cn:a\x00b", "control characters"},
		{"cn:\xff", "valid UTF-8"},
		{"dns:", "not a DNS name"},
		{"dns:a..b", "not a DNS name"},
		{"dns:-a.b", "not a DNS name"},
		{"dns:a b", "not a DNS name"},
		{"dns:a.*.b", "not a DNS name"},
		{"dns:" + strings.Repeat("a", 64), "not a DNS name"},
		{"SPIFFE://keybroker.dev/engine", `write "spiffe://keybroker.dev/engine"`},
		{"spiffe:/engine", "needs an authority"},
		{"spiffe://keybroker.dev:443/engine", "not a SPIFFE ID"},
		{"spiffe://keybroker.dev/engine?x=1", "not a SPIFFE ID"},
		{"spiffe://keybroker.dev/engine#x", "not a SPIFFE ID"},
		{"spiffe:opaque", "not a SPIFFE ID"},
		{"https://h/a b", "printable ASCII"},
		{"https://h/é", "printable ASCII"},
		{"https://h/%zz", "not a URI"},
		{strings.Repeat("a", maxIdentityLen+1), "longer than"},
	}
	for _, tc := range bad {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseIdentity(tc.in)
			if !errors.Is(err, ErrInvalidIdentity) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("ParseIdentity(%q) = %q, %v, want ErrInvalidIdentity mentioning %q", tc.in, got, err, tc.wantMsg)
			}
		})
	}
}

// FuzzParseIdentity checks that the identity parser never panics, that its
// canonical form is a fixed point, and that a certificate carrying an
// accepted URI or DNS identity presents exactly that identity.
func FuzzParseIdentity(f *testing.F) {
	for _, s := range []string{
		"spiffe://keybroker.dev/engine", "dns:Engine.local", "cn:admin", "urn:a:b", "engine", "dns:", "cn:",
		"https://h/%zz", "spiffe://h:1/x", "dns:*.a", "HTTP://x/y", "a:%41",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseIdentity(s)
		if err != nil {
			if c != "" {
				t.Fatalf("ParseIdentity(%q) = %q with error %v, want empty", s, c, err)
			}
			return
		}
		again, err := ParseIdentity(c)
		if err != nil || again != c {
			t.Fatalf("ParseIdentity(%q) = %q, %v, want %q, nil (canonical form is a fixed point)", c, again, err, c)
		}
		cert := &x509.Certificate{}
		switch {
		case strings.HasPrefix(c, DNSPrefix):
			cert.DNSNames = []string{strings.TrimPrefix(c, DNSPrefix)}
		case strings.HasPrefix(c, CNPrefix):
			cert.Subject.CommonName = strings.TrimPrefix(c, CNPrefix)
		default:
			u, err := url.Parse(c)
			if err != nil {
				t.Fatalf("url.Parse(%q) err = %v after ParseIdentity accepted it", c, err)
			}
			cert.URIs = []*url.URL{u}
		}
		if got := Identities(cert); !slices.Equal(got, []string{c}) {
			t.Fatalf("Identities(cert for %q) = %q, want [%q]", c, got, c)
		}
	})
}
