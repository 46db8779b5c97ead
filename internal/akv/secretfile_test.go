package akv

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// secretEcho is a credential whose token is the secret it was built with.
type secretEcho string

func (s secretEcho) GetToken(context.Context, policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return azcore.AccessToken{Token: string(s), ExpiresOn: time.Now().Add(time.Hour)}, nil
}

func TestSecretFileCredentialFollowsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secret")
	write := func(s string, mtime time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, mtime, mtime); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-time.Hour)
	write("first", t0)
	builds := 0
	cred, err := newSecretFileCredential(path, func(s string) (azcore.TokenCredential, error) {
		builds++
		return secretEcho(s), nil
	})
	if err != nil {
		t.Fatalf("newSecretFileCredential err = %v, want nil", err)
	}
	token := func() string {
		t.Helper()
		tok, err := cred.GetToken(context.Background(), policy.TokenRequestOptions{})
		if err != nil {
			t.Fatalf("GetToken err = %v, want nil", err)
		}
		return tok.Token
	}
	if got := token(); got != "first" || builds != 1 {
		t.Fatalf("GetToken = %q after %d builds, want first after 1", got, builds)
	}
	if got := token(); got != "first" || builds != 1 {
		t.Fatalf("unchanged file: GetToken = %q after %d builds, want no rebuild", got, builds)
	}
	write("renewed", t0.Add(time.Minute))
	if got := token(); got != "renewed" || builds != 2 {
		t.Fatalf("renewed file: GetToken = %q after %d builds, want renewed after 2", got, builds)
	}
	// A renewal in progress (file gone, or empty) keeps the last good secret.
	os.Remove(path)
	if got := token(); got != "renewed" {
		t.Fatalf("missing file: GetToken = %q, want the last good secret", got)
	}
	write("", t0.Add(2*time.Minute))
	if got := token(); got != "renewed" {
		t.Fatalf("empty file: GetToken = %q, want the last good secret", got)
	}
	// But a first read must succeed.
	if _, err := newSecretFileCredential(filepath.Join(t.TempDir(), "none"), func(s string) (azcore.TokenCredential, error) { return secretEcho(s), nil }); err == nil {
		t.Fatal("newSecretFileCredential(missing file) err = nil, want an error")
	}
}
