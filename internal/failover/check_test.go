package failover

import (
	"errors"
	"testing"

	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/kek/kektest"
)

// TestCheckRegionsCalls counts the Key Vault calls of a check per region:
// CheckRegions asks for the key's info and unwraps; CheckRegionsUnwrap only
// unwraps, and still sees a disabled key as revocation evidence.
func TestCheckRegionsCalls(t *testing.T) {
	type report struct {
		region string
		kind   kek.Kind
		code   string
		keyID  string
	}
	run := func(e *env, unwrapOnly bool, sets [][]kek.Wrapped) []report {
		var out []report
		f := func(region string, info kek.KeyInfo, err error) {
			r := report{region: region, kind: kek.KindOf(err), keyID: info.KeyID}
			var ke *kek.Error
			if errors.As(err, &ke) {
				r.code = ke.Code
			}
			out = append(out, r)
		}
		if unwrapOnly {
			e.w.CheckRegionsUnwrap(t.Context(), sets, f)
		} else {
			e.w.CheckRegions(t.Context(), sets, f)
		}
		return out
	}
	tests := []struct {
		name                  string
		unwrapOnly, disableA  bool
		wantGets, wantUnwraps int // per region
		wantKindA             kek.Kind
		wantInfo              bool
	}{
		{"full check", false, false, 1, 1, kek.KindUnknown, true},
		{"unwrap only", true, false, 0, 1, kek.KindUnknown, false},
		{"unwrap only, key disabled in a", true, true, 0, 1, kek.KindRevoked, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, false, nil)
			copies, err := e.w.WrapKey(t.Context(), e.key)
			if err != nil {
				t.Fatalf("WrapKey err = %v, want nil", err)
			}
			if tc.disableA {
				e.a.Disable()
			}
			fakes := []*kektest.Fake{e.a, e.b}
			gets, unwraps := make([]int, 2), make([]int, 2)
			for i, f := range fakes {
				gets[i], unwraps[i] = f.Calls(kektest.OpKeyInfo), f.Calls(kektest.OpUnwrap)
			}
			got := run(e, tc.unwrapOnly, [][]kek.Wrapped{copies})
			if len(got) != 2 || got[0].region != "a" || got[1].region != "b" {
				t.Fatalf("reports = %+v, want regions a then b", got)
			}
			for i, f := range fakes {
				if g, u := f.Calls(kektest.OpKeyInfo)-gets[i], f.Calls(kektest.OpUnwrap)-unwraps[i]; g != tc.wantGets || u != tc.wantUnwraps {
					t.Errorf("region %s: %d key-info calls and %d unwraps, want %d and %d", f.Region(), g, u, tc.wantGets, tc.wantUnwraps)
				}
			}
			if got[0].kind != tc.wantKindA || got[1].kind != kek.KindUnknown {
				t.Errorf("reported kinds a=%v b=%v, want a=%v b=none", got[0].kind, got[1].kind, tc.wantKindA)
			}
			if tc.disableA && got[0].code != "KeyDisabled" {
				t.Errorf("region a code = %q, want KeyDisabled", got[0].code)
			}
			if (got[1].keyID != "") != tc.wantInfo {
				t.Errorf("region b reported key id %q, want info=%v", got[1].keyID, tc.wantInfo)
			}
		})
	}
}
