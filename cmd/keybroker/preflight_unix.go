//go:build unix

package main

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// checkOwner refuses a directory another user owns: the broker would not be
// able to keep it private, or another user could swap its files.
func checkOwner(dir string, fi fs.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := os.Geteuid(); int(st.Uid) != uid {
		return fmt.Errorf("keystore.dir %s is owned by uid %d, but keybroker runs as uid %d: run chown %d %s, or run init as the user the service runs as (nothing was written, Key Vault was not called)", dir, st.Uid, uid, uid, dir)
	}
	return nil
}

// checkWritable reports whether this process may create files in dir.
func checkWritable(dir string) error {
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("%s is not writable by uid %d (%v): run init as the user the service runs as, or fix the directory's owner and mode", dir, os.Geteuid(), err)
	}
	return nil
}

// freeBytes is the space an unprivileged user may still use on dir's file
// system; ok is false where that is unknown.
func freeBytes(dir string) (free uint64, ok bool, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, false, err
	}
	return st.Bavail * uint64(st.Bsize), true, nil
}
