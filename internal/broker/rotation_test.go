package broker

import (
	"bytes"
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
	"github.com/keybroker/keybroker/internal/keystore"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

const day = 24 * time.Hour

// clockedFake is a kektest.Fake whose key versions are created on the fake
// clock, so that the CMK age follows it.
type clockedFake struct {
	*kektest.Fake
	clock *fakeClock

	mu      sync.Mutex
	created map[string]time.Time
}

func newClockedFake(clock *fakeClock) *clockedFake {
	f := &clockedFake{Fake: kektest.NewFake("east", "cmk"), clock: clock, created: map[string]time.Time{}}
	f.created[f.KeyID()] = clock.Now()
	return f
}

// Rotate adds a CMK version created now on the fake clock.
func (f *clockedFake) Rotate() string {
	id := f.Fake.Rotate()
	f.mu.Lock()
	f.created[id] = f.clock.Now()
	f.mu.Unlock()
	return id
}

func (f *clockedFake) KeyInfo(ctx context.Context) (kek.KeyInfo, error) {
	info, err := f.Fake.KeyInfo(ctx)
	f.mu.Lock()
	info.Created = f.created[info.KeyID]
	f.mu.Unlock()
	return info, err
}

// rotationBroker is a broker over a fresh keystore, both on the fake clock.
func rotationBroker(t *testing.T, clock *fakeClock, w KeyWrapper, cfg RotationConfig) *Broker {
	t.Helper()
	ctx := context.Background()
	store, err := keystore.Create(filepath.Join(t.TempDir(), "keystore"), keystore.Options{Now: clock.Now})
	if err != nil {
		t.Fatalf("keystore.Create err = %v", err)
	}
	t.Cleanup(func() { store.Close() })
	v, err := NewVersion(ctx, w)
	if err != nil {
		t.Fatalf("NewVersion err = %v, want nil", err)
	}
	v.Created = clock.Now()
	if _, err := store.CreateKey(DefaultKeyName, keystore.StateActive, v); err != nil {
		t.Fatalf("CreateKey err = %v", err)
	}
	b, err := New(Config{Store: store, Wrapper: w, Now: clock.Now, AfterFunc: clock.AfterFunc, Rotation: cfg})
	if err != nil {
		t.Fatalf("New err = %v, want nil", err)
	}
	t.Cleanup(b.Close)
	if err := b.Warm(ctx); err != nil {
		t.Fatalf("Warm err = %v, want nil", err)
	}
	return b
}

// runScheduler starts RunRotation and waits for its first pass.
func runScheduler(t *testing.T, b *Broker, clock *fakeClock) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		b.RunRotation(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	clock.waitArmed(t)
}

func alertCodes(t *testing.T, b *Broker) []string {
	t.Helper()
	st, err := b.GetStatus(context.Background(), &keybrokerv1.GetStatusRequest{})
	if err != nil {
		t.Fatalf("GetStatus err = %v", err)
	}
	var codes []string
	for _, a := range st.GetAlerts() {
		codes = append(codes, a.GetCode())
		if a.GetMessage() == "" || a.GetSince() == nil {
			t.Errorf("alert %s has no message or no since: %v", a.GetCode(), a)
		}
	}
	slices.Sort(codes)
	return codes
}

func versionIDs(t *testing.T, b *Broker) []string {
	t.Helper()
	k, err := b.store.Key(DefaultKeyName)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, v := range k.Versions {
		ids = append(ids, v.ID)
	}
	return ids
}

// TestAutomaticRotationOnFakeClock: the scheduler rotates at 90 days, not
// before; old versions and old blobs keep working; the alerts open and
// close on the fake clock.
func TestAutomaticRotationOnFakeClock(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock(time.Now().UTC().Truncate(time.Second), "the rotation scheduler")
	fake := newClockedFake(clock)
	b := rotationBroker(t, clock, fake, RotationConfig{})
	if _, err := b.Check(ctx); err != nil { // describes the CMK, as serve's checks do
		t.Fatalf("Check err = %v", err)
	}
	first, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	blob, err := b.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("data key"), AssociatedData: []byte("db")})
	if err != nil {
		t.Fatal(err)
	}
	runScheduler(t, b, clock)

	steps := []struct {
		advance    time.Duration
		rotate     bool // rotate the CMK in the vault first
		versions   int
		wantAlerts []string
	}{
		{advance: 89 * day, versions: 1},
		{advance: day, versions: 2, wantAlerts: []string{AlertCMKRotationDue}}, // 90 days: rotated; the CMK is as old
		{rotate: true, versions: 2},                                            // a new CMK version clears it
		{advance: 89 * day, versions: 2},
		{advance: day, versions: 3, wantAlerts: []string{AlertCMKRotationDue}}, // 180 days
	}
	for i, s := range steps {
		if s.rotate {
			fake.Rotate()
			if _, err := b.Revalidate(ctx, &keybrokerv1.RevalidateRequest{}); err != nil {
				t.Fatalf("step %d: Revalidate err = %v", i, err)
			}
			clock.waitArmed(t) // the pass the new CMK version woke
		}
		if s.advance > 0 {
			clock.Advance(s.advance)
			clock.waitArmed(t)
		}
		if got := versionIDs(t, b); len(got) != s.versions {
			t.Fatalf("step %d (+%v): versions = %d, want %d", i, s.advance, len(got), s.versions)
		}
		if got := alertCodes(t, b); !slices.Equal(got, s.wantAlerts) {
			t.Fatalf("step %d (+%v): alerts = %v, want %v", i, s.advance, got, s.wantAlerts)
		}
	}

	// A restore: the first version by id, and the first blob.
	old, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: first.GetVersion()})
	if err != nil || !bytes.Equal(old.GetKey(), first.GetKey()) {
		t.Fatalf("GetMasterKey(first version) = %v, want the first key back", err)
	}
	u, err := b.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: blob.GetWrappedDek(), AssociatedData: []byte("db")})
	if err != nil || string(u.GetDek()) != "data key" || !u.GetRewrapRecommended() {
		t.Fatalf("UnwrapDEK(first blob) = (%v, rewrap %v), want the data key and rewrap_recommended", err, u.GetRewrapRecommended())
	}
	ages := b.KeyAges()
	if len(ages.MasterKeys) != 1 || ages.MasterKeys[0].Age != 0 || len(ages.CMKs) != 1 || ages.CMKs[0].Age != 90*day {
		t.Fatalf("KeyAges() = %+v, want a master key of age 0 and a CMK of 90 days", ages)
	}
}

