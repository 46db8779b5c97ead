//go:build !unix

package keystore

import (
	"fmt"
	"os"
	"runtime"
)

// lockDir is not implemented off unix: without a lock and a directory fsync
// the keystore's guarantees do not hold, so writing is refused outright.
func lockDir(dir, path string) (*os.File, error) {
	return nil, fmt.Errorf("keystore: writing a keystore is not supported on %s; open %s read-only", runtime.GOOS, dir)
}
