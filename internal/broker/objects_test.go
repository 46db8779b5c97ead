package broker

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/keystore"
)

var (
	engineA = Caller{Identity: "spiffe://test/engine-a"}
	engineB = Caller{Identity: "spiffe://test/engine-b"}
	admin   = Caller{Identity: "spiffe://test/admin", Admin: true}
)

func seedSpec() keystore.Object {
	return keystore.Object{Type: keystore.ObjectSecretData, SecretDataType: "SEED"}
}

// TestObjectsOwnershipAndPause: objects belong to their creator (another
// engine gets not found, the admin manages all); while PAUSED an Active
// object reads Deactivated and its material is refused and wiped; after a
// resume a 96-byte object loads back through the vault with its bytes.
func TestObjectsOwnershipAndPause(t *testing.T) {
	b, fake := newTestBroker(t)
	ctx := context.Background()
	seed := bytes.Repeat([]byte{0xa5}, 96)
	info, err := b.RegisterObject(ctx, engineA, seedSpec(), seed)
	if err != nil {
		t.Fatalf("RegisterObject err = %v, want nil", err)
	}
	if info.State != keystore.StatePreActive || info.Owner != engineA.Identity || info.Length != 768 {
		t.Fatalf("RegisterObject = %+v, want Pre-Active, owned by A, 768 bits", info)
	}
	for _, tc := range []struct {
		name string
		c    Caller
		err  error
	}{
		{"owner", engineA, nil},
		{"other engine", engineB, ErrNotFound},
		{"admin", admin, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, key, err := b.ObjectKey(ctx, tc.c, info.ID)
			if !errors.Is(err, tc.err) || (err == nil && !bytes.Equal(key, seed)) {
				t.Fatalf("ObjectKey = %d bytes, %v; want %v and the registered bytes", len(key), err, tc.err)
			}
			if _, err := b.ObjectAttributes(ctx, tc.c, info.ID); !errors.Is(err, tc.err) {
				t.Fatalf("ObjectAttributes err = %v, want %v", err, tc.err)
			}
			if got := b.LocateObjects(ctx, tc.c, ObjectFilter{Type: keystore.ObjectSecretData}); (len(got) == 1) != (tc.err == nil) {
				t.Fatalf("LocateObjects = %v", got)
			}
		})
	}
	if _, err := b.ActivateObject(ctx, engineA, info.ID); err != nil {
		t.Fatal(err)
	}

	fake.Disable()
	if ev, _ := b.Check(ctx); ev.State != StatePaused {
		t.Fatalf("Check with the key disabled = %v, want PAUSED", ev.State)
	}
	if got, err := b.ObjectAttributes(ctx, engineA, info.ID); err != nil || got.State != keystore.StateDeactivated {
		t.Fatalf("PAUSED: ObjectAttributes = %v, %v; want Deactivated", got.State, err)
	}
	if _, _, err := b.ObjectKey(ctx, engineA, info.ID); !errors.Is(err, ErrPaused) {
		t.Fatalf("PAUSED: ObjectKey err = %v, want ErrPaused", err)
	}
	if _, err := b.CreateObject(ctx, engineA, keystore.Object{Type: keystore.ObjectSymmetricKey, Algorithm: "AES", Length: 256}); !errors.Is(err, ErrPaused) {
		t.Fatalf("PAUSED: CreateObject err = %v, want ErrPaused", err)
	}
	if n := b.cache.Len(); n != 0 {
		t.Fatalf("PAUSED: %d keys in memory, want 0", n)
	}

	fake.Enable()
	if ev, err := b.Check(ctx); err != nil || ev.State != StateServing {
		t.Fatalf("Check after re-enabling = %v, %v; want SERVING", ev.State, err)
	}
	if got, _ := b.ObjectAttributes(ctx, engineA, info.ID); got.State != keystore.StateActive {
		t.Fatalf("resumed: State = %v, want Active", got.State)
	}
	k, _ := b.store.Key(info.ID)
	if !slices.Contains(b.cache.Keys(), k.Versions[0].ID) {
		t.Fatal("resumed: the Active object is not back in memory")
	}
	if _, key, err := b.ObjectKey(ctx, engineA, info.ID); err != nil || !bytes.Equal(key, seed) {
		t.Fatalf("resumed: ObjectKey = %d bytes, %v; want the 96 registered bytes", len(key), err)
	}
}

// TestObjectsNotRotated: the master-key rotation schedule leaves KMIP
// objects alone (an identifier always names the same bytes) and raises no
// rotation alert for them.
func TestObjectsNotRotated(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock(time.Now().UTC().Truncate(time.Second), "the rotation scheduler")
	fake := newClockedFake(clock)
	b := rotationBroker(t, clock, fake, RotationConfig{})
	info, err := b.CreateObject(ctx, engineA, keystore.Object{Type: keystore.ObjectSymmetricKey, Algorithm: "AES", Length: 256, UsageMask: 12})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ActivateObject(ctx, engineA, info.ID); err != nil {
		t.Fatal(err)
	}
	_, before, err := b.ObjectKey(ctx, engineA, info.ID)
	if err != nil {
		t.Fatal(err)
	}
	runScheduler(t, b, clock)
	clock.Advance(91 * day)
	clock.waitArmed(t)
	if got := versionIDs(t, b); len(got) != 2 {
		t.Fatalf("master key versions after 91 days = %d, want 2 (rotated)", len(got))
	}
	k, err := b.store.Key(info.ID)
	if err != nil || len(k.Versions) != 1 {
		t.Fatalf("object versions after 91 days = %d (%v), want 1", len(k.Versions), err)
	}
	if _, after, err := b.ObjectKey(ctx, engineA, info.ID); err != nil || !bytes.Equal(after, before) {
		t.Fatalf("object bytes after 91 days changed (%v)", err)
	}
	if slices.Contains(alertCodes(t, b), AlertMasterKeyRotationDue) {
		t.Fatalf("alerts = %v, want no master-key rotation alert", alertCodes(t, b))
	}
	if ages := b.KeyAges(); len(ages.MasterKeys) != 1 {
		t.Fatalf("KeyAges().MasterKeys = %+v, want only the master key", ages.MasterKeys)
	}
}
