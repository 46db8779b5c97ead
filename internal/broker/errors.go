package broker

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/envelope"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
)

// The broker's own failure kinds; toStatus maps them (and the kinds of the
// packages below) to gRPC codes.
var (
	errInvalid    = errors.New("invalid request")
	errNotFound   = errors.New("not found")
	errKeyState   = errors.New("key not usable")
	errPausedBase = errors.New("broker paused")
)

// errPaused is returned for every key RPC while PAUSED.
type errPaused struct{ reason string }

func (e errPaused) Error() string {
	return "the broker is PAUSED and serves no key: " + e.reason
}

func (e errPaused) Is(target error) bool { return target == errPausedBase }

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errInvalid, fmt.Sprintf(format, args...))
}

// toStatus is the one place errors become gRPC status codes (DESIGN.md
// "Errors map to codes once, at the edge"). Messages say what to do and
// never carry key material; INTERNAL is for bugs and is logged.
func (b *Broker) toStatus(ctx context.Context, method string, err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codeOf(err)
	msg := err.Error()
	switch code {
	case codes.Internal:
		b.log.ErrorContext(ctx, "internal error", "method", method, "err", err)
		msg = "internal error: this is a keybroker bug, the details are in the broker's log"
	case codes.Unavailable:
		msg += " (retry: the broker serves keys already in memory; check network access to Key Vault)"
	case codes.ResourceExhausted:
		msg += " (Key Vault is throttling this broker: retry later)"
	}
	b.log.DebugContext(ctx, "rpc failed", "method", method, "code", code.String(), "err", err)
	return status.Error(code, msg)
}

// codeOf classifies err into a gRPC code.
func codeOf(err error) codes.Code {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	case errors.Is(err, errPausedBase), errors.Is(err, errKeyState):
		return codes.FailedPrecondition
	case errors.Is(err, errInvalid),
		errors.Is(err, envelope.ErrMalformed), errors.Is(err, envelope.ErrAuthentication),
		errors.Is(err, envelope.ErrTooLarge):
		return codes.InvalidArgument
	case errors.Is(err, errNotFound), errors.Is(err, keystore.ErrKeyNotFound):
		return codes.NotFound
	}
	switch kek.KindOf(err) {
	case kek.KindRevoked, kek.KindNotFound:
		// The customer's key is revoked, disabled or deleted: do not retry
		// until the customer fixes it.
		return codes.FailedPrecondition
	case kek.KindThrottled:
		return codes.ResourceExhausted
	case kek.KindUnavailable:
		return codes.Unavailable
	case kek.KindInvalidInput:
		// The vault refused what the broker sent: a keystore copy that does
		// not belong to the configured key, or a bug.
		return codes.FailedPrecondition
	}
	return codes.Internal
}
