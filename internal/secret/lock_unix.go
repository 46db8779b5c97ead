//go:build unix

package secret

import "golang.org/x/sys/unix"

// lock keeps b out of swap where the OS allows; failure (RLIMIT_MEMLOCK) is
// not fatal, the key is still served.
func lock(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	return unix.Mlock(b) == nil
}

func unlock(b []byte) { _ = unix.Munlock(b) }
