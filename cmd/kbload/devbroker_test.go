package main

import (
	"bytes"
	"io"
	"strings"
	"sync"
	"testing"
)

// fakeLine is a JSON line of the shape `keybroker dev` prints.
const fakeLine = `{"address":"127.0.0.1:7443","unix_socket":"/tmp/x.sock","config":"/tmp/c.yaml","ca":"/tmp/ca.pem",` +
	`"engine_cert":"/tmp/e.pem","engine_key":"/tmp/e-key.pem","admin_cert":"/tmp/a.pem","admin_key":"/tmp/a-key.pem",` +
	`"key_id":"https://v.vault.keybroker.test/keys/cmk/1","control_url":"http://127.0.0.1:7444","emulator":{"endpoint":"127.0.0.1:7445"}}`

func TestParseDevInfo(t *testing.T) {
	tests := []struct {
		name    string
		line    string
		wantErr string
	}{
		{name: "the real shape", line: fakeLine},
		{name: "IPv6 loopback", line: strings.NewReplacer(`"127.0.0.1:7443"`, `"[::1]:7443"`, `http://127.0.0.1:7444`, `http://[::1]:7444`).Replace(fakeLine)},
		{name: "not JSON", line: "keybroker dev is serving", wantErr: "not valid JSON"},
		{name: "remote address", line: strings.Replace(fakeLine, `"127.0.0.1:7443"`, `"10.0.0.5:7443"`, 1), wantErr: "loopback"},
		{name: "host name", line: strings.Replace(fakeLine, `"127.0.0.1:7443"`, `"localhost:7443"`, 1), wantErr: "loopback"},
		{name: "port 0", line: strings.Replace(fakeLine, `"127.0.0.1:7443"`, `"127.0.0.1:0"`, 1), wantErr: "loopback IP:port"},
		{name: "remote control URL", line: strings.Replace(fakeLine, `http://127.0.0.1:7444`, `http://192.0.2.1:7444`, 1), wantErr: "control_url"},
		{name: "HTTPS control URL", line: strings.Replace(fakeLine, `http://127.0.0.1:7444`, `https://127.0.0.1:7444`, 1), wantErr: "control_url"},
		{name: "no CA", line: strings.Replace(fakeLine, `"ca":"/tmp/ca.pem"`, `"ca":""`, 1), wantErr: "no ca file"},
		{name: "no engine key", line: strings.Replace(fakeLine, `"engine_key":"/tmp/e-key.pem"`, `"engine_key":""`, 1), wantErr: "no engine_key file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseDevInfo([]byte(tc.line))
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("parseDevInfo() err = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("parseDevInfo() err = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzParseDevInfo(f *testing.F) {
	f.Add([]byte(fakeLine))
	f.Add([]byte(`{"address":"[::1]:1","control_url":"http://[::1]:2","ca":"a","engine_cert":"b","engine_key":"c"}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		info, err := parseDevInfo(line)
		if err != nil {
			return
		}
		if info.CA == "" || info.EngineCert == "" || info.EngineKey == "" {
			t.Fatalf("parseDevInfo(%q) = %+v, nil: accepted missing TLS files", line, info)
		}
	})
}

func TestFirstLine(t *testing.T) {
	tests := []struct {
		name     string
		writes   []string
		wantLine string // "" = none delivered
		wantRest string
	}{
		{name: "one write", writes: []string{"{\"a\":1}\nhint\n"}, wantLine: "{\"a\":1}\n", wantRest: "hint\n"},
		{name: "split writes", writes: []string{"{\"a\"", ":1}", "\nhi", "nt\n"}, wantLine: "{\"a\":1}\n", wantRest: "hint\n"},
		{name: "text before the JSON", writes: []string{"warming up\n{\"a\":1}\n"}, wantLine: "{\"a\":1}\n", wantRest: "warming up\n"},
		{name: "no newline yet", writes: []string{"{\"a\":1}"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var rest bytes.Buffer
			f := &firstLine{ch: make(chan []byte, 1), rest: &rest}
			for _, w := range tc.writes {
				if n, err := f.Write([]byte(w)); err != nil || n != len(w) {
					t.Fatalf("Write(%q) = %d, %v, want %d, nil", w, n, err, len(w))
				}
			}
			var got string
			select {
			case b := <-f.ch:
				got = string(b)
			default:
			}
			if got != tc.wantLine || rest.String() != tc.wantRest {
				t.Errorf("firstLine got line %q, rest %q, want %q, %q", got, rest.String(), tc.wantLine, tc.wantRest)
			}
		})
	}
	f := &firstLine{ch: make(chan []byte, 1), rest: io.Discard}
	if _, err := f.Write(bytes.Repeat([]byte("x"), maxDevLine+1)); err == nil {
		t.Errorf("Write(%d bytes without a newline) err = nil, want an error", maxDevLine+1)
	}
}

// syncBuffer is a bytes.Buffer safe for the child's stdout and stderr
// copiers to write at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
