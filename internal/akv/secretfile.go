package akv

import (
	"context"
	"os"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// secretFileCredential is a client-secret credential that follows its
// secret file: when the file changes (the operator wrote a renewed secret),
// the next token request rebuilds the credential with the new value, so a
// broker paused by an expired secret resumes on the next check without a
// restart. azcore asks for a token only when its cached one is about to
// expire, so the stat per request is rare. Safe for concurrent use.
type secretFileCredential struct {
	path  string
	build func(secret string) (azcore.TokenCredential, error)

	mu      sync.Mutex
	cur     azcore.TokenCredential
	modTime time.Time
	size    int64
}

func newSecretFileCredential(path string, build func(string) (azcore.TokenCredential, error)) (*secretFileCredential, error) {
	c := &secretFileCredential{path: path, build: build}
	if _, err := c.current(); err != nil {
		return nil, err
	}
	return c, nil
}

// current returns the credential for the file as it is now.
func (c *secretFileCredential) current() (azcore.TokenCredential, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fi, err := os.Stat(c.path)
	if err != nil && c.cur != nil {
		return c.cur, nil // a renewal in progress: keep the last good secret
	}
	if err == nil && c.cur != nil && fi.ModTime().Equal(c.modTime) && fi.Size() == c.size {
		return c.cur, nil
	}
	secret, err := clientSecret(CredentialConfig{ClientSecretFile: c.path})
	if err != nil {
		if c.cur != nil {
			return c.cur, nil
		}
		return nil, err
	}
	cred, err := c.build(secret)
	if err != nil {
		return nil, err
	}
	c.cur = cred
	if fi != nil {
		c.modTime, c.size = fi.ModTime(), fi.Size()
	}
	return cred, nil
}

// GetToken implements azcore.TokenCredential.
func (c *secretFileCredential) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	cred, err := c.current()
	if err != nil {
		return azcore.AccessToken{}, err
	}
	return cred.GetToken(ctx, opts)
}
