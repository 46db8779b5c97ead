package kektest

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

func TestFakeConformance(t *testing.T) {
	t.Run("Fake", func(t *testing.T) {
		RunConformance(t, func(*testing.T) Wrapper { return NewFake("westeurope", "cmk") })
	})
	t.Run("Replica", func(t *testing.T) {
		RunConformance(t, func(*testing.T) Wrapper { return NewFake("westeurope", "cmk").Replica("northeurope") })
	})
	t.Run("Rotated", func(t *testing.T) {
		RunConformance(t, func(*testing.T) Wrapper {
			f := NewFake("westeurope", "cmk")
			f.Rotate()
			return f
		})
	})
}

var errInjected = &kek.Error{Kind: kek.KindUnavailable, Op: "test", Region: "westeurope", Status: 503, Err: errors.New("injected")}

func TestFakeKnobs(t *testing.T) {
	ctx := t.Context()
	key := []byte("0123456789abcdef0123456789abcdef")
	tests := []struct {
		name string
		run  func(t *testing.T, f *Fake)
	}{
		{"SetError fails every call until cleared", func(t *testing.T, f *Fake) {
			f.SetError(OpWrap, errInjected)
			for i := range 3 {
				if _, err := f.WrapKey(ctx, key); !errors.Is(err, errInjected) {
					t.Fatalf("call %d: WrapKey(ctx, key) err = %v, want %v", i, err, errInjected)
				}
			}
			if _, err := f.KeyInfo(ctx); err != nil {
				t.Fatalf("KeyInfo(ctx) err = %v, want nil: SetError(OpWrap) must not touch other ops", err)
			}
			f.SetError(OpWrap, nil)
			if _, err := f.WrapKey(ctx, key); err != nil {
				t.Fatalf("after clearing: WrapKey(ctx, key) err = %v, want nil", err)
			}
			if got := f.Calls(OpWrap); got != 4 {
				t.Fatalf("Calls(OpWrap) = %d, want 4", got)
			}
		}},
		{"FailNext fails n calls then recovers", func(t *testing.T, f *Fake) {
			copies, err := f.WrapKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			f.FailNext(OpAny, 2, errInjected)
			for i := range 2 {
				if _, err := f.UnwrapKey(ctx, copies); !errors.Is(err, errInjected) {
					t.Fatalf("call %d: UnwrapKey err = %v, want %v", i, err, errInjected)
				}
			}
			if _, err := f.UnwrapKey(ctx, copies); err != nil {
				t.Fatalf("third UnwrapKey err = %v, want nil", err)
			}
			if _, err := f.KeyInfo(ctx); !errors.Is(err, errInjected) {
				t.Fatalf("KeyInfo err = %v, want %v: FailNext(OpAny) applies to every op", err, errInjected)
			}
		}},
		{"Rotate keeps old versions unwrapping", func(t *testing.T, f *Fake) {
			old, err := f.WrapKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			oldID := f.KeyID()
			newID := f.Rotate()
			if newID == oldID || f.KeyID() != newID {
				t.Fatalf("Rotate() = %s, KeyID() = %s, want a new id, not %s", newID, f.KeyID(), oldID)
			}
			fresh, err := f.WrapKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if fresh[0].KeyID != newID {
				t.Fatalf("WrapKey after Rotate KeyID = %s, want %s", fresh[0].KeyID, newID)
			}
			for _, c := range [][]kek.Wrapped{old, fresh} {
				got, err := f.UnwrapKey(ctx, c)
				if err != nil || !bytes.Equal(got, key) {
					t.Fatalf("UnwrapKey(%s) = %d bytes, %v; want the key", c[0].KeyID, len(got), err)
				}
			}
			info, err := f.KeyInfo(ctx)
			if err != nil || info.KeyID != newID {
				t.Fatalf("KeyInfo() = %s, %v; want %s, nil", info.KeyID, err, newID)
			}
		}},
		{"Disable revokes, Enable restores", func(t *testing.T, f *Fake) {
			copies, err := f.WrapKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			f.Disable()
			if info, err := f.KeyInfo(ctx); err != nil || info.Enabled {
				t.Fatalf("KeyInfo() Enabled = %v, err = %v; want false, nil", info.Enabled, err)
			}
			if _, err := f.WrapKey(ctx, key); kek.KindOf(err) != kek.KindRevoked {
				t.Fatalf("WrapKey on a disabled key err = %v, want KindRevoked", err)
			}
			if _, err := f.UnwrapKey(ctx, copies); kek.KindOf(err) != kek.KindRevoked {
				t.Fatalf("UnwrapKey on a disabled key err = %v, want KindRevoked", err)
			}
			f.Enable()
			if _, err := f.UnwrapKey(ctx, copies); err != nil {
				t.Fatalf("UnwrapKey after Enable err = %v, want nil", err)
			}
		}},
		{"Replica shares the key, not the knobs", func(t *testing.T, f *Fake) {
			r := f.Replica("northeurope")
			if r.KeyID() != f.KeyID() || r.Region() != "northeurope" {
				t.Fatalf("Replica KeyID, Region = %s, %s; want %s, northeurope", r.KeyID(), r.Region(), f.KeyID())
			}
			copies, err := f.WrapKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			f.SetError(OpAny, errInjected)
			got, err := r.UnwrapKey(ctx, copies)
			if err != nil || !bytes.Equal(got, key) {
				t.Fatalf("replica UnwrapKey = %d bytes, %v; want the key, nil", len(got), err)
			}
			if f.Calls(OpUnwrap) != 0 || r.Calls(OpUnwrap) != 1 {
				t.Fatalf("Calls(OpUnwrap) = %d (original), %d (replica); want 0, 1", f.Calls(OpUnwrap), r.Calls(OpUnwrap))
			}
		}},
		{"copies of another key are refused", func(t *testing.T, f *Fake) {
			other := NewFake("northeurope", "cmk")
			copies, err := other.WrapKey(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.UnwrapKey(ctx, copies); kek.KindOf(err) != kek.KindInvalidInput {
				t.Fatalf("UnwrapKey(copies of another key) err = %v, want KindInvalidInput", err)
			}
			// A copy relabelled as this key's must not authenticate: the
			// key identifier is bound to the ciphertext.
			copies[0].KeyID = f.KeyID()
			if _, err := f.UnwrapKey(ctx, copies); kek.KindOf(err) != kek.KindInvalidInput {
				t.Fatalf("UnwrapKey(relabelled copy) err = %v, want KindInvalidInput", err)
			}
		}},
		{"bad wrap input", func(t *testing.T, f *Fake) {
			for _, k := range [][]byte{nil, make([]byte, maxFakeKeyLen+1)} {
				if _, err := f.WrapKey(ctx, k); kek.KindOf(err) != kek.KindInvalidInput {
					t.Fatalf("WrapKey(%d bytes) err = %v, want KindInvalidInput", len(k), err)
				}
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, NewFake("westeurope", "cmk")) })
	}
}

func TestFakeBlockAndLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := NewFake("westeurope", "cmk")
		f.Block()
		ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
		defer cancel()
		start := time.Now()
		done := make(chan error, 1)
		go func() { _, err := f.KeyInfo(ctx); done <- err }()
		if err := f.WaitCalls(ctx, OpKeyInfo, 1); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if got := f.InFlight(); got != 1 {
			t.Fatalf("InFlight() while blocked = %d, want 1", got)
		}
		if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("blocked KeyInfo err = %v, want DeadlineExceeded", err)
		}
		if got := time.Since(start); got != time.Minute {
			t.Fatalf("blocked KeyInfo returned after %v, want 1m (its deadline)", got)
		}
		if got := f.InFlight(); got != 0 {
			t.Fatalf("InFlight() after return = %d, want 0", got)
		}

		// Unblock releases hanging calls, which then succeed.
		go func() { _, err := f.KeyInfo(t.Context()); done <- err }()
		synctest.Wait()
		f.Unblock()
		if err := <-done; err != nil {
			t.Fatalf("KeyInfo released by Unblock err = %v, want nil", err)
		}

		f.SetLatency(250 * time.Millisecond)
		start = time.Now()
		if _, err := f.KeyInfo(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got := time.Since(start); got != 250*time.Millisecond {
			t.Fatalf("KeyInfo with 250ms latency took %v, want 250ms", got)
		}
	})
}

