package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/pki"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// echoService answers with the caller's identity, so the tests see what the
// interceptors put into the context.
type echoService struct {
	keybrokerv1.UnimplementedKeyBrokerServiceServer
}

func callerOf(ctx context.Context) string {
	id, ok := IdentityFromContext(ctx)
	if !ok {
		return "<none>"
	}
	out := id.Name + " " + strings.Join(id.Roles, ",")
	if p, ok := peer.FromContext(ctx); ok {
		if _, perConn := p.AuthInfo.(*AuthInfo); perConn {
			out += " [per-connection]"
		}
	}
	return out
}

func (echoService) GetStatus(ctx context.Context, _ *keybrokerv1.GetStatusRequest) (*keybrokerv1.GetStatusResponse, error) {
	return &keybrokerv1.GetStatusResponse{Reason: callerOf(ctx)}, nil
}

func (echoService) RotateDEK(ctx context.Context, _ *keybrokerv1.RotateDEKRequest) (*keybrokerv1.RotateDEKResponse, error) {
	return &keybrokerv1.RotateDEKResponse{Version: callerOf(ctx)}, nil
}

func (echoService) WatchKeyState(_ *keybrokerv1.WatchKeyStateRequest, s grpc.ServerStreamingServer[keybrokerv1.WatchKeyStateResponse]) error {
	return s.Send(&keybrokerv1.WatchKeyStateResponse{Event: &keybrokerv1.KeyStateEvent{Reason: callerOf(s.Context())}})
}

type testServer struct {
	files    pki.Files
	tcpAddr  string
	unixPath string
	logs     *syncBuffer
	// nobody and foreign are client certificates with no role and from
	// another CA.
	nobodyCert, nobodyKey   string
	foreignCert, foreignKey string
}

// startServer runs one gRPC server with real mTLS on 127.0.0.1 and on a unix
// socket, both stopped at the end of the test.
func startServer(t *testing.T, minVersion uint16) *testServer {
	t.Helper()
	return startServerAuth(t, minVersion, false)
}

// startServerAuth is startServer; perConn wraps the server's credentials
// with Authorizer.Credentials, so identities are worked out per connection.
func startServerAuth(t *testing.T, minVersion uint16, perConn bool) *testServer {
	t.Helper()
	ts := &testServer{files: devPKI(t), logs: &syncBuffer{}}
	dir := ts.files.Dir
	ts.nobodyCert, ts.nobodyKey = filepath.Join(dir, "nobody.pem"), filepath.Join(dir, "nobody-key.pem")
	if err := pki.IssueClient(ts.files.CA, ts.files.CAKey, "spiffe://keybroker.dev/nobody", ts.nobodyCert, ts.nobodyKey, pki.Options{}); err != nil {
		t.Fatalf("IssueClient(nobody) err = %v, want nil", err)
	}
	other := t.TempDir()
	otherCA, otherCAKey := filepath.Join(other, "ca.pem"), filepath.Join(other, "ca-key.pem")
	if err := pki.NewCA(otherCA, otherCAKey, pki.Options{}); err != nil {
		t.Fatalf("NewCA err = %v, want nil", err)
	}
	ts.foreignCert, ts.foreignKey = filepath.Join(other, "engine.pem"), filepath.Join(other, "engine-key.pem")
	// Same identity as the real engine: only the CA differs.
	if err := pki.IssueClient(otherCA, otherCAKey, ts.files.EngineIdentity, ts.foreignCert, ts.foreignKey, pki.Options{}); err != nil {
		t.Fatalf("IssueClient(foreign) err = %v, want nil", err)
	}

	logger := newLogger(ts.logs)
	tlsCfg, err := ServerTLS(ServerConfig{CertFile: ts.files.ServerCert, KeyFile: ts.files.ServerKey, ClientCAFile: ts.files.CA, MinVersion: minVersion, Logger: logger})
	if err != nil {
		t.Fatalf("ServerTLS err = %v, want nil", err)
	}
	authz, err := NewAuthorizer(Roles{
		ts.files.EngineIdentity: {RoleEngine},
		ts.files.AdminIdentity:  {RoleAdmin},
	}, nil, logger)
	if err != nil {
		t.Fatalf("NewAuthorizer err = %v, want nil", err)
	}
	creds := credentials.NewTLS(tlsCfg)
	if perConn {
		creds = authz.Credentials(creds)
	}
	srv := grpc.NewServer(
		grpc.Creds(creds),
		grpc.ChainUnaryInterceptor(authz.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(authz.StreamInterceptor()),
	)
	keybrokerv1.RegisterKeyBrokerServiceServer(srv, echoService{})
	healthpb.RegisterHealthServer(srv, health.NewServer())
	reflection.Register(srv)

	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("Listen(tcp) err = %v, want nil", err)
	}
	ts.tcpAddr = tcp.Addr().String()
	// Unix socket paths are limited to ~100 bytes; t.TempDir can be longer.
	sockDir, err := os.MkdirTemp("", "kb-mtls-")
	if err != nil {
		t.Fatalf("MkdirTemp err = %v, want nil", err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	ts.unixPath = filepath.Join(sockDir, "broker.sock")
	unix, err := net.Listen("unix", ts.unixPath)
	if err != nil {
		t.Fatalf("Listen(unix) err = %v, want nil", err)
	}
	done := make(chan error, 2)
	go func() { done <- srv.Serve(tcp) }()
	go func() { done <- srv.Serve(unix) }()
	t.Cleanup(func() {
		srv.Stop()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("Serve err = %v, want nil after Stop", err)
			}
		}
	})
	return ts
}

