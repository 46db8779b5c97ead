package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/pki"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// engine2 is a second engine identity, for the ownership tests.
const engine2 = "spiffe://keybroker.dev/engine2"

// kmipHarness is the real broker (serve) with KMIP on a loopback port,
// against the Key Vault emulator, and client certificates for the engine,
// a second engine and the admin.
type kmipHarness struct {
	*harness
	engine2Cert, engine2Key string
}

func newKMIPHarness(t *testing.T) *kmipHarness {
	t.Helper()
	h := newHarness(t, "")
	k := &kmipHarness{harness: h,
		engine2Cert: filepath.Join(h.dir, "engine2.pem"), engine2Key: filepath.Join(h.dir, "engine2-key.pem")}
	if err := pki.IssueClient(h.files.CA, h.files.CAKey, engine2, k.engine2Cert, k.engine2Key, pki.Options{}); err != nil {
		t.Fatalf("IssueClient err = %v, want nil", err)
	}
	yaml, err := os.ReadFile(h.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	y := strings.Replace(string(yaml), "  engine: [", "  engine: [\""+engine2+"\", ", 1)
	y += "kmip:\n  address: \"127.0.0.1:0\"\n"
	if err := h.writeConfig([]byte(y)); err != nil {
		t.Fatalf("config with kmip: %v", err)
	}
	h.start()
	if h.at.KMIP == "" {
		t.Fatal("serve reported no KMIP address with kmip.address set")
	}
	return k
}

// client dials KMIP at version v as the engine ("engine"), the second
// engine ("engine2") or the admin ("admin").
func (k *kmipHarness) client(t *testing.T, who string, v kmip.ProtocolVersion) *kmipclient.Client {
	t.Helper()
	cert, key := k.files.EngineCert, k.files.EngineKey
	switch who {
	case "admin":
		cert, key = k.files.AdminCert, k.files.AdminKey
	case "engine2":
		cert, key = k.engine2Cert, k.engine2Key
	}
	c, err := kmipclient.Dial(k.at.KMIP, kmipclient.WithRootCAFile(k.files.CA), kmipclient.WithClientCertFiles(cert, key),
		kmipclient.EnforceVersion(v))
	if err != nil {
		t.Fatalf("kmipclient.Dial(%s, %s) err = %v, want nil", who, v, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// kmipReason returns the Result Reason of a failed batch item.
func roundtrip(t *testing.T, c *kmipclient.Client, pl kmip.OperationPayload) kmip.ResponseBatchItem {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	msg := kmip.NewRequestMessage(c.Version(), pl)
	resp, err := c.Roundtrip(ctx, &msg)
	if err != nil {
		t.Fatalf("Roundtrip(%s) err = %v, want nil", ttlv.EnumStr(pl.Operation()), err)
	}
	if len(resp.BatchItem) != 1 {
		t.Fatalf("Roundtrip(%s): %d batch items, want 1", ttlv.EnumStr(pl.Operation()), len(resp.BatchItem))
	}
	bi := resp.BatchItem[0]
	if bi.Operation != pl.Operation() {
		t.Fatalf("response Operation = %s, want %s echoed", ttlv.EnumStr(bi.Operation), ttlv.EnumStr(pl.Operation()))
	}
	if resp.Header.ProtocolVersion != c.Version() {
		t.Fatalf("response Protocol Version = %s, want the request's %s", resp.Header.ProtocolVersion, c.Version())
	}
	if bi.ResultStatus != kmip.ResultStatusSuccess && bi.ResultMessage == "" {
		t.Fatalf("%s failed with %s and no Result Message", ttlv.EnumStr(pl.Operation()), ttlv.EnumStr(bi.ResultReason))
	}
	return bi
}

func mustOK(t *testing.T, bi kmip.ResponseBatchItem) kmip.OperationPayload {
	t.Helper()
	if bi.ResultStatus != kmip.ResultStatusSuccess {
		t.Fatalf("%s: status %s reason %s: %s, want success", ttlv.EnumStr(bi.Operation), ttlv.EnumStr(bi.ResultStatus), ttlv.EnumStr(bi.ResultReason), bi.ResultMessage)
	}
	return bi.ResponsePayload
}

func mustFail(t *testing.T, bi kmip.ResponseBatchItem, reason kmip.ResultReason, msgPart string) {
	t.Helper()
	if bi.ResultStatus != kmip.ResultStatusOperationFailed || bi.ResultReason != reason {
		t.Fatalf("%s: status %s reason %s (%s), want failure with %s", ttlv.EnumStr(bi.Operation), ttlv.EnumStr(bi.ResultStatus),
			ttlv.EnumStr(bi.ResultReason), bi.ResultMessage, ttlv.EnumStr(reason))
	}
	if !strings.Contains(bi.ResultMessage, msgPart) {
		t.Fatalf("%s: Result Message %q, want it to contain %q", ttlv.EnumStr(bi.Operation), bi.ResultMessage, msgPart)
	}
}

// state asks Get Attributes(State) and checks the answer holds exactly it.
func state(t *testing.T, c *kmipclient.Client, id string) (kmip.State, kmip.ResponseBatchItem) {
	t.Helper()
	bi := roundtrip(t, c, &payloads.GetAttributesRequestPayload{UniqueIdentifier: id, AttributeName: []kmip.AttributeName{kmip.AttributeNameState}})
	if bi.ResultStatus != kmip.ResultStatusSuccess {
		return 0, bi
	}
	attrs := bi.ResponsePayload.(*payloads.GetAttributesResponsePayload).Attribute
	if len(attrs) != 1 || attrs[0].AttributeName != kmip.AttributeNameState {
		t.Fatalf("Get Attributes(State) answered %d attributes %v, want exactly State", len(attrs), attrs)
	}
	return attrs[0].AttributeValue.(kmip.State), bi
}

func getKey(t *testing.T, c *kmipclient.Client, id string) (*payloads.GetResponsePayload, []byte) {
	t.Helper()
	get := mustOK(t, roundtrip(t, c, &payloads.GetRequestPayload{UniqueIdentifier: id})).(*payloads.GetResponsePayload)
	if get.UniqueIdentifier != id {
		t.Fatalf("Get: Unique Identifier %q, want %q", get.UniqueIdentifier, id)
	}
	var b []byte
	var err error
	switch o := get.Object.(type) {
	case *kmip.SymmetricKey:
		if o.KeyBlock.KeyFormatType != kmip.KeyFormatTypeRaw || o.KeyBlock.KeyWrappingData != nil {
			t.Fatalf("Get: key format %s, wrapping %v; want Raw, unwrapped", ttlv.EnumStr(o.KeyBlock.KeyFormatType), o.KeyBlock.KeyWrappingData)
		}
		b, err = o.KeyMaterial()
		if o.KeyBlock.CryptographicAlgorithm != kmip.CryptographicAlgorithmAES || int(o.KeyBlock.CryptographicLength) != 8*len(b) {
			t.Fatalf("Get: algorithm %s length %d for %d bytes, want AES and the key's bit length", ttlv.EnumStr(o.KeyBlock.CryptographicAlgorithm), o.KeyBlock.CryptographicLength, len(b))
		}
	case *kmip.SecretData:
		b, err = o.Data()
	default:
		t.Fatalf("Get returned a %T", o)
	}
	if err != nil {
		t.Fatalf("Get: key material: %v", err)
	}
	return get, b
}

// TestKMIPMongodFlow is mongod Enterprise's sequence on one connection at
// 1.2 and with kmipUseLegacyProtocol (1.0): Create AES-256 (mask 12, no
// Name), Get, Activate, Get Attributes(State); then, for
// kmipKeyIdentifier, a fresh connection's Get and State, and the broker's
// own master key by its printed KMIP id.
func TestKMIPMongodFlow(t *testing.T) {
	k := newKMIPHarness(t)
	for _, v := range []kmip.ProtocolVersion{kmip.V1_2, kmip.V1_0} {
		t.Run(v.String(), func(t *testing.T) {
			c := k.client(t, "engine", v)
			cr := mustOK(t, roundtrip(t, c, &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
				{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
				{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(256)},
				{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageEncrypt | kmip.CryptographicUsageDecrypt},
			}}})).(*payloads.CreateResponsePayload)
			id := cr.UniqueIdentifier
			if st, _ := state(t, c, id); st != kmip.StatePreActive {
				t.Fatalf("State after Create = %s, want PreActive", ttlv.EnumStr(st))
			}
			_, key := getKey(t, c, id)
			if len(key) != 32 {
				t.Fatalf("Get: %d bytes, want 32", len(key))
			}
			mustOK(t, roundtrip(t, c, &payloads.ActivateRequestPayload{UniqueIdentifier: id}))
			if st, _ := state(t, c, id); st != kmip.StateActive {
				t.Fatalf("State after Activate = %s, want Active", ttlv.EnumStr(st))
			}
			// Restart with kmipKeyIdentifier: a new connection, Get, State.
			c2 := k.client(t, "engine", v)
			if _, again := getKey(t, c2, id); !bytes.Equal(again, key) {
				t.Fatal("Get on a new connection returned other bytes for the same Unique Identifier")
			}
			if st, _ := state(t, c2, id); st != kmip.StateActive {
				t.Fatalf("State on a new connection = %s, want Active", ttlv.EnumStr(st))
			}
		})
	}
	// The node's master key, by the identifier status and dev print.
	c := k.client(t, "engine", kmip.V1_2)
	mk, err := k.at.Broker.MasterKeyObjectID()
	if err != nil {
		t.Fatal(err)
	}
	_, key := getKey(t, c, mk)
	grpcKey, err := k.engine().GetMasterKey(context.Background(), &keybrokerv1.GetMasterKeyRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(key, grpcKey.GetKey()) || grpcKey.GetVersion() != mk {
		t.Fatalf("KMIP Get(%s) differs from gRPC GetMasterKey (version %s)", mk, grpcKey.GetVersion())
	}
	if st, _ := state(t, c, mk); st != kmip.StateActive {
		t.Fatalf("master key State = %s, want Active", ttlv.EnumStr(st))
	}
}

// TestKMIPRegisterFlows is Percona Server's Register of a Raw AES-256 key
// and libmongocrypt's 96-byte Secret Data (Seed) with an empty template
// and with mask 0 and Opaque, all at 1.0.
func TestKMIPRegisterFlows(t *testing.T) {
	k := newKMIPHarness(t)
	c := k.client(t, "engine", kmip.V1_0)
	raw := func(n int) []byte { b := make([]byte, n); rand.Read(b); return b }
	block := func(f kmip.KeyFormatType, b []byte, alg kmip.CryptographicAlgorithm) kmip.KeyBlock {
		bb := bytes.Clone(b)
		kb := kmip.KeyBlock{KeyFormatType: f, KeyValue: &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &bb}}}}
		if alg != 0 {
			kb.CryptographicAlgorithm, kb.CryptographicLength = alg, int32(8*len(b))
		}
		return kb
	}
	aes := raw(32)
	seed, seed2 := raw(96), raw(96)
	mongodTemplate := kmip.TemplateAttribute{Attribute: []kmip.Attribute{
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(256)},
		{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageEncrypt | kmip.CryptographicUsageDecrypt},
	}}
	for _, tc := range []struct {
		name string
		req  *payloads.RegisterRequestPayload
		want []byte
	}{
		{"percona AES-256", &payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: mongodTemplate,
			Object: &kmip.SymmetricKey{KeyBlock: block(kmip.KeyFormatTypeRaw, aes, kmip.CryptographicAlgorithmAES)}}, aes},
		{"libmongocrypt seed, empty template", &payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSecretData,
			Object: &kmip.SecretData{SecretDataType: kmip.SecretDataTypeSeed, KeyBlock: block(kmip.KeyFormatTypeRaw, seed, 0)}}, seed},
		{"libmongocrypt seed, mask 0, opaque", &payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSecretData,
			TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageMask(0)}}},
			Object:            &kmip.SecretData{SecretDataType: kmip.SecretDataTypeSeed, KeyBlock: block(kmip.KeyFormatTypeOpaque, seed2, 0)}}, seed2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := mustOK(t, roundtrip(t, c, tc.req)).(*payloads.RegisterResponsePayload).UniqueIdentifier
			mustOK(t, roundtrip(t, c, &payloads.ActivateRequestPayload{UniqueIdentifier: id}))
			fresh := k.client(t, "engine", kmip.V1_0) // a new TLS connection per session
			if st, _ := state(t, fresh, id); st != kmip.StateActive {
				t.Fatalf("State = %s, want Active", ttlv.EnumStr(st))
			}
			if _, got := getKey(t, fresh, id); !bytes.Equal(got, tc.want) {
				t.Fatalf("Get returned %d bytes that differ from the %d registered", len(got), len(tc.want))
			}
		})
	}
	// The objects are keystore keys wrapped under the customer key.
	for _, key := range k.at.Broker.Objects() {
		if key.Object == nil || len(key.Versions) != 1 || len(key.Versions[0].Copies) == 0 {
			t.Fatalf("keystore key %s: object %v, %d versions; want one wrapped version", key.ID, key.Object, len(key.Versions))
		}
	}
}

