// Package kektest holds what every key-wrapper implementation is tested
// with: RunConformance, the shared suite the fake, the Azure adapter (against
// the emulator) and the failover wrapper all run, and Fake, an in-memory
// key wrapper with real cryptography and fault knobs for unit tests of the
// packages that call a key wrapper.
//
// It is for tests only; nothing outside _test.go files should import it.
package kektest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// Wrapper is the key wrapper under test. It restates the broker's
// KeyWrapper so that kektest need not import the broker. Implementations
// must be safe for concurrent use; the suite checks it.
type Wrapper interface {
	// WrapKey returns one copy of key per configured key-encryption key.
	WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error)
	// UnwrapKey unwraps the copies it can; the caller clears the result.
	UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error)
	// KeyInfo reports the key as the vault sees it now.
	KeyInfo(ctx context.Context) (kek.KeyInfo, error)
}

// checkTimeout bounds each conformance check, so that a hanging
// implementation fails the check instead of the whole test binary.
const checkTimeout = 30 * time.Second

// promptly is how long a call with a dead context may take before the
// suite calls it hung. It detects hangs; it is not a speed assertion.
const promptly = 5 * time.Second

type check struct {
	name string
	run  func(ctx context.Context, w Wrapper) error
}

func checks() []check {
	return []check{
		{"RoundTrip/16", func(ctx context.Context, w Wrapper) error { return checkRoundTrip(ctx, w, 16) }},
		{"RoundTrip/32", func(ctx context.Context, w Wrapper) error { return checkRoundTrip(ctx, w, 32) }},
		{"RoundTrip/64", func(ctx context.Context, w Wrapper) error { return checkRoundTrip(ctx, w, 64) }},
		{"Tampered", checkTampered},
		{"UnknownKey", checkUnknownKey},
		{"KeyInfo", checkKeyInfo},
		{"Concurrent", checkConcurrent},
		{"Cancelled", checkCancelled},
	}
}

// RunConformance runs the suite every key wrapper must pass. newWrapper is
// called once per subtest and should register its own cleanup with
// t.Cleanup. The suite asks for:
//   - wrap then unwrap of 16, 32 and 64-byte keys gives the key back; every
//     copy unwraps on its own; copies name a full key identifier with a
//     version and an algorithm, one copy per key, and never hold the key
//     in clear; the caller's key is left as it was;
//   - a tampered, truncated or empty ciphertext fails with a *kek.Error
//     that is not revocation evidence (a corrupt blob must not pause the
//     broker), without panicking and without key bytes in the message;
//   - no copies, copies of an unknown key or of an unknown version fail
//     with KindInvalidInput or KindNotFound;
//   - KeyInfo reports an enabled key and an identifier with a version;
//   - 8 goroutines x 20 concurrent round trips succeed;
//   - a cancelled or expired context fails promptly with an error that
//     matches context.Canceled or context.DeadlineExceeded.
func RunConformance(t *testing.T, newWrapper func(t *testing.T) Wrapper) {
	t.Helper()
	for _, c := range checks() {
		t.Run(c.name, func(t *testing.T) {
			w := newWrapper(t)
			ctx, cancel := context.WithTimeout(t.Context(), checkTimeout)
			defer cancel()
			if err := c.run(ctx, w); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func randomKey(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// safeWrap and friends turn a panic in the implementation into a failed
// check that says so, instead of a crashed test binary.
func safeWrap(ctx context.Context, w Wrapper, key []byte) (copies []kek.Wrapped, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("WrapKey panicked: %v", r)
			copies = nil
		}
	}()
	return w.WrapKey(ctx, key)
}

func safeUnwrap(ctx context.Context, w Wrapper, copies []kek.Wrapped) (key []byte, panicked bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			key, panicked, err = nil, true, fmt.Errorf("UnwrapKey panicked: %v", r)
		}
	}()
	key, err = w.UnwrapKey(ctx, copies)
	return key, false, err
}

func safeKeyInfo(ctx context.Context, w Wrapper) (info kek.KeyInfo, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("KeyInfo panicked: %v", r)
		}
	}()
	return w.KeyInfo(ctx)
}