// dial connects to the server over network ("tcp" or "unix") with cfg.
func (ts *testServer) dial(t *testing.T, network string, cfg *tls.Config) *grpc.ClientConn {
	t.Helper()
	target := ts.tcpAddr
	if network == "unix" {
		target = "unix://" + ts.unixPath
		cfg = cfg.Clone()
		cfg.ServerName = "localhost"
	}
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatalf("grpc.NewClient(%q) err = %v, want nil", target, err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func clientTLS(t *testing.T, ca, cert, key string) *tls.Config {
	t.Helper()
	cfg, err := ClientTLS(ClientConfig{CAFile: ca, CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatalf("ClientTLS(%s) err = %v, want nil", filepath.Base(cert), err)
	}
	return cfg
}

func callCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// call runs one RPC by name and returns the caller the server saw.
func call(ctx context.Context, cc *grpc.ClientConn, rpc string) (string, error) {
	c := keybrokerv1.NewKeyBrokerServiceClient(cc)
	switch rpc {
	case "GetStatus":
		r, err := c.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
		return r.GetReason(), err
	case "RotateDEK":
		r, err := c.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{KeyName: "default"})
		return r.GetVersion(), err
	case "GetMasterKey":
		_, err := c.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{})
		return "", err
	case "WatchKeyState":
		s, err := c.WatchKeyState(ctx, &keybrokerv1.WatchKeyStateRequest{})
		if err != nil {
			return "", err
		}
		r, err := s.Recv()
		return r.GetEvent().GetReason(), err
	case "Health":
		r, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return r.GetStatus().String(), err
	case "Reflection":
		s, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
		if err != nil {
			return "", err
		}
		// io.EOF from Send means the server already ended the stream (a
		// refusal can arrive first); the status is what Recv returns then.
		if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil && !errors.Is(err, io.EOF) {
			return "", err
		}
		r, err := s.Recv()
		if err != nil {
			return "", err
		}
		_ = s.CloseSend()
		var names []string
		for _, svc := range r.GetListServicesResponse().GetService() {
			names = append(names, svc.GetName())
		}
		return strings.Join(names, ","), nil
	}
	panic("unknown rpc " + rpc)
}

func TestGRPCOverMTLS(t *testing.T) {
	t.Run("per-call", func(t *testing.T) { testGRPCOverMTLS(t, false) })
	t.Run("per-connection", func(t *testing.T) { testGRPCOverMTLS(t, true) })
}

// testGRPCOverMTLS runs the authorization table; perConn makes the server
// identify clients once per connection (Authorizer.Credentials).
func testGRPCOverMTLS(t *testing.T, perConn bool) {
	ts := startServerAuth(t, 0, perConn)
	f := ts.files
	engine := clientTLS(t, f.CA, f.EngineCert, f.EngineKey)
	admin := clientTLS(t, f.CA, f.AdminCert, f.AdminKey)
	nobody := clientTLS(t, f.CA, ts.nobodyCert, ts.nobodyKey)
	anonymous := clientTLS(t, f.CA, "", "")
	tests := []struct {
		name   string
		client *tls.Config
		rpc    string
		want   codes.Code
		// wantOut is a substring of the answer, or of the error message.
		wantOut string
	}{
		{"engine GetStatus", engine, "GetStatus", codes.OK, f.EngineIdentity + " engine"},
		{"engine WatchKeyState", engine, "WatchKeyState", codes.OK, f.EngineIdentity + " engine"},
		{"engine reaches the handler", engine, "GetMasterKey", codes.Unimplemented, "not implemented"},
		{"engine RotateDEK denied", engine, "RotateDEK", codes.PermissionDenied, `needs role "admin"`},
		{"admin RotateDEK", admin, "RotateDEK", codes.OK, f.AdminIdentity + " admin"},
		{"admin GetStatus", admin, "GetStatus", codes.OK, f.AdminIdentity + " admin"},
		{"admin WatchKeyState", admin, "WatchKeyState", codes.OK, f.AdminIdentity + " admin"},
		{"no role GetStatus denied", nobody, "GetStatus", codes.PermissionDenied, `spiffe://keybroker.dev/nobody, cn:nobody may not call /keybroker.v1.KeyBrokerService/GetStatus`},
		{"no role WatchKeyState denied", nobody, "WatchKeyState", codes.PermissionDenied, `needs role "engine"`},
		{"no role health allowed", nobody, "Health", codes.OK, "SERVING"},
		{"no role reflection allowed", nobody, "Reflection", codes.OK, "keybroker.v1.KeyBrokerService"},
		{"no certificate GetMasterKey", anonymous, "GetMasterKey", codes.Unauthenticated, "client certificate required"},
		{"no certificate WatchKeyState", anonymous, "WatchKeyState", codes.Unauthenticated, "client certificate required"},
		{"no certificate health", anonymous, "Health", codes.Unauthenticated, "client certificate required"},
		{"no certificate reflection", anonymous, "Reflection", codes.Unauthenticated, "client certificate required"},
	}
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			for _, tc := range tests {
				t.Run(tc.name, func(t *testing.T) {
					out, err := call(callCtx(t), ts.dial(t, network, tc.client), tc.rpc)
					if status.Code(err) != tc.want {
						t.Fatalf("%s err = %v, want code %v", tc.rpc, err, tc.want)
					}
					if err != nil {
						out = status.Convert(err).Message()
					}
					if !strings.Contains(out, tc.wantOut) {
						t.Errorf("%s = %q, want it to contain %q", tc.rpc, out, tc.wantOut)
					}
					if err == nil && (strings.HasSuffix(tc.wantOut, "engine") || strings.HasSuffix(tc.wantOut, "admin")) {
						if got := strings.Contains(out, "[per-connection]"); got != perConn {
							t.Errorf("%s = %q: identity worked out per connection = %v, want %v", tc.rpc, out, got, perConn)
						}
					}
				})
			}
		})
	}
	logs := ts.logs.String()
	for _, want := range []string{"no role allows it", "identity=", "spiffe://keybroker.dev/nobody", "peer=tcp:127.0.0.1:", "method=/keybroker.v1.KeyBrokerService/RotateDEK"} {
		if !strings.Contains(logs, want) {
			t.Errorf("server logs lack %q:\n%s", want, logs)
		}
	}
}