// TestKMIPLifecycleAndOwnership covers Locate, names, Revoke, Destroy
// (refused while Active, Destroyed afterwards, never Item Not Found) and
// ownership: another engine gets Item Not Found, the admin manages all.
func TestKMIPLifecycleAndOwnership(t *testing.T) {
	k := newKMIPHarness(t)
	eng, other, adm := k.client(t, "engine", kmip.V1_4), k.client(t, "engine2", kmip.V1_4), k.client(t, "admin", kmip.V1_4)
	id := mustOK(t, roundtrip(t, eng, &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(128)},
		{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: "audit-log", NameType: kmip.NameTypeUninterpretedTextString}},
	}}})).(*payloads.CreateResponsePayload).UniqueIdentifier
	if _, b := getKey(t, eng, id); len(b) != 16 {
		t.Fatalf("AES-128 Get: %d bytes, want 16", len(b))
	}

	locate := func(c *kmipclient.Client, attrs ...kmip.Attribute) []string {
		return mustOK(t, roundtrip(t, c, &payloads.LocateRequestPayload{Attribute: attrs})).(*payloads.LocateResponsePayload).UniqueIdentifier
	}
	byName := kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: "audit-log", NameType: kmip.NameTypeUninterpretedTextString}}
	if got := locate(eng, byName); len(got) != 1 || got[0] != id {
		t.Fatalf("Locate(Name audit-log) = %v, want [%s]", got, id)
	}
	if got := locate(other, byName); len(got) != 0 {
		t.Fatalf("another engine's Locate(Name audit-log) = %v, want none", got)
	}
	if got := locate(adm, byName, kmip.Attribute{AttributeName: kmip.AttributeNameState, AttributeValue: kmip.StatePreActive}); len(got) != 1 {
		t.Fatalf("admin Locate(Name, PreActive) = %v, want [%s]", got, id)
	}
	if got := locate(eng, kmip.Attribute{AttributeName: kmip.AttributeNameObjectType, AttributeValue: kmip.ObjectTypeSecretData}); len(got) != 0 {
		t.Fatalf("Locate(Secret Data) = %v, want none", got)
	}

	// Names: add, modify, delete.
	add := mustOK(t, roundtrip(t, eng, &payloads.AddAttributeRequestPayload{UniqueIdentifier: id, Attribute: kmip.Attribute{AttributeName: kmip.AttributeNameName,
		AttributeValue: kmip.Name{NameValue: "second", NameType: kmip.NameTypeUninterpretedTextString}}})).(*payloads.AddAttributeResponsePayload)
	if add.Attribute.AttributeIndex == nil || *add.Attribute.AttributeIndex != 1 {
		t.Fatalf("Add Attribute(Name) index = %v, want 1", add.Attribute.AttributeIndex)
	}
	one := int32(1)
	mustOK(t, roundtrip(t, eng, &payloads.ModifyAttributeRequestPayload{UniqueIdentifier: id, Attribute: kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeIndex: &one,
		AttributeValue: kmip.Name{NameValue: "renamed", NameType: kmip.NameTypeUninterpretedTextString}}}))
	if got := locate(eng, kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: "renamed"}}); len(got) != 1 {
		t.Fatalf("Locate(renamed) = %v, want [%s]", got, id)
	}
	mustOK(t, roundtrip(t, eng, &payloads.DeleteAttributeRequestPayload{UniqueIdentifier: id, AttributeName: kmip.AttributeNameName, AttributeIndex: &one}))
	if got := locate(eng, kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: "renamed"}}); len(got) != 0 {
		t.Fatalf("Locate(renamed) after Delete Attribute = %v, want none", got)
	}
	mustFail(t, roundtrip(t, eng, &payloads.AddAttributeRequestPayload{UniqueIdentifier: id, Attribute: kmip.Attribute{AttributeName: kmip.AttributeNameContactInformation, AttributeValue: "x"}}),
		kmip.ResultReasonPermissionDenied, "Name")

	// Ownership: another engine sees nothing; the admin may act.
	for _, pl := range []kmip.OperationPayload{
		&payloads.GetRequestPayload{UniqueIdentifier: id},
		&payloads.GetAttributesRequestPayload{UniqueIdentifier: id},
		&payloads.ActivateRequestPayload{UniqueIdentifier: id},
		&payloads.DestroyRequestPayload{UniqueIdentifier: id},
	} {
		mustFail(t, roundtrip(t, other, pl), kmip.ResultReasonItemNotFound, id)
	}
	mustOK(t, roundtrip(t, adm, &payloads.ActivateRequestPayload{UniqueIdentifier: id}))

	// Destroy is refused while Active; Revoke, then Destroy.
	mustFail(t, roundtrip(t, eng, &payloads.DestroyRequestPayload{UniqueIdentifier: id}), kmip.ResultReasonPermissionDenied, "Revoke it first")
	mustOK(t, roundtrip(t, eng, &payloads.RevokeRequestPayload{UniqueIdentifier: id, RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeCessationOfOperation}}))
	if st, _ := state(t, eng, id); st != kmip.StateDeactivated {
		t.Fatalf("State after Revoke = %s, want Deactivated", ttlv.EnumStr(st))
	}
	mustOK(t, roundtrip(t, adm, &payloads.DestroyRequestPayload{UniqueIdentifier: id}))
	if st, _ := state(t, eng, id); st != kmip.StateDestroyed {
		t.Fatalf("State after Destroy = %s, want Destroyed", ttlv.EnumStr(st))
	}
	mustFail(t, roundtrip(t, eng, &payloads.GetRequestPayload{UniqueIdentifier: id}), kmip.ResultReasonPermissionDenied, "DESTROYED")

	// The master key is everyone's to read and no client's to destroy.
	mk, _ := k.at.Broker.MasterKeyObjectID()
	mustFail(t, roundtrip(t, adm, &payloads.RevokeRequestPayload{UniqueIdentifier: mk}), kmip.ResultReasonPermissionDenied, "master-key version")
	if _, b := getKey(t, other, mk); len(b) != 32 {
		t.Fatalf("master key Get by another engine: %d bytes, want 32", len(b))
	}
}

