package keystore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// tempPrefix starts the name of every temporary file. The loader skips such
// files and a writer's Open removes them: they are what a crash leaves.
const tempPrefix = ".tmp-"

// errCrash is returned by a test hook to stop a write where a crash would,
// leaving whatever is on disk as it is.
var errCrash = errors.New("keystore: simulated crash")

// writeFileAtomic replaces path with data so that a crash at any instant
// leaves either the old file or the new one: temp file in the same
// directory, write, fsync, rename, fsync the directory.
//
// It reports committed=true once the rename happened: from then on the new
// file may be what the disk holds even if an error is returned.
//
// hook, if not nil, runs before each step (tests inject crashes and I/O
// errors with it).
func writeFileAtomic(path string, data []byte, hook func(step string) error) (committed bool, err error) {
	step := func(name string) error {
		if hook == nil {
			return nil
		}
		return hook(name)
	}
	dir, base := filepath.Split(path)
	if err := step("create"); err != nil {
		return false, err
	}
	f, err := os.CreateTemp(dir, tempPrefix+base+".*") // mode 0600
	if err != nil {
		return false, fmt.Errorf("keystore: creating a temporary file beside %s: %w", path, err)
	}
	tmp := f.Name()
	crashed := false
	defer func() {
		if err != nil && !crashed && !committed {
			f.Close()
			os.Remove(tmp)
		}
	}()
	fail := func(what string, e error) error {
		if errors.Is(e, errCrash) {
			crashed = true
			f.Close() // the kernel would close it; the file stays
			return e
		}
		return fmt.Errorf("keystore: %s %s: %w", what, tmp, e)
	}
	half := len(data) / 2
	if err := step("write"); err != nil {
		return false, fail("writing", err)
	}
	if _, err := f.Write(data[:half]); err != nil {
		return false, fail("writing", err)
	}
	if err := step("write-half"); err != nil {
		return false, fail("writing", err)
	}
	if _, err := f.Write(data[half:]); err != nil {
		return false, fail("writing", err)
	}
	if err := step("sync"); err != nil {
		return false, fail("syncing", err)
	}
	if err := f.Sync(); err != nil {
		return false, fail("syncing", err)
	}
	if err := step("close"); err != nil {
		return false, fail("closing", err)
	}
	if err := f.Close(); err != nil {
		return false, fail("closing", err)
	}
	if err := step("rename"); err != nil {
		return false, fail("renaming", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fail("renaming", err)
	}
	committed = true
	if err := step("syncdir"); err != nil {
		return true, err
	}
	if err := syncDir(dir); err != nil {
		return true, err
	}
	if err := step("done"); err != nil {
		return true, err
	}
	return true, nil
}

// syncDir makes the directory entries of dir (a create, rename or remove)
// durable. Without it a power loss can undo a rename whose file was synced.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("keystore: opening directory %s to sync it: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("keystore: syncing directory %s: %w", dir, err)
	}
	return nil
}

// checkPrivate refuses a file or directory that group or others may use:
// the wrapped copies are not plaintext, but which CMK wraps which key and
// when it rotated is nobody else's business, and a writable file is a way
// to plant a key.
func checkPrivate(path string, fi fs.FileInfo) error {
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		want := "600"
		if fi.IsDir() {
			want = "700"
		}
		return fmt.Errorf("%w: %s has mode %04o, open to group or others; run: chmod %s %s", ErrPermissions, path, perm, want, path)
	}
	return nil
}

// readFile reads a regular file of the keystore, refusing anything else.
func readFile(path string) ([]byte, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, corruptf(path, "not a regular file (%s); keystore files are plain files", fi.Mode().Type())
	}
	if err := checkPrivate(path, fi); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	defer f.Close()
	// One byte past the largest valid file is enough to call it corrupt.
	data, err := io.ReadAll(io.LimitReader(f, headerLen+maxBody+sumLen+1))
	if err != nil {
		return nil, fmt.Errorf("keystore: reading %s: %w", path, err)
	}
	return data, nil
}

// isTemp reports whether a directory entry is a leftover temporary file.
func isTemp(name string) bool { return strings.HasPrefix(name, tempPrefix) }

// removeTemps deletes leftover temporary files in dir and reports their names.
func removeTemps(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("keystore: %w", err)
	}
	var removed []string
	for _, e := range ents {
		if !isTemp(e.Name()) || !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		if err := os.Remove(p); err != nil {
			return removed, fmt.Errorf("keystore: removing leftover temporary file: %w", err)
		}
		removed = append(removed, p)
	}
	if len(removed) > 0 {
		if err := syncDir(dir); err != nil {
			return removed, err
		}
	}
	return removed, nil
}
