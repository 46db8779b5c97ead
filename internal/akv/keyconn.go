package akv

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
)

// keyOpTransport sends wrapKey and unwrapKey, whose bodies carry a key in
// base64url, over HTTP/1.1 connections of their own, one per call, that
// are zeroed when they close: what the connection wrote, what it read into
// the HTTP client's read buffer, and the TLS record buffers. A kept-alive
// connection would keep the last answer in those buffers until the next
// one overwrites it, and after a pause there is no next one. Every other
// request goes through next. Key operations are rare (a cache load, a
// validity check), so a handshake each costs little.
type keyOpTransport struct {
	next   policy.Transporter
	keyOps *http.Client
}

// newKeyOpTransport builds the transport over base (nil: a clone of
// http.DefaultTransport with TLS 1.2 at least, as azcore's default).
func newKeyOpTransport(base *http.Client) *keyOpTransport {
	var tr *http.Transport
	if base != nil {
		if t, ok := base.Transport.(*http.Transport); ok {
			tr = t
		}
	}
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	next := base
	if next == nil {
		next = &http.Client{Transport: tr}
	}
	ko := tr.Clone()
	ko.DisableKeepAlives = true
	ko.ForceAttemptHTTP2 = false
	ko.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	dial := tr.DialContext
	if dial == nil {
		d := &net.Dialer{Timeout: 10 * time.Second}
		dial = d.DialContext
	}
	tlsCfg := tr.TLSClientConfig
	// Resumed handshakes skip the certificate exchange: one connection per
	// key operation then costs little more than a round trip.
	sessions := tls.NewLRUClientSessionCache(64)
	ko.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		raw, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		var cfg *tls.Config
		if tlsCfg != nil {
			cfg = tlsCfg.Clone()
		} else {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		if cfg.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				host = addr
			}
			cfg.ServerName = host
		}
		cfg.NextProtos = []string{"http/1.1"}
		if cfg.ClientSessionCache == nil {
			cfg.ClientSessionCache = sessions
		}
		tc := tls.Client(raw, cfg)
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, err
		}
		return &scrubConn{Conn: tc, tls: tc}, nil
	}
	return &keyOpTransport{next: next, keyOps: &http.Client{Transport: ko}}
}

// Do implements policy.Transporter.
func (t *keyOpTransport) Do(req *http.Request) (*http.Response, error) {
	if !isKeyOp(req) {
		return t.next.Do(req)
	}
	if req.Body != nil && req.Body != http.NoBody {
		// net/http may go on reading a request body after RoundTrip has
		// returned (an answer that came before the body was all sent), while
		// azcore's retry policy rewinds that same body for the next try: a
		// data race. The connection reads a private copy instead, zeroed when
		// net/http closes it (a wrapKey body carries the key in base64url).
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		req = req.Clone(req.Context())
		req.Body = &wipedBody{b: b}
		req.ContentLength = int64(len(b))
		req.GetBody = nil
	}
	return t.keyOps.Do(req)
}

// wipedBody is a request body that zeroes its bytes when closed. Read and
// Close may be called from different goroutines.
type wipedBody struct {
	mu     sync.Mutex
	b      []byte
	off    int
	closed bool
}

func (w *wipedBody) Read(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, errBodyClosed
	}
	if w.off >= len(w.b) {
		return 0, io.EOF
	}
	n := copy(p, w.b[w.off:])
	w.off += n
	return n, nil
}

func (w *wipedBody) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	clear(w.b)
	w.closed = true
	return nil
}

var errBodyClosed = errors.New("akv: request body read after close")

// isKeyOp reports whether req is a Key Vault wrapKey or unwrapKey call.
func isKeyOp(req *http.Request) bool {
	if req.Method != http.MethodPost || req.URL == nil {
		return false
	}
	p := strings.ToLower(strings.TrimSuffix(req.URL.Path, "/"))
	return strings.HasSuffix(p, "/wrapkey") || strings.HasSuffix(p, "/unwrapkey")
}

// scrubConn zeroes what it wrote once written, and at Close what it read
// and the TLS connection's record buffers. Reads hold mu, so Close waits
// for a read in progress (closing the connection ends it) before zeroing.
type scrubConn struct {
	net.Conn
	tls *tls.Conn

	mu    sync.Mutex
	reads [][]byte // the parts of callers' buffers that reads filled
}

func (c *scrubConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.reads = append(c.reads, b[:n:n])
	}
	return n, err
}

func (c *scrubConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	clear(b)
	return n, err
}

func (c *scrubConn) Close() error {
	err := c.Conn.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range c.reads {
		clear(r)
	}
	c.reads = nil
	clearTLSBuffers(c.tls)
	return err
}

var bytesBufferType = reflect.TypeFor[bytes.Buffer]()

// clearTLSBuffers zeroes the record buffers of a closed tls.Conn: records
// are decrypted in place in rawInput, so the last answer's plaintext stays
// there. crypto/tls has no API for it; the fields are found by name and
// type, and left alone if a Go release renames them.
func clearTLSBuffers(c *tls.Conn) {
	v := reflect.ValueOf(c).Elem()
	for _, name := range []string{"rawInput", "hand"} {
		f := v.FieldByName(name)
		if !f.IsValid() || f.Type() != bytesBufferType {
			continue
		}
		buf := f.FieldByName("buf")
		if !buf.IsValid() || buf.Kind() != reflect.Slice || buf.Type().Elem().Kind() != reflect.Uint8 {
			continue
		}
		b := buf.Bytes()
		clear(b[:cap(b)])
	}
}
