package mtls

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

const (
	engineID = "spiffe://keybroker.dev/engine"
	adminID  = "spiffe://keybroker.dev/admin"
)

var testRoles = Roles{
	engineID:        {RoleEngine},
	adminID:         {RoleAdmin},
	"DNS:Ops.Local": {RoleAdmin},
	"cn:batch":      {RoleEngine, RoleEngine},
}

func TestNewAuthorizerErrors(t *testing.T) {
	tests := []struct {
		name    string
		roles   Roles
		methods map[string]string
		wantErr error
		wantMsg string
	}{
		{"bare identity", Roles{"engine": {RoleEngine}}, nil, ErrInvalidIdentity, "has no type"},
		{"unknown role", Roles{engineID: {"reader"}}, nil, ErrInvalidRole, `"reader"`},
		{"role case", Roles{engineID: {"Admin"}}, nil, ErrInvalidRole, "the roles are"},
		{"no roles", Roles{engineID: {}}, nil, ErrInvalidRole, "has no roles"},
		{"duplicate after canonicalization", Roles{"dns:a.local": {RoleEngine}, "DNS:A.local": {RoleAdmin}}, nil, ErrInvalidIdentity, "listed twice"},
		{"method without slash", Roles{}, map[string]string{"keybroker.v1.KeyBrokerService/GetStatus": RoleEngine}, ErrInvalidConfig, "full gRPC method name"},
		{"method without name", Roles{}, map[string]string{"/keybroker.v1.KeyBrokerService/": RoleEngine}, ErrInvalidConfig, "full gRPC method name"},
		{"method role unknown", Roles{}, map[string]string{"/a.B/C": "root"}, ErrInvalidRole, `"root"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewAuthorizer(tc.roles, tc.methods, nil)
			if a != nil || !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("NewAuthorizer() = %v, %v, want %v mentioning %q", a, err, tc.wantErr, tc.wantMsg)
			}
		})
	}
}

// peerContext is the context of a call from a client whose verified chain
// starts with cert (nil: a TLS peer with no verified chain).
func peerContext(cert *x509.Certificate) context.Context {
	state := tls.ConnectionState{}
	if cert != nil {
		state.VerifiedChains = [][]*x509.Certificate{{cert}}
	}
	return peer.NewContext(context.Background(), &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
		AuthInfo: credentials.TLSInfo{State: state},
	})
}

func certFor(t *testing.T, uri, dns, cn string) *x509.Certificate {
	t.Helper()
	c := &x509.Certificate{Subject: pkix.Name{CommonName: cn}}
	if uri != "" {
		c.URIs = []*url.URL{mustURL(t, uri)}
	}
	if dns != "" {
		c.DNSNames = []string{dns}
	}
	return c
}

func TestAuthorizeUnauthenticated(t *testing.T) {
	var logs syncBuffer
	a, err := NewAuthorizer(testRoles, nil, newLogger(&logs))
	if err != nil {
		t.Fatalf("NewAuthorizer err = %v, want nil", err)
	}
	unverified := peerContext(nil)
	// A peer certificate that was presented but not verified must not count.
	st := tls.ConnectionState{PeerCertificates: []*x509.Certificate{certFor(t, adminID, "", "")}}
	presentedOnly := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40001}, AuthInfo: credentials.TLSInfo{State: st}})
	insecure := peer.NewContext(context.Background(), &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40002}})
	tests := []struct {
		name   string
		ctx    context.Context
		method string
	}{
		{"no peer", context.Background(), keybrokerv1.KeyBrokerService_GetStatus_FullMethodName},
		{"TLS peer without verified chain", unverified, keybrokerv1.KeyBrokerService_GetMasterKey_FullMethodName},
		{"unverified peer certificate", presentedOnly, keybrokerv1.KeyBrokerService_RotateDEK_FullMethodName},
		{"no TLS", insecure, keybrokerv1.KeyBrokerService_GetStatus_FullMethodName},
		{"health still needs a certificate", unverified, "/grpc.health.v1.Health/Check"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			called := false
			_, err := a.UnaryInterceptor()(tc.ctx, nil, &grpc.UnaryServerInfo{FullMethod: tc.method}, func(context.Context, any) (any, error) {
				called = true
				return nil, nil
			})
			if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "client certificate required") {
				t.Errorf("interceptor(%s) err = %v, want Unauthenticated: client certificate required", tc.method, err)
			}
			if called {
				t.Errorf("handler called for an unauthenticated call")
			}
			if !strings.Contains(logs.String(), "method="+tc.method) {
				t.Errorf("logs = %q, want a line with method=%s", logs.String(), tc.method)
			}
		})
	}
	if !strings.Contains(logs.String(), "peer=tcp:127.0.0.1:40001") {
		t.Errorf("logs = %q, want the peer address", logs.String())
	}
}

func TestAuthorize(t *testing.T) {
	var logs syncBuffer
	a, err := NewAuthorizer(testRoles, nil, newLogger(&logs))
	if err != nil {
		t.Fatalf("NewAuthorizer err = %v, want nil", err)
	}
	engine := certFor(t, engineID, "", "engine")
	admin := certFor(t, adminID, "", "admin")
	opsDNS := certFor(t, "", "ops.local", "")
	batchCN := certFor(t, "", "", "batch")
	nobody := certFor(t, "spiffe://keybroker.dev/nobody", "nobody.local", "nobody")
	anonymous := certFor(t, "", "", "")
	// An engine URI plus a CN with admin-free roles: union of roles, name of the granting one.
	mixed := certFor(t, "spiffe://keybroker.dev/other", "", "batch")

	const (
		getKey = keybrokerv1.KeyBrokerService_GetMasterKey_FullMethodName
		rotate = keybrokerv1.KeyBrokerService_RotateDEK_FullMethodName
		reval  = keybrokerv1.KeyBrokerService_Revalidate_FullMethodName
		health = "/grpc.health.v1.Health/Check"
		refl   = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	)
	tests := []struct {
		name      string
		cert      *x509.Certificate
		method    string
		want      codes.Code
		wantName  string
		wantRoles []string
		wantMsg   string
	}{
		{"engine gets key", engine, getKey, codes.OK, engineID, []string{RoleEngine}, ""},
		{"engine may not rotate", engine, rotate, codes.PermissionDenied, "", nil, `client spiffe://keybroker.dev/engine, cn:engine may not call /keybroker.v1.KeyBrokerService/RotateDEK: it needs role "admin"`},
		{"admin rotates", admin, rotate, codes.OK, adminID, []string{RoleAdmin}, ""},
		{"admin gets key", admin, getKey, codes.OK, adminID, []string{RoleAdmin}, ""},
		{"admin by DNS", opsDNS, reval, codes.OK, "dns:ops.local", []string{RoleAdmin}, ""},
		{"engine by CN", batchCN, getKey, codes.OK, "cn:batch", []string{RoleEngine}, ""},
		{"second identity grants", mixed, getKey, codes.OK, "cn:batch", []string{RoleEngine}, ""},
		{"no role", nobody, getKey, codes.PermissionDenied, "", nil, `it needs role "engine"`},
		{"no identity", anonymous, getKey, codes.PermissionDenied, "", nil, "has no identity"},
		{"unknown method denied even for admin", admin, "/keybroker.v1.KeyBrokerService/DropAll", codes.PermissionDenied, "", nil, "not open to any role"},
		{"health open to no role", nobody, health, codes.OK, "spiffe://keybroker.dev/nobody", nil, ""},
		{"reflection open to no identity", anonymous, refl, codes.OK, "", nil, ""},
		{"health keeps the roles", engine, health, codes.OK, engineID, []string{RoleEngine}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got Identity
			var gotOK bool
			_, err := a.UnaryInterceptor()(peerContext(tc.cert), nil, &grpc.UnaryServerInfo{FullMethod: tc.method}, func(ctx context.Context, _ any) (any, error) {
				got, gotOK = IdentityFromContext(ctx)
				return nil, nil
			})
			if status.Code(err) != tc.want {
				t.Fatalf("interceptor(%s) err = %v, want code %v", tc.method, err, tc.want)
			}
			if tc.want != codes.OK {
				if !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
					t.Errorf("interceptor(%s) message = %q, want it to contain %q", tc.method, status.Convert(err).Message(), tc.wantMsg)
				}
				if gotOK {
					t.Errorf("handler ran for a refused call")
				}
				return
			}
			if !gotOK || got.Name != tc.wantName || !slices.Equal(got.Roles, tc.wantRoles) || !slices.Equal(got.All, Identities(tc.cert)) {
				t.Errorf("IdentityFromContext = %+v, %v, want name %q roles %q", got, gotOK, tc.wantName, tc.wantRoles)
			}
		})
	}
	// Refusals are logged with identity, method, needed role and peer.
	line := ""
	for l := range strings.Lines(logs.String()) {
		if strings.Contains(l, "no role allows it") && strings.Contains(l, "RotateDEK") {
			line = l
		}
	}
	for _, want := range []string{engineID, "method=" + rotate, "need_role=admin", "peer=tcp:127.0.0.1:40000"} {
		if !strings.Contains(line, want) {
			t.Errorf("refusal log line = %q, want it to contain %q", line, want)
		}
	}
}

type fakeStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s fakeStream) Context() context.Context { return s.ctx }

func TestStreamInterceptor(t *testing.T) {
	a, err := NewAuthorizer(testRoles, nil, nil)
	if err != nil {
		t.Fatalf("NewAuthorizer err = %v, want nil", err)
	}
	info := &grpc.StreamServerInfo{FullMethod: keybrokerv1.KeyBrokerService_WatchKeyState_FullMethodName, IsServerStream: true}
	tests := []struct {
		name string
		ctx  context.Context
		want codes.Code
	}{
		{"engine", peerContext(certFor(t, engineID, "", "")), codes.OK},
		{"no role", peerContext(certFor(t, "spiffe://keybroker.dev/nobody", "", "")), codes.PermissionDenied},
		{"no certificate", peerContext(nil), codes.Unauthenticated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var id Identity
			err := a.StreamInterceptor()(nil, fakeStream{ctx: tc.ctx}, info, func(_ any, ss grpc.ServerStream) error {
				id, _ = IdentityFromContext(ss.Context())
				return nil
			})
			if status.Code(err) != tc.want {
				t.Fatalf("stream interceptor err = %v, want %v", err, tc.want)
			}
			if tc.want == codes.OK && id.Name != engineID {
				t.Errorf("IdentityFromContext(stream) name = %q, want %q", id.Name, engineID)
			}
		})
	}
}

