package main

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/mtls"
	"github.com/keybroker/keybroker/internal/pki"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// clientFlags are the connection flags every client command shares.
type clientFlags struct {
	addr, ca, cert, key, serverName, dev string
	timeout                              time.Duration
	role                                 string // engine or admin: picks the dev PKI client
}

func (c *clientFlags) register(fs *flag.FlagSet, role string) {
	c.role = role
	fs.StringVar(&c.addr, "addr", "127.0.0.1:7443", "broker address: host:port, or unix:PATH for the unix socket")
	fs.StringVar(&c.ca, "ca", "", "CA certificate that issued the broker's server certificate (PEM)")
	fs.StringVar(&c.cert, "cert", "", "client certificate (PEM) with the "+role+" role")
	fs.StringVar(&c.key, "key", "", "client private key (PEM)")
	fs.StringVar(&c.serverName, "server-name", "", "name to verify in the server certificate (default: the address's host, or localhost)")
	fs.StringVar(&c.dev, "dev", "", "a 'keybroker dev' directory: take --ca, --cert and --key from its PKI (the "+role+" client)")
	fs.DurationVar(&c.timeout, "timeout", 15*time.Second, "deadline for the call")
}

// call connects to the broker and runs f under the --timeout deadline.
func (c *clientFlags) call(ctx context.Context, f func(context.Context, keybrokerv1.KeyBrokerServiceClient) error) error {
	conn, err := c.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	return f(ctx, keybrokerv1.NewKeyBrokerServiceClient(conn))
}

// dial connects to the broker over mTLS.
func (c *clientFlags) dial() (*grpc.ClientConn, error) {
	if c.dev != "" {
		fill := func(dst *string, name string) {
			if *dst == "" {
				*dst = filepath.Join(c.dev, devPKIDir, name)
			}
		}
		fill(&c.ca, pki.CAFile)
		if c.role == "admin" {
			fill(&c.cert, pki.AdminCertFile)
			fill(&c.key, pki.AdminKeyFile)
		} else {
			fill(&c.cert, pki.EngineCertFile)
			fill(&c.key, pki.EngineKeyFile)
		}
	}
	if c.ca == "" || c.cert == "" || c.key == "" {
		return nil, cli.UsageErrorf("--ca, --cert and --key are required (or --dev DIR for a 'keybroker dev' broker)")
	}
	target, serverName := c.addr, c.serverName
	if path, ok := strings.CutPrefix(c.addr, "unix:"); ok {
		target = "unix://" + filepath.Clean(path)
		if serverName == "" {
			serverName = "localhost"
		}
	} else if serverName == "" {
		host, _, err := net.SplitHostPort(c.addr)
		if err != nil {
			return nil, cli.UsageErrorf("--addr %q: want host:port or unix:PATH", c.addr)
		}
		serverName = host
	}
	tlsCfg, err := mtls.ClientTLS(mtls.ClientConfig{CAFile: c.ca, CertFile: c.cert, KeyFile: c.key, ServerName: serverName})
	if err != nil {
		return nil, cli.WithCode(exitUsage, err)
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)), grpc.WithChainUnaryInterceptor(markAnswered))
	if err != nil {
		return nil, cli.UsageErrorf("--addr %q: %w", c.addr, err)
	}
	return conn, nil
}

// rpcError gives a failed call the exit code its gRPC status implies and a
// hint where the status alone says little.
func rpcError(what string, err error) error {
	var ee *cli.ExitError
	if errors.As(err, &ee) {
		return err // not an RPC failure: the connection flags were wrong
	}
	st, _ := status.FromError(err)
	msg := fmt.Sprintf("%s: %s: %s", what, st.Code(), st.Message())
	code := exitFailure
	switch st.Code() {
	case codes.Unavailable:
		code = exitUnavailable
		if brokerAnswered(err) {
			msg += " (the broker answered: it cannot reach Key Vault; see its log and 'keybroker status', and check the network path to the vault)"
		} else {
			msg += " (is the broker running, and are --addr, --ca and --server-name right?)"
		}
	case codes.DeadlineExceeded:
		code = exitUnavailable
	case codes.FailedPrecondition:
		code = exitRevoked
	case codes.Unauthenticated, codes.PermissionDenied:
		code = exitDenied
	case codes.NotFound:
		code = exitNotFound
	case codes.InvalidArgument:
		code = exitUsage
	}
	return cli.WithCode(code, errors.New(msg))
}

func runGetMasterKey(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "get-master-key", "[--format raw|hex|base64|mongod] [--out FILE] [--version ID] [connection flags]")
	var cf clientFlags
	cf.register(fs, "engine")
	format := fs.String("format", "base64", "output: raw (bytes), hex, base64, or mongod (base64 in a 0600 file, for mongod --encryptionKeyFile; needs --out)")
	out := fs.String("out", "", "write to this new file (mode 0600; never overwrites) instead of stdout")
	version := fs.String("version", "", "master-key version id (default: the newest)")
	keyName := fs.String("key-name", "", "keystore key (default: the broker's default key)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	switch *format {
	case "raw", "hex", "base64":
	case "mongod":
		if *out == "" {
			return cli.UsageErrorf("--format mongod writes a key file: give --out FILE")
		}
	default:
		return cli.UsageErrorf("--format %q: want raw, hex, base64 or mongod", *format)
	}
	if *out == "" && *format == "raw" {
		if isTerminal(e.stdout) {
			return cli.UsageErrorf("refusing to print raw key bytes to a terminal: use --format hex|base64, or redirect stdout, or --out FILE")
		}
	}
	var resp *keybrokerv1.GetMasterKeyResponse
	err := cf.call(ctx, func(ctx context.Context, c keybrokerv1.KeyBrokerServiceClient) (err error) {
		resp, err = c.GetMasterKey(ctx, &keybrokerv1.GetMasterKeyRequest{KeyName: *keyName, Version: *version})
		return err
	})
	if err != nil {
		return rpcError("get-master-key", err)
	}
	key := resp.GetKey()
	defer clear(key)
	var data []byte
	switch *format {
	case "raw":
		data = append([]byte(nil), key...)
	case "hex":
		data = []byte(hex.EncodeToString(key) + "\n")
	case "base64", "mongod":
		data = []byte(base64.StdEncoding.EncodeToString(key) + "\n")
	}
	defer clear(data)
	if *out == "" {
		_, err := e.stdout.Write(data)
		return err
	}
	if err := writeNewFile(*out, data); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "wrote master key version %s to %s (mode 0600)\n", resp.GetVersion(), *out)
	return nil
}

