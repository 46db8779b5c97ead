package kmip

import (
	"context"
	"errors"
	"log/slog"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/kek"
)

// fail returns a KMIP error with reason and message.
func fail(reason kmip.ResultReason, format string, args ...any) error {
	return kmipserver.Errorf(reason, format, args...)
}

// toKMIP is the one place core errors become KMIP Result Reasons. Messages
// say what to do and never carry key material; a bug is logged and
// answered with General Failure.
func toKMIP(ctx context.Context, log *slog.Logger, op string, err error) error {
	if err == nil {
		return nil
	}
	var ke kmipserver.Error
	if errors.As(err, &ke) {
		return err
	}
	msg := err.Error()
	switch {
	case errors.Is(err, broker.ErrPaused):
		return fail(kmip.ResultReasonPermissionDenied, "%s; restore the broker's access to the customer key in Azure Key Vault, then run 'keybroker revalidate' or wait for the next validity check", msg)
	case errors.Is(err, broker.ErrNotFound):
		return fail(kmip.ResultReasonItemNotFound, "%s", msg)
	case errors.Is(err, broker.ErrInvalid):
		return fail(kmip.ResultReasonInvalidField, "%s", msg)
	case errors.Is(err, broker.ErrKeyState), errors.Is(err, broker.ErrNotAllowed):
		return fail(kmip.ResultReasonPermissionDenied, "%s", msg)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return fail(kmip.ResultReasonGeneralFailure, "the request timed out inside keybroker; retry")
	}
	switch kek.KindOf(err) {
	case kek.KindRevoked, kek.KindNotFound:
		return fail(kmip.ResultReasonPermissionDenied, "the customer key in Azure Key Vault refuses access (%s); restore access, then retry", msg)
	case kek.KindThrottled:
		return fail(kmip.ResultReasonGeneralFailure, "Azure Key Vault is throttling keybroker; retry later")
	case kek.KindUnavailable:
		return fail(kmip.ResultReasonGeneralFailure, "Azure Key Vault is unreachable and the key is not in memory; retry (%s)", msg)
	}
	log.ErrorContext(ctx, "kmip: internal error", "operation", op, "err", err)
	return fail(kmip.ResultReasonGeneralFailure, "internal error: this is a keybroker bug, the details are in the broker's log")
}
