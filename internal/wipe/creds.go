package wipe

import (
	"context"
	"net"

	"google.golang.org/grpc/credentials"
)

// Creds wraps transport credentials so that every connection they
// establish, server or client side, is a Conn: what gRPC's transport
// writes is zeroed once written.
func Creds(c credentials.TransportCredentials) credentials.TransportCredentials {
	return creds{c}
}

type creds struct {
	credentials.TransportCredentials
}

func (c creds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	return WrapConn(conn), ai, nil
}

func (c creds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	if err != nil {
		return nil, nil, err
	}
	return WrapConn(conn), ai, nil
}

func (c creds) Clone() credentials.TransportCredentials {
	return creds{c.TransportCredentials.Clone()}
}