// isTerminal reports whether w is a character device such as a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// writeNewFile writes data to a file that must not exist yet, mode 0600,
// synced; on failure it leaves no partial file behind.
func writeNewFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return cli.UsageErrorf("--out %s exists: refusing to overwrite a key file; remove it first or choose another path", path)
		}
		return cli.UsageErrorf("--out: %w", err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func runStatus(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "status", "[--json] [connection flags]")
	var cf clientFlags
	cf.register(fs, "engine")
	asJSON := fs.Bool("json", false, "print the status as JSON")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	var st *keybrokerv1.GetStatusResponse
	err := cf.call(ctx, func(ctx context.Context, c keybrokerv1.KeyBrokerServiceClient) (err error) {
		st, err = c.GetStatus(ctx, &keybrokerv1.GetStatusRequest{})
		return err
	})
	if err != nil {
		return rpcError("status", err)
	}
	if *asJSON {
		return printJSON(e.stdout, st)
	}
	printStatus(e.stdout, st)
	return nil
}

func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: false, UseProtoNames: true}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func printStatus(w io.Writer, st *keybrokerv1.GetStatusResponse) {
	fmt.Fprintf(w, "state:   %s\n", strings.TrimPrefix(st.GetState().String(), "STATE_"))
	fmt.Fprintf(w, "reason:  %s\n", st.GetReason())
	if st.GetSince() != nil {
		fmt.Fprintf(w, "since:   %s\n", st.GetSince().AsTime().Format(time.RFC3339))
	}
	if lv := st.GetLastValidation(); lv != nil {
		ok := "ok"
		if !st.GetLastValidationOk() {
			ok = "FAILED"
		}
		fmt.Fprintf(w, "last validation: %s (%s)\n", lv.AsTime().Format(time.RFC3339), ok)
	}
	for _, r := range st.GetRegions() {
		health := "healthy"
		if !r.GetHealthy() {
			health = "UNHEALTHY (" + r.GetLastErrorKind() + ")"
		}
		fmt.Fprintf(w, "region %s: %s, %s, %.1f ms\n", r.GetName(), health, r.GetCmkKeyId(), r.GetLatencyMs())
	}
	for _, k := range st.GetKeys() {
		loaded := "not in memory"
		if k.GetLoaded() {
			loaded = "in memory"
		}
		fmt.Fprintf(w, "key %s (%s): %s, current version %s (%s), %d version(s), wrapped by %s\n",
			k.GetName(), k.GetId(), k.GetState(), k.GetCurrentVersion(), loaded, len(k.GetVersions()), strings.Join(k.GetCmkKeyIds(), ", "))
		fmt.Fprintf(w, "  KMIP Unique Identifier: %s (this version; mongod --kmipKeyIdentifier)\n", k.GetCurrentVersion())
	}
	for _, a := range st.GetAlerts() {
		fmt.Fprintf(w, "ALERT %s: %s\n", a.GetCode(), a.GetMessage())
	}
}

func runRotate(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "rotate", "[--key-name NAME] [connection flags]")
	var cf clientFlags
	cf.register(fs, "admin")
	keyName := fs.String("key-name", "", "keystore key (default: the broker's default key)")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	var resp *keybrokerv1.RotateDEKResponse
	err := cf.call(ctx, func(ctx context.Context, c keybrokerv1.KeyBrokerServiceClient) (err error) {
		resp, err = c.RotateDEK(ctx, &keybrokerv1.RotateDEKRequest{KeyName: *keyName})
		return err
	})
	if err != nil {
		return rpcError("rotate", err)
	}
	fmt.Fprintf(e.stdout, "new master-key version %s (previous %s)\n", resp.GetVersion(), resp.GetPreviousVersion())
	return nil
}

func runRevalidate(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "revalidate", "[connection flags]")
	var cf clientFlags
	cf.register(fs, "admin")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	var resp *keybrokerv1.RevalidateResponse
	err := cf.call(ctx, func(ctx context.Context, c keybrokerv1.KeyBrokerServiceClient) (err error) {
		resp, err = c.Revalidate(ctx, &keybrokerv1.RevalidateRequest{})
		return err
	})
	if err != nil {
		return rpcError("revalidate", err)
	}
	state := strings.TrimPrefix(resp.GetState().String(), "STATE_")
	fmt.Fprintf(e.stdout, "%s: %s\n", state, resp.GetReason())
	if !resp.GetOk() {
		if resp.GetState() == keybrokerv1.State_STATE_PAUSED {
			return cli.WithCode(exitRevoked, errors.New("revalidation failed: the broker stays PAUSED"))
		}
		return cli.WithCode(exitUnavailable, errors.New("revalidation failed: Key Vault did not confirm access"))
	}
	return nil
}
