package kmip

import (
	"context"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/payloads"
)

// activate moves a Pre-Active object to Active; refused while PAUSED.
func (h *handlers) activate(ctx context.Context, req *payloads.ActivateRequestPayload) (*payloads.ActivateResponsePayload, error) {
	uid, err := id(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	info, err := h.core.ActivateObject(ctx, callOf(ctx).caller, uid)
	if err != nil {
		return nil, err
	}
	return &payloads.ActivateResponsePayload{UniqueIdentifier: info.ID}, nil
}

// revoke deactivates an object, or marks it Compromised when the reason
// says a key or CA compromise.
func (h *handlers) revoke(ctx context.Context, req *payloads.RevokeRequestPayload) (*payloads.RevokeResponsePayload, error) {
	uid, err := id(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	code := req.RevocationReason.RevocationReasonCode
	compromised := code == kmip.RevocationReasonCodeKeyCompromise || code == kmip.RevocationReasonCodeCACompromise
	info, err := h.core.RevokeObject(ctx, callOf(ctx).caller, uid, compromised)
	if err != nil {
		return nil, err
	}
	return &payloads.RevokeResponsePayload{UniqueIdentifier: info.ID}, nil
}

// destroy drops an object's key material; refused while it is Active. The
// object says Destroyed from then on, never Item Not Found.
func (h *handlers) destroy(ctx context.Context, req *payloads.DestroyRequestPayload) (*payloads.DestroyResponsePayload, error) {
	uid, err := id(ctx, req.UniqueIdentifier)
	if err != nil {
		return nil, err
	}
	info, err := h.core.DestroyObject(ctx, callOf(ctx).caller, uid)
	if err != nil {
		return nil, err
	}
	return &payloads.DestroyResponsePayload{UniqueIdentifier: info.ID}, nil
}