// TestKMIPEncryptDecrypt round-trips AES-GCM and AES-CBC/PKCS5 with a
// generated and a given IV, at 1.4 (separate GCM tag) and 1.2 (tag
// appended).
func TestKMIPEncryptDecrypt(t *testing.T) {
	k := newKMIPHarness(t)
	for _, v := range []kmip.ProtocolVersion{kmip.V1_4, kmip.V1_2} {
		c := k.client(t, "engine", v)
		id := mustOK(t, roundtrip(t, c, &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
			{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(256)},
			{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageEncrypt | kmip.CryptographicUsageDecrypt},
		}}})).(*payloads.CreateResponsePayload).UniqueIdentifier
		plain := []byte("audit log line 1: the quick brown fox")
		mustFail(t, roundtrip(t, c, &payloads.EncryptRequestPayload{UniqueIdentifier: id, Data: plain}), kmip.ResultReasonPermissionDenied, "Activate")
		mustOK(t, roundtrip(t, c, &payloads.ActivateRequestPayload{UniqueIdentifier: id}))
		for _, tc := range []struct {
			name string
			p    *kmip.CryptographicParameters
			iv   []byte
		}{
			{"gcm generated iv", &kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}, nil},
			{"gcm given iv", &kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}, bytes.Repeat([]byte{7}, 12)},
			{"cbc pkcs5 generated iv", &kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeCBC, PaddingMethod: kmip.PaddingMethodPKCS5}, nil},
			{"cbc pkcs5 given iv", &kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeCBC, PaddingMethod: kmip.PaddingMethodPKCS5}, bytes.Repeat([]byte{9}, 16)},
			{"no parameters (cbc pkcs5)", nil, nil},
		} {
			t.Run(v.String()+" "+tc.name, func(t *testing.T) {
				enc := mustOK(t, roundtrip(t, c, &payloads.EncryptRequestPayload{UniqueIdentifier: id, CryptographicParameters: tc.p, Data: bytes.Clone(plain), IVCounterNonce: tc.iv})).(*payloads.EncryptResponsePayload)
				iv := tc.iv
				if iv == nil {
					iv = enc.IVCounterNonce
					if len(iv) == 0 {
						t.Fatal("Encrypt without an IV returned no IV")
					}
				}
				if bytes.Contains(enc.Data, plain[:16]) {
					t.Fatal("Encrypt returned the plaintext")
				}
				dec := mustOK(t, roundtrip(t, c, &payloads.DecryptRequestPayload{UniqueIdentifier: id, CryptographicParameters: tc.p, Data: enc.Data, IVCounterNonce: iv,
					AuthenticatedEncryptionTag: enc.AuthenticatedEncryptionTag})).(*payloads.DecryptResponsePayload)
				if !bytes.Equal(dec.Data, plain) {
					t.Fatalf("Decrypt(Encrypt(p)) = %q, want %q", dec.Data, plain)
				}
				bad := bytes.Clone(enc.Data)
				bad[0] ^= 1
				if tc.p != nil && tc.p.BlockCipherMode == kmip.BlockCipherModeGCM {
					mustFail(t, roundtrip(t, c, &payloads.DecryptRequestPayload{UniqueIdentifier: id, CryptographicParameters: tc.p, Data: bad, IVCounterNonce: iv,
						AuthenticatedEncryptionTag: enc.AuthenticatedEncryptionTag}), kmip.ResultReasonCryptographicFailure, "authentication failed")
				}
			})
		}
	}
}