// TestManualRotationAlert: with automatic rotation off, the master key is
// not rotated and MASTER_KEY_ROTATION_DUE says what to do.
func TestManualRotationAlert(t *testing.T) {
	clock := newFakeClock(time.Now().UTC().Truncate(time.Second), "the rotation scheduler")
	b := rotationBroker(t, clock, newClockedFake(clock), RotationConfig{Manual: true, MasterKeyInterval: 30 * day, CMKRotationAlert: 400 * day})
	if _, err := b.Check(context.Background()); err != nil { // the customer key's dates come from the validity check's key-info call
		t.Fatalf("Check err = %v, want nil", err)
	}
	runScheduler(t, b, clock)
	tests := []struct {
		advance time.Duration
		want    []string
	}{
		{29 * day, nil},
		{day, []string{AlertMasterKeyRotationDue}},
		{365 * day, []string{AlertMasterKeyRotationDue}}, // CMK 395 days old: under its 400-day alert
		{5 * day, []string{AlertCMKRotationDue, AlertMasterKeyRotationDue}},
	}
	for _, tc := range tests {
		clock.Advance(tc.advance)
		clock.waitArmed(t)
		if got := alertCodes(t, b); !slices.Equal(got, tc.want) {
			t.Fatalf("alerts after +%v = %v, want %v", tc.advance, got, tc.want)
		}
	}
	if n := len(versionIDs(t, b)); n != 1 {
		t.Fatalf("versions with automatic rotation off = %d, want 1", n)
	}
	st, _ := b.GetStatus(context.Background(), &keybrokerv1.GetStatusRequest{})
	for _, a := range st.GetAlerts() {
		if a.GetCode() == AlertMasterKeyRotationDue && !strings.Contains(a.GetMessage(), "keybroker rotate") {
			t.Errorf("MASTER_KEY_ROTATION_DUE message %q does not say how to rotate", a.GetMessage())
		}
	}
}

