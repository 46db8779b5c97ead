package kmip

import (
	"context"
	"slices"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/broker"
)

// The attributes keybroker keeps, in the order Get Attributes returns them
// when asked for all.
var keptAttributes = []kmip.AttributeName{
	kmip.AttributeNameUniqueIdentifier, kmip.AttributeNameObjectType, kmip.AttributeNameName,
	kmip.AttributeNameCryptographicAlgorithm, kmip.AttributeNameCryptographicLength, kmip.AttributeNameCryptographicUsageMask,
	kmip.AttributeNameState, kmip.AttributeNameInitialDate, kmip.AttributeNameActivationDate,
	kmip.AttributeNameDeactivationDate, kmip.AttributeNameLastChangeDate,
}

// OwnerAttribute is keybroker's custom attribute (a Text String) naming
// the client identity that owns an object; empty for a master key. It is
// returned only when asked for by name, for the admin listing.
const OwnerAttribute kmip.AttributeName = "x-keybroker-owner"

// getAttributes answers with exactly the attributes asked for that the
// object has (all of them when none is named). It works while PAUSED: the
// State then says Deactivated. It never answers with no attribute, which
// crashes Percona Server: an object always has its identifier, type and
// state, and asking only for attributes keybroker does not keep fails.
func (h *handlers) getAttributes(ctx context.Context, req *payloads.GetAttributesRequestPayload) (*payloads.GetAttributesResponsePayload, error) {
	uid, err := id(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	info, err := h.core.ObjectAttributes(ctx, callOf(ctx).caller, uid)
	if err != nil {
		return nil, err
	}
	names := req.AttributeName
	if len(names) == 0 {
		names = keptAttributes
	}
	resp := &payloads.GetAttributesResponsePayload{UniqueIdentifier: info.ID}
	for _, n := range names {
		resp.Attribute = append(resp.Attribute, attributes(info, n)...)
	}
	if len(resp.Attribute) == 0 {
		return nil, fail(kmip.ResultReasonItemNotFound, "object %s has none of the attributes asked for; keybroker keeps %s", info.ID, keptList())
	}
	return resp, nil
}

// getAttributeList names the attributes the object has.
func (h *handlers) getAttributeList(ctx context.Context, req *payloads.GetAttributeListRequestPayload) (*payloads.GetAttributeListResponsePayload, error) {
	uid, err := id(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	info, err := h.core.ObjectAttributes(ctx, callOf(ctx).caller, uid)
	if err != nil {
		return nil, err
	}
	resp := &payloads.GetAttributeListResponsePayload{UniqueIdentifier: info.ID}
	for _, n := range keptAttributes {
		if len(attributes(info, n)) > 0 {
			resp.AttributeName = append(resp.AttributeName, n)
		}
	}
	return resp, nil
}

// attributes returns the values of attribute n of info: none when the
// object has no such attribute, one per Name for Name.
func attributes(info broker.ObjectInfo, n kmip.AttributeName) []kmip.Attribute {
	one := func(v any) []kmip.Attribute { return []kmip.Attribute{{AttributeName: n, AttributeValue: v}} }
	switch n {
	case kmip.AttributeNameUniqueIdentifier:
		return one(info.ID)
	case kmip.AttributeNameObjectType:
		return one(kmipObjectType(info.Type))
	case kmip.AttributeNameName:
		var out []kmip.Attribute
		for i, name := range info.Names {
			a := kmip.Attribute{AttributeName: n, AttributeValue: kmip.Name{NameValue: name, NameType: kmip.NameTypeUninterpretedTextString}}
			if len(info.Names) > 1 {
				idx := int32(i)
				a.AttributeIndex = &idx
			}
			out = append(out, a)
		}
		return out
	case kmip.AttributeNameCryptographicAlgorithm:
		if a := algorithm(info); a != 0 {
			return one(a)
		}
	case kmip.AttributeNameCryptographicLength:
		return one(int32(info.Length))
	case kmip.AttributeNameCryptographicUsageMask:
		return one(kmip.CryptographicUsageMask(info.UsageMask))
	case kmip.AttributeNameState:
		return one(kmipState(info.State))
	case kmip.AttributeNameInitialDate:
		return one(kmipTime(info.Initial))
	case kmip.AttributeNameActivationDate:
		if !info.Activated.IsZero() {
			return one(kmipTime(info.Activated))
		}
	case kmip.AttributeNameDeactivationDate:
		if !info.Deactivated.IsZero() {
			return one(kmipTime(info.Deactivated))
		}
	case kmip.AttributeNameLastChangeDate:
		return one(kmipTime(info.LastChange))
	case OwnerAttribute:
		return []kmip.Attribute{{AttributeName: n, AttributeValue: ttlv.Value{Tag: kmip.TagAttributeValue, Value: info.Owner}}}
	}
	return nil
}

func keptList() string {
	out := ""
	for i, n := range keptAttributes {
		if i > 0 {
			out += ", "
		}
		out += string(n)
	}
	return out
}

// addAttribute adds a Name; it is the only attribute a client sets.
func (h *handlers) addAttribute(ctx context.Context, req *payloads.AddAttributeRequestPayload) (*payloads.AddAttributeResponsePayload, error) {
	uid, name, err := nameAttribute(ctx, req.UniqueIdentifier, req.Attribute)
	if err != nil {
		return nil, err
	}
	var idx int32
	info, err := h.core.SetObjectNames(ctx, callOf(ctx).caller, uid, func(names []string) ([]string, error) {
		idx = int32(len(names))
		return append(names, name), nil
	})
	if err != nil {
		return nil, err
	}
	a := req.Attribute
	a.AttributeIndex = &idx
	return &payloads.AddAttributeResponsePayload{UniqueIdentifier: info.ID, Attribute: a}, nil
}

// modifyAttribute replaces the Name at the given index (0 by default).
func (h *handlers) modifyAttribute(ctx context.Context, req *payloads.ModifyAttributeRequestPayload) (*payloads.ModifyAttributeResponsePayload, error) {
	uid, name, err := nameAttribute(ctx, req.UniqueIdentifier, req.Attribute)
	if err != nil {
		return nil, err
	}
	idx := index(req.Attribute.AttributeIndex)
	info, err := h.core.SetObjectNames(ctx, callOf(ctx).caller, uid, func(names []string) ([]string, error) {
		if int(idx) >= len(names) {
			return nil, fail(kmip.ResultReasonItemNotFound, "the object has no Name at index %d (it has %d); use Add Attribute", idx, len(names))
		}
		names[idx] = name
		return names, nil
	})
	if err != nil {
		return nil, err
	}
	return &payloads.ModifyAttributeResponsePayload{UniqueIdentifier: info.ID, Attribute: req.Attribute}, nil
}

// deleteAttribute removes the Name at the given index (0 by default).
func (h *handlers) deleteAttribute(ctx context.Context, req *payloads.DeleteAttributeRequestPayload) (*payloads.DeleteAttributeResponsePayload, error) {
	uid, err := id(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	if req.AttributeName != kmip.AttributeNameName {
		return nil, fail(kmip.ResultReasonPermissionDenied, "only the Name attribute can be deleted, not %q", req.AttributeName)
	}
	idx := index(req.AttributeIndex)
	var removed string
	info, err := h.core.SetObjectNames(ctx, callOf(ctx).caller, uid, func(names []string) ([]string, error) {
		if int(idx) >= len(names) {
			return nil, fail(kmip.ResultReasonItemNotFound, "the object has no Name at index %d (it has %d)", idx, len(names))
		}
		removed = names[idx]
		return slices.Delete(names, int(idx), int(idx)+1), nil
	})
	if err != nil {
		return nil, err
	}
	return &payloads.DeleteAttributeResponsePayload{UniqueIdentifier: info.ID, Attribute: kmip.Attribute{
		AttributeName: kmip.AttributeNameName, AttributeIndex: &idx,
		AttributeValue: kmip.Name{NameValue: removed, NameType: kmip.NameTypeUninterpretedTextString},
	}}, nil
}

// nameAttribute checks that a is a Name and returns its value.
func nameAttribute(ctx context.Context, uid string, a kmip.Attribute) (string, string, error) {
	u, err := id(ctx, uid)
	if err != nil {
		return "", "", err
	}
	if a.AttributeName != kmip.AttributeNameName {
		return "", "", fail(kmip.ResultReasonPermissionDenied, "keybroker lets clients set the Name attribute only, not %q", a.AttributeName)
	}
	n, ok := a.AttributeValue.(kmip.Name)
	if !ok || n.NameValue == "" {
		return "", "", fail(kmip.ResultReasonInvalidField, "the Name attribute needs a Name Value")
	}
	return u, n.NameValue, nil
}

func index(p *int32) int32 {
	if p == nil || *p < 0 {
		return 0
	}
	return *p
}
