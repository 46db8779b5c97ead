package mtls

import (
	"context"
	"crypto/x509"
	"net"

	"google.golang.org/grpc/credentials"
)

// AuthInfo is the AuthInfo of a connection made through
// Authorizer.Credentials: the TLS state, and the client's identity and
// roles, worked out once at the handshake from the verified certificate.
// Every call on the connection is then authorized with a table lookup:
// the certificate is not parsed again, nothing is allocated for it.
type AuthInfo struct {
	credentials.TLSInfo
	// Leaf is the verified client certificate, nil when the client sent
	// none (such a connection's calls are all refused).
	Leaf *x509.Certificate
	// ids are the certificate's identities (Identities), roles their roles.
	ids, roles []string
	// open is the Identity for methods any verified client may call, and
	// byRole the one each role's methods are granted to (nil: refused).
	open   *Identity
	byRole map[string]*Identity
}

// Credentials wraps the server's transport credentials (TLS, possibly
// wrapped again, as long as the wrappers pass the AuthInfo through) so that
// each connection's AuthInfo is an AuthInfo the Authorizer reads instead
// of parsing the client certificate on every call.
func (a *Authorizer) Credentials(c credentials.TransportCredentials) credentials.TransportCredentials {
	return authCreds{TransportCredentials: c, a: a}
}

type authCreds struct {
	credentials.TransportCredentials
	a *Authorizer
}

func (c authCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	if tlsInfo, ok := ai.(credentials.TLSInfo); ok {
		ai = c.a.connAuthInfo(tlsInfo)
	}
	return conn, ai, nil
}

func (c authCreds) Clone() credentials.TransportCredentials {
	return authCreds{TransportCredentials: c.TransportCredentials.Clone(), a: c.a}
}

// connAuthInfo works out, once, what Authorize would per call.
func (a *Authorizer) connAuthInfo(info credentials.TLSInfo) *AuthInfo {
	ai := &AuthInfo{TLSInfo: info, Leaf: verifiedLeaf(info)}
	if ai.Leaf == nil {
		return ai
	}
	ai.ids = Identities(ai.Leaf)
	ai.roles = a.rolesOf(ai.ids)
	ai.open = &Identity{All: ai.ids, Roles: ai.roles}
	if len(ai.ids) > 0 {
		ai.open.Name = ai.ids[0]
	}
	ai.byRole = make(map[string]*Identity, 2)
	for _, need := range []string{RoleEngine, RoleAdmin} {
		if name, ok := a.grantee(ai.ids, need); ok {
			ai.byRole[need] = &Identity{Name: name, All: ai.ids, Roles: ai.roles}
		}
	}
	return ai
}

// authInfoFromPeer returns a peer's AuthInfo when its connection was made
// through Authorizer.Credentials.
func authInfoFromPeer(ai credentials.AuthInfo) (*AuthInfo, bool) {
	a, ok := ai.(*AuthInfo)
	return a, ok
}

// contextWithIdentityPtr returns ctx with a connection's precomputed
// identity, shared by its calls (IdentityFromContext returns a copy).
func contextWithIdentityPtr(ctx context.Context, id *Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}
