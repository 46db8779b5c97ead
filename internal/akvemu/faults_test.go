package akvemu

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
)

func wrapParams() azkeys.KeyOperationParameters {
	return azkeys.KeyOperationParameters{Algorithm: to.Ptr(azkeys.EncryptionAlgorithmRSAOAEP256), Value: []byte("dek")}
}

func TestFaults(t *testing.T) {
	e := startEnv(t, testConfig())
	ctl := e.srv.Control()
	ctx := ctxT(t)
	kc := e.keys(t, e.secretCred(t, -1), testVault, -1)
	if _, err := kc.GetKey(ctx, "cmk", "", nil); err != nil { // token and challenge out of the way
		t.Fatalf("GetKey(cmk) err = %v, want nil", err)
	}

	t.Run("latency", func(t *testing.T) {
		must(t, ctl.InjectFault(ctx, Fault{Host: testVault, Op: OpWrapKey, Latency: 5 * time.Second, Count: 1}))
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := kc.WrapKey(short, "cmk", "", wrapParams(), nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("WrapKey(5s latency, 200ms timeout) err = %v, want context.DeadlineExceeded", err)
		}
		must(t, ctl.InjectFault(ctx, Fault{Host: testVault, Op: OpWrapKey, Latency: 100 * time.Millisecond, Count: 1}))
		start := time.Now()
		if _, err := kc.WrapKey(ctx, "cmk", "", wrapParams(), nil); err != nil {
			t.Errorf("WrapKey(100ms latency) err = %v, want nil", err)
		}
		if d := time.Since(start); d < 100*time.Millisecond {
			t.Errorf("WrapKey(100ms latency) took %v, want at least 100ms", d)
		}
	})

	t.Run("status with Retry-After, counted", func(t *testing.T) {
		must(t, ctl.InjectFault(ctx, Fault{Host: testVault, Op: OpUnwrapKey, Status: 503, RetryAfter: 2, Count: 2}))
		for i := range 2 {
			_, err := kc.UnwrapKey(ctx, "cmk", "", wrapParams(), nil)
			if err == nil {
				t.Fatalf("UnwrapKey #%d err = nil, want 503", i)
			}
			if status, code, _ := responseError(t, err); status != 503 || code != "ServiceUnavailable" || retryAfter(err) != "2" {
				t.Errorf("UnwrapKey #%d = %d %s Retry-After %q, want 503 ServiceUnavailable 2", i, status, code, retryAfter(err))
			}
		}
		// The fault is used up: the next call reaches the vault (and fails
		// on the bogus ciphertext with a 400, not a 503).
		_, err := kc.UnwrapKey(ctx, "cmk", "", wrapParams(), nil)
		if status, _, _ := responseError(t, err); status != 400 {
			t.Errorf("UnwrapKey after the counted fault = %d, want 400 from the vault itself", status)
		}
	})

	t.Run("forbidden with code", func(t *testing.T) {
		must(t, ctl.InjectFault(ctx, Fault{Op: OpGet, Status: 403, Code: "ForbiddenByPolicy", Count: 1}))
		_, err := kc.GetKey(ctx, "cmk", "", nil)
		if status, code, inner := responseError(t, err); status != 403 || code != "Forbidden" || inner != "ForbiddenByPolicy" {
			t.Errorf("GetKey = %d %s/%s, want 403 Forbidden/ForbiddenByPolicy", status, code, inner)
		}
	})

	t.Run("reset", func(t *testing.T) {
		must(t, ctl.InjectFault(ctx, Fault{Host: testVault, Op: OpWrapKey, Reset: true, Count: 1}))
		_, err := kc.WrapKey(ctx, "cmk", "", wrapParams(), nil)
		var re *azcore.ResponseError
		if err == nil || errors.As(err, &re) {
			t.Fatalf("WrapKey(reset) err = %v, want a transport error", err)
		}
		if _, err := kc.WrapKey(ctx, "cmk", "", wrapParams(), nil); err != nil {
			t.Errorf("WrapKey after the reset err = %v, want nil", err)
		}
	})

	t.Run("reset is retried by the SDK", func(t *testing.T) {
		retrying := e.keys(t, e.secretCred(t, 0), testVault, 3)
		must(t, ctl.InjectFault(ctx, Fault{Host: testVault, Op: OpWrapKey, Reset: true, Count: 2}))
		if _, err := retrying.WrapKey(ctx, "cmk", "", wrapParams(), nil); err != nil {
			t.Errorf("WrapKey with retries through two resets err = %v, want nil", err)
		}
	})

	t.Run("blackhole until the client gives up", func(t *testing.T) {
		must(t, ctl.InjectFault(ctx, Fault{Host: testVault, Op: OpWrapKey, Blackhole: true}))
		defer func() { must(t, ctl.ClearFaults(ctx)) }()
		short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := kc.WrapKey(short, "cmk", "", wrapParams(), nil); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("WrapKey(blackhole) err = %v, want context.DeadlineExceeded", err)
		}
	})

	t.Run("blackhole released by ClearFaults", func(t *testing.T) {
		held := make(chan struct{}, 1)
		hook := func() { held <- struct{}{} }
		e.srv.onHold.Store(&hook)
		defer e.srv.onHold.Store(nil)
		must(t, ctl.InjectFault(ctx, Fault{Host: testVault, Op: OpWrapKey, Blackhole: true}))
		done := make(chan error, 1)
		go func() {
			_, err := kc.WrapKey(ctx, "cmk", "", wrapParams(), nil)
			done <- err
		}()
		select {
		case <-held:
		case <-ctx.Done():
			t.Fatal("request never reached the black hole")
		}
		must(t, ctl.ClearFaults(ctx))
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("WrapKey released by ClearFaults err = %v, want nil", err)
			}
		case <-ctx.Done():
			t.Fatal("ClearFaults did not release the held request")
		}
	})

	t.Run("per host: the alias fails, the vault host does not", func(t *testing.T) {
		alias := e.keys(t, e.secretCred(t, -1), testAlias, -1)
		must(t, ctl.InjectFault(ctx, Fault{Host: testAlias, Status: 500}))
		defer func() { must(t, ctl.ClearFaults(ctx)) }()
		_, err := alias.GetKey(ctx, "cmk", "", nil)
		if status, code, _ := responseError(t, err); status != 500 || code != "InternalServerError" {
			t.Errorf("GetKey via alias = %d %s, want 500 InternalServerError", status, code)
		}
		if _, err := kc.GetKey(ctx, "cmk", "", nil); err != nil {
			t.Errorf("GetKey via the vault host err = %v, want nil", err)
		}
	})

	t.Run("login faults", func(t *testing.T) {
		must(t, ctl.InjectFault(ctx, Fault{Host: HostLogin, Op: OpToken, Status: 503, Count: 1}))
		_, err := e.secretCred(t, -1).GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{VaultResource + "/.default"}})
		if err == nil {
			t.Fatal("GetToken(503 fault) err = nil, want an error")
		}
		if status, oauth, _, _ := entraError(t, err); status != 503 || oauth != "temporarily_unavailable" {
			t.Errorf("GetToken(503 fault) = %d %s, want 503 temporarily_unavailable", status, oauth)
		}
	})
}