// TestKMIPRevocationState: while the broker is PAUSED every key's
// Get Attributes(State) succeeds with Deactivated on a fresh connection and
// Get, Create and Activate are refused with Permission Denied naming the
// cause and the fix; after a successful revalidation keys are Active again.
func TestKMIPRevocationState(t *testing.T) {
	k := newKMIPHarness(t)
	c := k.client(t, "engine", kmip.V1_2)
	id := mustOK(t, roundtrip(t, c, &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(256)},
	}}})).(*payloads.CreateResponsePayload).UniqueIdentifier
	mustOK(t, roundtrip(t, c, &payloads.ActivateRequestPayload{UniqueIdentifier: id}))
	mk, _ := k.at.Broker.MasterKeyObjectID()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := k.emu.Control().RevokeAccess(ctx, "", "", akvemu.CodeForbiddenByRbac); err != nil {
		t.Fatal(err)
	}
	rv, err := k.admin().Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || rv.GetState() != keybrokerv1.State_STATE_PAUSED {
		t.Fatalf("Revalidate after revoking = %v (%v), want PAUSED", rv, err)
	}
	for _, obj := range []string{id, mk} {
		fresh := k.client(t, "engine", kmip.V1_2) // mongod polls on a fresh connection
		if st, _ := state(t, fresh, obj); st != kmip.StateDeactivated {
			t.Fatalf("PAUSED: State of %s = %s, want Deactivated", obj, ttlv.EnumStr(st))
		}
		mustFail(t, roundtrip(t, fresh, &payloads.GetRequestPayload{UniqueIdentifier: obj}), kmip.ResultReasonPermissionDenied, "PAUSED")
	}
	mustFail(t, roundtrip(t, c, &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(256)},
	}}}), kmip.ResultReasonPermissionDenied, "revalidate")

	if err := k.emu.Control().GrantAccess(ctx, "", ""); err != nil {
		t.Fatal(err)
	}
	rv, err = k.admin().Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
	if err != nil || !rv.GetOk() {
		t.Fatalf("Revalidate after granting = %v (%v), want ok", rv, err)
	}
	fresh := k.client(t, "engine", kmip.V1_2)
	for _, obj := range []string{id, mk} {
		if st, _ := state(t, fresh, obj); st != kmip.StateActive {
			t.Fatalf("resumed: State of %s = %s, want Active", obj, ttlv.EnumStr(st))
		}
		if _, b := getKey(t, fresh, obj); len(b) != 32 {
			t.Fatalf("resumed: Get(%s) %d bytes, want 32", obj, len(b))
		}
	}
}