// cloneCopies deep-copies so that tampering never touches what the
// implementation returned (it may have kept a reference).
func cloneCopies(in []kek.Wrapped) []kek.Wrapped {
	out := make([]kek.Wrapped, len(in))
	for i, c := range in {
		out[i] = c
		out[i].Ciphertext = bytes.Clone(c.Ciphertext)
	}
	return out
}

func checkRoundTrip(ctx context.Context, w Wrapper, size int) error {
	key := randomKey(size)
	orig := bytes.Clone(key)
	copies, err := safeWrap(ctx, w, key)
	if err != nil {
		return fmt.Errorf("WrapKey(ctx, %d-byte key) err = %v, want nil", size, err)
	}
	if !bytes.Equal(key, orig) {
		return fmt.Errorf("WrapKey(ctx, %d-byte key) changed the caller's key", size)
	}
	if len(copies) == 0 {
		return fmt.Errorf("WrapKey(ctx, %d-byte key) returned no copies, want at least one", size)
	}
	seen := map[string]bool{}
	for i, c := range copies {
		if err := CheckKeyID(c.KeyID); err != nil {
			return fmt.Errorf("WrapKey(ctx, %d-byte key) copy %d: %v", size, i, err)
		}
		base := strings.ToLower(c.KeyID[:strings.LastIndexByte(c.KeyID, '/')])
		if seen[base] {
			return fmt.Errorf("WrapKey(ctx, %d-byte key) returned two copies for key %s, want one per key", size, base)
		}
		seen[base] = true
		if c.Algorithm == "" {
			return fmt.Errorf("WrapKey(ctx, %d-byte key) copy %d has an empty Algorithm", size, i)
		}
		if len(c.Ciphertext) == 0 {
			return fmt.Errorf("WrapKey(ctx, %d-byte key) copy %d has an empty Ciphertext", size, i)
		}
		if bytes.Contains(c.Ciphertext, key) {
			return fmt.Errorf("WrapKey(ctx, %d-byte key) copy %d holds the key in clear", size, i)
		}
	}
	got, _, err := safeUnwrap(ctx, w, cloneCopies(copies))
	if err != nil {
		return fmt.Errorf("UnwrapKey(ctx, %d copies) err = %v, want nil", len(copies), err)
	}
	if !bytes.Equal(got, key) {
		return fmt.Errorf("UnwrapKey(ctx, %d copies) returned a different %d-byte key, want the %d-byte key wrapped", len(copies), len(got), size)
	}
	for i := range copies {
		one := cloneCopies(copies[i : i+1])
		got, _, err := safeUnwrap(ctx, w, one)
		if err != nil {
			return fmt.Errorf("UnwrapKey(ctx, [copy %d of %s]) err = %v, want nil: every copy must unwrap on its own", i, one[0].KeyID, err)
		}
		if !bytes.Equal(got, key) {
			return fmt.Errorf("UnwrapKey(ctx, [copy %d]) returned a different key", i)
		}
	}
	return nil
}

// CheckKeyID reports whether id is a full key identifier with a version in
// the Azure form https://{vault}.{suffix}/keys/{name}/{version} (Managed HSM
// identifiers have the same shape), with an error saying what is wrong.
func CheckKeyID(id string) error {
	if id == "" {
		return errors.New("kektest: key identifier is empty, want https://{vault}/keys/{name}/{version}")
	}
	u, err := url.Parse(id)
	if err != nil {
		return fmt.Errorf("kektest: key identifier %q does not parse as a URL: %v", id, err)
	}
	switch {
	case u.Scheme != "https" || !strings.HasPrefix(id, "https://"):
		// url.Parse lower-cases the scheme; Key Vault writes it lower-case.
		return fmt.Errorf("kektest: key identifier %q: want it to start with https://", id)
	case u.Host == "" || u.User != nil:
		return fmt.Errorf("kektest: key identifier %q: want a vault host and no user info", id)
	case u.RawQuery != "" || u.Fragment != "" || u.Opaque != "":
		return fmt.Errorf("kektest: key identifier %q: want no query or fragment", id)
	}
	parts := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(parts) != 3 || parts[0] != "keys" {
		return fmt.Errorf("kektest: key identifier %q: path %q, want /keys/{name}/{version}", id, u.Path)
	}
	if !validName(parts[1], true) {
		return fmt.Errorf("kektest: key identifier %q: key name %q, want 1-127 letters, digits or dashes", id, parts[1])
	}
	if !validName(parts[2], false) {
		return fmt.Errorf("kektest: key identifier %q: version %q, want 1-127 letters or digits", id, parts[2])
	}
	return nil
}

