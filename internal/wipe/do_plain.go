//go:build !goexperiment.runtimesecret

package wipe

// Erasing reports whether this build erases the temporaries of Do
// (GOEXPERIMENT=runtimesecret).
const Erasing = false

// Do runs f. Built with GOEXPERIMENT=runtimesecret it erases what f leaves
// behind (see do_secret.go); without it, it cannot.
func Do(f func()) { f() }