// rawConn is a TLS connection that sends hand-built TTLV, for wire-level
// checks the library's client would hide.
func (k *kmipHarness) rawConn(t *testing.T) *tls.Conn {
	t.Helper()
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(k.files.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool.AppendCertsFromPEM(ca)
	cert, err := tls.LoadX509KeyPair(k.files.EngineCert, k.files.EngineKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.Dial("tcp", k.at.KMIP, &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, ServerName: "127.0.0.1"})
	if err != nil {
		t.Fatalf("tls.Dial err = %v, want nil", err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return c
}

func readResponse(t *testing.T, c io.Reader) []byte {
	t.Helper()
	hdr := make([]byte, 8)
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.Fatalf("reading the response header: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(hdr[4:]))
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	return append(hdr, body...)
}

// TestKMIPWire checks the response shapes strict clients parse: Time Stamp
// right after Protocol Version then Batch Count in the header, the
// Operation echoed with Result Reason and Message on failures (Operation
// Not Supported, a bad protocol version), and that malformed input is
// answered and closes only its own connection.
func TestKMIPWire(t *testing.T) {
	k := newKMIPHarness(t)
	mk, _ := k.at.Broker.MasterKeyObjectID()
	tagsOfHeader := func(msg []byte) []int {
		// Response Message > Response Header > children.
		var tags []int
		h := msg[8:]
		if tag := int(h[0])<<16 | int(h[1])<<8 | int(h[2]); tag != kmip.TagResponseHeader {
			t.Fatalf("first child tag %06X, want Response Header", tag)
		}
		n := int(binary.BigEndian.Uint32(h[4:8]))
		body := h[8 : 8+n]
		for len(body) >= 8 {
			tags = append(tags, int(body[0])<<16|int(body[1])<<8|int(body[2]))
			l := int(binary.BigEndian.Uint32(body[4:8]))
			l = (l + 7) / 8 * 8
			body = body[8+l:]
		}
		return tags
	}
	for _, v := range []kmip.ProtocolVersion{kmip.V1_0, kmip.V1_2} {
		c := k.rawConn(t)
		msg := kmip.NewRequestMessage(v, &payloads.GetAttributesRequestPayload{UniqueIdentifier: mk, AttributeName: []kmip.AttributeName{kmip.AttributeNameState}})
		msg.Header.TimeStamp = nil
		c.Write(ttlv.MarshalTTLV(&msg))
		got := tagsOfHeader(readResponse(t, c))
		want := []int{kmip.TagProtocolVersion, kmip.TagTimeStamp, kmip.TagBatchCount}
		if len(got) != 3 || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
			t.Fatalf("%s: response header tags %06X, want Protocol Version, Time Stamp, Batch Count", v, got)
		}
	}

	c := k.client(t, "engine", kmip.V1_2)
	mustFail(t, roundtrip(t, c, &payloads.RekeyRequestPayload{UniqueIdentifier: mk}), kmip.ResultReasonOperationNotSupported, "keybroker does not support")

	// Malformed messages: each is answered (or its connection closed) and
	// a parallel healthy connection keeps working.
	healthy := k.client(t, "engine", kmip.V1_2)
	valid := ttlv.MarshalTTLV(&kmip.RequestMessage{Header: kmip.RequestHeader{ProtocolVersion: kmip.V1_2, BatchCount: 1},
		BatchItem: []kmip.RequestBatchItem{{Operation: kmip.OperationGetAttributes, RequestPayload: &payloads.GetAttributesRequestPayload{UniqueIdentifier: mk}}}})
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"huge declared length", []byte{0x42, 0x00, 0x78, 0x01, 0x7f, 0xff, 0xff, 0xf8}},
		{"truncated", valid[:len(valid)/2]},
		{"wrong type for a field", bytes.Replace(valid, []byte{0x42, 0x00, 0x5c, 0x05}, []byte{0x42, 0x00, 0x5c, 0x02}, 1)},
		{"batch count mismatch", bytes.Replace(valid, []byte{0x42, 0x00, 0x0d, 0x02, 0, 0, 0, 4, 0, 0, 0, 1}, []byte{0x42, 0x00, 0x0d, 0x02, 0, 0, 0, 4, 0, 0, 0, 3}, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := k.rawConn(t)
			rc.SetDeadline(time.Now().Add(5 * time.Second))
			rc.Write(tc.data)
			if tc.name == "truncated" {
				rc.CloseWrite()
			}
			// One answer (the connection may stay open) or a close.
			buf := make([]byte, 8)
			_, err := io.ReadFull(rc, buf)
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the server neither answered nor closed within 5s")
			}
			if err == nil {
				rest := make([]byte, binary.BigEndian.Uint32(buf[4:]))
				if _, err := io.ReadFull(rc, rest); err != nil {
					t.Fatalf("reading the answer: %v", err)
				}
				buf = append(buf, rest...)
				var resp kmip.ResponseMessage
				if err := ttlv.UnmarshalTTLV(buf, &resp); err != nil {
					t.Fatalf("the answer does not decode: %v", err)
				}
				bi := resp.BatchItem[0]
				if bi.ResultStatus != kmip.ResultStatusOperationFailed || bi.ResultMessage == "" {
					t.Fatalf("answer %+v, want a failure with a Result Message", bi)
				}
			}
			if st, _ := state(t, healthy, mk); st != kmip.StateActive {
				t.Fatalf("a healthy connection after %s: State %s, want Active", tc.name, ttlv.EnumStr(st))
			}
		})
	}
}

