package kmip

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/keystore"
)

// Core is what the KMIP handlers need of the broker (internal/broker's
// object API). Implementations are safe for concurrent use.
type Core interface {
	CreateObject(ctx context.Context, c broker.Caller, spec keystore.Object) (broker.ObjectInfo, error)
	RegisterObject(ctx context.Context, c broker.Caller, spec keystore.Object, material []byte) (broker.ObjectInfo, error)
	ObjectAttributes(ctx context.Context, c broker.Caller, id string) (broker.ObjectInfo, error)
	ObjectKey(ctx context.Context, c broker.Caller, id string) (broker.ObjectInfo, []byte, error)
	UseObject(ctx context.Context, c broker.Caller, id string, f func(info broker.ObjectInfo, key []byte) error) error
	ActivateObject(ctx context.Context, c broker.Caller, id string) (broker.ObjectInfo, error)
	RevokeObject(ctx context.Context, c broker.Caller, id string, compromised bool) (broker.ObjectInfo, error)
	DestroyObject(ctx context.Context, c broker.Caller, id string) (broker.ObjectInfo, error)
	SetObjectNames(ctx context.Context, c broker.Caller, id string, f func(names []string) ([]string, error)) (broker.ObjectInfo, error)
	LocateObjects(ctx context.Context, c broker.Caller, f broker.ObjectFilter) []string
}

var _ Core = (*broker.Broker)(nil)

// supportedOperations are the operations routed to a handler; Query lists
// them. Anything else is Operation Not Supported, with a message.
var supportedOperations = []kmip.Operation{
	kmip.OperationDiscoverVersions, kmip.OperationQuery,
	kmip.OperationCreate, kmip.OperationRegister, kmip.OperationGet,
	kmip.OperationGetAttributes, kmip.OperationGetAttributeList,
	kmip.OperationActivate, kmip.OperationLocate,
	kmip.OperationAddAttribute, kmip.OperationModifyAttribute, kmip.OperationDeleteAttribute,
	kmip.OperationRevoke, kmip.OperationDestroy,
	kmip.OperationEncrypt, kmip.OperationDecrypt,
}

// newExecutor routes each operation to its handler (one file each).
func (s *Server) newExecutor() *kmipserver.BatchExecutor {
	e := kmipserver.NewBatchExecutor()
	e.SetSupportedProtocolVersions(kmip.V1_0, kmip.V1_1, kmip.V1_2, kmip.V1_3, kmip.V1_4)
	h := &handlers{core: s.cfg.Core, log: s.log, now: s.cfg.Now}
	route := func(op kmip.Operation, hdl kmipserver.OperationHandler) { e.Route(op, s.recovering(op, hdl)) }
	route(kmip.OperationDiscoverVersions, kmipserver.HandleFunc(h.discoverVersions))
	route(kmip.OperationQuery, kmipserver.HandleFunc(h.query))
	route(kmip.OperationCreate, kmipserver.HandleFunc(h.create))
	route(kmip.OperationRegister, kmipserver.HandleFunc(h.register))
	route(kmip.OperationGet, kmipserver.HandleFunc(h.get))
	route(kmip.OperationGetAttributes, kmipserver.HandleFunc(h.getAttributes))
	route(kmip.OperationGetAttributeList, kmipserver.HandleFunc(h.getAttributeList))
	route(kmip.OperationActivate, kmipserver.HandleFunc(h.activate))
	route(kmip.OperationLocate, kmipserver.HandleFunc(h.locate))
	route(kmip.OperationAddAttribute, kmipserver.HandleFunc(h.addAttribute))
	route(kmip.OperationModifyAttribute, kmipserver.HandleFunc(h.modifyAttribute))
	route(kmip.OperationDeleteAttribute, kmipserver.HandleFunc(h.deleteAttribute))
	route(kmip.OperationRevoke, kmipserver.HandleFunc(h.revoke))
	route(kmip.OperationDestroy, kmipserver.HandleFunc(h.destroy))
	route(kmip.OperationEncrypt, kmipserver.HandleFunc(h.encrypt))
	route(kmip.OperationDecrypt, kmipserver.HandleFunc(h.decrypt))
	e.BatchItemUse(s.itemMiddleware)
	return e
}

