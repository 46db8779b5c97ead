package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  string // substring of stderr
	}{
		{name: "no command", args: nil, wantCode: exitUsage, wantErr: "no command given"},
		{name: "help", args: []string{"help"}, wantCode: exitOK},
		{name: "unknown command", args: []string{"sock"}, wantCode: exitUsage, wantErr: `unknown command "sock"`},
		{name: "bench -h", args: []string{"bench", "-h"}, wantCode: exitOK, wantErr: "--concurrency"},
		{name: "bad flag", args: []string{"bench", "--nope"}, wantCode: exitUsage, wantErr: "nope"},
		{name: "stray argument", args: []string{"bench", "extra"}, wantCode: exitUsage, wantErr: `unexpected argument "extra"`},
		{name: "zero rounds", args: []string{"bench", "--rounds", "0"}, wantCode: exitUsage, wantErr: "--rounds 0"},
		{name: "zero duration", args: []string{"bench", "--duration", "0s"}, wantCode: exitUsage, wantErr: "--duration"},
		{name: "negative warm-up", args: []string{"bench", "--warmup", "-1s"}, wantCode: exitUsage, wantErr: "--warmup"},
		{name: "zero concurrency", args: []string{"bench", "--concurrency", "0"}, wantCode: exitUsage, wantErr: "--concurrency"},
		{name: "more connections than workers", args: []string{"bench", "--concurrency", "2", "--connections", "3"}, wantCode: exitUsage, wantErr: "--connections 3"},
		{name: "no broker binary", args: []string{"bench", "--keybroker", "/nonexistent/keybroker"}, wantCode: exitUsage, wantErr: "go build -o bin/ ./cmd/keybroker"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			e := &env{stdout: &stdout, stderr: &stderr}
			err := run(context.Background(), e, tc.args)
			if code := exitCode(&stderr, err); code != tc.wantCode {
				t.Errorf("run(%q) exit code = %d (err = %v), want %d", tc.args, code, err, tc.wantCode)
			}
			if !strings.Contains(stderr.String(), tc.wantErr) {
				t.Errorf("run(%q) stderr = %q, want it to contain %q", tc.args, stderr.String(), tc.wantErr)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		err  error
		want int
	}{
		{nil, exitOK},
		{errors.New("boom"), exitFailure},
		{usageErrorf("bad"), exitUsage},
		{errTargets, exitTargets},
		{fmt.Errorf("bench: %w", errTargets), exitTargets},
	}
	for _, tc := range tests {
		if got := exitCode(&bytes.Buffer{}, tc.err); got != tc.want {
			t.Errorf("exitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
