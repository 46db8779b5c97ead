package kmip

import (
	"context"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/keystore"
)

// create makes a new AES key (128, 192 or 256 bits), Pre-Active, owned by
// the caller, wrapped and persisted before the answer. mongod sends AES,
// 256 and usage mask Encrypt|Decrypt, without a Name.
func (h *handlers) create(ctx context.Context, req *payloads.CreateRequestPayload) (*payloads.CreateResponsePayload, error) {
	if req.ObjectType != kmip.ObjectTypeSymmetricKey {
		return nil, fail(kmip.ResultReasonInvalidField, "Create makes Symmetric Keys only, not %s; use Register for Secret Data", ttlv.EnumStr(req.ObjectType))
	}
	t, err := parseTemplate(req.TemplateAttribute)
	if err != nil {
		return nil, err
	}
	if t.alg != kmip.CryptographicAlgorithmAES {
		return nil, fail(kmip.ResultReasonInvalidField, "Create needs Cryptographic Algorithm AES (got %s)", algName(t.alg))
	}
	switch t.length {
	case 128, 192, 256:
	default:
		return nil, fail(kmip.ResultReasonInvalidField, "Create needs Cryptographic Length 128, 192 or 256 (got %d)", t.length)
	}
	spec := keystore.Object{Type: keystore.ObjectSymmetricKey, Algorithm: "AES", Length: int(t.length), UsageMask: uint32(t.mask), Names: t.names}
	info, err := h.core.CreateObject(ctx, callOf(ctx).caller, spec)
	if err != nil {
		return nil, err
	}
	setPlaceholder(ctx, info.ID)
	return &payloads.CreateResponsePayload{ObjectType: kmip.ObjectTypeSymmetricKey, UniqueIdentifier: info.ID}, nil
}

func algName(a kmip.CryptographicAlgorithm) string {
	if a == 0 {
		return "none"
	}
	return ttlv.EnumStr(a)
}
