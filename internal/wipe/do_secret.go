//go:build goexperiment.runtimesecret

package wipe

import "runtime/secret"

// Erasing reports whether this build erases the temporaries of Do
// (GOEXPERIMENT=runtimesecret).
const Erasing = true

// Do runs f under runtime/secret: the registers and stack f used are
// erased when it returns, and the heap it allocated once the garbage
// collector finds it unreachable. It is for temporaries nobody can clear,
// such as the buffers crypto/tls drops when a record outgrows them.
func Do(f func()) { secret.Do(f) }
