package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/envelope"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
	"github.com/keybroker/keybroker/internal/keystore"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// newTestBroker makes a broker over a fresh keystore and a fake vault.
func newTestBroker(t *testing.T) (*Broker, *kektest.Fake) {
	t.Helper()
	ctx := context.Background()
	fake := kektest.NewFake("east", "cmk")
	store, err := keystore.Create(filepath.Join(t.TempDir(), "keystore"), keystore.Options{})
	if err != nil {
		t.Fatalf("keystore.Create err = %v", err)
	}
	t.Cleanup(func() { store.Close() })
	v, err := NewVersion(ctx, fake)
	if err != nil {
		t.Fatalf("NewVersion err = %v, want nil", err)
	}
	if _, err := store.CreateKey(DefaultKeyName, keystore.StateActive, v); err != nil {
		t.Fatalf("CreateKey err = %v", err)
	}
	b, err := New(Config{Store: store, Wrapper: fake})
	if err != nil {
		t.Fatalf("New err = %v, want nil", err)
	}
	t.Cleanup(b.Close)
	if err := b.Warm(ctx); err != nil {
		t.Fatalf("Warm err = %v, want nil", err)
	}
	return b, fake
}

func TestPauseWipesAndResumeReloads(t *testing.T) {
	b, fake := newTestBroker(t)
	ctx := context.Background()
	k, _ := b.store.Key(DefaultKeyName)
	v, _ := k.Current()
	held, err := b.cache.Get(ctx, v.ID)
	if err != nil {
		t.Fatalf("cache.Get err = %v", err)
	}
	w := b.hub.subscribe()
	defer b.hub.unsubscribe(w)
	if ev := <-w.ch; ev.Kind != EventCurrent || ev.State != StateServing {
		t.Fatalf("first watch event = %+v, want CURRENT SERVING", ev)
	}

	fake.Disable()
	ev, err := b.Check(ctx)
	if err == nil || ev.State != StatePaused {
		t.Fatalf("Check with the key disabled = %v, %v; want PAUSED and an error", ev.State, err)
	}
	if got := <-w.ch; got.Kind != EventPause {
		t.Fatalf("watch event after revocation = %+v, want PAUSE", got)
	}
	for i, c := range held.Raw() {
		if c != 0 {
			t.Fatalf("key byte %d = %#x after pause, want wiped", i, c)
		}
	}
	if n := b.cache.Len(); n != 0 {
		t.Fatalf("cache holds %d keys while PAUSED, want 0", n)
	}
	_, err = b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("GetMasterKey while PAUSED code = %v, want FailedPrecondition", status.Code(err))
	}
	// An outage while paused never resumes.
	fake.Enable()
	fake.FailNext(kektest.OpKeyInfo, 1, &kek.Error{Kind: kek.KindUnavailable, Op: "get"})
	if ev, _ := b.Check(ctx); ev.State != StatePaused {
		t.Fatalf("Check with an outage while PAUSED = %v, want PAUSED", ev.State)
	}
	ev, err = b.Check(ctx)
	if err != nil || ev.State != StateServing {
		t.Fatalf("Check after re-enabling = %v, %v; want SERVING, nil", ev.State, err)
	}
	if got := <-w.ch; got.Kind != EventResumed {
		t.Fatalf("watch event after resume = %+v, want RESUMED", got)
	}
	if _, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); err != nil {
		t.Fatalf("GetMasterKey after resume err = %v, want nil", err)
	}
}

func TestOutageDegradesNeverPauses(t *testing.T) {
	b, fake := newTestBroker(t)
	ctx := context.Background()
	outage := &kek.Error{Kind: kek.KindUnavailable, Op: "unwrap", Status: 503}
	for i := 0; i < 20; i++ {
		fake.FailNext(kektest.OpUnwrap, 1, outage)
		ev, err := b.Check(ctx)
		if err == nil || ev.State != StateDegraded {
			t.Fatalf("Check %d with a 503 = %v, %v; want DEGRADED and an error", i, ev.State, err)
		}
		if _, err := b.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); err != nil {
			t.Fatalf("GetMasterKey while DEGRADED err = %v, want the key from memory", err)
		}
	}
	if ev, err := b.Check(ctx); err != nil || ev.State != StateServing {
		t.Fatalf("Check after the outage = %v, %v; want SERVING", ev.State, err)
	}
}

