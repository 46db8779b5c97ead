//go:build !unix

package main

import "io/fs"

// checkOwner, checkWritable and freeBytes check nothing where the OS has no
// unix ownership or statfs: keystore.Create still refuses what it cannot use.
func checkOwner(string, fs.FileInfo) error   { return nil }
func checkWritable(string) error             { return nil }
func freeBytes(string) (uint64, bool, error) { return 0, false, nil }
