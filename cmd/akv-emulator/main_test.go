package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/akvemu"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name   string
		args   []string
		want   akvemu.Config
		errIs  error
		errMsg string
	}{
		{
			name: "vaults and keys",
			args: []string{"--ephemeral", "--vault", "a.vault.test,a-pe.test", "--vault", "b.vault.test", "--key", "a.vault.test/cmk:2048", "--key", "b.vault.test/other", "--key", "b.vault.test/hsm:3072-hsm", "--token-ttl", "2m", "--throttle", "--throttle-scale", "0.5"},
			want: akvemu.Config{
				Ephemeral: true, Addr: "127.0.0.1:0", ControlAddr: "127.0.0.1:0",
				Vaults:   []akvemu.VaultSpec{{Host: "a.vault.test", Aliases: []string{"a-pe.test"}}, {Host: "b.vault.test", Aliases: []string{}}},
				Keys:     []akvemu.KeySpec{{Vault: "a.vault.test", Name: "cmk", Size: 2048}, {Vault: "b.vault.test", Name: "other"}, {Vault: "b.vault.test", Name: "hsm", Size: 3072, HSM: true}},
				TenantID: akvemu.DefaultTenantID, ClientID: akvemu.DefaultClientID, TokenTTL: 2 * time.Minute,
				Throttle: akvemu.Throttle{Enabled: true, Scale: 0.5},
			},
		},
		{
			name: "defaults with a dir",
			args: []string{"--dir", "/tmp/x"},
			want: akvemu.Config{Dir: "/tmp/x", Addr: "127.0.0.1:0", ControlAddr: "127.0.0.1:0", TenantID: akvemu.DefaultTenantID, ClientID: akvemu.DefaultClientID, TokenTTL: akvemu.DefaultTokenTTL, Throttle: akvemu.Throttle{Scale: 1}},
		},
		{name: "help", args: []string{"--help"}, errIs: flag.ErrHelp, errMsg: "-control-addr"},
		{name: "no dir", args: []string{}, errIs: errUsage, errMsg: "--dir"},
		{name: "stray argument", args: []string{"--ephemeral", "extra"}, errIs: errUsage, errMsg: "unexpected argument"},
		{name: "bad key", args: []string{"--ephemeral", "--key", "cmk"}, errIs: errUsage, errMsg: "VAULT/NAME"},
		{name: "bad key size", args: []string{"--ephemeral", "--key", "v.test/cmk:1024"}, errIs: errUsage, errMsg: "SIZE"},
		{name: "empty alias", args: []string{"--ephemeral", "--vault", "v.test,"}, errIs: errUsage, errMsg: "empty host"},
		{name: "bad log level", args: []string{"--ephemeral", "--log-level", "loud"}, errIs: errUsage, errMsg: "--log-level"},
		{name: "bad throttle scale", args: []string{"--ephemeral", "--throttle-scale", "-2"}, errIs: errUsage, errMsg: "--throttle-scale"},
		{name: "unknown flag", args: []string{"--ephemeral", "--colour"}, errIs: errUsage, errMsg: "colour"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			got, _, err := parseFlags(tc.args, &stderr)
			if tc.errIs != nil {
				if !errors.Is(err, tc.errIs) || !strings.Contains(stderr.String(), tc.errMsg) {
					t.Fatalf("parseFlags(%q) err = %v, stderr %q, want %v mentioning %q", tc.args, err, stderr.String(), tc.errIs, tc.errMsg)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags(%q) err = %v (%s), want nil", tc.args, err, stderr.String())
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("parseFlags(%q) = %+v, want %+v", tc.args, got, tc.want)
			}
		})
	}
}

// TestHelpDocumentsEveryFlag keeps --help complete.
func TestHelpDocumentsEveryFlag(t *testing.T) {
	var stderr bytes.Buffer
	_, _, err := parseFlags([]string{"--help"}, &stderr)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("parseFlags(--help) err = %v, want flag.ErrHelp", err)
	}
	for _, f := range []string{"dir", "ephemeral", "addr", "control-addr", "vault", "key", "tenant-id", "client-id", "token-ttl", "tls-cert", "tls-key", "tls-ca", "log-level"} {
		if !strings.Contains(stderr.String(), "-"+f+" ") && !strings.Contains(stderr.String(), "-"+f+"\n") {
			t.Errorf("--help does not document --%s:\n%s", f, stderr.String())
		}
	}
}

// TestRun starts the command, reads its one JSON line, uses the control
// API it names and stops it through the context, as a signal would.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pr, pw := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		err := run(ctx, []string{"--ephemeral", "--vault", "kb.vault.keybroker.test", "--key", "kb.vault.keybroker.test/cmk:2048"}, pw, &stderr)
		pw.Close()
		done <- err
	}()
	lines := bufio.NewScanner(pr)
	if !lines.Scan() {
		t.Fatalf("no info line on stdout (err %v); run returned %v", lines.Err(), <-done)
	}
	var info akvemu.Info
	dec := json.NewDecoder(strings.NewReader(lines.Text()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&info); err != nil {
		t.Fatalf("info line %q is not akvemu.Info: %v", lines.Text(), err)
	}
	if len(info.KeyIDs) != 1 || !strings.HasPrefix(info.KeyIDs[0], "https://kb.vault.keybroker.test/keys/cmk/") || info.ControlURL == "" {
		t.Errorf("info = %+v, want one cmk key and a control URL", info)
	}
	if _, err := os.Stat(info.CAFile); err != nil {
		t.Errorf("CA file: %v", err)
	}
	resp, err := http.Get(info.ControlURL + "/counters")
	if err != nil {
		t.Fatalf("GET counters: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET counters = %d, want 200", resp.StatusCode)
	}
	cancel()
	go func() { _, _ = io.Copy(io.Discard, pr) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run() err = %v, want nil after cancellation", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run() did not stop after cancellation")
	}
	if _, err := os.Stat(info.CAFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ephemeral files left behind: stat %s err = %v", info.CAFile, err)
	}
}

// FuzzParseFlagValues fuzzes the --vault and --key value parsers.
func FuzzParseFlagValues(f *testing.F) {
	for _, s := range []string{"a.test/cmk:2048", "a.test,b.test", "/x", "a.test/", "a/b/c:1", ":", ",", "a.test/k:99999999999999999999", "a.test/cmk:3072-hsm", "a.test/cmk:-hsm"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if k, err := parseKey(s); err == nil {
			if k.Vault == "" || k.Name == "" || strings.ContainsAny(k.Name, "/:") || (k.Size != 0 && k.Size != 2048 && k.Size != 3072 && k.Size != 4096) || (k.HSM && k.Size == 0) {
				t.Fatalf("parseKey(%q) = %+v: accepted a bad key", s, k)
			}
		}
		if v, err := parseVault(s); err == nil {
			if v.Host == "" || strings.Contains(v.Host, ",") {
				t.Fatalf("parseVault(%q) = %+v: accepted a bad vault", s, v)
			}
		}
	})
}