// TestKMIPMetrics: operations are counted by operation and result reason,
// timed, and open connections are a gauge, on the admin /metrics.
func TestKMIPMetrics(t *testing.T) {
	k := newKMIPHarness(t)
	c := k.client(t, "engine", kmip.V1_2)
	mk, _ := k.at.Broker.MasterKeyObjectID()
	getKey(t, c, mk)
	getKey(t, c, mk)
	mustFail(t, roundtrip(t, c, &payloads.GetRequestPayload{UniqueIdentifier: "no-such-object"}), kmip.ResultReasonItemNotFound, "no-such-object")
	fams := k.scrape()
	for _, s := range []series{
		{name: "keybroker_kmip_operations_total", labels: map[string]string{"operation": "Get", "reason": "Success"}, min: 2, max: 2},
		{name: "keybroker_kmip_operations_total", labels: map[string]string{"operation": "Get", "reason": "ItemNotFound"}, min: 1, max: 1},
		{name: "keybroker_kmip_operation_duration_seconds", labels: map[string]string{"operation": "Get", "reason": "Success"}, min: 2, max: 2},
		{name: "keybroker_kmip_connections", labels: map[string]string{}, min: 1},
	} {
		v, ok := s.find(fams)
		if !ok || v < s.min || (s.max > 0 && v > s.max) {
			t.Errorf("%s%v = %v (found %v), want %v..%v", s.name, s.labels, v, ok, s.min, s.max)
		}
	}
}

