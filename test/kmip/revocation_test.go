package kmip_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/pki"
)

// checkInterval is the served broker's validation.interval: revocation at
// Key Vault must show as State Deactivated within it plus 1 s.
const checkInterval = 2 * time.Second

const engine2Identity = "spiffe://" + pki.DefaultTrustDomain + "/engine2"

// servedBroker is `keybroker serve` against the Key Vault emulator in this
// process, with a short validation.interval and two engine identities.
type servedBroker struct {
	*process
	ctl      *akvemu.Control
	files    pki.Files
	grpcAddr string
	engine   endpoint
	engine2  endpoint
	admin    endpoint
}

func startServed(t *testing.T) *servedBroker {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	dir := t.TempDir()
	emu, err := akvemu.Start(ctx, akvemu.Config{Ephemeral: true})
	if err != nil {
		t.Fatalf("starting the Key Vault emulator: %v", err)
	}
	t.Cleanup(func() { _ = emu.Close() })
	info := emu.Info()
	files, err := pki.WriteDevPKI(filepath.Join(dir, "pki"), pki.Options{})
	if err != nil {
		t.Fatalf("dev PKI: %v", err)
	}
	e2cert, e2key := filepath.Join(dir, "pki", "engine2.pem"), filepath.Join(dir, "pki", "engine2-key.pem")
	if err := pki.IssueClient(files.CA, files.CAKey, engine2Identity, e2cert, e2key, pki.Options{}); err != nil {
		t.Fatalf("issuing the second engine's certificate: %v", err)
	}
	pem := func(name, cert, key string) string {
		var b []byte
		for _, f := range []string{cert, key} {
			c, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			b = append(append(b, c...), '\n')
		}
		p := filepath.Join(dir, "pki", name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	host := strings.TrimSuffix(strings.TrimPrefix(info.VaultURLs[0], "https://"), "/")
	yaml := fmt.Sprintf(`# test/kmip: keybroker serve against the emulator, validation.interval %[1]s, two engines.
keystore:
  dir: %[2]s
listen:
  address: "127.0.0.1:0"
tls:
  cert_file: %[3]s
  key_file: %[4]s
  client_ca_file: %[5]s
authorization:
  engine: [%[6]s, %[7]s]
  admin: [%[8]s]
azure:
  environment: CUSTOM
  custom:
    authority_host: %[9]s
    vault_suffix: %[10]s
    ca_file: %[11]s
    connect_to: %[12]s
  credential:
    kind: client_secret
    tenant_id: %[13]s
    client_id: %[14]s
    client_secret_file: %[15]s
  key_id: %[16]s
validation:
  interval: %[1]s
kmip:
  address: "127.0.0.1:0"
log:
  level: info
  format: json
`, checkInterval, q(filepath.Join(dir, "keystore")), q(files.ServerCert), q(files.ServerKey), q(files.CA),
		q(files.EngineIdentity), q(engine2Identity), q(files.AdminIdentity),
		q(info.AuthorityHost), q(host[strings.IndexByte(host, '.')+1:]), q(info.CAFile), q(info.Endpoint),
		q(info.TenantID), q(info.ClientID), q(info.ClientSecretFile), q(info.KeyIDs[0]))
	if _, err := config.Parse("test/kmip config", []byte(yaml), nil); err != nil {
		t.Fatalf("the test's configuration is invalid: %v", err)
	}
	cfg := filepath.Join(dir, "keybroker.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, keybrokerBin, "init", "--config", cfg).CombinedOutput(); err != nil {
		t.Fatalf("keybroker init: %v\n%s", err, out)
	}

	p, out, err := startProcess(keybrokerBin, "serve", "--config", cfg)
	if err != nil {
		t.Fatalf("starting keybroker serve: %v", err)
	}
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("stopping keybroker serve: %v", err)
		}
	})
	// The JSON log says where KMIP and gRPC are served.
	addrs := make(chan [2]string, 1)
	go func() {
		var kmipAddr, grpcAddr string
		sent := false
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var rec struct {
				Msg     string `json:"msg"`
				Address string `json:"address"`
			}
			if json.Unmarshal(sc.Bytes(), &rec) != nil {
				continue
			}
			switch rec.Msg {
			case "serving KMIP":
				kmipAddr = rec.Address
			case "serving":
				grpcAddr = rec.Address
			}
			if kmipAddr != "" && grpcAddr != "" && !sent {
				addrs <- [2]string{kmipAddr, grpcAddr}
				sent = true
			}
		}
	}()
	var a [2]string
	select {
	case a = <-addrs:
	case <-p.exited:
		t.Fatalf("keybroker serve exited before serving:\n%s", p.out.String())
	case <-ctx.Done():
		t.Fatalf("keybroker serve did not log \"serving KMIP\" and \"serving\" within %v:\n%s", startTimeout, p.out.String())
	}
	for _, addr := range a {
		if err := checkLoopback(addr); err != nil {
			t.Fatalf("keybroker serve: %v", err)
		}
	}
	ep := func(pemFile string) endpoint { return endpoint{addr: a[0], ca: files.CA, pem: pemFile} }
	return &servedBroker{
		process: p, ctl: emu.Control(), files: files, grpcAddr: a[1],
		engine:  ep(pem("engine-kmip.pem", files.EngineCert, files.EngineKey)),
		engine2: ep(pem("engine2-kmip.pem", e2cert, e2key)),
		admin:   ep(pem("admin-kmip.pem", files.AdminCert, files.AdminKey)),
	}
}

