package failover

import (
	"net/url"
	"strings"
)

// keyBase returns a key identifier without its version, lower-cased and
// without a default port, so that two regions reaching one key compare
// equal: https://v.vault.azure.net:443/keys/CMK/abc and
// https://v.vault.azure.net/keys/cmk both give
// https://v.vault.azure.net/keys/cmk. Key Vault names are case-insensitive.
// An identifier not of that form is returned lower-cased as is, so that it
// matches only itself.
func keyBase(id string) string {
	u, err := url.Parse(id)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return strings.ToLower(id)
	}
	segs := strings.Split(strings.Trim(u.EscapedPath(), "/"), "/")
	if len(segs) < 2 || !strings.EqualFold(segs[0], "keys") || segs[1] == "" {
		return strings.ToLower(id)
	}
	host := u.Host
	if u.Scheme == "https" {
		host = strings.TrimSuffix(host, ":443")
	}
	return strings.ToLower(u.Scheme + "://" + host + "/keys/" + segs[1])
}
