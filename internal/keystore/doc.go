// Package keystore keeps the broker's master keys on disk, wrapped by the
// customer's key-encryption keys (CMKs) and never in plaintext. The broker
// uses it to find, create and rotate master keys; a KMIP front-end can map
// Create, Register, Get, Activate, Locate (by name), Revoke and Destroy onto
// it, since every key has a stable random identifier, a unique name and a
// KMIP state.
//
// # Guarantees
//
// The keystore must never lose a key and never misread one:
//
//   - Every update replaces one file atomically (temp file in the same
//     directory, write, fsync, rename, fsync of the directory), so a crash or
//     power loss at any instant leaves the old state or the new one. Leftover
//     temp files are never read, and the next writer removes them.
//   - A method that changes a key returns only after the change is durable:
//     a new version is persisted before a caller can serve it.
//   - Every file is self-describing and checked: magic, format version,
//     SHA-256 over header and body, then a strict JSON body and a semantic
//     check (identifiers, states, at least one wrapped copy per version, full
//     CMK identifiers with version). Anything wrong is ErrCorrupt naming the
//     file, and Open fails: the keystore never guesses and never "repairs" a
//     file by overwriting it. A file from a newer keybroker is ErrNewerFormat.
//   - The directory must be 0700 and its files 0600 (ErrPermissions says
//     which chmod fixes it). An exclusive flock on keystore.lock keeps a
//     second writer, in this or another process, out (ErrLocked).
//
// # Layout
//
//	dir/keystore.meta       magic, format version, store id, creation time
//	dir/keystore.lock       empty; only flock'ed
//	dir/keys/<key id>.key   one file per key: the key, its versions and their wrapped copies
//
// One file per key, rather than a single file, because every operation
// changes exactly one key: each is then one atomic rename with no
// multi-file transaction, a write never rewrites (and so can never damage)
// another key, and KMIP Create is simply a new file. The cross-key rules
// (unique names, version ids unique across keys) are checked on every load
// and kept by the single writer. keystore.meta is written last at Create, so
// a directory without it is not a keystore, unless keys/ holds key files,
// which is reported as corruption rather than offered to Create.
//
// The file format is described in format.go; its body is JSON so that an
// operator can read a key file without keybroker.
//
// # KMIP objects
//
// A key that a KMIP client created or registered (CreateObject) carries
// an Object: its owner, KMIP type and attributes. Its keystore name is
// "kmip-" and its id, its id is its KMIP Unique Identifier, and it has
// exactly one version, so that the identifier always names the same bytes
// (AddVersion refuses it). Its file is written in format version 2, which
// adds the "kmip" field; files of keys without one stay version 1, so a
// keystore without KMIP objects remains readable by older keybrokers.
package keystore
