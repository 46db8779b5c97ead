package kmip

import (
	"bytes"
	"crypto/cipher"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/wipe"
)

func seq(n int, start byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = start + byte(i)
	}
	return b
}

func getItem(key *[]byte) kmip.ResponseBatchItem {
	return kmip.ResponseBatchItem{Operation: kmip.OperationGet, ResultStatus: kmip.ResultStatusSuccess,
		ResponsePayload: &payloads.GetResponsePayload{ObjectType: kmip.ObjectTypeSymmetricKey, UniqueIdentifier: "k1",
			Object: &kmip.SymmetricKey{KeyBlock: kmip.KeyBlock{KeyFormatType: kmip.KeyFormatTypeRaw,
				KeyValue:               &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: key}}},
				CryptographicAlgorithm: kmip.CryptographicAlgorithmAES, CryptographicLength: int32(8 * len(*key))}}}}
}

func decryptItem(data *[]byte) (kmip.ResponseBatchItem, *[]byte) {
	pl := &payloads.DecryptResponsePayload{UniqueIdentifier: "k2", Data: *data}
	return kmip.ResponseBatchItem{Operation: kmip.OperationDecrypt, ResultStatus: kmip.ResultStatusSuccess, ResponsePayload: pl}, &pl.Data
}

// TestEncode: a response with key-carrying fields encodes to exactly what
// kmip-go gives, into a buffer that release zeroes, the fields keep their
// bytes, and the bytes never pass through kmip-go's encoder.
func TestEncode(t *testing.T) {
	resp := func(items ...kmip.ResponseBatchItem) *kmip.ResponseMessage {
		return &kmip.ResponseMessage{Header: kmip.ResponseHeader{ProtocolVersion: kmip.V1_2, TimeStamp: time.Unix(1700000000, 0), BatchCount: int32(len(items))}, BatchItem: items}
	}
	k32, k96, big := seq(32, 1), seq(96, 40), bytes.Repeat([]byte{0x5a, 0xa5, 0x00}, 3000)
	small := seq(3, 9)
	dec1, p1 := decryptItem(&big)
	dec2, p2 := decryptItem(&small)
	empty := []byte{}
	dec3, p3 := decryptItem(&empty)
	tests := []struct {
		name    string
		resp    *kmip.ResponseMessage
		secrets []*[]byte
	}{
		{"Get of a symmetric key", resp(getItem(&k32)), []*[]byte{&k32}},
		{"Get of secret data", resp(getItem(&k96)), []*[]byte{&k96}},
		{"a field listed twice", resp(getItem(&k96)), []*[]byte{&k96, &k96}},
		{"Decrypt over a page", resp(dec1), []*[]byte{p1}},
		{"batch of Get, Decrypt and an empty Decrypt", resp(getItem(&k32), dec2, dec3), []*[]byte{&k32, p2, p3}},
		{"no secret", resp(kmip.ResponseBatchItem{Operation: kmip.OperationActivate, ResultStatus: kmip.ResultStatusSuccess,
			ResponsePayload: &payloads.ActivateResponsePayload{UniqueIdentifier: "k1"}}), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := ttlv.MarshalTTLV(tc.resp)
			var before [][]byte
			for _, p := range tc.secrets {
				before = append(before, bytes.Clone(*p))
			}
			e := encode(tc.resp, tc.secrets)
			if !bytes.Equal(e.data, want) {
				t.Fatalf("encode() = %x\nwant kmip-go's %x", e.data, want)
			}
			for i, p := range tc.secrets {
				if !bytes.Equal(*p, before[i]) {
					t.Errorf("secret %d after encode = %x, want its bytes back", i, *p)
				}
			}
			data := e.data
			e.release()
			if len(tc.secrets) > 0 && !bytes.Equal(data, make([]byte, len(data))) {
				t.Errorf("release() left the encoded response in its buffer")
			}
		})
	}
}

// TestEncodeKeepsKeyOutOfEncoder: the encodings encode makes (kmip-go's
// buffers, garbage afterwards) never hold the key: marshalling is swapped
// for one that records what it produced.
func TestEncodeKeepsKeyOutOfEncoder(t *testing.T) {
	key := seq(32, 100)
	r := &kmip.ResponseMessage{Header: kmip.ResponseHeader{ProtocolVersion: kmip.V1_2, TimeStamp: time.Unix(1700000000, 0), BatchCount: 1}, BatchItem: []kmip.ResponseBatchItem{getItem(&key)}}
	var seen [][]byte
	old := marshal
	marshal = func(v any) []byte { b := old(v); seen = append(seen, bytes.Clone(b)); return b }
	defer func() { marshal = old }()
	e := encode(r, []*[]byte{&key})
	defer e.release()
	if !bytes.Contains(e.data, key) {
		t.Fatalf("the encoded response does not carry the key")
	}
	if len(seen) != 2 {
		t.Fatalf("encode marshalled %d times, want 2 (zeros, then marks)", len(seen))
	}
	for i, b := range seen {
		if bytes.Contains(b, key) {
			t.Errorf("kmip-go's encoding %d holds the key", i)
		}
	}
}

// TestCryptWipesSchedules: Encrypt and Decrypt round-trip in every mode,
// and the key schedules a call builds (the block and the mode's copy) are
// found and zeroed.
func TestCryptWipesSchedules(t *testing.T) {
	key := seq(32, 7)
	plain := seq(45, 3)
	tests := []struct {
		name     string
		m        mode
		iv       []byte
		separate bool
	}{
		{"GCM", mode{gcm: true, tagLen: 16}, seq(12, 1), false},
		{"GCM, separate tag", mode{gcm: true, tagLen: 16}, seq(12, 1), true},
		{"GCM, 16-byte IV", mode{gcm: true, tagLen: 16}, seq(16, 1), false},
		{"GCM, 12-byte tag", mode{gcm: true, tagLen: 12}, seq(12, 1), true},
		{"CBC, PKCS5", mode{pad: true}, seq(16, 1), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct, tag, err := sealData(key, tc.m, tc.iv, &payloads.EncryptRequestPayload{Data: plain}, tc.separate)
			if err != nil {
				t.Fatalf("sealData err = %v", err)
			}
			if tc.separate != (len(tag) > 0) {
				t.Fatalf("sealData tag = %x with separate %v", tag, tc.separate)
			}
			got, err := openData(key, tc.m, tc.iv, &payloads.DecryptRequestPayload{Data: ct, AuthenticatedEncryptionTag: tag}, tc.separate)
			if err != nil || !bytes.Equal(got, plain) {
				t.Fatalf("openData = %x, %v; want the plaintext", got, err)
			}
		})
	}
	// The values the calls build, wiped as they wipe them.
	var s schedules
	block, err := newBlock(key, &s)
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGCM(block, 12, 16)
	if err != nil {
		t.Fatal(err)
	}
	s.add(g)
	s.add(cipher.NewCBCEncrypter(block, seq(16, 1)))
	s.add(cipher.NewCBCDecrypter(block, seq(16, 1)))
	var mems [][]byte
	for i, v := range s {
		m := wipe.Memory(v)
		if m == nil {
			t.Fatalf("value %d (%T): wipe cannot reach its key schedule", i, v)
		}
		if !bytes.Contains(m, key[:16]) && i == 0 {
			t.Errorf("the AES block's memory does not hold the key's first round key")
		}
		mems = append(mems, m)
	}
	s.wipe()
	for i, m := range mems {
		if !bytes.Equal(m, make([]byte, len(m))) {
			t.Errorf("value %d (%T) not zeroed by wipe", i, s[i])
		}
	}
}