// TestKMIPServedFromMemory: after a restart, start-up loads the Active
// KMIP objects with the master key; Gets and State polls then make no Key
// Vault call, and the identifiers still name the same bytes.
func TestKMIPServedFromMemory(t *testing.T) {
	k := newKMIPHarness(t)
	c := k.client(t, "engine", kmip.V1_2)
	var ids []string
	want := map[string][]byte{}
	for range 3 {
		id := mustOK(t, roundtrip(t, c, &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
			{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
			{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(256)},
		}}})).(*payloads.CreateResponsePayload).UniqueIdentifier
		mustOK(t, roundtrip(t, c, &payloads.ActivateRequestPayload{UniqueIdentifier: id}))
		_, want[id] = getKey(t, c, id)
		ids = append(ids, id)
	}
	c.Close()
	k.stop()
	k.start()
	ctx := context.Background()
	unwraps := func() int64 {
		cs, err := k.emu.Control().Counters(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return cs[akvemu.DefaultVaultHost][akvemu.OpUnwrapKey]
	}
	before := unwraps()
	for range 5 {
		fresh := k.client(t, "engine", kmip.V1_0)
		for _, id := range ids {
			if _, got := getKey(t, fresh, id); !bytes.Equal(got, want[id]) {
				t.Fatalf("after a restart, Get(%s) returned other bytes", id)
			}
			if st, _ := state(t, fresh, id); st != kmip.StateActive {
				t.Fatalf("after a restart, State(%s) = %s, want Active", id, ttlv.EnumStr(st))
			}
		}
		fresh.Close()
	}
	if after := unwraps(); after != before {
		t.Fatalf("Key Vault unwraps during 15 Gets after warm-up: %d, want 0", after-before)
	}
}

