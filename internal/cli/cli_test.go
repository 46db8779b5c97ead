package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os/exec"
	"strings"
	"testing"
)

func TestProgramRun(t *testing.T) {
	var ran []string
	p := &Program[string]{Name: "prog", NameWidth: 6, Footer: "see the README", Commands: []Command[string]{
		{Name: "hello", Summary: "say hello", Run: func(_ context.Context, e string, args []string) error {
			ran = append(ran, e+":"+strings.Join(args, ","))
			return nil
		}},
	}}
	tests := []struct {
		args     []string
		wantCode int
		wantErr  string // in what Report prints
		wantOut  string // in stdout or stderr
	}{
		{[]string{"hello", "a", "b"}, ExitOK, "", ""},
		{nil, ExitUsage, "no command given", "hello  say hello"},
		{[]string{"help"}, ExitOK, "", "see the README"},
		{[]string{"bogus"}, ExitUsage, `unknown command "bogus"`, "usage: prog COMMAND"},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errb, rep bytes.Buffer
			err := p.Run(context.Background(), "env", &out, &errb, tc.args)
			if got := Report(&rep, "prog", err); got != tc.wantCode {
				t.Fatalf("Report(Run(%v)) = %d (%v), want %d", tc.args, got, err, tc.wantCode)
			}
			if !strings.Contains(rep.String(), tc.wantErr) {
				t.Errorf("Report printed %q, want %q", rep.String(), tc.wantErr)
			}
			if !strings.Contains(out.String()+errb.String(), tc.wantOut) {
				t.Errorf("usage output %q, want %q", out.String()+errb.String(), tc.wantOut)
			}
		})
	}
	if len(ran) != 1 || ran[0] != "env:a,b" {
		t.Fatalf("commands ran = %v, want [env:a,b]", ran)
	}
}

func TestParseFlags(t *testing.T) {
	var stderr bytes.Buffer
	fs := NewFlagSet(&stderr, "prog", "cmd", "[--n N]")
	fs.Int("n", 0, "a number")
	tests := []struct {
		args []string
		code int
	}{
		{[]string{"--n", "3"}, ExitOK},
		{[]string{"--n", "x"}, ExitUsage},
		{[]string{"--bogus"}, ExitUsage},
		{[]string{"extra"}, ExitUsage},
	}
	for _, tc := range tests {
		err := ParseFlags(fs, tc.args)
		if got := Report(&bytes.Buffer{}, "prog", err); got != tc.code {
			t.Errorf("ParseFlags(%v) exit code = %d (%v), want %d", tc.args, got, err, tc.code)
		}
	}
	if err := ParseFlags(fs, []string{"-h"}); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("ParseFlags(-h) err = %v, want flag.ErrHelp", err)
	}
	if !strings.Contains(stderr.String(), "usage: prog cmd [--n N]") {
		t.Errorf("usage printed %q, want the synopsis", stderr.String())
	}
}

func TestReportCodes(t *testing.T) {
	childExit := exec.Command("sh", "-c", "exit 7").Run() // an *exec.ExitError with ExitCode 7
	tests := []struct {
		err  error
		want int
	}{
		{nil, ExitOK},
		{flag.ErrHelp, ExitOK},
		{errors.New("boom"), ExitFailure},
		{WithCode(42, errors.New("x")), 42},
		{fmt.Errorf("wrapped: %w", WithCode(5, errors.New("x"))), 5},
		{UsageErrorf("bad %s", "flag"), ExitUsage},
		{childExit, ExitFailure}, // a child's exit code is not this program's
	}
	for _, tc := range tests {
		if got := Report(&bytes.Buffer{}, "prog", tc.err); got != tc.want {
			t.Errorf("Report(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	if WithCode(3, nil) != nil {
		t.Error("WithCode(3, nil) != nil, want nil")
	}
}