// TestCloseReleasesHeldRequests checks that Close does not hang on a
// black-holed request.
func TestCloseReleasesHeldRequests(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	kc := e.keys(t, e.secretCred(t, -1), testVault, -1)
	if _, err := kc.GetKey(ctx, "cmk", "", nil); err != nil {
		t.Fatal(err)
	}
	held := make(chan struct{}, 1)
	hook := func() { held <- struct{}{} }
	e.srv.onHold.Store(&hook)
	must(t, e.srv.Control().InjectFault(ctx, Fault{Blackhole: true}))
	done := make(chan error, 1)
	go func() {
		_, err := kc.WrapKey(ctx, "cmk", "", wrapParams(), nil)
		done <- err
	}()
	select {
	case <-held:
	case <-ctx.Done():
		t.Fatal("request never reached the black hole")
	}
	closed := make(chan error, 1)
	go func() { closed <- e.srv.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close() err = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close() hangs on a black-holed request")
	}
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("held WrapKey err = nil, want a transport error after Close")
		}
	case <-ctx.Done():
		t.Fatal("held request not released by Close")
	}
}

func TestFaultValidation(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	tests := []struct {
		name string
		f    Fault
		ok   bool
	}{
		{"latency only", Fault{Latency: time.Millisecond}, true},
		{"status on alias", Fault{Host: testAlias, Status: 429, RetryAfter: 1}, true},
		{"login op token", Fault{Host: HostLogin, Op: OpToken, Reset: true}, true},
		{"does nothing", Fault{Host: testVault}, false},
		{"unknown host", Fault{Host: "elsewhere.example", Status: 500}, false},
		{"unknown op", Fault{Op: "sign", Status: 500}, false},
		{"status 200", Fault{Status: 200}, false},
		{"two kinds", Fault{Status: 500, Reset: true}, false},
		{"code without status", Fault{Code: "KeyDisabled", Latency: time.Second}, false},
		{"bad code", Fault{Status: 403, Code: "Key Disabled!"}, false},
		{"negative count", Fault{Status: 500, Count: -1}, false},
		{"negative latency", Fault{Latency: -time.Second, Status: 500}, false},
		{"huge latency", Fault{Latency: time.Hour}, false},
		{"huge retry-after", Fault{Status: 429, RetryAfter: 100000}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := e.srv.Control().InjectFault(ctx, tc.f)
			if tc.ok && err != nil {
				t.Errorf("InjectFault(%+v) err = %v, want nil", tc.f, err)
			}
			if !tc.ok && !errors.Is(err, ErrBadRequest) {
				t.Errorf("InjectFault(%+v) err = %v, want ErrBadRequest", tc.f, err)
			}
		})
	}
	faults, err := e.srv.Control().Faults(ctx)
	if err != nil || len(faults) != 3 {
		t.Errorf("Faults() = %v, %v, want the 3 valid faults", faults, err)
	}
	must(t, e.srv.Control().ClearFaults(ctx))
	if faults, err := e.srv.Control().Faults(ctx); err != nil || len(faults) != 0 {
		t.Errorf("Faults() after ClearFaults = %v, %v, want none", faults, err)
	}
}

