package kmip

import (
	"context"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/keystore"
)

// maxMaterial bounds registered key material: an RSA-2048 customer key
// wraps at most 190 bytes with RSA-OAEP-256; libmongocrypt needs 96.
const maxMaterial = 128

// register stores a Symmetric Key (Percona Server: Raw AES 256) or Secret
// Data (libmongocrypt: a 96-byte Seed, Raw or Opaque) the client supplies,
// Pre-Active, owned by the caller, wrapped and persisted before the answer.
func (h *handlers) register(ctx context.Context, req *payloads.RegisterRequestPayload) (*payloads.RegisterResponsePayload, error) {
	t, err := parseTemplate(req.TemplateAttribute)
	if err != nil {
		return nil, err
	}
	var spec keystore.Object
	var material []byte
	switch obj := req.Object.(type) {
	case *kmip.SymmetricKey:
		if err := plainBlock(&obj.KeyBlock); err != nil {
			return nil, err
		}
		if obj.KeyBlock.KeyFormatType != kmip.KeyFormatTypeRaw && obj.KeyBlock.KeyFormatType != kmip.KeyFormatTypeTransparentSymmetricKey {
			return nil, fail(kmip.ResultReasonKeyFormatTypeNotSupported, "a Symmetric Key is registered in Raw format, not %s", ttlv.EnumStr(obj.KeyBlock.KeyFormatType))
		}
		b, err := obj.KeyMaterial()
		if err != nil {
			return nil, fail(kmip.ResultReasonInvalidField, "the Symmetric Key has no key material")
		}
		material = b
		alg := t.alg
		if alg == 0 {
			alg = obj.KeyBlock.CryptographicAlgorithm
		}
		if alg != kmip.CryptographicAlgorithmAES {
			return nil, fail(kmip.ResultReasonInvalidField, "keybroker registers AES symmetric keys only (got %s)", algName(alg))
		}
		if n := len(b); n != 16 && n != 24 && n != 32 {
			return nil, fail(kmip.ResultReasonInvalidField, "an AES key is 16, 24 or 32 bytes, not %d", n)
		}
		for _, l := range []int32{t.length, obj.KeyBlock.CryptographicLength} {
			if l != 0 && int(l) != 8*len(b) {
				return nil, fail(kmip.ResultReasonInvalidField, "Cryptographic Length %d does not match the %d-bit key", l, 8*len(b))
			}
		}
		spec = keystore.Object{Type: keystore.ObjectSymmetricKey, Algorithm: "AES"}
	case *kmip.SecretData:
		if err := plainBlock(&obj.KeyBlock); err != nil {
			return nil, err
		}
		b, err := obj.Data()
		if err != nil {
			return nil, fail(kmip.ResultReasonKeyFormatTypeNotSupported, "Secret Data is registered in Raw or Opaque format, not %s", ttlv.EnumStr(obj.KeyBlock.KeyFormatType))
		}
		name, ok := secretDataTypes[obj.SecretDataType]
		if !ok {
			return nil, fail(kmip.ResultReasonInvalidField, "Secret Data Type %s is not Seed or Password", ttlv.EnumStr(obj.SecretDataType))
		}
		material = b
		spec = keystore.Object{Type: keystore.ObjectSecretData, SecretDataType: name}
		if t.alg != 0 {
			spec.Algorithm = ttlv.EnumStr(t.alg)
		}
	default:
		return nil, fail(kmip.ResultReasonInvalidField, "keybroker registers Symmetric Keys and Secret Data, not %s", ttlv.EnumStr(req.ObjectType))
	}
	if len(material) == 0 || len(material) > maxMaterial {
		return nil, fail(kmip.ResultReasonInvalidField, "the key material is %d bytes; keybroker keeps 1 to %d (it is wrapped whole by the customer's RSA key)", len(material), maxMaterial)
	}
	spec.UsageMask = uint32(t.mask)
	spec.Names = t.names
	info, err := h.core.RegisterObject(ctx, callOf(ctx).caller, spec, material)
	if err != nil {
		return nil, err
	}
	setPlaceholder(ctx, info.ID)
	return &payloads.RegisterResponsePayload{UniqueIdentifier: info.ID}, nil
}

// plainBlock refuses a key block keybroker cannot store as given.
func plainBlock(kb *kmip.KeyBlock) error {
	switch {
	case kb.KeyWrappingData != nil:
		return fail(kmip.ResultReasonFeatureNotSupported, "keybroker registers plaintext key material only: remove the Key Wrapping Data")
	case kb.KeyCompressionType != 0:
		return fail(kmip.ResultReasonKeyCompressionTypeNotSupported, "keybroker does not take compressed keys")
	case kb.KeyValue == nil || kb.KeyValue.Plain == nil:
		return fail(kmip.ResultReasonInvalidField, "the key block has no plaintext Key Value")
	}
	return nil
}

// wipePayload clears key bytes a request payload carried.
func wipePayload(pl kmip.OperationPayload) {
	switch p := pl.(type) {
	case *payloads.RegisterRequestPayload:
		switch o := p.Object.(type) {
		case *kmip.SymmetricKey:
			wipeBlock(&o.KeyBlock)
		case *kmip.SecretData:
			wipeBlock(&o.KeyBlock)
		}
	case *payloads.EncryptRequestPayload:
		clear(p.Data)
	case *payloads.DecryptRequestPayload:
		clear(p.Data)
	}
}

func wipeBlock(kb *kmip.KeyBlock) {
	if kb.KeyValue == nil || kb.KeyValue.Plain == nil {
		return
	}
	m := kb.KeyValue.Plain.KeyMaterial
	if m.Bytes != nil {
		clear(*m.Bytes)
	}
	if m.TransparentSymmetricKey != nil {
		clear(m.TransparentSymmetricKey.Key)
	}
}
