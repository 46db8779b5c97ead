package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/keybroker/keybroker/internal/akvemu"
	"github.com/keybroker/keybroker/internal/mount"
)

// TestVersion runs `keybroker version` and `--version`: both print the
// module version and the Go version the binary was built with.
func TestVersion(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, errOut, code := runCLI(t, args...)
		if code != exitOK || errOut != "" {
			t.Fatalf("keybroker %v exit %d, stderr %q; want 0 and nothing", args, code, errOut)
		}
		for _, want := range []string{"keybroker ", "module: github.com/keybroker/keybroker", "revision: ", "commit time: ", "go: " + runtime.Version()} {
			if !strings.Contains(out, want) {
				t.Errorf("keybroker %v printed %q, want it to contain %q", args, out, want)
			}
		}
	}
}

func TestReadBuildInfo(t *testing.T) {
	tests := []struct {
		name string
		bi   *debug.BuildInfo
		ok   bool
		want []string
	}{
		{"release", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/keybroker/keybroker", Version: "v1.2.3"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.time", Value: "2026-12-04T16:00:00Z"}, {Key: "vcs.modified", Value: "false"}}}, true,
			[]string{"keybroker v1.2.3\n", "revision: abc123\n", "commit time: 2026-12-04T16:00:00Z\n", "go: go1.26.8\n"}},
		{"modified tree", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/keybroker/keybroker", Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc123"}, {Key: "vcs.modified", Value: "true"}}}, true,
			[]string{"keybroker (devel)\n", "revision: abc123 (modified)\n", "commit time: unknown\n"}},
		{"no vcs", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/keybroker/keybroker"}}, true,
			[]string{"keybroker (devel)\n", "revision: unknown (built outside a git checkout, or with -buildvcs=false)\n"}},
		{"no build info", nil, false, []string{"keybroker unknown (built without module support)\n"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			readBuildInfo(func() (*debug.BuildInfo, bool) { return tc.bi, tc.ok }).print(&b)
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("printed %q, want it to contain %q", b.String(), w)
				}
			}
		})
	}
}

// TestBadFlagPrintedOnce: a bad flag's error reads once, after the usage.
func TestBadFlagPrintedOnce(t *testing.T) {
	for _, cmd := range []string{"serve", "init", "check", "status", "version"} {
		_, errOut, code := runCLI(t, cmd, "--bogus")
		if code != exitUsage {
			t.Errorf("keybroker %s --bogus exit %d, want %d", cmd, code, exitUsage)
		}
		if n := strings.Count(errOut, "flag provided but not defined: -bogus"); n != 1 {
			t.Errorf("keybroker %s --bogus printed the error %d times, want once:\n%s", cmd, n, errOut)
		}
		if !strings.Contains(errOut, "usage: keybroker "+cmd) {
			t.Errorf("keybroker %s --bogus stderr %q lacks the usage", cmd, errOut)
		}
	}
}

// newNodeHarness starts an emulator and writes a configuration whose
// keystore.dir is ksDir, with extraKeystore lines added to the keystore
// section; it does not init.
func newNodeHarness(t *testing.T, ksDir, extraKeystore string) *harness {
	t.Helper()
	h := startHarness(t, akvemu.Config{Ephemeral: true, Keys: []akvemu.KeySpec{{Vault: akvemu.DefaultVaultHost, Name: "cmk", Size: 2048}}})
	yaml := devConfig(h.dir, "127.0.0.1:0", h.files, h.info)
	orig := fmt.Sprintf("  dir: %q\n", filepath.Join(h.dir, devKeystoreDir))
	if !strings.Contains(yaml, orig) {
		t.Fatalf("dev config has no line %q", orig)
	}
	yaml = strings.Replace(yaml, orig, fmt.Sprintf("  dir: %q\n%s", ksDir, extraKeystore), 1)
	yaml = strings.Replace(yaml, "  key_id:", "  timeout: 3s\n  max_retries: 1\n  key_id:", 1)
	if err := h.writeConfig([]byte(yaml)); err != nil {
		t.Fatalf("config.Parse(test config) err = %v, want nil", err)
	}
	return h
}

