package kmip

import (
	"bytes"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/broker"
)

// seedMessages are valid requests of every supported operation, at
// several versions, for the fuzz corpus and the table tests.
func seedMessages() [][]byte {
	aes := []kmip.Attribute{
		{AttributeName: kmip.AttributeNameCryptographicAlgorithm, AttributeValue: kmip.CryptographicAlgorithmAES},
		{AttributeName: kmip.AttributeNameCryptographicLength, AttributeValue: int32(256)},
		{AttributeName: kmip.AttributeNameCryptographicUsageMask, AttributeValue: kmip.CryptographicUsageEncrypt | kmip.CryptographicUsageDecrypt},
	}
	key := bytes.Repeat([]byte{1}, 32)
	seed := bytes.Repeat([]byte{2}, 96)
	pls := []kmip.OperationPayload{
		&payloads.DiscoverVersionsRequestPayload{},
		&payloads.QueryRequestPayload{QueryFunction: []kmip.QueryFunction{kmip.QueryFunctionOperations, kmip.QueryFunctionObjects}},
		&payloads.CreateRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: aes}},
		&payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSymmetricKey, TemplateAttribute: kmip.TemplateAttribute{Attribute: aes},
			Object: &kmip.SymmetricKey{KeyBlock: kmip.KeyBlock{KeyFormatType: kmip.KeyFormatTypeRaw, KeyValue: &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &key}}},
				CryptographicAlgorithm: kmip.CryptographicAlgorithmAES, CryptographicLength: 256}}},
		&payloads.RegisterRequestPayload{ObjectType: kmip.ObjectTypeSecretData,
			Object: &kmip.SecretData{SecretDataType: kmip.SecretDataTypeSeed, KeyBlock: kmip.KeyBlock{KeyFormatType: kmip.KeyFormatTypeRaw, KeyValue: &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &seed}}}}}},
		&payloads.GetRequestPayload{UniqueIdentifier: "master"},
		&payloads.GetAttributesRequestPayload{UniqueIdentifier: "master", AttributeName: []kmip.AttributeName{kmip.AttributeNameState}},
		&payloads.GetAttributeListRequestPayload{UniqueIdentifier: "master"},
		&payloads.ActivateRequestPayload{UniqueIdentifier: "1"},
		&payloads.LocateRequestPayload{Attribute: []kmip.Attribute{{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: "master", NameType: kmip.NameTypeUninterpretedTextString}}}},
		&payloads.AddAttributeRequestPayload{UniqueIdentifier: "1", Attribute: kmip.Attribute{AttributeName: kmip.AttributeNameName, AttributeValue: kmip.Name{NameValue: "n", NameType: kmip.NameTypeUninterpretedTextString}}},
		&payloads.RevokeRequestPayload{UniqueIdentifier: "1", RevocationReason: kmip.RevocationReason{RevocationReasonCode: kmip.RevocationReasonCodeKeyCompromise}},
		&payloads.DestroyRequestPayload{UniqueIdentifier: "1"},
		&payloads.EncryptRequestPayload{UniqueIdentifier: "master", Data: []byte("data"), CryptographicParameters: &kmip.CryptographicParameters{BlockCipherMode: kmip.BlockCipherModeGCM}},
		&payloads.DecryptRequestPayload{UniqueIdentifier: "master", Data: bytes.Repeat([]byte{3}, 32), IVCounterNonce: bytes.Repeat([]byte{4}, 16)},
		&payloads.RekeyRequestPayload{UniqueIdentifier: "master"},
	}
	var out [][]byte
	for _, v := range []kmip.ProtocolVersion{kmip.V1_0, kmip.V1_2, kmip.V1_4} {
		for _, pl := range pls {
			msg := kmip.NewRequestMessage(v, pl)
			out = append(out, ttlv.MarshalTTLV(&msg))
		}
	}
	// A Percona-style header: Maximum Response Size and Time Stamp; and
	// a batch of Create then Get by ID Placeholder.
	msg := kmip.NewRequestMessage(kmip.V1_0, &payloads.GetRequestPayload{UniqueIdentifier: "master"})
	msg.Header.MaximumResponseSize = 1 << 20
	out = append(out, ttlv.MarshalTTLV(&msg))
	msg = kmip.NewRequestMessage(kmip.V1_2, pls[2], &payloads.GetRequestPayload{}, &payloads.ActivateRequestPayload{})
	out = append(out, ttlv.MarshalTTLV(&msg))
	return out
}

func testServer(t testing.TB) *Server {
	s, err := New(Config{Core: newFakeCore(), TLS: testTLS(t), Now: func() time.Time { return time.Unix(1.7e9, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// checkResponse is what every answer must satisfy: it encodes and decodes
// back, has a Time Stamp and the Batch Count of its items, and every failed
// item has its Operation, a Result Reason and a Result Message.
func checkResponse(t *testing.T, resp *kmip.ResponseMessage) {
	t.Helper()
	if resp == nil || len(resp.BatchItem) == 0 {
		t.Fatal("no response or no batch item")
	}
	if resp.Header.TimeStamp.IsZero() || int(resp.Header.BatchCount) != len(resp.BatchItem) {
		t.Fatalf("header %+v: want a Time Stamp and Batch Count %d", resp.Header, len(resp.BatchItem))
	}
	for _, bi := range resp.BatchItem {
		if bi.ResultStatus != kmip.ResultStatusSuccess && (bi.ResultReason == 0 || bi.ResultMessage == "") {
			t.Fatalf("failed item %+v without a Result Reason or Message", bi)
		}
	}
	data := ttlv.MarshalTTLV(resp)
	var back kmip.ResponseMessage
	if err := ttlv.UnmarshalTTLV(data, &back); err != nil {
		t.Fatalf("the response does not decode: %v", err)
	}
}

// FuzzHandleMessage drives arbitrary bytes through the request path: TTLV
// decoding, the executor and every handler (on an in-memory core). Nothing
// may panic, and every answer must be a well-formed response.
func FuzzHandleMessage(f *testing.F) {
	for _, m := range seedMessages() {
		f.Add(m)
	}
	f.Add([]byte{0x42, 0x00, 0x78, 0x01, 0x00, 0x00, 0x00, 0x00})
	s := testServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > DefaultMaxMessageSize {
			return
		}
		for _, c := range []*conn{
			{caller: broker.Caller{Identity: "spiffe://x/engine"}},
			{caller: broker.Caller{Identity: "spiffe://x/admin", Admin: true}},
		} {
			resp, wipe := s.handle(c, bytes.Clone(data))
			checkResponse(t, resp)
			wipe.clear()
		}
	})
}
