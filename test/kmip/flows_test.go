package kmip_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/hex"
	"slices"
	"testing"
)

func engineEndpoint(d *devBroker) endpoint {
	return endpoint{addr: d.info.KMIPAddress, ca: d.info.KMIPCA, pem: d.info.KMIPEnginePEM}
}

// TestMongodFlow is mongod Enterprise creating its key: Create, Get,
// Activate, Get Attributes(State) on one connection, then the State poll on
// a fresh one; and restarting with kmipKeyIdentifier: Get, then State.
func TestMongodFlow(t *testing.T) {
	t.Parallel()
	d := sharedDev(t)
	ep := engineEndpoint(d)
	for _, version := range []string{"1.2", "1.0"} {
		t.Run("KMIP "+version, func(t *testing.T) {
			var r struct {
				Create   outcome     `json:"create"`
				UID      string      `json:"uid"`
				Get      keyReport   `json:"get"`
				Activate outcome     `json:"activate"`
				State    stateReport `json:"state"`
				Poll     stateReport `json:"poll"`
			}
			flow(t, ep, &r, "mongod", "--version", version)
			r.Create.wantSuccess(t, "CREATE")
			if r.UID == "" {
				t.Fatal("Create answered no Unique Identifier")
			}
			r.Get.wantAES256(t, r.UID)
			r.Activate.wantSuccess(t, "ACTIVATE")
			r.State.wantState(t, "ACTIVE")
			r.Poll.wantState(t, "ACTIVE")

			// A restart with kmipKeyIdentifier reads the same bytes.
			var again struct {
				Get   keyReport   `json:"get"`
				State stateReport `json:"state"`
			}
			flow(t, ep, &again, "mongod-existing", "--version", version, "--uid", r.UID)
			again.Get.wantAES256(t, r.UID)
			if again.Get.KeyHex != r.Get.KeyHex {
				t.Fatalf("Get(%s) after the restart returned other key bytes than the first Get", r.UID)
			}
			again.State.wantState(t, "ACTIVE")
		})
	}
}

// TestMasterKeyOverKMIP: kmipKeyIdentifier may name the node's own master
// key, printed by keybroker dev as master_key_kmip_id.
func TestMasterKeyOverKMIP(t *testing.T) {
	t.Parallel()
	d := sharedDev(t)
	var r struct {
		Get   keyReport   `json:"get"`
		State stateReport `json:"state"`
	}
	flow(t, engineEndpoint(d), &r, "mongod-existing", "--version", "1.2", "--uid", d.info.MasterKeyKMIPID)
	r.Get.wantAES256(t, d.info.MasterKeyKMIPID)
	r.State.wantState(t, "ACTIVE")
}

// TestPerconaRegister is Percona Server for MongoDB (libkmip, KMIP 1.0):
// Register a raw AES-256 key, Activate; a later session reads State and
// then Get, which must return the registered bytes, raw and unwrapped.
func TestPerconaRegister(t *testing.T) {
	t.Parallel()
	d := sharedDev(t)
	var r struct {
		Register outcome     `json:"register"`
		UID      string      `json:"uid"`
		Activate outcome     `json:"activate"`
		State    stateReport `json:"state"`
		Get      *keyReport  `json:"get"`
	}
	flow(t, engineEndpoint(d), &r, "percona")
	r.Register.wantSuccess(t, "REGISTER")
	r.Activate.wantSuccess(t, "ACTIVATE")
	r.State.wantState(t, "ACTIVE")
	if r.Get == nil {
		t.Fatal("the flow did not Get (State was not Active)")
	}
	r.Get.wantAES256(t, r.UID)
	if r.Get.Equal == nil || !*r.Get.Equal {
		t.Fatal("Get returned other bytes than the registered key")
	}
}

