package main

import (
	"context"
	"fmt"
	"io"
	"runtime/debug"

	"github.com/keybroker/keybroker/internal/cli"
)

// buildInfo is what `keybroker version` prints, from the build information
// the Go toolchain embeds in the binary.
type buildInfo struct {
	Module    string // module path
	Version   string // module version: a tag, a pseudo-version, or "(devel)" for a local build
	Revision  string // vcs.revision, "" when built outside a repository
	Time      string // vcs.time (RFC 3339), "" when unknown
	Modified  bool   // vcs.modified: built from a tree with uncommitted changes
	GoVersion string
}

// readBuildInfo reads the binary's build information; read is
// debug.ReadBuildInfo, a parameter for tests.
func readBuildInfo(read func() (*debug.BuildInfo, bool)) buildInfo {
	bi, ok := read()
	if !ok {
		return buildInfo{Module: "github.com/keybroker/keybroker", Version: "unknown (built without module support)"}
	}
	out := buildInfo{Module: bi.Main.Path, Version: bi.Main.Version, GoVersion: bi.GoVersion}
	if out.Version == "" {
		out.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			out.Revision = s.Value
		case "vcs.time":
			out.Time = s.Value
		case "vcs.modified":
			out.Modified = s.Value == "true"
		}
	}
	return out
}

// print writes the build information, one "name: value" line each.
func (b buildInfo) print(w io.Writer) {
	rev := b.Revision
	switch {
	case rev == "":
		rev = "unknown (built outside a git checkout, or with -buildvcs=false)"
	case b.Modified:
		rev += " (modified)"
	}
	t := b.Time
	if t == "" {
		t = "unknown"
	}
	fmt.Fprintf(w, "keybroker %s\nmodule: %s\nrevision: %s\ncommit time: %s\ngo: %s\n", b.Version, b.Module, rev, t, b.GoVersion)
}

func runVersion(_ context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "version", "")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	readBuildInfo(debug.ReadBuildInfo).print(e.stdout)
	return nil
}
