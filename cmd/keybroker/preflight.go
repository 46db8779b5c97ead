package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/mount"
)

// minFreeBytes is the free space init wants where the keystore goes: a
// keystore is a few KiB, and rotations write a temporary copy of a key file
// beside the old one.
const minFreeBytes = 1 << 20

// checkMount refuses to go on unless keystore.require_mount, when set, is
// a mount point: init and serve must not touch a keystore directory on the
// root disk while the data volume is not mounted yet.
func checkMount(k config.Keystore) error {
	if k.RequireMount == "" {
		return nil
	}
	ok, err := mount.IsMountPoint(k.RequireMount)
	if errors.Is(err, fs.ErrNotExist) {
		ok, err = false, nil
	}
	if err != nil {
		return cli.WithCode(exitNotReady, fmt.Errorf("keystore.require_mount %s: %w", k.RequireMount, err))
	}
	if !ok {
		return cli.WithCode(exitNotReady, fmt.Errorf("keystore.require_mount: %s is not a mount point: mount the data volume that holds keystore.dir (%s), then run this again (nothing was read or written)", k.RequireMount, k.Dir))
	}
	return nil
}

// checkParent refuses a keystore.dir whose parent directory does not exist:
// init never creates it, so that a keystore cannot land on the wrong disk.
func checkParent(dir string) error {
	parent := filepath.Dir(filepath.Clean(dir))
	fi, err := os.Stat(parent)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return cli.WithCode(exitNotReady, fmt.Errorf("keystore.dir %s: its parent directory %s does not exist: mount the volume it belongs on or create %s, then run init again (init never creates it, so a new master key cannot land on the wrong disk)", dir, parent, parent))
	case err != nil:
		return cli.WithCode(exitUsage, fmt.Errorf("keystore.dir %s: %w", dir, err))
	case !fi.IsDir():
		return cli.WithCode(exitUsage, fmt.Errorf("keystore.dir %s: %s is not a directory: point keystore.dir into a directory", dir, parent))
	}
	return nil
}

// checkNewKeystoreDir checks, before any Key Vault call, what init needs to
// create a keystore in dir, which holds none: a directory (or its parent)
// this user owns and may write, private to it, empty, with free space.
// minFree is the free space wanted, in bytes.
func checkNewKeystoreDir(dir string, minFree uint64) error {
	where := dir
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		where = filepath.Dir(filepath.Clean(dir))
		if err := checkWritable(where); err != nil {
			return cli.WithCode(exitUsage, fmt.Errorf("keystore.dir %s cannot be created: %w", dir, err))
		}
	case err != nil:
		return cli.WithCode(exitUsage, fmt.Errorf("keystore.dir %s: %w", dir, err))
	case !fi.IsDir():
		return cli.WithCode(exitUsage, fmt.Errorf("keystore.dir %s is not a directory: point keystore.dir at an empty directory, or at a path that does not exist yet", dir))
	default:
		if err := checkOwner(dir, fi); err != nil {
			return cli.WithCode(exitUsage, err)
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			return cli.WithCode(exitUsage, fmt.Errorf("keystore.dir %s has mode %04o, open to group or others: run chmod 700 %s (nothing was written, Key Vault was not called)", dir, perm, dir))
		}
		if err := checkWritable(dir); err != nil {
			return cli.WithCode(exitUsage, fmt.Errorf("keystore.dir %s: %w", dir, err))
		}
		if err := checkOnlyKeystore(dir); err != nil {
			return cli.WithCode(exitUsage, err)
		}
	}
	free, ok, err := freeBytes(where)
	if err != nil {
		return cli.WithCode(exitUsage, fmt.Errorf("keystore.dir %s: checking free space: %w", dir, err))
	}
	if ok && free < minFree {
		return cli.WithCode(exitUsage, fmt.Errorf("keystore.dir %s: only %d KiB free on the file system of %s, init needs at least %d KiB: free some space or put the keystore on another volume (nothing was written, Key Vault was not called)", dir, free>>10, where, minFree>>10))
	}
	return nil
}

// keystoreLeftovers are the entries an interrupted init may leave in a
// directory that holds no keystore yet; any other entry is someone else's.
func keystoreLeftover(name string) bool {
	return name == "keystore.lock" || name == "keys" || strings.HasPrefix(name, ".tmp-")
}

// checkOnlyKeystore refuses a directory that holds anything but what an
// interrupted init leaves: a keystore is not created beside other files.
func checkOnlyKeystore(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("keystore.dir %s: %w", dir, err)
	}
	var others []string
	for _, e := range ents {
		if !keystoreLeftover(e.Name()) {
			others = append(others, e.Name())
		}
	}
	if len(others) == 0 {
		return nil
	}
	slices.Sort(others)
	shown := others
	if len(shown) > 5 {
		shown = append(shown[:5:5], fmt.Sprintf("and %d more", len(others)-5))
	}
	return fmt.Errorf("keystore.dir %s is not empty and holds no keystore (%s): init creates a keystore only in an empty directory; point keystore.dir at one, or move those files away (if this is a keystore whose keystore.meta was lost, restore it from a backup)", dir, strings.Join(shown, ", "))
}

// checkFiles opens every file the configuration names, so that serve fails
// on an unreadable one, naming its YAML key, before anything listens.
func checkFiles(cfg *config.Config) error {
	c := cfg.Azure.Credential
	files := []struct{ key, path string }{
		{"tls.cert_file", cfg.TLS.CertFile},
		{"tls.key_file", cfg.TLS.KeyFile},
		{"tls.client_ca_file", cfg.TLS.ClientCAFile},
		{"azure.custom.ca_file", cfg.Azure.Custom.CAFile},
		{"azure.credential.client_secret_file", c.ClientSecretFile},
		{"azure.credential.certificate_file", c.CertificateFile},
		{"azure.credential.federated_token_file", c.FederatedTokenFile},
	}
	for _, f := range files {
		if f.path == "" {
			continue
		}
		if err := checkReadable(f.path); err != nil {
			return cli.WithCode(exitUsage, fmt.Errorf("%s: %w (nothing is listening yet)", f.key, err))
		}
	}
	return nil
}

// checkReadable opens path for reading and says what to do when it cannot.
func checkReadable(path string) error {
	f, err := os.Open(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%s does not exist: fix the path in the configuration, or put the file there", path)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%s is not readable by uid %d: give the broker's user read access (chown or chmod), or fix the path", path, os.Geteuid())
	case err != nil:
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return fmt.Errorf("%s is a directory, not a file: fix the path in the configuration", path)
	}
	return nil
}
