package main

import (
	"context"
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
)

// answeredError marks an RPC error the broker itself sent: the call reached
// it, so the connection flags are right and the cause lies behind the broker
// (Key Vault, its state). Its message is the wrapped error's.
type answeredError struct{ err error }

func (e *answeredError) Error() string { return e.err.Error() }
func (e *answeredError) Unwrap() error { return e.err }

// brokerAnswered reports whether err came from the broker rather than from
// failing to reach it.
func brokerAnswered(err error) bool {
	var a *answeredError
	return errors.As(err, &a)
}

// markAnswered is a client interceptor that marks the errors the broker
// answered with: gRPC fills the call's peer only once a stream reached the
// server, so an error with a peer came from the broker.
func markAnswered(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var p peer.Peer
	err := invoker(ctx, method, req, reply, cc, append(opts, grpc.Peer(&p))...)
	if err != nil && p.Addr != nil {
		return &answeredError{err: err}
	}
	return err
}