// activeKey creates and activates an AES-256 key as the engine, and returns
// its identifier and bytes (hex).
func activeKey(t *testing.T, b *servedBroker) (string, string) {
	t.Helper()
	var r struct {
		UID   string      `json:"uid"`
		Get   keyReport   `json:"get"`
		State stateReport `json:"state"`
	}
	flow(t, b.engine, &r, "mongod", "--version", "1.2")
	r.Get.wantAES256(t, r.UID)
	r.State.wantState(t, "ACTIVE")
	return r.UID, r.Get.KeyHex
}

// TestOwnershipAndRevocation runs against one served broker: a key belongs
// to the engine that made it; then the revocation sequence of mongod's
// State poll: Active, Deactivated within validation.interval + 1 s of the
// access being revoked at Key Vault, Active again after revalidation.
func TestOwnershipAndRevocation(t *testing.T) {
	t.Parallel()
	b := startServed(t)
	uid, key := activeKey(t, b)

	t.Run("ownership", func(t *testing.T) {
		var k keyReport
		flow(t, b.engine2, &k, "get", "--uid", uid)
		k.wantFailure(t, "GET", "ITEM_NOT_FOUND")
		var s stateReport
		flow(t, b.engine2, &s, "state", "--uid", uid)
		s.wantFailure(t, "GET_ATTRIBUTES", "ITEM_NOT_FOUND")
		var o outcome
		flow(t, b.engine2, &o, "revoke", "--uid", uid)
		o.wantFailure(t, "REVOKE", "ITEM_NOT_FOUND")
		flow(t, b.engine2, &o, "destroy", "--uid", uid)
		o.wantFailure(t, "DESTROY", "ITEM_NOT_FOUND")

		// The admin reads it; the owner still has it, Active.
		flow(t, b.admin, &k, "get", "--uid", uid)
		k.wantAES256(t, uid)
		if k.KeyHex != key {
			t.Fatal("the admin's Get returned other bytes than the owner's")
		}
		flow(t, b.engine, &s, "state", "--uid", uid)
		s.wantState(t, "ACTIVE")
	})
	if t.Failed() {
		return
	}

	t.Run("revocation", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		w := startWatch(ctx, t, b.engine, uid, "DEACTIVATED")
		first := w.next(t)
		first.wantState(t, "ACTIVE")

		revokedAt := time.Now()
		if err := b.ctl.RevokeAccess(ctx, "", "", akvemu.CodeForbiddenByRbac); err != nil {
			t.Fatalf("RevokeAccess: %v", err)
		}
		var seen watchLine
		for {
			seen = w.next(t)
			// mongod shuts down only on a State it could read: every poll
			// must succeed, Active until it says Deactivated.
			if seen.Status != "SUCCESS" {
				t.Fatalf("a State poll during the revocation failed: %v", seen.outcome)
			}
			if seen.State != nil && *seen.State == "DEACTIVATED" {
				break
			}
			seen.wantState(t, "ACTIVE")
		}
		seen.wantState(t, "DEACTIVATED")
		took := seen.at().Sub(revokedAt)
		t.Logf("revoke access at Key Vault -> State Deactivated on a fresh connection: %v (bound %v)", took.Round(time.Millisecond), checkInterval+time.Second)
		if took > checkInterval+time.Second {
			t.Errorf("State Deactivated %v after the revocation, want within validation.interval + 1 s = %v", took, checkInterval+time.Second)
		}

		// PAUSED: no key material, no new keys; a message naming the cause.
		var k keyReport
		flow(t, b.engine, &k, "get", "--uid", uid)
		k.wantFailure(t, "GET", "PERMISSION_DENIED")
		var o outcome
		flow(t, b.engine, &o, "create")
		o.wantFailure(t, "CREATE", "PERMISSION_DENIED")

		// Access back, then the operator's "Try Again".
		if err := b.ctl.GrantAccess(ctx, "", ""); err != nil {
			t.Fatalf("GrantAccess: %v", err)
		}
		cmd := exec.CommandContext(ctx, keybrokerBin, "revalidate", "--addr", b.grpcAddr, "--ca", b.files.CA, "--cert", b.files.AdminCert, "--key", b.files.AdminKey)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("keybroker revalidate: %v\n%s", err, out)
		}
		var s stateReport
		flow(t, b.engine, &s, "state", "--uid", uid)
		s.wantState(t, "ACTIVE")
		flow(t, b.engine, &k, "get", "--uid", uid)
		k.wantAES256(t, uid)
		if k.KeyHex != key {
			t.Fatal("after revalidation Get returned other bytes than before the revocation")
		}
	})
}

