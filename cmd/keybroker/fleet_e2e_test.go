package main

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/akvemu"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// TestStartThrottled: serve starting while Key Vault throttles its unwraps
// listens anyway, DEGRADED; an engine asking for its key gets UNAVAILABLE
// saying the broker retries by itself; the start-up retry loads the key
// once the vault admits it, and the broker serves.
func TestStartThrottled(t *testing.T) {
	h := newHarness(t, "")
	ctx := ctxT(t, 2*time.Minute)
	// Two 429s: the first attempt and its one SDK retry (max_retries: 1).
	if err := h.emu.Control().InjectFault(ctx, akvemu.Fault{Op: akvemu.OpUnwrapKey, Status: 429, RetryAfter: 1, Count: 2}); err != nil {
		t.Fatal(err)
	}
	h.start()
	st, err := h.engine().GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
	if err != nil || st.GetState() != keybrokerv1.State_STATE_DEGRADED {
		t.Fatalf("GetStatus after a throttled start = %v (%v), want DEGRADED", st.GetState(), err)
	}
	_, err = h.engine().GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
	if s, _ := status.FromError(err); s.Code() != codes.Unavailable || !strings.Contains(s.Message(), "retries by itself") {
		t.Fatalf("GetMasterKey while starting = %v, want UNAVAILABLE saying the broker retries by itself", err)
	}
	// The retry comes after Retry-After + 1 s + up to 10 s of jitter.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err = h.engine().GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
		if err == nil && st.GetState() == keybrokerv1.State_STATE_SERVING {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("state %v (%v) 30s after a throttled start, want SERVING once the vault admits the unwrap", st.GetState(), err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := h.engine().GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{}); err != nil {
		t.Fatalf("GetMasterKey after the start-up retry err = %v, want nil", err)
	}
	counters, err := h.emu.Control().Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := counters[akvemu.DefaultVaultHost][akvemu.OpUnwrapKey]; got > 4 {
		t.Errorf("%d unwraps in all, want at most 4 (init's proof, two throttled, the retry)", got)
	}
}
