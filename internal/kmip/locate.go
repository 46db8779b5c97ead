package kmip

import (
	"context"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/keystore"
)

// locate finds the objects the caller may see by Name, Object Type and
// State (all given must match), oldest first.
func (h *handlers) locate(ctx context.Context, req *payloads.LocateRequestPayload) (*payloads.LocateResponsePayload, error) {
	var f broker.ObjectFilter
	for _, a := range req.Attribute {
		switch v := a.AttributeValue.(type) {
		case kmip.Name:
			f.Name = v.NameValue
		case kmip.ObjectType:
			switch v {
			case kmip.ObjectTypeSymmetricKey:
				f.Type = keystore.ObjectSymmetricKey
			case kmip.ObjectTypeSecretData:
				f.Type = keystore.ObjectSecretData
			default:
				return &payloads.LocateResponsePayload{LocatedItems: new(int32)}, nil // keybroker holds none
			}
		case kmip.State:
			st, ok := keystoreState(v)
			if !ok {
				return nil, fail(kmip.ResultReasonInvalidField, "unknown State %s", ttlv.EnumStr(v))
			}
			f.State = st
		default:
			return nil, fail(kmip.ResultReasonInvalidField, "Locate filters by Name, Object Type and State only, not %q", a.AttributeName)
		}
	}
	ids := h.core.LocateObjects(ctx, callOf(ctx).caller, f)
	n := int32(len(ids))
	if off := int(req.OffsetItems); off > 0 {
		ids = ids[min(off, len(ids)):]
	}
	if m := int(req.MaximumItems); m > 0 && m < len(ids) {
		ids = ids[:m]
	}
	return &payloads.LocateResponsePayload{LocatedItems: &n, UniqueIdentifier: ids}, nil
}