// TestAutomaticRotationRetriesAfterFailure: a vault outage at the due time
// leaves the alert open with the cause; the scheduler retries.
func TestAutomaticRotationRetriesAfterFailure(t *testing.T) {
	clock := newFakeClock(time.Now().UTC().Truncate(time.Second), "the rotation scheduler")
	fake := newClockedFake(clock)
	b := rotationBroker(t, clock, fake, RotationConfig{CMKRotationAlert: 400 * day})
	runScheduler(t, b, clock)
	fake.SetError(kektest.OpWrap, &kek.Error{Kind: kek.KindUnavailable, Op: "wrap", Status: 503})
	clock.Advance(90 * day)
	if d := clock.waitArmed(t); d != rotationRetry {
		t.Fatalf("next wake after a failed rotation = %v, want %v", d, rotationRetry)
	}
	st, _ := b.GetStatus(context.Background(), &keybrokerv1.GetStatusRequest{})
	if len(st.GetAlerts()) == 0 || st.GetAlerts()[0].GetCode() != AlertMasterKeyRotationDue || !strings.Contains(st.GetAlerts()[0].GetMessage(), "not succeeded") {
		t.Fatalf("alerts after a failed rotation = %v, want MASTER_KEY_ROTATION_DUE naming the failure", st.GetAlerts())
	}
	fake.SetError(kektest.OpWrap, nil)
	clock.Advance(rotationRetry)
	clock.waitArmed(t)
	if n := len(versionIDs(t, b)); n != 2 {
		t.Fatalf("versions after the retry = %d, want 2", n)
	}
	if got := alertCodes(t, b); len(got) != 0 {
		t.Fatalf("alerts after the retry = %v, want none", got)
	}
}

// TestRetention: versions leave only by the configured policy, never the
// current one, and blobs under kept versions still unwrap.
func TestRetention(t *testing.T) {
	tests := []struct {
		name     string
		cfg      RotationConfig
		wantKept []int // indexes of the 5 versions (made 30 days apart) left after 10 more days
	}{
		{"keep all", RotationConfig{}, []int{0, 1, 2, 3, 4}},
		{"newest 3", RotationConfig{RetainVersions: 3}, []int{2, 3, 4}},
		{"retired over 45 days ago", RotationConfig{RetainFor: 45 * day}, []int{2, 3, 4}},
		{"both: beyond 2 and retired over 85 days", RotationConfig{RetainVersions: 2, RetainFor: 85 * day}, []int{1, 2, 3, 4}},
		{"both: beyond 4 and retired over 45 days", RotationConfig{RetainVersions: 4, RetainFor: 45 * day}, []int{1, 2, 3, 4}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clock := newFakeClock(time.Now().UTC().Truncate(time.Second), "the rotation scheduler")
			tc.cfg.Manual = true
			b := rotationBroker(t, clock, kektest.NewFake("east", "cmk"), tc.cfg)
			var blobs [][]byte
			for i := 0; i < 5; i++ {
				if i > 0 {
					clock.Advance(30 * day)
					if _, _, err := b.Rotate(ctx, ""); err != nil {
						t.Fatal(err)
					}
				}
				w, err := b.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte{byte(i)}})
				if err != nil {
					t.Fatal(err)
				}
				blobs = append(blobs, w.GetWrappedDek())
			}
			all := versionIDs(t, b)
			clock.Advance(10 * day)
			b.rotateMu.Lock()
			b.applyRetentionLocked(clock.Now())
			b.rotateMu.Unlock()
			var want []string
			for _, i := range tc.wantKept {
				want = append(want, all[i])
			}
			if got := versionIDs(t, b); !slices.Equal(got, want) {
				t.Fatalf("versions kept = %v, want %v (of %v)", got, want, all)
			}
			for i, blob := range blobs {
				_, err := b.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: blob})
				wantCode := codes.NotFound
				if slices.Contains(tc.wantKept, i) {
					wantCode = codes.OK
				}
				if got := status.Code(err); got != wantCode {
					t.Errorf("UnwrapDEK(blob of version %d) code = %v (%v), want %v", i, got, err, wantCode)
				}
			}
		})
	}
}