func TestFakeUnknownOpPanics(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "unknown op") {
			t.Fatalf("SetError(\"wrapkey\", ...) recovered %v, want a panic naming the unknown op", r)
		}
	}()
	NewFake("westeurope", "").SetError("wrapkey", errInjected)
}

// broken wraps a Fake and misbehaves in one way, to show that each check
// of the suite can fail.
type broken struct {
	*Fake
	wrap   func(ctx context.Context, key []byte) ([]kek.Wrapped, error)
	unwrap func(ctx context.Context, copies []kek.Wrapped) ([]byte, error)
	info   func(ctx context.Context) (kek.KeyInfo, error)
}

func (b *broken) WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
	if b.wrap != nil {
		return b.wrap(ctx, key)
	}
	return b.Fake.WrapKey(ctx, key)
}

func (b *broken) UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error) {
	if b.unwrap != nil {
		return b.unwrap(ctx, copies)
	}
	return b.Fake.UnwrapKey(ctx, copies)
}

func (b *broken) KeyInfo(ctx context.Context) (kek.KeyInfo, error) {
	if b.info != nil {
		return b.info(ctx)
	}
	return b.Fake.KeyInfo(ctx)
}

func TestChecksCatchBrokenWrappers(t *testing.T) {
	f := NewFake("westeurope", "cmk")
	var lastKey []byte
	tests := []struct {
		name  string
		check string
		w     Wrapper
	}{
		{"plaintext copies", "RoundTrip/32", &broken{Fake: f, wrap: func(_ context.Context, key []byte) ([]kek.Wrapped, error) {
			return []kek.Wrapped{{KeyID: f.KeyID(), Algorithm: "none", Ciphertext: bytes.Clone(key)}}, nil
		}}},
		{"key id without version", "RoundTrip/16", &broken{Fake: f, wrap: func(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
			c, err := f.WrapKey(ctx, key)
			if err == nil {
				c[0].KeyID = c[0].KeyID[:strings.LastIndexByte(c[0].KeyID, '/')]
			}
			return c, err
		}}},
		{"empty algorithm", "RoundTrip/64", &broken{Fake: f, wrap: func(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
			c, err := f.WrapKey(ctx, key)
			if err == nil {
				c[0].Algorithm = ""
			}
			return c, err
		}}},
		{"two copies for one key", "RoundTrip/32", &broken{Fake: f, wrap: func(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
			c, err := f.WrapKey(ctx, key)
			return append(c, c...), err
		}}},
		{"wrong key back", "RoundTrip/32", &broken{Fake: f, unwrap: func(ctx context.Context, c []kek.Wrapped) ([]byte, error) {
			k, err := f.UnwrapKey(ctx, c)
			if err == nil {
				k[0] ^= 1
			}
			return k, err
		}}},
		{"changes the caller's key", "RoundTrip/32", &broken{Fake: f, wrap: func(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
			c, err := f.WrapKey(ctx, key)
			clear(key)
			return c, err
		}}},
		{"panics on a tampered ciphertext", "Tampered", &broken{Fake: f, unwrap: func(ctx context.Context, c []kek.Wrapped) ([]byte, error) {
			k, err := f.UnwrapKey(ctx, c)
			if err != nil {
				panic("index out of range")
			}
			return k, err
		}}},
		{"tampered ciphertext is revocation", "Tampered", &broken{Fake: f, unwrap: func(ctx context.Context, c []kek.Wrapped) ([]byte, error) {
			k, err := f.UnwrapKey(ctx, c)
			if err != nil {
				err = &kek.Error{Kind: kek.KindRevoked, Op: "unwrap", Err: err}
			}
			return k, err
		}}},
		{"tampered ciphertext is a bare error", "Tampered", &broken{Fake: f, unwrap: func(ctx context.Context, c []kek.Wrapped) ([]byte, error) {
			k, err := f.UnwrapKey(ctx, c)
			if err != nil {
				err = errors.New("decrypt failed")
			}
			return k, err
		}}},
		{"key bytes in the error", "Tampered", &broken{Fake: f,
			wrap: func(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
				lastKey = bytes.Clone(key)
				return f.WrapKey(ctx, key)
			},
			unwrap: func(ctx context.Context, c []kek.Wrapped) ([]byte, error) {
				k, err := f.UnwrapKey(ctx, c)
				if err != nil {
					err = &kek.Error{Kind: kek.KindInvalidInput, Op: "unwrap", Err: errors.New("want key " + string(lastKey))}
				}
				return k, err
			}}},
		{"unknown key is an outage", "UnknownKey", &broken{Fake: f, unwrap: func(ctx context.Context, c []kek.Wrapped) ([]byte, error) {
			k, err := f.UnwrapKey(ctx, c)
			if err != nil {
				err = &kek.Error{Kind: kek.KindUnavailable, Op: "unwrap", Err: err}
			}
			return k, err
		}}},
		{"disabled key", "KeyInfo", &broken{Fake: f, info: func(ctx context.Context) (kek.KeyInfo, error) {
			i, err := f.KeyInfo(ctx)
			i.Enabled = false
			return i, err
		}}},
		{"unsafe for concurrent use", "Concurrent", func() Wrapper {
			busy := make(chan struct{}, 1)
			return &broken{Fake: f, info: func(ctx context.Context) (kek.KeyInfo, error) {
				select {
				case busy <- struct{}{}:
				default:
					return kek.KeyInfo{}, errors.New("concurrent call")
				}
				defer func() { <-busy }()
				time.Sleep(time.Millisecond) // widen the window so that overlap is certain across 8 goroutines
				return f.KeyInfo(ctx)
			}}
		}()},
		{"ignores cancellation", "Cancelled", &broken{Fake: f, info: func(context.Context) (kek.KeyInfo, error) {
			return f.KeyInfo(context.Background())
		}}},
		{"loses the context error", "Cancelled", &broken{Fake: f, wrap: func(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
			c, err := f.WrapKey(ctx, key)
			if err != nil {
				err = &kek.Error{Kind: kek.KindUnavailable, Op: "wrap", Err: errors.New(err.Error())}
			}
			return c, err
		}}},
	}
	byName := map[string]check{}
	for _, c := range checks() {
		byName[c.name] = c
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, ok := byName[tc.check]
			if !ok {
				t.Fatalf("no check %q", tc.check)
			}
			if err := c.run(t.Context(), tc.w); err == nil {
				t.Fatalf("check %s on a wrapper that %s err = nil, want it to fail", tc.check, tc.name)
			} else {
				t.Logf("check %s: %v", tc.check, err)
			}
		})
	}
}