// TestSecretData is libmongocrypt's KMIP provider: Register Secret Data
// (Seed, 96 bytes) with an empty template, or with the newer usage mask 0
// and Opaque format, Activate, Get, one operation per connection.
func TestSecretData(t *testing.T) {
	t.Parallel()
	d := sharedDev(t)
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"empty template", nil},
		{"usage mask 0, opaque", []string{"--newer"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r struct {
				Register outcome   `json:"register"`
				UID      string    `json:"uid"`
				Activate outcome   `json:"activate"`
				Get      keyReport `json:"get"`
			}
			flow(t, engineEndpoint(d), &r, "secretdata", tc.args...)
			r.Register.wantSuccess(t, "REGISTER")
			if r.UID == "" {
				t.Fatal("Register answered no Unique Identifier")
			}
			r.Activate.wantSuccess(t, "ACTIVATE")
			r.Get.wantSuccess(t, "GET")
			if r.Get.UID != r.UID || r.Get.ObjectType != "SECRET_DATA" || r.Get.SecretDataType != "SEED" || len(r.Get.KeyHex) != 192 {
				t.Fatalf("Get(%s) = uid %s, %s %s, %d bytes; want SECRET_DATA SEED, 96 bytes", r.UID, r.Get.UID, r.Get.ObjectType, r.Get.SecretDataType, len(r.Get.KeyHex)/2)
			}
			if r.Get.Equal == nil || !*r.Get.Equal {
				t.Fatal("Get returned other bytes than the registered Secret Data")
			}
		})
	}
}

// TestLocate finds a key by Name, by Object Type and State, and nothing for
// an unknown Name.
func TestLocate(t *testing.T) {
	t.Parallel()
	d := sharedDev(t)
	type located struct {
		outcome
		IDs []string `json:"ids"`
	}
	var r struct {
		Create       outcome `json:"create"`
		UID          string  `json:"uid"`
		Activate     outcome `json:"activate"`
		ByName       located `json:"by_name"`
		ByTypeState  located `json:"by_type_state"`
		ByAbsentName located `json:"by_absent_name"`
	}
	flow(t, engineEndpoint(d), &r, "locate", "--version", "1.2")
	r.Create.wantSuccess(t, "CREATE")
	r.Activate.wantSuccess(t, "ACTIVATE")
	r.ByName.wantSuccess(t, "LOCATE")
	if !slices.Equal(r.ByName.IDs, []string{r.UID}) {
		t.Errorf("Locate(Name) = %q, want exactly [%s]", r.ByName.IDs, r.UID)
	}
	r.ByTypeState.wantSuccess(t, "LOCATE")
	if !slices.Contains(r.ByTypeState.IDs, r.UID) {
		t.Errorf("Locate(Symmetric Key, Active) = %q, want it to hold %s", r.ByTypeState.IDs, r.UID)
	}
	r.ByAbsentName.wantSuccess(t, "LOCATE")
	if len(r.ByAbsentName.IDs) != 0 {
		t.Errorf("Locate(unknown Name) = %q, want none", r.ByAbsentName.IDs)
	}
}

// TestRevokeDestroy: a new key is Pre-Active; Destroy is refused while
// Active; Revoke makes it Deactivated; Destroy then succeeds and the key
// reads Destroyed, never Item Not Found.
func TestRevokeDestroy(t *testing.T) {
	t.Parallel()
	d := sharedDev(t)
	for _, version := range []string{"1.2", "1.0"} {
		t.Run("KMIP "+version, func(t *testing.T) {
			var r struct {
				Create         outcome     `json:"create"`
				UID            string      `json:"uid"`
				StateNew       stateReport `json:"state_new"`
				Activate       outcome     `json:"activate"`
				DestroyActive  outcome     `json:"destroy_active"`
				Revoke         outcome     `json:"revoke"`
				StateRevoked   stateReport `json:"state_revoked"`
				Destroy        outcome     `json:"destroy"`
				StateDestroyed stateReport `json:"state_destroyed"`
				GetDestroyed   keyReport   `json:"get_destroyed"`
			}
			flow(t, engineEndpoint(d), &r, "lifecycle", "--version", version)
			r.Create.wantSuccess(t, "CREATE")
			r.StateNew.wantState(t, "PRE_ACTIVE")
			r.Activate.wantSuccess(t, "ACTIVATE")
			if r.DestroyActive.Status != "OPERATION_FAILED" || r.DestroyActive.Operation != "DESTROY" || r.DestroyActive.Message == nil {
				t.Fatalf("Destroy of an Active key: got %v, want DESTROY OPERATION_FAILED with a Result Message", r.DestroyActive)
			}
			r.Revoke.wantSuccess(t, "REVOKE")
			r.StateRevoked.wantState(t, "DEACTIVATED")
			r.Destroy.wantSuccess(t, "DESTROY")
			r.StateDestroyed.wantState(t, "DESTROYED")
			if r.GetDestroyed.Status != "OPERATION_FAILED" || r.GetDestroyed.reason() == "ITEM_NOT_FOUND" || r.GetDestroyed.Message == nil {
				t.Fatalf("Get of a destroyed key: got %v, want OPERATION_FAILED, not ITEM_NOT_FOUND, with a Result Message", r.GetDestroyed.outcome)
			}
		})
	}
}