func validName(s string, dashes bool) bool {
	if len(s) == 0 || len(s) > 127 {
		return false
	}
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
		case r == '-' && dashes:
		default:
			return false
		}
	}
	return true
}

func checkTampered(ctx context.Context, w Wrapper) error {
	key := randomKey(32)
	copies, err := safeWrap(ctx, w, key)
	if err != nil {
		return fmt.Errorf("WrapKey(ctx, 32-byte key) err = %v, want nil", err)
	}
	tampers := []struct {
		name string
		f    func(ct []byte) []byte
	}{
		{"last byte flipped", func(ct []byte) []byte { ct[len(ct)-1] ^= 0x01; return ct }},
		{"first byte flipped", func(ct []byte) []byte { ct[0] ^= 0x80; return ct }},
		{"truncated to half", func(ct []byte) []byte { return ct[:len(ct)/2] }},
		{"empty", func([]byte) []byte { return nil }},
	}
	for _, tc := range tampers {
		bad := cloneCopies(copies)
		for i := range bad {
			bad[i].Ciphertext = tc.f(bad[i].Ciphertext)
		}
		got, panicked, err := safeUnwrap(ctx, w, bad)
		if panicked {
			return fmt.Errorf("UnwrapKey(ctx, copies with ciphertext %s): %v, want an error", tc.name, err)
		}
		if err == nil {
			clear(got)
			return fmt.Errorf("UnwrapKey(ctx, copies with ciphertext %s) err = nil, want a *kek.Error", tc.name)
		}
		if got != nil {
			return fmt.Errorf("UnwrapKey(ctx, copies with ciphertext %s) returned %d bytes with the error, want nil", tc.name, len(got))
		}
		var ke *kek.Error
		if !errors.As(err, &ke) {
			return fmt.Errorf("UnwrapKey(ctx, copies with ciphertext %s) err = %v (%T), want a *kek.Error", tc.name, err, err)
		}
		if k := kek.KindOf(err); k.IsRevocation() {
			return fmt.Errorf("UnwrapKey(ctx, copies with ciphertext %s) kind = %v, want a kind that is not revocation evidence (a corrupt blob must not pause the broker)", tc.name, k)
		}
		if err := noKeyIn(err.Error(), key); err != nil {
			return fmt.Errorf("UnwrapKey(ctx, copies with ciphertext %s): %v", tc.name, err)
		}
	}
	return nil
}

// noKeyIn reports an error if msg carries key in any of the encodings an
// error message might use.
func noKeyIn(msg string, key []byte) error {
	encodings := []struct{ name, s string }{
		{"raw", string(key)},
		{"hex", hex.EncodeToString(key)},
		{"upper-case hex", strings.ToUpper(hex.EncodeToString(key))},
		{"base64", base64.StdEncoding.EncodeToString(key)},
		{"base64url", base64.RawURLEncoding.EncodeToString(key)},
		{"Go byte slice", fmt.Sprint(key)},
	}
	for _, enc := range encodings {
		if strings.Contains(msg, enc.s) {
			// Do not quote msg: it would put the key in the test log.
			return fmt.Errorf("the error message carries the key (%s bytes)", enc.name)
		}
	}
	return nil
}

