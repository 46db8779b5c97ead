package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// checkKeybroker fails with a usage error, and how to build one, when the
// --keybroker binary is not there.
func checkKeybroker(bin string) error {
	if _, err := os.Stat(bin); err != nil {
		return usageErrorf("--keybroker %s: %v; build it with: go build -o bin/ ./cmd/keybroker (or make build)", bin, errors.Unwrap(err))
	}
	return nil
}

// sessionConfig says where a run keeps its files.
type sessionConfig struct {
	report    string // the reports directory's default name: load/reports/REPORT-TIMESTAMP
	tmpPrefix string // of the temporary directory's name
	out       string // --out; empty for the default
	ghz       string // --ghz; empty builds the pinned one into the temporary directory
}

// session is what every run sets up before it starts a broker: the reports
// directory, a temporary directory, the ghz binary and the brokers' logs.
// Close removes the temporary directory and closes the logs. It is for the
// goroutine of the run.
type session struct {
	started  time.Time // before anything was built or started
	out      string    // the reports directory
	tmp      string
	ghz      string
	progress io.Writer // kbload's progress lines
	logs     []*os.File
}

// newSession makes the reports and temporary directories and builds ghz
// unless cfg names one.
func newSession(ctx context.Context, e *env, cfg sessionConfig) (*session, error) {
	s := &session{started: time.Now(), out: cfg.out, ghz: cfg.ghz, progress: e.stderr}
	if s.out == "" {
		s.out = filepath.Join("load", "reports", cfg.report+"-"+s.started.Format("20060102-150405"))
	}
	if err := os.MkdirAll(s.out, 0o755); err != nil {
		return nil, fmt.Errorf("--out: %w", err)
	}
	var err error
	if s.tmp, err = os.MkdirTemp("", cfg.tmpPrefix); err != nil {
		return nil, err
	}
	if s.ghz == "" {
		root, err := repoRoot()
		if err != nil {
			s.Close()
			return nil, err
		}
		fmt.Fprintln(e.stderr, "kbload: building ghz ...")
		if s.ghz, err = buildGhz(ctx, root, s.tmp); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

// Close closes the logs and removes the temporary directory. Call it once
// the brokers are stopped.
func (s *session) Close() {
	for _, f := range s.logs {
		f.Close()
	}
	s.logs = nil
	os.RemoveAll(s.tmp)
}

// openLog opens name in the reports directory for a broker's output:
// flag is os.O_TRUNC for a broker started once, os.O_APPEND for one a run
// starts again.
func (s *session) openLog(name string, flag int) (*os.File, string, error) {
	path := filepath.Join(s.out, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|flag, 0o600)
	if err != nil {
		return nil, "", fmt.Errorf("broker log: %w", err)
	}
	s.logs = append(s.logs, f)
	return f, path, nil
}

// startDev starts `bin dev` in dir, its output in the log name (see openLog).
func (s *session) startDev(ctx context.Context, bin, dir, name string, flag int) (*devBroker, error) {
	logFile, logPath, err := s.openLog(name, flag)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(s.progress, "kbload: starting %s dev (log: %s) ...\n", bin, logPath)
	return startDevBroker(ctx, bin, dir, logFile)
}

// writeSummary writes v as summary.json in the reports directory.
func (s *session) writeSummary(v any) error {
	js, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(s.out, "summary.json"), append(js, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the summary: %w", err)
	}
	return nil
}

// verdict is a completed run's error: errTargets when a check failed,
// unless --no-fail.
func verdict(pass, noFail bool) error {
	if !pass && !noFail {
		return errTargets
	}
	return nil
}