// forceCert makes cfg send its certificate even when the server's list of
// acceptable CAs does not include the issuer, which crypto/tls clients
// otherwise decline to do: the server's verification is what is under test.
func forceCert(cfg *tls.Config) *tls.Config {
	cert := cfg.Certificates[0]
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
	return cfg
}

// handshakeRefusals are clients the TLS layer turns away before any
// interceptor runs, with the alert each gets.
func handshakeRefusals(t *testing.T, ts *testServer) []struct {
	name    string
	client  *tls.Config
	wantMsg string
} {
	f := ts.files
	tls12 := clientTLS(t, f.CA, f.EngineCert, f.EngineKey)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	return []struct {
		name    string
		client  *tls.Config
		wantMsg string
	}{
		{"client certificate from another CA", forceCert(clientTLS(t, f.CA, ts.foreignCert, ts.foreignKey)), "tls: unknown certificate authority"},
		{"server certificate as client certificate", forceCert(&tls.Config{MinVersion: tls.VersionTLS13, RootCAs: clientTLS(t, f.CA, "", "").RootCAs,
			Certificates: []tls.Certificate{mustKeyPair(t, f.ServerCert, f.ServerKey)}}), "tls: bad certificate"},
		{"TLS 1.2 client", tls12, "tls: protocol version not supported"},
		{"server not trusted by the client", clientTLS(t, filepath.Join(filepath.Dir(ts.foreignCert), "ca.pem"), f.EngineCert, f.EngineKey), "tls: failed to verify certificate"},
	}
}

