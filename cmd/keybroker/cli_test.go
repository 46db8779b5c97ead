package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/cli"
)

// runCLI runs one keybroker command in-process and returns its stdout,
// stderr and exit code.
func runCLI(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code := report(&errb, run(ctx, e, args))
	return out.String(), errb.String(), code
}

// TestDevAndClientCommands runs `keybroker dev` and drives it with the
// client commands a bootstrap script would use.
func TestDevAndClientCommands(t *testing.T) {
	info := startDev(t)
	dir := filepath.Dir(info.Config) // dev writes keybroker.yaml at the top of its directory
	for _, f := range []string{info.CA, info.EngineCert, info.EngineKey, info.AdminCert, info.AdminKey, info.Config} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("dev's JSON names %s: %v", f, err)
		}
	}
	if info.Address == "" || info.ControlURL == "" || !strings.HasPrefix(info.KeyID, "https://") {
		t.Fatalf("dev's JSON line = %+v, want address, control URL and key id", info)
	}
	conn := []string{"--dev", dir, "--addr", info.Address}

	out, errOut, code := runCLI(t, append([]string{"status"}, conn...)...)
	if code != exitOK || !strings.Contains(out, "state:   SERVING") {
		t.Fatalf("status = %d, %q %q; want 0 and SERVING", code, out, errOut)
	}
	out, _, code = runCLI(t, append([]string{"get-master-key", "--format", "hex"}, conn...)...)
	key, err := hex.DecodeString(strings.TrimSpace(out))
	if code != exitOK || err != nil || len(key) != 32 {
		t.Fatalf("get-master-key --format hex = %d, %q; want 64 hex digits", code, out)
	}
	// Over the unix socket too.
	out, _, code = runCLI(t, "get-master-key", "--format", "hex", "--dev", dir, "--addr", "unix:"+info.UnixSocket)
	if code != exitOK || strings.TrimSpace(out) != hex.EncodeToString(key) {
		t.Fatalf("get-master-key over the unix socket = %d, %q; want the same key", code, out)
	}

	keyFile := filepath.Join(t.TempDir(), "mongod.key")
	_, errOut, code = runCLI(t, append([]string{"get-master-key", "--format", "mongod", "--out", keyFile}, conn...)...)
	if code != exitOK {
		t.Fatalf("get-master-key --format mongod = %d, %s", code, errOut)
	}
	fi, err := os.Stat(keyFile)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mongod key file: %v, mode %v; want 0600", err, fi.Mode())
	}
	content, _ := os.ReadFile(keyFile)
	if got, err := base64.StdEncoding.DecodeString(strings.TrimSpace(string(content))); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("mongod key file does not hold the base64 master key: %v", err)
	}
	_, errOut, code = runCLI(t, append([]string{"get-master-key", "--format", "mongod", "--out", keyFile}, conn...)...)
	if code != exitUsage || !strings.Contains(errOut, "refusing to overwrite") {
		t.Fatalf("get-master-key over an existing file = %d, %q; want %d and a refusal", code, errOut, exitUsage)
	}
	if after, _ := os.ReadFile(keyFile); !bytes.Equal(after, content) {
		t.Fatal("the refused get-master-key changed the existing key file")
	}

	_, _, code = runCLI(t, append([]string{"rotate", "--cert", filepath.Join(dir, devPKIDir, "engine-client.pem"), "--key", filepath.Join(dir, devPKIDir, "engine-client-key.pem")}, conn...)...)
	if code != exitDenied {
		t.Fatalf("rotate with the engine certificate = %d, want %d", code, exitDenied)
	}
	out, _, code = runCLI(t, append([]string{"rotate"}, conn...)...)
	if code != exitOK || !strings.Contains(out, "new master-key version") {
		t.Fatalf("rotate = %d, %q", code, out)
	}
	out, _, code = runCLI(t, append([]string{"revalidate"}, conn...)...)
	if code != exitOK || !strings.HasPrefix(out, "SERVING") {
		t.Fatalf("revalidate = %d, %q", code, out)
	}
	_, _, code = runCLI(t, append([]string{"get-master-key", "--version", "nope"}, conn...)...)
	if code != exitNotFound {
		t.Fatalf("get-master-key --version nope = %d, want %d", code, exitNotFound)
	}
	out, errOut, code = runCLI(t, "check", "--config", info.Config)
	if code != exitOK || !strings.Contains(out, "all checks passed") {
		t.Fatalf("check = %d, %q %q; want all checks passed", code, out, errOut)
	}
}

func TestCLIUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, exitUsage, "no command"},
		{[]string{"frobnicate"}, exitUsage, `unknown command "frobnicate"`},
		{[]string{"serve"}, exitUsage, "--config is required"},
		{[]string{"serve", "--config", "/nonexistent/kb.yaml"}, exitUsage, "reading the configuration"},
		{[]string{"get-master-key", "--format", "pem"}, exitUsage, `--format "pem"`},
		{[]string{"get-master-key", "--format", "mongod"}, exitUsage, "give --out FILE"},
		{[]string{"status"}, exitUsage, "--ca, --cert and --key are required"},
		{[]string{"status", "--bogus"}, exitUsage, "flag provided but not defined"},
		{[]string{"check"}, exitUsage, "--config is required"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, errOut, code := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Fatalf("keybroker %v = %d, %q; want %d and %q", tc.args, code, errOut, tc.code, tc.want)
			}
		})
	}
}

func TestServeRefusesCorruptKeystore(t *testing.T) {
	h := newHarness(t, "")
	files, err := filepath.Glob(filepath.Join(h.cfg.Keystore.Dir, "*", "*"))
	if err != nil || len(files) == 0 {
		files, _ = filepath.Glob(filepath.Join(h.cfg.Keystore.Dir, "*"))
	}
	var victim string
	for _, f := range files {
		if fi, err := os.Stat(f); err == nil && fi.Mode().IsRegular() && !strings.HasSuffix(f, ".lock") {
			victim = f
		}
	}
	if victim == "" {
		t.Fatalf("no keystore file found in %s", h.cfg.Keystore.Dir)
	}
	data, _ := os.ReadFile(victim)
	torn := data[:len(data)/2]
	if err := os.WriteFile(victim, torn, 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCLI(t, "serve", "--config", h.cfgPath)
	if code != exitUsage || !strings.Contains(errOut, filepath.Base(victim)) {
		t.Fatalf("serve with a torn keystore file = %d, %q; want %d naming %s", code, errOut, exitUsage, filepath.Base(victim))
	}
	if after, _ := os.ReadFile(victim); !bytes.Equal(after, torn) {
		t.Fatal("serve changed the corrupt keystore file")
	}
	var ee *cli.ExitError
	if err := run(context.Background(), &env{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}, []string{"serve", "--config", h.cfgPath}); !errors.As(err, &ee) {
		t.Fatalf("serve err = %v, want an exitError", err)
	}
}