// TestKMIPCMKRotation: KMIP objects (a 96-byte seed, an AES-128 key) are
// rewrapped with the master key when the customer key changes, are served
// through the new key with the old one disabled, and lose their old copies
// at rotate-cmk --finalize, keeping their bytes throughout.
func TestKMIPCMKRotation(t *testing.T) {
	k := newKMIPHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := k.client(t, "engine", kmip.V1_0)
	seed := bytes.Repeat([]byte{0x5e}, 96)
	sb := bytes.Clone(seed)
	sid := mustOK(t, roundtrip(t, c, &payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSecretData,
		Object: &kmip.SecretData{SecretDataType: kmip.SecretDataTypeSeed, KeyBlock: kmip.KeyBlock{KeyFormatType: kmip.KeyFormatTypeRaw,
			KeyValue: &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &sb}}}}}})).(*payloads.RegisterResponsePayload).UniqueIdentifier
	aid := mustOK(t, roundtrip(t, c, &payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: []kmip.Attribute{
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(128)},
	}}})).(*payloads.CreateResponsePayload).UniqueIdentifier
	_, aes := getKey(t, c, aid)
	for _, id := range []string{sid, aid} {
		mustOK(t, roundtrip(t, c, &payloads.ActivateRequestPayload{UniqueIdentifier: id}))
	}
	c.Close()
	k.stop()

	newKID, err := k.emu.Control().CreateKey(ctx, akvemu.DefaultVaultHost, "cmk2", 2048)
	if err != nil {
		t.Fatal(err)
	}
	rotSetKeyID(t, k.harness, newKID)
	k.start() // rewraps every key, objects included, under the new key
	k.stop()
	if err := k.emu.Control().SetKeyEnabled(ctx, akvemu.DefaultVaultHost, "cmk", false); err != nil {
		t.Fatal(err)
	}
	k.start()
	c = k.client(t, "engine", kmip.V1_0)
	for id, want := range map[string][]byte{sid: seed, aid: aes} {
		if _, got := getKey(t, c, id); !bytes.Equal(got, want) {
			t.Fatalf("Get(%s) through the new customer key returned other bytes", id)
		}
	}
	c.Close()
	k.stop()
	if _, errOut, code := runCLI(t, "rotate-cmk", "--config", k.cfgPath, "--finalize"); code != exitOK {
		t.Fatalf("rotate-cmk --finalize = %d: %s", code, errOut)
	}
	store, err := keystore.Open(k.cfg.Keystore.Dir, keystore.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	for _, id := range []string{sid, aid} {
		key, err := store.Key(id)
		if err != nil || len(key.Versions) != 1 || len(key.Versions[0].Copies) != 1 || key.Versions[0].Copies[0].KeyID != newKID {
			t.Fatalf("object %s after finalize: %+v, %v; want one copy, under %s", id, key.Versions, err, newKID)
		}
	}
}