func TestCheckKeyID(t *testing.T) {
	tests := []struct {
		id string
		ok bool
	}{
		{"https://myvault.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef", true},
		{"https://myhsm.managedhsm.azure.net/keys/my-key/abc", true},
		{"https://myvault.vault.azure.net/keys/cmk", false},
		{"https://myvault.vault.azure.net/keys/cmk/", false},
		{"https://myvault.vault.azure.net/secrets/cmk/abc", false},
		{"http://myvault.vault.azure.net/keys/cmk/abc", false},
		{"https://user@myvault.vault.azure.net/keys/cmk/abc", false},
		{"https://myvault.vault.azure.net/keys/cmk/abc?x=1", false},
		{"https://myvault.vault.azure.net/keys/c_k/abc", false},
		{"https://myvault.vault.azure.net/keys/cmk/ab-c", false},
		{"https:///keys/cmk/abc", false},
		{"", false},
		{"%zz", false},
	}
	for _, tc := range tests {
		t.Run(tc.id, func(t *testing.T) {
			err := CheckKeyID(tc.id)
			if (err == nil) != tc.ok {
				t.Fatalf("CheckKeyID(%q) err = %v, want ok = %v", tc.id, err, tc.ok)
			}
		})
	}
}

func FuzzCheckKeyID(f *testing.F) {
	f.Add("https://myvault.vault.azure.net/keys/cmk/0123456789abcdef0123456789abcdef")
	f.Add("https://myhsm.managedhsm.azure.net/keys/k/1")
	f.Add("https://h/keys//v")
	f.Add("")
	f.Fuzz(func(t *testing.T, id string) {
		if err := CheckKeyID(id); err != nil {
			return
		}
		base, version, ok := splitKeyID(id)
		if !ok || version == "" || base+"/"+version != id {
			t.Fatalf("CheckKeyID(%q) = nil but splitKeyID = %q, %q, %v", id, base, version, ok)
		}
	})
}

