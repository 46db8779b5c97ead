package akv

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestKeyOpTransport: wrapKey and unwrapKey go over their own connection,
// closed after the answer, with the TLS record buffers zeroed; other
// requests use the shared transport.
func TestKeyOpTransport(t *testing.T) {
	const answer = `{"kid":"k","value":"c2VjcmV0LWtleS1tYXRlcmlhbA"}`
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, answer)
	}))
	defer srv.Close()
	kt := newKeyOpTransport(srv.Client())
	ko := kt.keyOps.Transport.(*http.Transport)
	var mu sync.Mutex
	var conns []*scrubConn
	dial := ko.DialTLSContext
	ko.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if sc, ok := c.(*scrubConn); ok {
			mu.Lock()
			conns = append(conns, sc)
			mu.Unlock()
		}
		return c, err
	}
	tests := []struct {
		path   string
		method string
		keyOp  bool
	}{
		{"/keys/cmk/v1/unwrapkey", http.MethodPost, true},
		{"/keys/cmk/v1/wrapKey", http.MethodPost, true},
		{"/keys/cmk/v1", http.MethodGet, false},
		{"/keys/cmk/v1/unwrapkey", http.MethodGet, false},
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			mu.Lock()
			before := len(conns)
			mu.Unlock()
			req, _ := http.NewRequest(tc.method, srv.URL+tc.path, strings.NewReader(`{"value":"x"}`))
			resp, err := kt.Do(req)
			if err != nil {
				t.Fatalf("Do err = %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != answer {
				t.Fatalf("body = %q, want the answer", body)
			}
			mu.Lock()
			got := conns[before:]
			mu.Unlock()
			if !tc.keyOp {
				if len(got) != 0 {
					t.Fatalf("a %s %s went over a key-op connection", tc.method, tc.path)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("%d key-op connections, want 1", len(got))
			}
			sc := got[0]
			// The transport closes the connection once the body is read.
			deadline := time.Now().Add(5 * time.Second)
			for {
				sc.mu.Lock()
				closed := sc.reads == nil
				sc.mu.Unlock()
				if closed || time.Now().After(deadline) {
					break
				}
				time.Sleep(5 * time.Millisecond)
			}
			sc.mu.Lock()
			defer sc.mu.Unlock()
			if sc.reads != nil {
				t.Fatalf("the key-op connection was not closed after the answer")
			}
			raw := reflect.ValueOf(sc.tls).Elem().FieldByName("rawInput").FieldByName("buf").Bytes()
			raw = raw[:cap(raw)]
			if len(raw) == 0 {
				t.Fatalf("tls.Conn.rawInput has no buffer: the field layout changed")
			}
			for i, b := range raw {
				if b != 0 {
					t.Fatalf("tls.Conn.rawInput[%d] = %#x after Close, want all zeros", i, b)
				}
			}
		})
	}
}

// TestWipedBody: the connection's copy of a key operation's body reads
// whole, is zeroed when net/http closes it, and refuses reads after that.
func TestWipedBody(t *testing.T) {
	src := []byte(`{"alg":"RSA-OAEP-256","value":"a2V5LWJ5dGVz"}`)
	w := &wipedBody{b: append([]byte(nil), src...)}
	got, err := io.ReadAll(w)
	if err != nil || string(got) != string(src) {
		t.Fatalf("ReadAll(wipedBody) = %q, %v, want %q, nil", got, err, src)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Close err = %v, want nil", err)
	}
	for i, c := range w.b {
		if c != 0 {
			t.Fatalf("byte %d of the body = %#x after Close, want 0", i, c)
		}
	}
	if n, err := w.Read(make([]byte, 8)); n != 0 || err == nil {
		t.Errorf("Read after Close = %d, %v, want 0 and an error", n, err)
	}
}