// watchLine is one change of answer of kmipflow.py watch.
type watchLine struct {
	stateReport
	T float64 `json:"t"` // Unix time the poll's answer was seen
}

func (w watchLine) at() time.Time {
	return time.Unix(0, int64(w.T*float64(time.Second)))
}

type watcher struct {
	lines chan watchLine
	done  chan error
	out   *lockedBuffer
}

// startWatch runs kmipflow.py watch: mongod's State poll every 100 ms on a
// fresh connection until the State is until; the process is killed at the
// end of the test.
func startWatch(ctx context.Context, t *testing.T, ep endpoint, uid, until string) *watcher {
	t.Helper()
	cmd := exec.CommandContext(ctx, python, flowScript, "watch", "--addr", ep.addr, "--ca", ep.ca, "--pem", ep.pem,
		"--uid", uid, "--until", until, "--every", "0.1", "--max-seconds", "30")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{lines: make(chan watchLine, 16), done: make(chan error, 1), out: &lockedBuffer{}}
	cmd.Stderr = w.out
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting kmipflow.py watch: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		for range w.lines { // unblock the reader
		}
		<-w.done
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l watchLine
			if json.Unmarshal(sc.Bytes(), &l) != nil || l.Operation == "" {
				fmt.Fprintf(w.out, "%s\n", sc.Bytes())
				continue
			}
			w.lines <- l
		}
		close(w.lines)
		w.done <- cmd.Wait()
	}()
	return w
}

// next is the watcher's next line; it fails the test when the watch ended.
func (w *watcher) next(t *testing.T) watchLine {
	t.Helper()
	l, ok := <-w.lines
	if !ok {
		t.Fatalf("kmipflow.py watch ended before the State changed: %s", w.out.String())
	}
	return l
}