// TestRotateCMKAndFinalize: a new CMK version wraps every version, ahead of
// the old copies, which stay until FinalizeCMK; the keys never change.
func TestRotateCMKAndFinalize(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock(time.Now().UTC().Truncate(time.Second), "the rotation scheduler")
	fake := newClockedFake(clock)
	b := rotationBroker(t, clock, fake, RotationConfig{})
	keys := map[string][]byte{}
	for i := 0; i < 3; i++ {
		if i > 0 {
			if _, _, err := b.Rotate(ctx, ""); err != nil {
				t.Fatal(err)
			}
		}
		mk, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
		if err != nil {
			t.Fatal(err)
		}
		keys[mk.GetVersion()] = mk.GetKey()
	}
	oldCMK := fake.KeyID()

	if _, err := b.FinalizeCMK(ctx); err != nil {
		t.Fatalf("FinalizeCMK with nothing to drop err = %v, want nil", err)
	}
	newCMK := fake.Rotate()
	// Finalize before the rewrap must refuse and drop nothing.
	if _, err := b.FinalizeCMK(ctx); err == nil || !strings.Contains(err.Error(), "no copy wrapped by "+newCMK) {
		t.Fatalf("FinalizeCMK before the rewrap err = %v, want one naming the missing copy", err)
	}
	rv, err := b.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || !rv.GetOk() {
		t.Fatalf("Revalidate after the CMK rotation = %v, %v; want ok", rv, err)
	}
	k, _ := b.store.Key(DefaultKeyName)
	for _, v := range k.Versions {
		if got := copyIDs(v.Copies); !slices.Equal(got, []string{newCMK, oldCMK}) {
			t.Fatalf("version %s copies after the rewrap = %v, want [new, old] = [%s %s]", v.ID, got, newCMK, oldCMK)
		}
	}
	rep, err := b.RotateCMK(ctx)
	if err != nil || len(rep.Rewrapped) != 0 || rep.Current != 3 {
		t.Fatalf("RotateCMK again = %+v, %v; want nothing to do", rep, err)
	}
	rep, err = b.FinalizeCMK(ctx)
	if err != nil || len(rep.Finalized) != 3 || !slices.Equal(rep.Dropped, []string{oldCMK}) {
		t.Fatalf("FinalizeCMK = %+v, %v; want 3 versions finalized, %s dropped", rep, err, oldCMK)
	}
	b.cache.Purge() // cold: every key comes back through the new copies
	for v, want := range keys {
		mk, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{Version: v})
		if err != nil || !bytes.Equal(mk.GetKey(), want) || mk.GetCmkKeyId() != newCMK {
			t.Fatalf("GetMasterKey(%s) after finalize = (cmk %s, %v), want the same key under %s", v, mk.GetCmkKeyId(), err, newCMK)
		}
	}
}

// TestCMKCopyRetention: the scheduler drops the old copies once the key
// has not changed for cmk_copy_retention after the rewrap.
func TestCMKCopyRetention(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock(time.Now().UTC().Truncate(time.Second), "the rotation scheduler")
	fake := newClockedFake(clock)
	b := rotationBroker(t, clock, fake, RotationConfig{CMKCopyRetention: 30 * day})
	runScheduler(t, b, clock)
	newCMK := fake.Rotate()
	if _, err := b.Revalidate(ctx, &keybrokerv1.RevalidateRequest{}); err != nil {
		t.Fatal(err)
	}
	clock.waitArmed(t) // the kicked pass
	tests := []struct {
		advance time.Duration
		copies  int
	}{
		{29 * day, 2},
		{day, 1},
	}
	for _, tc := range tests {
		clock.Advance(tc.advance)
		clock.waitArmed(t)
		k, _ := b.store.Key(DefaultKeyName)
		cur, _ := k.Current()
		if len(cur.Copies) != tc.copies || cur.Copies[0].KeyID != newCMK {
			t.Fatalf("copies after +%v = %v, want %d led by %s", tc.advance, copyIDs(cur.Copies), tc.copies, newCMK)
		}
	}
}