func TestDefaultMethodRoles(t *testing.T) {
	m := DefaultMethodRoles()
	// Every method of the service is listed, so none is denied by accident.
	for _, md := range keybrokerv1.KeyBrokerService_ServiceDesc.Methods {
		if _, ok := m["/"+keybrokerv1.KeyBrokerService_ServiceDesc.ServiceName+"/"+md.MethodName]; !ok {
			t.Errorf("DefaultMethodRoles lacks %s", md.MethodName)
		}
	}
	for _, sd := range keybrokerv1.KeyBrokerService_ServiceDesc.Streams {
		if _, ok := m["/"+keybrokerv1.KeyBrokerService_ServiceDesc.ServiceName+"/"+sd.StreamName]; !ok {
			t.Errorf("DefaultMethodRoles lacks %s", sd.StreamName)
		}
	}
	if m[keybrokerv1.KeyBrokerService_RotateDEK_FullMethodName] != RoleAdmin || m[keybrokerv1.KeyBrokerService_Revalidate_FullMethodName] != RoleAdmin {
		t.Errorf("RotateDEK and Revalidate need %q, %q, want admin", m[keybrokerv1.KeyBrokerService_RotateDEK_FullMethodName], m[keybrokerv1.KeyBrokerService_Revalidate_FullMethodName])
	}
	m[keybrokerv1.KeyBrokerService_RotateDEK_FullMethodName] = RoleEngine
	if DefaultMethodRoles()[keybrokerv1.KeyBrokerService_RotateDEK_FullMethodName] != RoleAdmin {
		t.Errorf("DefaultMethodRoles returned a shared map; want a fresh one per call")
	}
}

func TestIdentityLogValue(t *testing.T) {
	var logs syncBuffer
	newLogger(&logs).Info("x", "caller", Identity{Name: engineID, All: []string{engineID, "cn:engine"}, Roles: []string{RoleEngine}})
	if want := "caller.name=" + engineID + " caller.roles=[engine]"; !strings.Contains(logs.String(), want) {
		t.Errorf("log = %q, want %q", logs.String(), want)
	}
}