// recovering turns a handler panic (a keybroker bug) into General Failure,
// logged through the server's logger: kmip-go would recover it too, but log
// it to the process-wide default logger.
func (s *Server) recovering(op kmip.Operation, next kmipserver.OperationHandler) kmipserver.OperationHandler {
	return kmipserver.HandleFunc(func(ctx context.Context, req kmip.OperationPayload) (resp kmip.OperationPayload, err error) {
		defer func() {
			if r := recover(); r != nil {
				s.log.ErrorContext(ctx, "kmip: operation handler panicked (a keybroker bug)", "operation", opName(op), "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				resp, err = nil, fail(kmip.ResultReasonGeneralFailure, "internal error: this is a keybroker bug, the details are in the broker's log")
			}
		}()
		return next.HandleOperation(ctx, req)
	})
}

// itemMiddleware maps core errors once, answers unsupported operations
// with a message, and measures every batch item.
func (s *Server) itemMiddleware(next kmipserver.BatchItemNext, ctx context.Context, bi *kmip.RequestBatchItem) (*kmip.ResponseBatchItem, error) {
	done := func(string) {}
	if m := s.cfg.Metrics; m != nil {
		ctx, done = m.Operation(ctx, opName(bi.Operation))
	}
	var resp *kmip.ResponseBatchItem
	var err error
	if !isSupported(bi.Operation) {
		resp = &kmip.ResponseBatchItem{Operation: bi.Operation, UniqueBatchItemID: bi.UniqueBatchItemID}
		err = fail(kmip.ResultReasonOperationNotSupported, "keybroker does not support the %s operation; it supports %s", ttlv.EnumStr(bi.Operation), supportedList())
	} else {
		resp, err = next(ctx, bi)
		err = toKMIP(ctx, s.log, opName(bi.Operation), err)
	}
	reason := ""
	if err != nil {
		reason = "GeneralFailure"
		if ke, ok := err.(kmipserver.Error); ok {
			reason = reasonName(ke.Reason)
		}
	}
	done(reason)
	if err != nil {
		s.log.DebugContext(ctx, "kmip: operation failed", "operation", opName(bi.Operation), "peer", callOf(ctx).peer, "identity", callOf(ctx).caller.Identity, "err", err)
	}
	return resp, err
}

func isSupported(op kmip.Operation) bool {
	for _, o := range supportedOperations {
		if o == op {
			return true
		}
	}
	return false
}

func supportedList() string {
	out := ""
	for i, o := range supportedOperations {
		if i > 0 {
			out += ", "
		}
		out += ttlv.EnumStr(o)
	}
	return out
}

// opName is a bounded label for an operation.
func opName(op kmip.Operation) string {
	if isKnownOperation(op) {
		return ttlv.EnumStr(op)
	}
	return "other"
}

func isKnownOperation(op kmip.Operation) bool {
	s := ttlv.EnumStr(op)
	return s != "" && (s[0] < '0' || s[0] > '9')
}

// reasonName is a bounded label for a result reason.
func reasonName(r kmip.ResultReason) string {
	s := ttlv.EnumStr(r)
	if s == "" || (s[0] >= '0' && s[0] <= '9') {
		return "other"
	}
	return s
}

// handlers holds what every operation handler needs.
type handlers struct {
	core Core
	log  interface {
		DebugContext(ctx context.Context, msg string, args ...any)
		InfoContext(ctx context.Context, msg string, args ...any)
	}
	now func() time.Time
}

// id resolves a request's Unique Identifier, or the batch's ID
// Placeholder when it has none.
func id(ctx context.Context, uid string) (string, error) {
	v, err := kmipserver.GetIdOrPlaceholder(ctx, uid)
	if err != nil {
		return "", fail(kmip.ResultReasonMissingData, "the request has no Unique Identifier and no earlier item of the batch set one")
	}
	return v, nil
}

// discoverVersions answers with the versions both sides speak, newest first.
func (h *handlers) discoverVersions(_ context.Context, req *payloads.DiscoverVersionsRequestPayload) (*payloads.DiscoverVersionsResponsePayload, error) {
	ours := []kmip.ProtocolVersion{kmip.V1_4, kmip.V1_3, kmip.V1_2, kmip.V1_1, kmip.V1_0}
	resp := &payloads.DiscoverVersionsResponsePayload{}
	if len(req.ProtocolVersion) == 0 {
		resp.ProtocolVersion = ours
		return resp, nil
	}
	for _, v := range req.ProtocolVersion {
		for _, o := range ours {
			if v == o {
				resp.ProtocolVersion = append(resp.ProtocolVersion, v)
			}
		}
	}
	return resp, nil
}

// query lists the operations and object types keybroker supports.
func (h *handlers) query(_ context.Context, req *payloads.QueryRequestPayload) (*payloads.QueryResponsePayload, error) {
	resp := &payloads.QueryResponsePayload{}
	for _, f := range req.QueryFunction {
		switch f {
		case kmip.QueryFunctionOperations:
			resp.Operations = append([]kmip.Operation(nil), supportedOperations...)
		case kmip.QueryFunctionObjects:
			resp.ObjectType = []kmip.ObjectType{kmip.ObjectTypeSymmetricKey, kmip.ObjectTypeSecretData}
		case kmip.QueryFunctionServerInformation:
			resp.VendorIdentification = "keybroker"
		}
	}
	return resp, nil
}
