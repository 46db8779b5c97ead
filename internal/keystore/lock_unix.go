//go:build unix

package keystore

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// lockDir takes an exclusive, non-blocking flock on path, creating it. flock
// locks belong to the open file, not the process, so a second Store in the
// same process is refused too. The kernel drops the lock when the process
// dies, so a crash never leaves the keystore locked.
func lockDir(dir, path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keystore: opening lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is open for writing elsewhere (%s is locked); stop the other keybroker, or open the keystore read-only", ErrLocked, dir, path)
		}
		return nil, fmt.Errorf("keystore: locking %s: %w", path, err)
	}
	return f, nil
}