// TestAdminManagesEngineKeys: the admin identity may read, revoke and
// destroy a key an engine created.
func TestAdminManagesEngineKeys(t *testing.T) {
	t.Parallel()
	d := sharedDev(t)
	engine := engineEndpoint(d)
	admin := endpoint{addr: d.info.KMIPAddress, ca: d.info.KMIPCA, pem: d.info.KMIPAdminPEM}
	var m struct {
		UID string    `json:"uid"`
		Get keyReport `json:"get"`
	}
	flow(t, engine, &m, "mongod", "--version", "1.2")
	var g keyReport
	flow(t, admin, &g, "get", "--uid", m.UID)
	g.wantAES256(t, m.UID)
	if g.KeyHex != m.Get.KeyHex {
		t.Fatal("the admin's Get returned other bytes than the engine's")
	}
	var o outcome
	flow(t, admin, &o, "revoke", "--uid", m.UID)
	o.wantSuccess(t, "REVOKE")
	flow(t, admin, &o, "destroy", "--uid", m.UID)
	o.wantSuccess(t, "DESTROY")
	var s stateReport
	flow(t, engine, &s, "state", "--uid", m.UID)
	s.wantState(t, "DESTROYED")
}

// TestMongocryptDelegated is newer libmongocrypt with delegated encryption
// (KMIP 1.2, one operation per connection): Create, Activate, Encrypt with
// AES-CBC/PKCS5 and a server-generated IV, Decrypt. The ciphertext is also
// decrypted here with the key from Get, so the cipher is the one asked for.
func TestMongocryptDelegated(t *testing.T) {
	t.Parallel()
	d := sharedDev(t)
	var r struct {
		Create        outcome `json:"create"`
		UID           string  `json:"uid"`
		Activate      outcome `json:"activate"`
		Encrypt       outcome `json:"encrypt"`
		PlaintextHex  string  `json:"plaintext_hex"`
		CiphertextHex string  `json:"ciphertext_hex"`
		IVHex         string  `json:"iv_hex"`
		Decrypt       outcome `json:"decrypt"`
		Equal         *bool   `json:"equal"`
	}
	flow(t, engineEndpoint(d), &r, "mongocrypt-delegated")
	r.Create.wantSuccess(t, "CREATE")
	r.Activate.wantSuccess(t, "ACTIVATE")
	r.Encrypt.wantSuccess(t, "ENCRYPT")
	r.Decrypt.wantSuccess(t, "DECRYPT")
	if r.Equal == nil || !*r.Equal {
		t.Fatal("Decrypt did not return the plaintext given to Encrypt")
	}

	var k keyReport
	flow(t, engineEndpoint(d), &k, "get", "--uid", r.UID)
	k.wantAES256(t, r.UID)
	key, _ := hex.DecodeString(k.KeyHex)
	ct, _ := hex.DecodeString(r.CiphertextHex)
	iv, _ := hex.DecodeString(r.IVHex)
	if len(iv) != aes.BlockSize || len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		t.Fatalf("Encrypt returned %d bytes of ciphertext and a %d-byte IV, want whole AES blocks and a 16-byte IV", len(ct), len(iv))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
	pad := int(pt[len(pt)-1])
	if pad < 1 || pad > aes.BlockSize || !bytes.Equal(pt[len(pt)-pad:], bytes.Repeat([]byte{byte(pad)}, pad)) {
		t.Fatalf("the ciphertext does not end in PKCS5 padding under AES-CBC with the key from Get")
	}
	if hex.EncodeToString(pt[:len(pt)-pad]) != r.PlaintextHex {
		t.Fatal("AES-CBC decryption here, with the key from Get, does not give the plaintext")
	}
}