func TestCounters(t *testing.T) {
	e := startEnv(t, testConfig())
	ctx := ctxT(t)
	ctl := e.srv.Control()
	cred := e.secretCred(t, -1)
	kc, alias := e.keys(t, cred, testVault, -1), e.keys(t, cred, testAlias, -1)
	must(t, ctl.InjectFault(ctx, Fault{Host: testAlias, Op: OpWrapKey, Status: 500, Count: 1}))
	_, _ = kc.GetKey(ctx, "cmk", "", nil)
	_, _ = alias.GetKey(ctx, "cmk", "", nil)
	_, _ = alias.WrapKey(ctx, "cmk", "", wrapParams(), nil) // faulted, still counted
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+testVault+"/nowhere?api-version=7.4", nil)
	if resp, err := e.hc.Do(req); err == nil {
		resp.Body.Close()
	}
	got, err := ctl.Counters(ctx)
	must(t, err)
	want := map[string]map[string]int64{
		HostLogin: {OpToken: 1, OpDiscovery: 1},
		testVault: {OpGet: 2, OpOther: 1},
		testAlias: {OpGet: 2, OpWrapKey: 1},
	}
	for h, ops := range want {
		for op, n := range ops {
			if got[h][op] != n {
				t.Errorf("Counters()[%s][%s] = %d, want %d (all: %v)", h, op, got[h][op], n, got)
			}
		}
	}
	must(t, ctl.ResetCounters(ctx))
	if got, err := ctl.Counters(ctx); err != nil || len(got) != 0 {
		t.Errorf("Counters() after ResetCounters = %v, %v, want empty", got, err)
	}
}