func FuzzFakeUnwrapKey(f *testing.F) {
	fake := NewFake("westeurope", "cmk")
	key := []byte("fuzz-key-0123456789abcdef-000000")
	copies, err := fake.WrapKey(context.Background(), key)
	if err != nil {
		f.Fatal(err)
	}
	good := copies[0]
	f.Add(good.KeyID, good.Algorithm, good.Ciphertext)
	f.Add(good.KeyID, good.Algorithm, good.Ciphertext[:12])
	f.Add(good.KeyID+"x", good.Algorithm, good.Ciphertext)
	f.Add("https://fake-westeurope.vault.keybroker.test/keys/cmk/", "A256GCM", []byte{})
	f.Add("not a url", "", []byte(nil))
	f.Fuzz(func(t *testing.T, keyID, alg string, ct []byte) {
		got, err := fake.UnwrapKey(context.Background(), []kek.Wrapped{{KeyID: keyID, Algorithm: alg, Ciphertext: ct}})
		if err == nil {
			// AES-GCM cannot be forged: only the genuine copy unwraps.
			if !bytes.Equal(got, key) || !bytes.Equal(ct, good.Ciphertext) {
				t.Fatalf("UnwrapKey(%q, %q, %x) succeeded with a forged copy", keyID, alg, ct)
			}
			return
		}
		var ke *kek.Error
		if !errors.As(err, &ke) || (ke.Kind != kek.KindInvalidInput && ke.Kind != kek.KindNotFound) {
			t.Fatalf("UnwrapKey(%q, %q, %x) err = %v, want a *kek.Error of kind invalid_input or not_found", keyID, alg, ct, err)
		}
		if err := noKeyIn(err.Error(), key); err != nil {
			t.Fatal(err)
		}
	})
}