func TestSlowWatcherGetsLatestState(t *testing.T) {
	h := newStateHub(time.Unix(0, 0))
	w := h.subscribe()
	for i := 0; i < 100; i++ { // never read: must not block
		h.set(StateDegraded, fmt.Sprint("outage ", i), time.Unix(int64(i), 0))
		h.set(StateServing, "back", time.Unix(int64(i), 1))
	}
	h.set(StatePaused, "revoked", time.Unix(200, 0))
	if ev := <-w.ch; ev.Kind != EventPause || ev.Reason != "revoked" {
		t.Fatalf("slow watcher read %+v, want only the latest PAUSE", ev)
	}
	select {
	case ev := <-w.ch:
		t.Fatalf("slow watcher has a backlog: %+v", ev)
	default:
	}
}

func TestUnwrapDEKErrors(t *testing.T) {
	b, _ := newTestBroker(t)
	ctx := context.Background()
	w, err := b.WrapDEK(ctx, &keybrokerv1.WrapDEKRequest{Dek: []byte("data key"), AssociatedData: []byte("ad")})
	if err != nil {
		t.Fatalf("WrapDEK err = %v", err)
	}
	k, _ := b.store.Key(DefaultKeyName)
	foreign, err := envelope.Seal(bytes.Repeat([]byte{1}, 32), envelope.Header{KeyID: "0123456789abcdef0123456789abcdef", VersionID: "v"}, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	unknownVersion, err := envelope.Seal(bytes.Repeat([]byte{1}, 32), envelope.Header{KeyID: k.ID, VersionID: "0123456789abcdef0123456789abcdef"}, []byte("x"), nil)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Clone(w.GetWrappedDek())
	tampered[len(tampered)-1] ^= 1
	tests := []struct {
		name string
		req  *keybrokerv1.UnwrapDEKRequest
		want codes.Code
	}{
		{"empty", &keybrokerv1.UnwrapDEKRequest{}, codes.InvalidArgument},
		{"truncated", &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek()[:10]}, codes.InvalidArgument},
		{"tampered", &keybrokerv1.UnwrapDEKRequest{WrappedDek: tampered, AssociatedData: []byte("ad")}, codes.InvalidArgument},
		{"wrong aad", &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek(), AssociatedData: []byte("other")}, codes.InvalidArgument},
		{"foreign keystore", &keybrokerv1.UnwrapDEKRequest{WrappedDek: foreign}, codes.InvalidArgument},
		{"unknown version", &keybrokerv1.UnwrapDEKRequest{WrappedDek: unknownVersion}, codes.NotFound},
		{"wrong key name", &keybrokerv1.UnwrapDEKRequest{KeyName: "other", WrappedDek: w.GetWrappedDek(), AssociatedData: []byte("ad")}, codes.InvalidArgument},
		{"oversize aad", &keybrokerv1.UnwrapDEKRequest{WrappedDek: w.GetWrappedDek(), AssociatedData: make([]byte, envelope.MaxAADSize+1)}, codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := b.UnwrapDEK(ctx, tc.req)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("UnwrapDEK(%s) code = %v (%v), want %v", tc.name, got, err, tc.want)
			}
		})
	}
}

func TestCodeOf(t *testing.T) {
	tests := []struct {
		err  error
		want codes.Code
	}{
		{invalidf("x"), codes.InvalidArgument},
		{fmt.Errorf("%w: v", errNotFound), codes.NotFound},
		{errPaused{reason: "r"}, codes.FailedPrecondition},
		{fmt.Errorf("%w: k", errKeyState), codes.FailedPrecondition},
		{&kek.Error{Kind: kek.KindRevoked}, codes.FailedPrecondition},
		{&kek.Error{Kind: kek.KindNotFound}, codes.FailedPrecondition},
		{&kek.Error{Kind: kek.KindThrottled}, codes.ResourceExhausted},
		{&kek.Error{Kind: kek.KindUnavailable}, codes.Unavailable},
		{fmt.Errorf("load: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
		{envelope.ErrAuthentication, codes.InvalidArgument},
		{keystore.ErrKeyNotFound, codes.NotFound},
		{errors.New("a bug"), codes.Internal},
	}
	for _, tc := range tests {
		if got := codeOf(tc.err); got != tc.want {
			t.Errorf("codeOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
