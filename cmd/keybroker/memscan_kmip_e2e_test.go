//go:build linux && goexperiment.runtimesecret

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"

	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// memscanKMIP drives the broker process's KMIP listener as the engines do:
// Percona's Register of an AES-256 key, libmongocrypt's Register and Get of
// a 96-byte Seed, one operation per connection, mongod's Get of the master
// key and its Encrypt/Decrypt. Two connections stay open across the scans
// (what a long-lived client would hold).
type memscanKMIP struct {
	h      *harness
	addr   string
	long   *kmipclient.Client // 1.2: Gets, CBC
	long14 *kmipclient.Client // 1.4: GCM with the tag apart
	ids    map[string]string  // needle name -> KMIP identifier
	symID  string
}

func newMemscanKMIP(t *testing.T, h *harness, c *memscanChild) *memscanKMIP {
	t.Helper()
	k := &memscanKMIP{h: h, addr: c.kmip, ids: map[string]string{}}
	k.long = k.dial(t, kmip.V1_2)
	k.long14 = k.dial(t, kmip.V1_4)
	return k
}

// dial opens a KMIP connection as the engine; the test closes it at the end.
func (k *memscanKMIP) dial(t *testing.T, v kmip.ProtocolVersion) *kmipclient.Client {
	t.Helper()
	c, err := kmipclient.Dial(k.addr, kmipclient.WithRootCAFile(k.h.files.CA), kmipclient.WithClientCertFiles(k.h.files.EngineCert, k.h.files.EngineKey),
		kmipclient.EnforceVersion(v))
	if err != nil {
		t.Fatalf("kmipclient.Dial(%s) err = %v, want nil", v, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// once runs one operation on a connection of its own (libmongocrypt).
func (k *memscanKMIP) once(t *testing.T, pl kmip.OperationPayload) kmip.ResponseBatchItem {
	t.Helper()
	c := k.dial(t, kmip.V1_0)
	defer c.Close()
	return roundtrip(t, c, pl)
}

// masterKMIPID is the KMIP identifier of the current master-key version.
func (h *harness) masterKMIPID(t *testing.T) string {
	t.Helper()
	mk, err := h.engine().GetMasterKey(ctxT(t, time.Minute), &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatalf("GetMasterKey err = %v", err)
	}
	return mk.GetVersion()
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// exercise registers the objects, then calls Get of each, the master key's
// Get, and Encrypt/Decrypt in GCM and CBC *memscanCalls/3 times each; it
// adds the objects and the plaintext to keys.
func (k *memscanKMIP) exercise(t *testing.T, keys memscanKeys, masterID string) {
	t.Helper()
	sym, seed, plain := randomBytes(32), randomBytes(96), randomBytes(32)
	template := kmip.TemplateAttribute{Attribute: []kmip.Attribute{
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(256)},
		{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageEncrypt | kmip.CryptographicUsageDecrypt},
	}}
	block := func(b []byte, alg kmip.CryptographicAlgorithm) kmip.KeyBlock {
		bb := bytes.Clone(b)
		kb := kmip.KeyBlock{KeyFormatType: kmip.KeyFormatTypeRaw, KeyValue: &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &bb}}}}
		if alg != 0 {
			kb.CryptographicAlgorithm, kb.CryptographicLength = alg, int32(8*len(b))
		}
		return kb
	}
	// Percona: Register and Activate on one 1.0 connection.
	percona := k.dial(t, kmip.V1_0)
	k.symID = mustOK(t, roundtrip(t, percona, &payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: template,
		Object: &kmip.SymmetricKey{KeyBlock: block(sym, kmip.CryptographicAlgorithmAES)}})).(*payloads.RegisterResponsePayload).UniqueIdentifier
	mustOK(t, roundtrip(t, percona, &payloads.ActivateRequestPayload{UniqueIdentifier: k.symID}))
	percona.Close()
	// A Register whose connection stays open, its request the last one
	// that connection sent: crypto/tls keeps the decrypted record.
	sym2 := randomBytes(32)
	sym2ID := mustOK(t, roundtrip(t, k.dial(t, kmip.V1_0), &payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: template,
		Object: &kmip.SymmetricKey{KeyBlock: block(sym2, kmip.CryptographicAlgorithmAES)}})).(*payloads.RegisterResponsePayload).UniqueIdentifier
	keys["kmip symmetric key (registered, open) "+sym2ID] = sym2
	// libmongocrypt: one operation per connection.
	seedID := mustOK(t, k.once(t, &payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSecretData,
		Object: &kmip.SecretData{SecretDataType: kmip.SecretDataTypeSeed, KeyBlock: block(seed, 0)}})).(*payloads.RegisterResponsePayload).UniqueIdentifier
	mustOK(t, k.once(t, &payloads.ActivateRequestPayload{UniqueIdentifier: seedID}))

	symName, seedName := "kmip symmetric key "+k.symID, "kmip secret data "+seedID
	keys[symName], keys[seedName], keys["kmip plaintext"] = sym, seed, plain
	k.ids[symName], k.ids[seedName], k.ids[masterID] = k.symID, seedID, masterID
	if keys[masterID] == nil {
		t.Fatalf("master-key version %s was not served over gRPC", masterID)
	}

	gcm := &kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}
	cbc := &kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeCBC, PaddingMethod: kmip.PaddingMethodPKCS5}
	for i := range max(*memscanCalls/3, 1) {
		k.getAll(t, keys)
		k.getBatch(t, keys)
		if i%10 == 0 {
			fresh := k.dial(t, kmip.V1_0)
			if _, got := getKey(t, fresh, seedID); !bytes.Equal(got, seed) {
				t.Fatalf("Get(%s) on a fresh connection: not the registered Secret Data", seedID)
			}
			fresh.Close()
		}
		for _, tc := range []struct {
			c *kmipclient.Client
			p *kmip.CryptographicParameters
		}{{k.long14, gcm}, {k.long, gcm}, {k.long, cbc}} {
			enc := mustOK(t, roundtrip(t, tc.c, &payloads.EncryptRequestPayload{UniqueIdentifier: k.symID, CryptographicParameters: tc.p,
				Data: bytes.Clone(plain)})).(*payloads.EncryptResponsePayload)
			dec := mustOK(t, roundtrip(t, tc.c, &payloads.DecryptRequestPayload{UniqueIdentifier: k.symID, CryptographicParameters: tc.p,
				Data: enc.Data, IVCounterNonce: enc.IVCounterNonce, AuthenticatedEncryptionTag: enc.AuthenticatedEncryptionTag})).(*payloads.DecryptResponsePayload)
			if !bytes.Equal(dec.Data, plain) {
				t.Fatalf("Decrypt(Encrypt(p)) with %v at %s: not p", tc.p.BlockCipherMode, tc.c.Version())
			}
		}
	}
}

