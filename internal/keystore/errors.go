package keystore

import (
	"errors"
	"fmt"
)

// Sentinel errors, for errors.Is. Errors returned by this package wrap one
// of them and add the file, key or version concerned; none carries a
// wrapped copy or any other key material.
var (
	// ErrNotExist: the directory holds no keystore (Open, on a fresh node:
	// call Create).
	ErrNotExist = errors.New("keystore: no keystore")
	// ErrExists: Create found a keystore already there.
	ErrExists = errors.New("keystore: a keystore already exists")
	// ErrCorrupt: a file is damaged or not a keystore file. The message
	// names the file and what is wrong. The keystore never repairs it;
	// restore the file from a backup.
	ErrCorrupt = errors.New("keystore: corrupt file")
	// ErrNewerFormat: a file was written by a newer keybroker, in a format
	// version this one cannot read. Upgrade keybroker; the file is fine.
	ErrNewerFormat = errors.New("keystore: written by a newer keybroker")
	// ErrPermissions: the directory or a file is open to group or others.
	// The message says which chmod fixes it.
	ErrPermissions = errors.New("keystore: insecure permissions")
	// ErrLocked: another Store, in this process or another, has the
	// directory open for writing.
	ErrLocked = errors.New("keystore: in use by another process")
	// ErrKeyNotFound: no key has that name or identifier.
	ErrKeyNotFound = errors.New("keystore: key not found")
	// ErrVersionNotFound: the key has no version with that identifier.
	ErrVersionNotFound = errors.New("keystore: key version not found")
	// ErrNameTaken: another key already has that name (or that identifier).
	ErrNameTaken = errors.New("keystore: key name already in use")
	// ErrInvalid: an argument is malformed (a name, a state, a version
	// without copies, a copy without a full key identifier...).
	ErrInvalid = errors.New("keystore: invalid argument")
	// ErrState: the key's state forbids the change (for example destroying
	// an ACTIVE key, or adding a version to a destroyed one).
	ErrState = errors.New("keystore: not allowed in the key's state")
	// ErrCurrentVersion: RemoveVersion was asked to remove the newest
	// version, which is never removed.
	ErrCurrentVersion = errors.New("keystore: the current version cannot be removed")
	// ErrReadOnly: a write on a Store opened with Options.ReadOnly.
	ErrReadOnly = errors.New("keystore: opened read-only")
	// ErrClosed: a write after Close.
	ErrClosed = errors.New("keystore: closed")
	// ErrWriteFailed: an earlier write may or may not have reached the
	// disk (the directory fsync failed after the rename). The Store refuses
	// further writes; close it and Open again to see what the disk holds.
	ErrWriteFailed = errors.New("keystore: an earlier write failed")
)

// corruptf returns an ErrCorrupt naming path.
func corruptf(path, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrCorrupt, path, fmt.Sprintf(format, args...))
}

// invalidf returns an ErrInvalid.
func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}
