// Package cli runs a program's subcommands: dispatch, flag sets whose errors
// are usage errors, exit codes. It is for the commands under cmd/; each keeps
// its own command table, exit codes and usage text.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
)

// Exit codes every program shares; a program numbers its own from 3.
const (
	ExitOK      = 0
	ExitFailure = 1 // anything without a code of its own
	ExitUsage   = 2 // bad flags or arguments
)

// ExitError carries the process exit code with an error.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// WithCode gives err the exit code code; a nil err stays nil.
func WithCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &ExitError{Code: code, Err: err}
}

// UsageErrorf formats a usage error: the program exits with ExitUsage.
func UsageErrorf(format string, args ...any) error {
	return WithCode(ExitUsage, fmt.Errorf(format, args...))
}

// Report prints err, after the program's name, to w and returns the exit
// code it carries: ExitOK for nil or flag.ErrHelp, the code of the first
// *ExitError in its chain, else ExitFailure.
func Report(w io.Writer, program string, err error) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	fmt.Fprintf(w, "%s: %v\n", program, err)
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return ExitFailure
}

// Command is one subcommand. E is what the program gives its commands of
// the process (output streams, environment), so tests can run them
// in-process.
type Command[E any] struct {
	Name    string
	Summary string
	Run     func(ctx context.Context, e E, args []string) error
}

// Program is a program run as `NAME COMMAND [flags]`.
type Program[E any] struct {
	Name      string
	Commands  []Command[E]
	NameWidth int    // column width of the command names in the usage
	Footer    string // the usage's last line
}

// Run runs the command args[0] names with the rest of args. No command, or
// help, prints the usage to stdout; an unknown command prints it to stderr.
func (p *Program[E]) Run(ctx context.Context, e E, stdout, stderr io.Writer, args []string) error {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		p.PrintUsage(stdout)
		if len(args) == 0 {
			return UsageErrorf("no command given")
		}
		return nil
	}
	for _, c := range p.Commands {
		if c.Name == args[0] {
			return c.Run(ctx, e, args[1:])
		}
	}
	p.PrintUsage(stderr)
	return UsageErrorf("unknown command %q", args[0])
}

// PrintUsage prints the list of commands.
func (p *Program[E]) PrintUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: %s COMMAND [flags]\n\ncommands:\n", p.Name)
	for _, c := range p.Commands {
		fmt.Fprintf(w, "  %-*s %s\n", p.NameWidth, c.Name, c.Summary)
	}
	fmt.Fprintln(w, "\n"+p.Footer)
}

// NewFlagSet makes the flag set of program's command name, which prints its
// errors and usage (`usage: PROGRAM NAME SYNOPSIS` and the flags) to
// stderr. Parse it with ParseFlags.
func NewFlagSet(stderr io.Writer, program, name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	// The flag package prints a parse error before the usage; Report prints
	// it again with the exit code. Discard the first so it reads once.
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s %s %s\n\nflags:\n", program, name, synopsis)
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return fs
}

// ParseFlags parses args, which must be flags only. Its errors are usage
// errors, except flag.ErrHelp after -h, which Report treats as success.
func ParseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return WithCode(ExitUsage, fmt.Errorf("%s: %w (the flags are listed above)", fs.Name(), err))
	}
	if fs.NArg() > 0 {
		return UsageErrorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}