// getAll gets every object over the long-lived connection and checks the
// bytes.
func (k *memscanKMIP) getAll(t *testing.T, keys memscanKeys) {
	t.Helper()
	for name, id := range k.ids {
		if _, got := getKey(t, k.long, id); !bytes.Equal(got, keys[name]) {
			t.Fatalf("KMIP Get(%s): not the bytes of %s", id, name)
		}
	}
}

// getBatch gets every object in one message (KMIP batches; mongod sends
// Create, Get and Activate together): the response outgrows the encoder's
// first buffers after the first key.
func (k *memscanKMIP) getBatch(t *testing.T, keys memscanKeys) {
	t.Helper()
	var names []string
	var pls []kmip.OperationPayload
	for name, id := range k.ids {
		names = append(names, name)
		pls = append(pls, &payloads.GetRequestPayload{UniqueIdentifier: id})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msg := kmip.NewRequestMessage(k.long.Version(), pls...)
	resp, err := k.long.Roundtrip(ctx, &msg)
	if err != nil || len(resp.BatchItem) != len(pls) {
		t.Fatalf("batch of %d Gets = %v, %v; want %d items", len(pls), resp, err, len(pls))
	}
	for i, bi := range resp.BatchItem {
		get := mustOK(t, bi).(*payloads.GetResponsePayload)
		var got []byte
		switch o := get.Object.(type) {
		case *kmip.SymmetricKey:
			got, err = o.KeyMaterial()
		case *kmip.SecretData:
			got, err = o.Data()
		}
		if err != nil || !bytes.Equal(got, keys[names[i]]) {
			t.Fatalf("batched Get(%s): not the bytes of %s (%v)", get.UniqueIdentifier, names[i], err)
		}
	}
}

// refused checks that while PAUSED every Get, Encrypt and Decrypt is
// refused, on the open connections and a fresh one, without key bytes in
// the message.
func (k *memscanKMIP) refused(t *testing.T, keys memscanKeys) {
	t.Helper()
	for _, c := range []*kmipclient.Client{k.long, k.dial(t, kmip.V1_0)} {
		for _, id := range k.ids {
			bi := roundtrip(t, c, &payloads.GetRequestPayload{UniqueIdentifier: id})
			mustFail(t, bi, kmip.ResultReasonPermissionDenied, "")
			checkNoKeyInText(t, keys, "the PAUSED KMIP error", bi.ResultMessage)
		}
	}
	bi := roundtrip(t, k.long14, &payloads.DecryptRequestPayload{UniqueIdentifier: k.symID, Data: make([]byte, 32), IVCounterNonce: make([]byte, 16)})
	mustFail(t, bi, kmip.ResultReasonPermissionDenied, "")
}
