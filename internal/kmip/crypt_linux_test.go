package kmip

import (
	"os"
	"testing"

	"github.com/ovh/kmip-go/payloads"

	"github.com/keybroker/keybroker/internal/memscan"
)

// TestCryptLeavesNoSchedule: Encrypt and Decrypt, many times in every
// mode, leave no AES key schedule behind in this process's memory (an
// AES-256 schedule holds the key's second half right after the first).
func TestCryptLeavesNoSchedule(t *testing.T) {
	key := seq(32, 77)
	count := func() int {
		t.Helper()
		res, err := memscan.Scan(os.Getpid(), []memscan.Needle{{Name: "key[16:]", Bytes: key[16:]}})
		if err != nil {
			t.Fatalf("memscan.Scan(self) err = %v", err)
		}
		return res.Total()
	}
	before := count()
	modes := []mode{{gcm: true, tagLen: 16}, {gcm: true, tagLen: 12}, {pad: true}}
	for range 50 {
		for _, m := range modes {
			iv := seq(12, 1)
			if !m.gcm {
				iv = seq(16, 1)
			}
			ct, tag, err := sealData(key, m, iv, &payloads.EncryptRequestPayload{Data: seq(40, 1)}, true)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := openData(key, m, iv, &payloads.DecryptRequestPayload{Data: ct, AuthenticatedEncryptionTag: tag}, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Each call builds two schedules, so a leak shows hundreds of copies
	// (823 when the wipe was broken); the scanner reads this process
	// through a buffer of its own, which may hold a copy or two.
	if after := count(); after > before+2 {
		t.Errorf("after 300 Encrypt and Decrypt calls the key's second half is in memory %d times, %d before: key schedules left behind", after, before)
	}
}
