package akvemu

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

func TestThrottleWeights(t *testing.T) {
	tests := []struct {
		name   string
		hsm    bool
		size   int
		create bool
		want   int64 // calls admitted in one window at scale 1
	}{
		{"RSA 2048 software", false, 2048, false, 4000},
		{"RSA 3072 software", false, 3072, false, 1000},
		{"RSA 4096 software", false, 4096, false, 500},
		{"RSA 2048 HSM", true, 2048, false, 2000},
		{"RSA 3072 HSM", true, 3072, false, 500},
		{"RSA 4096 HSM", true, 4096, false, 250},
		{"no key (list)", false, 0, false, 4000},
		{"create software", false, 3072, true, 10},
		{"create HSM", true, 3072, true, 5},
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			th := newThrottler(Throttle{Enabled: true})
			w := weight(tc.hsm, tc.size, tc.create)
			var got int64
			for i := range 5000 {
				now := start.Add(time.Duration(i) * time.Millisecond) // all within one window
				if ok, _ := th.admit("v", now, w, tc.create); ok {
					got++
				}
			}
			if got != tc.want {
				t.Errorf("admitted %d calls in one window, want %d", got, tc.want)
			}
		})
	}
}

func TestThrottleWindows(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	th := newThrottler(Throttle{Enabled: true, Scale: 0.01}) // 40 units: 5 RSA-3072-HSM calls
	w := weight(true, 3072, false)
	for i := range 5 {
		if ok, _ := th.admit("a", start.Add(time.Duration(i)*time.Second), w, false); !ok {
			t.Fatalf("call %d throttled, want admitted (limit 5)", i)
		}
	}
	ok, ra := th.admit("a", start.Add(7*time.Second), w, false)
	if ok || ra != 3*time.Second {
		t.Fatalf("6th call: admitted=%v retryAfter=%v, want throttled, 3s (the window's end)", ok, ra)
	}
	if ok, _ := th.admit("b", start.Add(7*time.Second), w, false); !ok {
		t.Errorf("another vault's call throttled, want admitted: limits are per vault")
	}
	if ok, _ := th.admit("a", start.Add(10*time.Second), w, false); !ok {
		t.Errorf("first call of the next window throttled, want admitted")
	}
	// Creates are counted apart: the window's other calls are used up.
	for i := range 4 {
		th.admit("a", start.Add(11*time.Second), w, false)
		_ = i
	}
	if ok, _ := th.admit("a", start.Add(12*time.Second), weight(false, 2048, true), true); !ok {
		t.Errorf("create throttled by the other calls' budget, want counted apart")
	}
	got := th.snapshot()
	want := []ThrottleCounts{
		{Vault: "a", Start: start, Admitted: 5, Throttled: 1, Units: 40, Limit: 40},
		{Vault: "a", Start: start.Add(10 * time.Second), Admitted: 5, Throttled: 0, Units: 40, Limit: 40, CreatesAdmitted: 1},
		{Vault: "b", Start: start, Admitted: 1, Units: 8, Limit: 40},
	}
	if len(got) != len(want) {
		t.Fatalf("snapshot() = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("snapshot()[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
	th.set(Throttle{})
	if ok, _ := th.admit("a", start.Add(13*time.Second), w, false); !ok {
		t.Errorf("call throttled with throttling off, want admitted")
	}
}

func TestValidThrottle(t *testing.T) {
	for _, tc := range []struct {
		scale float64
		ok    bool
	}{{0, true}, {1, true}, {0.001, true}, {-1, false}, {2e6, false}} {
		if err := validThrottle(Throttle{Enabled: true, Scale: tc.scale}); (err == nil) != tc.ok {
			t.Errorf("validThrottle(scale %v) err = %v, want ok=%v", tc.scale, err, tc.ok)
		}
	}
}

// TestSDKThrottled drives the model through the real azkeys client: an RSA
// 3072 HSM key at 1% of Azure's limit admits 5 unwraps per window, the 6th
// gets 429 with Retry-After and Azure's body, the next window admits again.
func TestSDKThrottled(t *testing.T) {
	cfg := testConfig()
	cfg.Keys = append(cfg.Keys, KeySpec{Vault: testVault, Name: "hsm", Size: 3072, HSM: true})
	e := startEnv(t, cfg)
	ctx := ctxT(t)
	kc := e.keys(t, e.secretCred(t, 0), testVault, -1) // no SDK retries: see every 429
	wrapped, err := kc.WrapKey(ctx, "hsm", "", azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: make([]byte, 32)}, nil)
	must(t, err)
	// Align the clock to a window's start, then turn throttling on.
	now := e.clock.Now()
	e.clock.Advance(now.Truncate(ThrottleWindow).Add(ThrottleWindow).Sub(now))
	must(t, e.srv.Control().SetThrottle(ctx, Throttle{Enabled: true, Scale: 0.01}))

	unwrap := func() error {
		_, err := kc.UnwrapKey(ctx, "hsm", wrapped.KID.Version(), azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: wrapped.Result}, nil)
		return err
	}
	for i := range 5 {
		if err := unwrap(); err != nil {
			t.Fatalf("unwrap %d err = %v, want nil (limit 5 per window)", i, err)
		}
	}
	e.clock.Advance(4 * time.Second)
	err = unwrap()
	if err == nil {
		t.Fatalf("6th unwrap err = nil, want 429")
	}
	if status, code, _ := responseError(t, err); status != http.StatusTooManyRequests || code != "Throttled" {
		t.Errorf("6th unwrap = %d %s, want 429 Throttled", status, code)
	}
	if ra := retryAfter(err); ra != "6" {
		t.Errorf("Retry-After = %q, want 6 (seconds left in the window)", ra)
	}
	e.clock.Advance(6 * time.Second)
	if err := unwrap(); err != nil {
		t.Errorf("unwrap in the next window err = %v, want nil", err)
	}
	th, windows, err := e.srv.Control().Throttle(ctx)
	must(t, err)
	if !th.Enabled || len(windows) != 2 || windows[0].Admitted != 5 || windows[0].Throttled != 1 || windows[1].Admitted != 1 || windows[0].Limit != 40 {
		t.Errorf("Throttle() = %+v, %+v, want enabled, windows admitted 5 (throttled 1) then 1, limit 40", th, windows)
	}
	must(t, e.srv.Control().ResetThrottleCounters(ctx))
	if _, windows, _ := e.srv.Control().Throttle(ctx); len(windows) != 0 {
		t.Errorf("windows after reset = %+v, want none", windows)
	}
}

// FuzzThrottleRequest: the control API's POST /throttle body either is
// refused with ErrBadRequest or gives a setting the throttler can apply.
func FuzzThrottleRequest(f *testing.F) {
	for _, s := range []string{`{"enabled":true,"scale":1}`, `{"enabled":false}`, `{"scale":-1}`, `{"scale":1e400}`, `{"enabled":"yes"}`, `{}`, ``, `{"scale":0.001} x`} {
		f.Add(s)
	}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, body string) {
		r := httptest.NewRequest(http.MethodPost, "/throttle", strings.NewReader(body))
		var th Throttle
		err := decodeControl(r, &th)
		if err == nil {
			err = validThrottle(th)
		}
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("body %q: err = %v, want ErrBadRequest", body, err)
			}
			return
		}
		tr := newThrottler(th)
		if ok, ra := tr.admit("v", start, weight(true, 4096, false), false); !ok && (ra <= 0 || ra > ThrottleWindow) {
			t.Fatalf("body %q: first call throttled with Retry-After %v", body, ra)
		}
	})
}
