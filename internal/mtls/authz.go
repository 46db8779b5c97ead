package mtls

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// The roles a client identity can hold.
const (
	// RoleEngine is for the storage engine: read keys, wrap and unwrap, status.
	RoleEngine = "engine"
	// RoleAdmin is for operators; it may call every method in the table.
	RoleAdmin = "admin"
)

// Roles maps a client identity (see Identities for the syntax) to its roles,
// as the config file lists them.
type Roles map[string][]string

// openPrefixes are the services any verified client may call: health checks
// and reflection reveal nothing secret, and grpcurl and ghz need them.
var openPrefixes = []string{"/grpc.health.v1.Health/", "/grpc.reflection."}

// DefaultMethodRoles returns a new table of the role each KeyBrokerService
// method needs.
func DefaultMethodRoles() map[string]string {
	return map[string]string{
		keybrokerv1.KeyBrokerService_GetMasterKey_FullMethodName:  RoleEngine,
		keybrokerv1.KeyBrokerService_WrapDEK_FullMethodName:       RoleEngine,
		keybrokerv1.KeyBrokerService_UnwrapDEK_FullMethodName:     RoleEngine,
		keybrokerv1.KeyBrokerService_RewrapDEK_FullMethodName:     RoleEngine,
		keybrokerv1.KeyBrokerService_GetStatus_FullMethodName:     RoleEngine,
		keybrokerv1.KeyBrokerService_WatchKeyState_FullMethodName: RoleEngine,
		keybrokerv1.KeyBrokerService_RotateDEK_FullMethodName:     RoleAdmin,
		keybrokerv1.KeyBrokerService_Revalidate_FullMethodName:    RoleAdmin,
	}
}

// Authorizer decides per gRPC call whether the client certificate's
// identities hold the role the method needs. Methods missing from its table
// are refused, except health and reflection, which any client with a
// verified certificate may call. It is safe for concurrent use and is not
// changed after NewAuthorizer.
type Authorizer struct {
	roles   map[string][]string // canonical identity -> sorted roles
	methods map[string]string   // full method -> role
	log     *slog.Logger
}

// NewAuthorizer validates roles and methodRoles and returns an Authorizer.
// Identities are canonicalized with ParseIdentity; roles must be "engine" or
// "admin". A nil methodRoles means DefaultMethodRoles(); a health or
// reflection method listed there needs its role like any other. A nil logger
// discards. The maps are copied.
func NewAuthorizer(roles map[string][]string, methodRoles map[string]string, logger *slog.Logger) (*Authorizer, error) {
	if methodRoles == nil {
		methodRoles = DefaultMethodRoles()
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	a := &Authorizer{roles: make(map[string][]string, len(roles)), methods: make(map[string]string, len(methodRoles)), log: logger}
	for id, rs := range roles {
		c, err := ParseIdentity(id)
		if err != nil {
			return nil, err
		}
		if _, dup := a.roles[c]; dup {
			return nil, fmt.Errorf("%w: identity %q is listed twice (as %q once canonical); merge the entries", ErrInvalidIdentity, id, c)
		}
		if len(rs) == 0 {
			return nil, fmt.Errorf("%w: identity %q has no roles; give it %q or %q, or remove it", ErrInvalidRole, id, RoleEngine, RoleAdmin)
		}
		for _, r := range rs {
			if err := checkRole(r); err != nil {
				return nil, fmt.Errorf("identity %q: %w", id, err)
			}
		}
		sorted := slices.Clone(rs)
		slices.Sort(sorted)
		a.roles[c] = slices.Compact(sorted)
	}
	for m, r := range methodRoles {
		if !validMethod(m) {
			return nil, fmt.Errorf("%w: method %q: write the full gRPC method name, /package.Service/Method", ErrInvalidConfig, m)
		}
		if err := checkRole(r); err != nil {
			return nil, fmt.Errorf("method %q: %w", m, err)
		}
		a.methods[m] = r
	}
	return a, nil
}

func checkRole(r string) error {
	if r != RoleEngine && r != RoleAdmin {
		return fmt.Errorf("%w: %q: the roles are %q and %q", ErrInvalidRole, r, RoleEngine, RoleAdmin)
	}
	return nil
}

func validMethod(m string) bool {
	svc, name, ok := strings.Cut(strings.TrimPrefix(m, "/"), "/")
	return strings.HasPrefix(m, "/") && ok && svc != "" && name != "" && !strings.ContainsAny(name, "/ ") && !strings.Contains(svc, " ")
}

// Identity is an authenticated caller, as the interceptors put it into the
// context of every call they let through.
type Identity struct {
	// Name is the identity that granted the call, or the first one the
	// certificate presents when no role was needed.
	Name string
	// All lists every identity of the certificate, as Identities returns them.
	All []string
	// Roles is the union of the roles of all the identities, sorted.
	Roles []string
}

// LogValue makes an Identity log as its name and roles.
func (id Identity) LogValue() slog.Value {
	return slog.GroupValue(slog.String("name", id.Name), slog.Any("roles", id.Roles))
}

type identityKey struct{}

// IdentityFromContext returns the caller's identity that the interceptors
// stored, and whether there was one.
func IdentityFromContext(ctx context.Context) (Identity, bool) {
	switch id := ctx.Value(identityKey{}).(type) {
	case Identity:
		return id, true
	case *Identity: // shared by the calls of a connection: a copy is returned
		return *id, true
	}
	return Identity{}, false
}

// ContextWithIdentity returns a copy of ctx carrying id, for tests of code
// that reads IdentityFromContext.
func ContextWithIdentity(ctx context.Context, id Identity) context.Context {
	return context.WithValue(ctx, identityKey{}, id)
}

// UnaryInterceptor returns the interceptor that authorizes unary calls.
func (a *Authorizer) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		ctx, err := a.Authorize(ctx, info.FullMethod)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor returns the interceptor that authorizes streaming calls.
func (a *Authorizer) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		ctx, err := a.Authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return err
		}
		return handler(srv, &identityStream{ServerStream: ss, ctx: ctx})
	}
}

type identityStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *identityStream) Context() context.Context { return s.ctx }

// Authorize checks the verified client certificate of the call in ctx
// against fullMethod and returns ctx with the caller's Identity. Its errors
// are gRPC status errors: Unauthenticated without a verified certificate,
// PermissionDenied when no identity holds the needed role.
//
// On a connection made through Credentials the identities and roles were
// worked out at the handshake, and a call costs a lookup; otherwise they
// are worked out here, per call.
func (a *Authorizer) Authorize(ctx context.Context, fullMethod string) (context.Context, error) {
	p, _ := peer.FromContext(ctx)
	var ai *AuthInfo
	if p != nil {
		if cached, ok := authInfoFromPeer(p.AuthInfo); ok {
			ai = cached
		} else if info, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			ai = a.connAuthInfo(info)
		}
	}
	if ai == nil || ai.Leaf == nil {
		a.log.WarnContext(ctx, "mtls: call without a verified client certificate refused",
			"method", fullMethod, "peer", peerAddr(p))
		return ctx, status.Error(codes.Unauthenticated,
			"client certificate required: connect with --cert/--key issued by the broker's client CA")
	}
	ids := ai.ids
	need, listed := a.methods[fullMethod]
	if !listed && isOpen(fullMethod) {
		return contextWithIdentityPtr(ctx, ai.open), nil
	}
	if len(ids) == 0 {
		a.log.WarnContext(ctx, "mtls: client certificate without identity refused",
			"method", fullMethod, "peer", peerAddr(p), "subject", ai.Leaf.Subject.String())
		return ctx, status.Error(codes.PermissionDenied,
			"the client certificate has no identity (no URI SAN, DNS SAN or CN); issue one that names the client")
	}
	if !listed {
		a.log.ErrorContext(ctx, "mtls: method has no role in the table; refused",
			"identity", ids, "method", fullMethod, "peer", peerAddr(p))
		return ctx, status.Errorf(codes.PermissionDenied,
			"method %s is not open to any role; the broker's method table must list it", fullMethod)
	}
	if id := ai.byRole[need]; id != nil {
		if a.log.Enabled(ctx, slog.LevelDebug) {
			a.log.DebugContext(ctx, "mtls: call authorized", "identity", *id, "method", fullMethod, "peer", peerAddr(p))
		}
		return contextWithIdentityPtr(ctx, id), nil
	}
	a.log.WarnContext(ctx, "mtls: call refused: no role allows it",
		"identity", ids, "roles", ai.roles, "method", fullMethod, "need_role", need, "peer", peerAddr(p))
	return ctx, status.Errorf(codes.PermissionDenied,
		"client %s may not call %s: it needs role %q; list the identity under authorization.%s in the broker's configuration file and restart the broker",
		strings.Join(ids, ", "), fullMethod, need, need)
}

// grantee is the first of ids holding role need (or admin, which may call
// everything), and whether there is one.
func (a *Authorizer) grantee(ids []string, need string) (string, bool) {
	for _, idName := range ids {
		if rs := a.roles[idName]; slices.Contains(rs, need) || slices.Contains(rs, RoleAdmin) {
			return idName, true
		}
	}
	return "", false
}

func (a *Authorizer) rolesOf(ids []string) []string {
	var rs []string
	for _, id := range ids {
		rs = append(rs, a.roles[id]...)
	}
	slices.Sort(rs)
	return slices.Compact(rs)
}

func isOpen(method string) bool {
	return slices.ContainsFunc(openPrefixes, func(p string) bool { return strings.HasPrefix(method, p) })
}

// verifiedLeaf returns the leaf of the connection's verified client chain,
// or nil when there is none.
func verifiedLeaf(info credentials.TLSInfo) *x509.Certificate {
	// VerifiedChains, not PeerCertificates: only a chain to the client CA
	// counts, whatever ClientAuth mode the server was built with.
	if len(info.State.VerifiedChains) == 0 || len(info.State.VerifiedChains[0]) == 0 {
		return nil
	}
	return info.State.VerifiedChains[0][0]
}

// peerAddr is the peer's address for logs, "" when unknown.
func peerAddr(p *peer.Peer) string {
	if p == nil || p.Addr == nil {
		return ""
	}
	return p.Addr.Network() + ":" + p.Addr.String()
}