func checkUnknownKey(ctx context.Context, w Wrapper) error {
	copies, err := safeWrap(ctx, w, randomKey(32))
	if err != nil {
		return fmt.Errorf("WrapKey(ctx, 32-byte key) err = %v, want nil", err)
	}
	otherVersion := cloneCopies(copies)
	for i := range otherVersion {
		id := otherVersion[i].KeyID
		otherVersion[i].KeyID = id[:strings.LastIndexByte(id, '/')+1] + "0123456789abcdef0123456789abcdef"
	}
	unknownVault := cloneCopies(copies)
	for i := range unknownVault {
		unknownVault[i].KeyID = fmt.Sprintf("https://no-such-vault-%d.vault.keybroker.test/keys/no-such-key/0123456789abcdef0123456789abcdef", i)
	}
	cases := []struct {
		name   string
		copies []kek.Wrapped
	}{
		{"nil copies", nil},
		{"empty copies", []kek.Wrapped{}},
		{"copies of an unknown key", unknownVault},
		{"copies of an unknown version", otherVersion},
	}
	for _, tc := range cases {
		got, panicked, err := safeUnwrap(ctx, w, tc.copies)
		if panicked {
			return fmt.Errorf("UnwrapKey(ctx, %s): %v, want an error", tc.name, err)
		}
		if err == nil {
			clear(got)
			return fmt.Errorf("UnwrapKey(ctx, %s) err = nil, want KindInvalidInput or KindNotFound", tc.name)
		}
		if k := kek.KindOf(err); k != kek.KindInvalidInput && k != kek.KindNotFound {
			return fmt.Errorf("UnwrapKey(ctx, %s) err = %v (kind %v), want KindInvalidInput or KindNotFound", tc.name, err, k)
		}
	}
	return nil
}

func checkKeyInfo(ctx context.Context, w Wrapper) error {
	info, err := safeKeyInfo(ctx, w)
	if err != nil {
		return fmt.Errorf("KeyInfo(ctx) err = %v, want nil", err)
	}
	if !info.Enabled {
		return fmt.Errorf("KeyInfo(ctx) Enabled = false, want true")
	}
	if err := CheckKeyID(info.KeyID); err != nil {
		return fmt.Errorf("KeyInfo(ctx) KeyID: %v", err)
	}
	return nil
}

func checkConcurrent(ctx context.Context, w Wrapper) error {
	const workers, rounds = 8, 20
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for g := range workers {
		wg.Go(func() {
			for i := range rounds {
				key := randomKey(32)
				copies, err := safeWrap(ctx, w, key)
				if err != nil {
					errs <- fmt.Errorf("goroutine %d round %d: WrapKey(ctx, 32-byte key) err = %v, want nil", g, i, err)
					return
				}
				got, _, err := safeUnwrap(ctx, w, copies)
				if err != nil {
					errs <- fmt.Errorf("goroutine %d round %d: UnwrapKey(ctx, copies) err = %v, want nil", g, i, err)
					return
				}
				if !bytes.Equal(got, key) {
					errs <- fmt.Errorf("goroutine %d round %d: UnwrapKey(ctx, copies) returned another key", g, i)
					return
				}
				if _, err := safeKeyInfo(ctx, w); err != nil {
					errs <- fmt.Errorf("goroutine %d round %d: KeyInfo(ctx) err = %v, want nil", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	return <-errs // the first failure, or nil
}

func checkCancelled(ctx context.Context, w Wrapper) error {
	copies, err := safeWrap(ctx, w, randomKey(32))
	if err != nil {
		return fmt.Errorf("WrapKey(ctx, 32-byte key) err = %v, want nil", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	expired, cancel2 := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer cancel2()
	ops := []struct {
		name string
		call func(context.Context) error
	}{
		{"WrapKey", func(c context.Context) error { _, err := safeWrap(c, w, randomKey(32)); return err }},
		{"UnwrapKey", func(c context.Context) error { _, _, err := safeUnwrap(c, w, cloneCopies(copies)); return err }},
		{"KeyInfo", func(c context.Context) error { _, err := safeKeyInfo(c, w); return err }},
	}
	ctxs := []struct {
		name string
		ctx  context.Context
		want error
	}{
		{"cancelled", cancelled, context.Canceled},
		{"expired", expired, context.DeadlineExceeded},
	}
	for _, c := range ctxs {
		for _, op := range ops {
			done := make(chan error, 1)
			go func() { done <- op.call(c.ctx) }()
			timer := time.NewTimer(promptly)
			select {
			case err := <-done:
				timer.Stop()
				if !errors.Is(err, c.want) {
					return fmt.Errorf("%s(%s ctx) err = %v, want an error matching %v", op.name, c.name, err, c.want)
				}
			case <-timer.C:
				return fmt.Errorf("%s(%s ctx) still running after %v, want it to fail at once", op.name, c.name, promptly)
			}
		}
	}
	return nil
}
