package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
)

// startDev runs `keybroker dev` on free ports and returns its JSON line.
func startDev(t *testing.T) devInfo {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "dev")
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		e := &env{stdout: pw, stderr: io.Discard, getenv: func(string) string { return "" }}
		done <- run(ctx, e, []string{"dev", "--dir", dir, "--addr", "127.0.0.1:0", "--log-level", "error"})
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("dev returned %v after cancel, want nil", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("dev did not stop within 30s")
		}
	})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		if sc.Scan() {
			lines <- sc.Text()
		}
		io.Copy(io.Discard, pr)
	}()
	var info devInfo
	select {
	case line := <-lines:
		if err := json.Unmarshal([]byte(line), &info); err != nil {
			t.Fatalf("dev's first line %q is not JSON: %v", line, err)
		}
	case err := <-done:
		t.Fatalf("dev exited before serving: %v", err)
	case <-time.After(90 * time.Second):
		t.Fatal("dev printed nothing within 90s")
	}
	return info
}

// TestDevKMIPAndAdminCommands: dev's JSON line names a working KMIP
// listener, CA and one-file client PEMs (as mongod's
// kmipClientCertificateFile wants) and the master key's KMIP id, which
// status prints too; `keybroker kmip list|revoke|destroy` manage objects
// as the admin.
func TestDevKMIPAndAdminCommands(t *testing.T) {
	info := startDev(t)
	if !strings.HasPrefix(info.KMIPAddress, "127.0.0.1:") || info.MasterKeyKMIPID == "" {
		t.Fatalf("dev JSON kmip_address %q, master_key_kmip_id %q; want a loopback address and an id", info.KMIPAddress, info.MasterKeyKMIPID)
	}
	for _, p := range []string{info.KMIPEnginePEM, info.KMIPAdminPEM} {
		if _, err := tls.LoadX509KeyPair(p, p); err != nil {
			t.Fatalf("%s does not hold a certificate and its key: %v", p, err)
		}
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v, mode %v; want 0600", p, err, fi.Mode())
		}
	}
	eng, err := kmipclient.Dial(info.KMIPAddress, kmipclient.WithRootCAFile(info.KMIPCA), kmipclient.WithClientCertFiles(info.KMIPEnginePEM, info.KMIPEnginePEM), kmipclient.EnforceVersion(kmip.V1_2))
	if err != nil {
		t.Fatalf("kmipclient.Dial with the engine PEM: %v", err)
	}
	defer eng.Close()
	ctx := context.Background()
	get, err := eng.Get(info.MasterKeyKMIPID).ExecContext(ctx)
	if err != nil {
		t.Fatalf("Get(master_key_kmip_id) err = %v, want nil", err)
	}
	if key, err := get.SymmetricKey(); err != nil || len(key) != 32 {
		t.Fatalf("Get(master_key_kmip_id): %d bytes, %v; want 32", len(key), err)
	}
	out, errOut, code := runCLI(t, "status", "--dev", filepath.Dir(info.Config), "--addr", info.Address)
	if code != 0 || !strings.Contains(out, "KMIP Unique Identifier: "+info.MasterKeyKMIPID) {
		t.Fatalf("status = %d %q %q, want the master key's KMIP id", code, out, errOut)
	}

	cr, err := eng.Create().AES(256, kmip.CryptographicUsageEncrypt|kmip.CryptographicUsageDecrypt).ExecContext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	id := cr.UniqueIdentifier
	if _, err := eng.Activate(id).ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	dev := []string{"--dev", filepath.Dir(info.Config), "--addr", info.KMIPAddress}
	list := func() map[string]kmipObject {
		t.Helper()
		out, errOut, code := runCLI(t, append([]string{"kmip", "list", "--json"}, dev...)...)
		if code != 0 {
			t.Fatalf("kmip list = %d: %s", code, errOut)
		}
		objs := map[string]kmipObject{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			var o kmipObject
			if err := json.Unmarshal([]byte(line), &o); err != nil {
				t.Fatalf("kmip list line %q: %v", line, err)
			}
			objs[o.ID] = o
		}
		return objs
	}
	objs := list()
	if o := objs[id]; o.State != "Active" || o.Owner != "spiffe://keybroker.dev/engine" || o.Bits != 256 || o.Created.IsZero() {
		t.Fatalf("kmip list: object %+v, want Active, owned by the engine, 256 bits, a creation time", o)
	}
	if o := objs[info.MasterKeyKMIPID]; o.Name != "master" || o.Owner != "" {
		t.Fatalf("kmip list: master key %+v, want name master and no owner", o)
	}
	if _, errOut, code := runCLI(t, append(append([]string{"kmip", "destroy"}, dev...), id)...); code == 0 || !strings.Contains(errOut, "Revoke it first") {
		t.Fatalf("kmip destroy of an Active key = %d %q, want refused with 'Revoke it first'", code, errOut)
	}
	for _, sub := range []string{"revoke", "destroy"} {
		if _, errOut, code := runCLI(t, append(append([]string{"kmip", sub}, dev...), id)...); code != 0 {
			t.Fatalf("kmip %s = %d: %s", sub, code, errOut)
		}
	}
	if o := list()[id]; o.State != "Destroyed" {
		t.Fatalf("after revoke and destroy: %+v, want Destroyed", o)
	}
	if _, errOut, code := runCLI(t, append(append([]string{"kmip", "revoke"}, dev...), "no-such-object")...); code != exitNotFound {
		t.Fatalf("kmip revoke of an unknown id = %d %q, want exit %d", code, errOut, exitNotFound)
	}
}