func mustKeyPair(t *testing.T, certFile, keyFile string) tls.Certificate {
	t.Helper()
	c, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatalf("LoadX509KeyPair err = %v, want nil", err)
	}
	return c
}

// TestGRPCHandshakeRefused checks what a gRPC client sees when the TLS layer
// refuses it: Unavailable. In TLS 1.3 the client finishes its handshake
// before the server checks the client certificate, so the server's alert may
// lose the race with gRPC's first write and surface as a closed connection;
// TestHandshakeAlerts pins the alert itself.
func TestGRPCHandshakeRefused(t *testing.T) {
	ts := startServer(t, 0)
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			for _, tc := range handshakeRefusals(t, ts) {
				t.Run(tc.name, func(t *testing.T) {
					_, err := call(callCtx(t), ts.dial(t, network, tc.client), "GetStatus")
					msg := status.Convert(err).Message()
					tlsErr := strings.Contains(msg, tc.wantMsg) || strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset by peer")
					if status.Code(err) != codes.Unavailable || !tlsErr {
						t.Errorf("GetStatus err = %v, want Unavailable with %q", err, tc.wantMsg)
					}
				})
			}
		})
	}
}

// TestHandshakeAlerts performs the TLS handshake by hand and reads the
// server's first record, which is either the refusal alert or, for an
// accepted client, HTTP/2 settings.
func TestHandshakeAlerts(t *testing.T) {
	ts := startServer(t, 0)
	f := ts.files
	first := func(t *testing.T, network string, cfg *tls.Config) error {
		t.Helper()
		addr := ts.tcpAddr
		if network == "unix" {
			addr = ts.unixPath
		}
		raw, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			t.Fatalf("Dial(%s, %s) err = %v, want nil", network, addr, err)
		}
		defer raw.Close()
		cfg = cfg.Clone()
		cfg.ServerName = "localhost"
		cfg.NextProtos = []string{"h2"}
		conn := tls.Client(raw, cfg)
		if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatalf("SetDeadline err = %v, want nil", err)
		}
		if err := conn.Handshake(); err != nil {
			return err
		}
		_, err = conn.Read(make([]byte, 1))
		return err
	}
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			if err := first(t, network, clientTLS(t, f.CA, f.EngineCert, f.EngineKey)); err != nil {
				t.Errorf("engine client: first read err = %v, want nil", err)
			}
			for _, tc := range handshakeRefusals(t, ts) {
				t.Run(tc.name, func(t *testing.T) {
					if err := first(t, network, tc.client); err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
						t.Errorf("handshake and first read err = %v, want %q", err, tc.wantMsg)
					}
				})
			}
		})
	}
}

func TestGRPCAllowsTLS12WhenConfigured(t *testing.T) {
	ts := startServer(t, tls.VersionTLS12)
	f := ts.files
	tls12 := clientTLS(t, f.CA, f.EngineCert, f.EngineKey)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	out, err := call(callCtx(t), ts.dial(t, "tcp", tls12), "GetStatus")
	if err != nil || !strings.HasPrefix(out, f.EngineIdentity) {
		t.Errorf("GetStatus over TLS 1.2 = %q, %v, want the engine identity, nil", out, err)
	}
}