// vaultCalls is the number of requests the emulator served, every host and
// operation together (the token endpoint included).
func (h *harness) vaultCalls(t *testing.T) int64 {
	t.Helper()
	c, err := h.emu.Control().Counters(ctxT(t, 10*time.Second))
	if err != nil {
		t.Fatalf("Counters err = %v", err)
	}
	var n int64
	for _, ops := range c {
		for _, v := range ops {
			n += v
		}
	}
	return n
}

// TestInitBootstrapSafety runs `keybroker init` where a node bootstrap could
// go wrong: each case is refused with a message naming the fix, before any
// Key Vault call and without writing anything.
func TestInitBootstrapSafety(t *testing.T) {
	tests := []struct {
		name     string
		setup    func(t *testing.T, base string) (ksDir, extra string)
		rootOnly bool
		code     int
		want     []string
		check    func(t *testing.T, ksDir string)
	}{
		{
			name: "parent directory missing (volume not mounted)",
			setup: func(t *testing.T, base string) (string, string) {
				return filepath.Join(base, "data", "keystore"), ""
			},
			code: exitNotReady,
			want: []string{"its parent directory", "does not exist", "mount the volume", "init never creates it"},
			check: func(t *testing.T, ksDir string) {
				if _, err := os.Stat(filepath.Dir(ksDir)); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("init left %s behind (stat err = %v): it must not create the parent", filepath.Dir(ksDir), err)
				}
			},
		},
		{
			name: "require_mount not a mount point",
			setup: func(t *testing.T, base string) (string, string) {
				vol := filepath.Join(base, "vol")
				mkdir(t, vol, 0o755)
				return filepath.Join(vol, "keystore"), fmt.Sprintf("  require_mount: %q\n", vol)
			},
			code: exitNotReady,
			want: []string{"keystore.require_mount", "is not a mount point", "mount the data volume"},
			check: func(t *testing.T, ksDir string) {
				if _, err := os.Stat(ksDir); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("init created %s (stat err = %v) on an unmounted volume", ksDir, err)
				}
			},
		},
		{
			name: "directory holds other files",
			setup: func(t *testing.T, base string) (string, string) {
				ks := filepath.Join(base, "ks")
				mkdir(t, ks, 0o700)
				if err := os.WriteFile(filepath.Join(ks, "notes.txt"), []byte("mine"), 0o600); err != nil {
					t.Fatal(err)
				}
				return ks, ""
			},
			code: exitUsage,
			want: []string{"is not empty and holds no keystore (notes.txt)", "point keystore.dir at"},
			check: func(t *testing.T, ksDir string) {
				ents, err := os.ReadDir(ksDir)
				if err != nil || len(ents) != 1 || ents[0].Name() != "notes.txt" {
					t.Errorf("after the refused init %s holds %v (err %v), want only notes.txt", ksDir, ents, err)
				}
			},
		},
		{
			name: "directory open to others",
			setup: func(t *testing.T, base string) (string, string) {
				ks := filepath.Join(base, "ks")
				mkdir(t, ks, 0o755)
				return ks, ""
			},
			code: exitUsage,
			want: []string{"has mode 0755", "run chmod 700", "Key Vault was not called"},
		},
		{
			name:     "directory owned by another user",
			rootOnly: true,
			setup: func(t *testing.T, base string) (string, string) {
				ks := filepath.Join(base, "ks")
				mkdir(t, ks, 0o700)
				if err := os.Chown(ks, 65534, 65534); err != nil {
					t.Fatal(err)
				}
				return ks, ""
			},
			code: exitUsage,
			want: []string{"is owned by uid 65534", "run chown 0 "},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.rootOnly && os.Geteuid() != 0 {
				t.Skip("needs root to give a directory another owner")
			}
			base := t.TempDir()
			ksDir, extra := tc.setup(t, base)
			h := newNodeHarness(t, ksDir, extra)
			before := h.vaultCalls(t)
			out, errOut, code := runCLI(t, "init", "--config", h.cfgPath, "--if-missing")
			if code != tc.code {
				t.Fatalf("init exit %d, want %d; stdout %q stderr %q", code, tc.code, out, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("init stderr %q, want it to contain %q", errOut, w)
				}
			}
			if n := h.vaultCalls(t) - before; n != 0 {
				t.Errorf("the refused init made %d Key Vault/Entra calls, want 0", n)
			}
			if tc.check != nil {
				tc.check(t, ksDir)
			}
		})
	}
}

func mkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

// TestInitRequireMountMounted inits a keystore on a real mount point
// (/dev/shm, a tmpfs on Linux) with keystore.require_mount naming it.
func TestInitRequireMountMounted(t *testing.T) {
	const vol = "/dev/shm"
	if ok, err := mount.IsMountPoint(vol); !ok || err != nil {
		t.Skipf("%s is not a mount point here (%v): nothing to init on", vol, err)
	}
	base, err := os.MkdirTemp(vol, "keybroker-test-")
	if err != nil {
		t.Skipf("cannot write to %s: %v", vol, err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	ksDir := filepath.Join(base, "keystore")
	h := newNodeHarness(t, ksDir, fmt.Sprintf("  require_mount: %q\n", vol))
	out, errOut, code := runCLI(t, "init", "--config", h.cfgPath)
	if code != exitOK || !strings.Contains(out, "created keystore "+ksDir) {
		t.Fatalf("init on a mounted volume exit %d, stdout %q, stderr %q; want 0 and the keystore created", code, out, errOut)
	}
}

func TestCheckNewKeystoreDirFreeSpace(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "keystore")
	err := checkNewKeystoreDir(dir, 1<<62)
	if err == nil || !strings.Contains(err.Error(), "KiB free on the file system of "+parent) || !strings.Contains(err.Error(), "free some space or put the keystore on another volume") {
		t.Fatalf("checkNewKeystoreDir(%s, 4 EiB) err = %v, want a free-space refusal naming the fix", dir, err)
	}
	if err := checkNewKeystoreDir(dir, minFreeBytes); err != nil {
		t.Fatalf("checkNewKeystoreDir(a new dir in a temp dir) err = %v, want nil", err)
	}
}

// TestServeChecksFilesBeforeListening: serve with an unreadable TLS key fails
// naming tls.key_file, before it opens the admin listener (whose port is
// taken here, so reaching it would fail differently), and serve with an
// unmounted keystore.require_mount refuses to start.
func TestServeChecksFilesBeforeListening(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	base := t.TempDir()
	tests := []struct {
		name  string
		edit  func(yaml string) string
		extra string
		code  int
		want  []string
	}{
		{"missing TLS key", func(y string) string {
			return regexp.MustCompile(`(?m)^  key_file: .*$`).ReplaceAllString(y, fmt.Sprintf("  key_file: %q", filepath.Join(base, "absent.key")))
		}, "", exitUsage, []string{"tls.key_file: ", "absent.key does not exist", "nothing is listening yet"}},
		{"TLS CA is a directory", func(y string) string {
			return regexp.MustCompile(`(?m)^  client_ca_file: .*$`).ReplaceAllString(y, fmt.Sprintf("  client_ca_file: %q", base))
		}, "", exitUsage, []string{"tls.client_ca_file: ", "is a directory"}},
		{"require_mount not mounted", func(y string) string {
			return strings.Replace(y, "keystore:\n", "keystore:\n  require_mount: VOLUME\n", 1)
		}, "", exitNotReady, []string{"keystore.require_mount: ", " is not a mount point: mount the data volume"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newNodeHarness(t, filepath.Join(t.TempDir(), "keystore"), tc.extra)
			h.initKeystore() // a keystore to serve: only the edit below is wrong
			yaml, err := os.ReadFile(h.cfgPath)
			if err != nil {
				t.Fatal(err)
			}
			y := strings.Replace(string(yaml), "admin:\n  address: \"127.0.0.1:0\"", fmt.Sprintf("admin:\n  address: %q", busy.Addr().String()), 1)
			y = strings.ReplaceAll(tc.edit(y), "VOLUME", filepath.Dir(h.cfg.Keystore.Dir))
			if err := os.WriteFile(h.cfgPath, []byte(y), 0o600); err != nil {
				t.Fatal(err)
			}
			_, errOut, code := runCLI(t, "serve", "--config", h.cfgPath)
			if code != tc.code {
				t.Fatalf("serve exit %d, want %d; stderr %q", code, tc.code, errOut)
			}
			for _, w := range tc.want {
				if !strings.Contains(errOut, w) {
					t.Errorf("serve stderr %q, want it to contain %q", errOut, w)
				}
			}
			if strings.Contains(errOut, busy.Addr().String()) {
				t.Errorf("serve stderr %q names the admin address: it tried to listen before checking its files", errOut)
			}
		})
	}
}

// TestKeyIDErrorNamesYAMLKey: a bad azure.key_id is reported under that key,
// with the fix in configuration terms, not as a Go field or a region the
// operator never listed.
func TestKeyIDErrorNamesYAMLKey(t *testing.T) {
	base := t.TempDir()
	h := newNodeHarness(t, filepath.Join(base, "keystore"), "")
	yaml, err := os.ReadFile(h.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	y := regexp.MustCompile(`(?m)^  key_id: "https://([^/"]+)/`).ReplaceAllString(string(yaml), `  key_id: "https://$1:8443/`)
	if y == string(yaml) {
		t.Fatal("found no key_id line to edit")
	}
	if err := os.WriteFile(h.cfgPath, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCLI(t, "init", "--config", h.cfgPath)
	if code != exitUsage {
		t.Fatalf("init with a key id with a port exit %d, want %d; stderr %q", code, exitUsage, errOut)
	}
	for _, w := range []string{"keybroker: azure.key_id: ", "has a port: remove it", "set vault_url"} {
		if !strings.Contains(errOut, w) {
			t.Errorf("init stderr %q, want it to contain %q", errOut, w)
		}
	}
	for _, bad := range []string{"Config.Endpoint", "regions[0]", "(primary)"} {
		if strings.Contains(errOut, bad) {
			t.Errorf("init stderr %q names %q, which is not in the operator's configuration", errOut, bad)
		}
	}
}

// TestClientMessagesNameTheFix drives a running broker with the client
// commands an operator uses and checks the text they read: a refused role
// names the authorization key, and UNAVAILABLE tells a Key Vault outage
// behind the broker from a broker that cannot be reached.
func TestClientMessagesNameTheFix(t *testing.T) {
	h := newHarness(t, "")
	h.start()
	conn := func(cert, key string) []string {
		return []string{"--addr", h.at.Address, "--ca", h.files.CA, "--cert", cert, "--key", key, "--timeout", "20s"}
	}
	admin := conn(h.files.AdminCert, h.files.AdminKey)

	_, errOut, code := runCLI(t, append([]string{"rotate"}, conn(h.files.EngineCert, h.files.EngineKey)...)...)
	if code != exitDenied {
		t.Fatalf("rotate with the engine certificate exit %d, want %d; stderr %q", code, exitDenied, errOut)
	}
	for _, w := range []string{"PermissionDenied", `it needs role "admin"`, "list the identity under authorization.admin in the broker's configuration file"} {
		if !strings.Contains(errOut, w) {
			t.Errorf("rotate as engine stderr %q, want it to contain %q", errOut, w)
		}
	}
	if strings.Contains(errOut, "roles config") {
		t.Errorf("rotate as engine stderr %q names a \"roles config\" the configuration file does not have", errOut)
	}

	ctl := h.emu.Control()
	if err := ctl.InjectFault(ctxT(t, 10*time.Second), akvemu.Fault{Status: 503}); err != nil {
		t.Fatal(err)
	}
	_, errOut, code = runCLI(t, append([]string{"rotate"}, admin...)...)
	if err := ctl.ClearFaults(ctxT(t, 10*time.Second)); err != nil {
		t.Fatal(err)
	}
	if code != exitUnavailable {
		t.Fatalf("rotate during a Key Vault outage exit %d, want %d; stderr %q", code, exitUnavailable, errOut)
	}
	if !strings.Contains(errOut, "the broker answered: it cannot reach Key Vault") {
		t.Errorf("rotate during a Key Vault outage stderr %q, want it to say the broker answered and Key Vault is unreachable", errOut)
	}
	if strings.Contains(errOut, "is the broker running") || strings.Contains(errOut, "--addr") {
		t.Errorf("rotate during a Key Vault outage stderr %q blames the connection flags", errOut)
	}

	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	closed.Close()
	args := append([]string{"rotate"}, admin...)
	args[2] = addr
	_, errOut, code = runCLI(t, args...)
	if code != exitUnavailable || !strings.Contains(errOut, "is the broker running, and are --addr, --ca and --server-name right?") {
		t.Errorf("rotate against a closed port exit %d, stderr %q; want %d and the connection hint", code, errOut, exitUnavailable)
	}
}

// TestColdStartOutageReason starts a broker while Key Vault is unreachable:
// it holds no key, and its DEGRADED reason must say so rather than claim to
// serve keys from memory.
func TestColdStartOutageReason(t *testing.T) {
	h := newHarness(t, "")
	if err := h.emu.Control().InjectFault(ctxT(t, 10*time.Second), akvemu.Fault{Reset: true}); err != nil {
		t.Fatal(err)
	}
	h.start()
	out, errOut, code := runCLI(t, "status", "--addr", h.at.Address, "--ca", h.files.CA, "--cert", h.files.EngineCert, "--key", h.files.EngineKey)
	if code != exitOK {
		t.Fatalf("status exit %d, want 0; stderr %q", code, errOut)
	}
	if !strings.Contains(out, "DEGRADED") || !strings.Contains(out, "no key is held in memory yet, so key requests fail with UNAVAILABLE until Key Vault answers") {
		t.Errorf("status after a cold start in an outage printed %q, want DEGRADED saying no key is held", out)
	}
	if strings.Contains(out, "serving keys held in memory") {
		t.Errorf("status after a cold start in an outage printed %q: it claims to serve keys it does not hold", out)
	}
}

// TestRotateCMKOfflineOutageLog runs the offline rotate-cmk while Key Vault
// is unreachable: it holds no key, so its log must not claim to serve keys
// from memory.
func TestRotateCMKOfflineOutageLog(t *testing.T) {
	h := newHarness(t, "")
	if err := h.emu.Control().InjectFault(ctxT(t, 10*time.Second), akvemu.Fault{Reset: true}); err != nil {
		t.Fatal(err)
	}
	_, errOut, code := runCLI(t, "rotate-cmk", "--config", h.cfgPath, "--timeout", "20s")
	if code != exitUnavailable {
		t.Fatalf("rotate-cmk in an outage exit %d, want %d; stderr %q", code, exitUnavailable, errOut)
	}
	if strings.Contains(errOut, "serving keys held in memory") {
		t.Errorf("offline rotate-cmk logged %q: it serves nothing and holds no key", errOut)
	}
	if strings.Contains(errOut, "DEGRADED") && !strings.Contains(errOut, "no key is held in memory") {
		t.Errorf("offline rotate-cmk logged a DEGRADED state without saying no key is held: %q", errOut)
	}
}

// TestServeNotifiesSystemd runs `keybroker serve` as systemd would with
// Type=notify: READY=1 arrives on NOTIFY_SOCKET once the broker listens,
// STOPPING=1 when it is told to stop.
func TestServeNotifiesSystemd(t *testing.T) {
	h := newHarness(t, "")
	sock := filepath.Join(t.TempDir(), "notify")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		e := &env{stdout: io.Discard, stderr: io.Discard, getenv: func(k string) string {
			if k == "NOTIFY_SOCKET" {
				return sock
			}
			return ""
		}}
		done <- run(ctx, e, []string{"serve", "--config", h.cfgPath})
	}()
	read := func() string {
		nc.SetReadDeadline(time.Now().Add(60 * time.Second))
		buf := make([]byte, 4096)
		n, err := nc.Read(buf)
		if err != nil {
			t.Fatalf("no notification from serve: %v", err)
		}
		return string(buf[:n])
	}
	if got := read(); !strings.HasPrefix(got, "READY=1\nSTATUS=SERVING; address 127.0.0.1:") {
		t.Errorf("serve's first notification %q, want READY=1 with a SERVING status", got)
	}
	cancel()
	if got := read(); got != "STOPPING=1" {
		t.Errorf("serve's notification on stop %q, want STOPPING=1", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve returned %v after cancel, want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("serve did not stop within 30s")
	}
}
