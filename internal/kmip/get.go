package kmip

import (
	"context"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/keystore"
)

// get returns an object's key material in Raw format, never wrapped: the
// payload is Object Type, Unique Identifier, then the object, whose key
// block holds Key Format Type Raw, the Key Value, and for a symmetric key
// Cryptographic Algorithm and Length after it (what mongod parses).
// Refused while PAUSED.
func (h *handlers) get(ctx context.Context, req *payloads.GetRequestPayload) (*payloads.GetResponsePayload, error) {
	uid, err := id(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	if req.KeyWrappingSpecification != nil || req.KeyWrapType != 0 {
		return nil, fail(kmip.ResultReasonFeatureNotSupported, "keybroker returns keys unwrapped over mutually authenticated TLS: remove the Key Wrapping Specification")
	}
	if req.KeyCompressionType != 0 {
		return nil, fail(kmip.ResultReasonKeyCompressionTypeNotSupported, "keybroker does not compress keys")
	}
	c := callOf(ctx)
	info, key, err := h.core.ObjectKey(ctx, c.caller, uid)
	if err != nil {
		return nil, err
	}
	c.wipe.add(&key) // the field KeyMaterial.Bytes points at
	format := kmip.KeyFormatTypeRaw
	switch f := req.KeyFormatType; {
	case f == 0 || f == kmip.KeyFormatTypeRaw:
	case f == kmip.KeyFormatTypeOpaque && info.Type == keystore.ObjectSecretData:
		format = f
	default:
		clear(key)
		return nil, fail(kmip.ResultReasonKeyFormatTypeNotSupported, "keybroker returns keys in Raw format, not %s", ttlv.EnumStr(f))
	}
	block := kmip.KeyBlock{
		KeyFormatType: format,
		KeyValue:      &kmip.KeyValue{Plain: &kmip.PlainKeyValue{KeyMaterial: kmip.KeyMaterial{Bytes: &key}}},
	}
	resp := &payloads.GetResponsePayload{UniqueIdentifier: info.ID}
	if info.Type == keystore.ObjectSecretData {
		resp.ObjectType = kmip.ObjectTypeSecretData
		resp.Object = &kmip.SecretData{SecretDataType: kmipSecretDataType(info.SecretDataType), KeyBlock: block}
		return resp, nil
	}
	block.CryptographicAlgorithm = kmip.CryptographicAlgorithmAES
	block.CryptographicLength = int32(8 * len(key))
	resp.ObjectType = kmip.ObjectTypeSymmetricKey
	resp.Object = &kmip.SymmetricKey{KeyBlock: block}
	return resp, nil
}
