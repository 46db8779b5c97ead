// Command kbfloor is the floor `kbload bench` measures the broker against:
// a bare grpc-go server with the broker's certificates and TLS settings
// (TLS 1.3, a client certificate required and verified against the client
// CA) that serves grpc.health.v1 and nothing else: no interceptors, no
// stats handler, no telemetry, no custom codec. Whatever the broker's
// Health/Check costs beyond this server's is the broker's own overhead.
//
// It prints one JSON line, {"address": "...", "pid": N}, once serving, and
// stops on SIGTERM or SIGINT. It is a development tool: it listens on
// loopback only.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keybroker/keybroker/internal/mtls"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "kbfloor:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("kbfloor", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:0", "loopback address to listen on")
	cert := fs.String("cert", "", "server certificate (PEM), the broker's")
	key := fs.String("key", "", "server private key (PEM)")
	ca := fs.String("client-ca", "", "client CA (PEM) client certificates must chain to")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ap, err := netip.ParseAddrPort(*addr)
	if err != nil || !ap.Addr().IsLoopback() {
		return fmt.Errorf("--addr %q: want a loopback IP:port", *addr)
	}
	cfg, err := serverTLS(*cert, *key, *ca)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	healthpb.RegisterHealthServer(srv, health.NewServer()) // "" is SERVING
	line, _ := json.Marshal(map[string]any{"address": l.Addr().String(), "pid": os.Getpid()})
	fmt.Println(string(line))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	go func() { <-ctx.Done(); srv.Stop() }()
	return srv.Serve(l)
}

// serverTLS is the broker's server TLS configuration (mtls.ServerTLS: TLS
// 1.3, the same certificate loader), with the client certificate required
// at the handshake: the floor has no authorizer to refuse a call without one.
func serverTLS(cert, key, ca string) (*tls.Config, error) {
	cfg, err := mtls.ServerTLS(mtls.ServerConfig{CertFile: cert, KeyFile: key, ClientCAFile: ca})
	if err != nil {
		return nil, err
	}
	cfg.ClientAuth = tls.RequireAndVerifyClientCert
	return cfg, nil
}