// TestRewrapDEK: a blob moves to the newest version with the same data key
// and associated data; bad input is refused with the right code.
func TestRewrapDEK(t *testing.T) {
	ctx := context.Background()
	b, fake := newTestBroker(t)
	aad := []byte("db=orders")
	old, err := b.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("data key"), AssociatedData: aad})
	if err != nil {
		t.Fatal(err)
	}
	rot, err := b.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		req      *keybrokerv1.RewrapDEKRequest
		code     codes.Code
		previous string
	}{
		{"old blob", &keybrokerv1.RewrapDEKRequest{WrappedDek: old.GetWrappedDek(), AssociatedData: aad}, codes.OK, old.GetVersion()},
		{"named key", &keybrokerv1.RewrapDEKRequest{KeyName: DefaultKeyName, WrappedDek: old.GetWrappedDek(), AssociatedData: aad}, codes.OK, old.GetVersion()},
		{"wrong aad", &keybrokerv1.RewrapDEKRequest{WrappedDek: old.GetWrappedDek(), AssociatedData: []byte("other")}, codes.InvalidArgument, ""},
		{"garbage", &keybrokerv1.RewrapDEKRequest{WrappedDek: []byte("not a blob")}, codes.InvalidArgument, ""},
		{"wrong key", &keybrokerv1.RewrapDEKRequest{KeyName: "other", WrappedDek: old.GetWrappedDek(), AssociatedData: aad}, codes.InvalidArgument, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := b.RewrapDEK(ctx, tc.req)
			if got := status.Code(err); got != tc.code {
				t.Fatalf("RewrapDEK(%s) code = %v (%v), want %v", tc.name, got, err, tc.code)
			}
			if tc.code != codes.OK {
				return
			}
			if resp.GetVersion() != rot.GetVersion() || resp.GetPreviousVersion() != tc.previous {
				t.Fatalf("RewrapDEK(%s) = version %s from %s, want %s from %s", tc.name, resp.GetVersion(), resp.GetPreviousVersion(), rot.GetVersion(), tc.previous)
			}
			u, err := b.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: resp.GetWrappedDek(), AssociatedData: aad})
			if err != nil || string(u.GetDek()) != "data key" || u.GetRewrapRecommended() {
				t.Fatalf("UnwrapDEK(rewrapped) = (%v, rewrap %v), want the data key, no rewrap due", err, u.GetRewrapRecommended())
			}
		})
	}
	fake.Disable()
	if _, err := b.Check(ctx); err == nil {
		t.Fatal("Check with the key disabled err = nil")
	}
	_, err = b.RewrapDEK(ctx, &keybrokerv1.RewrapDEKRequest{WrappedDek: old.GetWrappedDek(), AssociatedData: aad})
	if got := status.Code(err); got != codes.FailedPrecondition {
		t.Fatalf("RewrapDEK while PAUSED code = %v, want FailedPrecondition", got)
	}
}

// TestRotationsWhileReading: rotations and CMK rewraps run one at a time
// while reads go on; run with -race.
func TestRotationsWhileReading(t *testing.T) {
	ctx := context.Background()
	b, fake := newTestBroker(t)
	w, err := b.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("k")})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	errs := make(chan error, 16)
	for r := 0; r < 4; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				switch i % 3 {
				case 0:
					_, err = b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
				case 1:
					_, err = b.UnwrapDEK(ctx, &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek()})
				case 2:
					_, err = b.RewrapDEK(ctx, &keybrokerv1.RewrapDEKRequest{WrappedDek: w.GetWrappedDek()})
				}
				if err != nil {
					errs <- fmt.Errorf("read %d: %w", i, err)
					return
				}
			}
		}()
	}
	var writers sync.WaitGroup
	for g := 0; g < 3; g++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := 0; i < 5; i++ {
				var err error
				switch g {
				case 0:
					_, _, err = b.Rotate(ctx, "")
				case 1:
					fake.Rotate()
					_, err = b.RotateCMK(ctx)
				case 2:
					_, err = b.FinalizeCMK(ctx)
					if err != nil && status.Code(b.toStatus(ctx, "test", err)) == codes.FailedPrecondition {
						err = nil // a CMK version not yet rewrapped: refused, nothing dropped
					}
				}
				if err != nil {
					errs <- fmt.Errorf("writer %d round %d: %w", g, i, err)
					return
				}
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if _, err := b.RotateCMK(ctx); err != nil {
		t.Fatal(err)
	}
	k, _ := b.store.Key(DefaultKeyName)
	if len(k.Versions) != 6 {
		t.Fatalf("versions = %d, want 6 (1 + 5 rotations)", len(k.Versions))
	}
	for _, v := range k.Versions {
		if v.Copies[0].KeyID != fake.KeyID() {
			t.Fatalf("version %s is led by %s, want the newest CMK %s", v.ID, v.Copies[0].KeyID, fake.KeyID())
		}
	}
}
