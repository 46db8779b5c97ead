//go:build unix

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeDevEnv and fakeGhzEnv make the test binary act as `keybroker dev`
// (see fakeDev) or ghz (see fakeGhz).
const (
	fakeDevEnv = "KBLOAD_FAKE_DEV"
	fakeGhzEnv = "KBLOAD_FAKE_GHZ"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(fakeDevEnv); mode != "" {
		os.Exit(fakeDev(mode))
	}
	if mode := os.Getenv(fakeGhzEnv); mode != "" {
		os.Exit(fakeGhz(mode))
	}
	os.Exit(m.Run())
}

// fakeGhz plays ghz: "ok:LOG" appends the --call it was given to LOG and
// prints testdata/ghz-ok.json; "fail" fails as ghz does when it cannot
// connect; "empty" reports no call made; "hang" never answers.
func fakeGhz(mode string) int {
	call := ""
	for i, a := range os.Args {
		if a == "--call" && i+1 < len(os.Args) {
			call = os.Args[i+1]
		}
	}
	switch {
	case strings.HasPrefix(mode, "ok:"):
		f, err := os.OpenFile(strings.TrimPrefix(mode, "ok:"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Fprintln(f, call)
		f.Close()
		b, err := os.ReadFile("testdata/ghz-ok.json")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		os.Stdout.Write(b)
		return 0
	case mode == "fail":
		fmt.Fprintln(os.Stderr, "Error: connection error: desc = \"transport: Error while dialing: dial tcp 127.0.0.1:1: connect: connection refused\"")
		return 1
	case mode == "empty":
		fmt.Println(`{"count":0,"rps":0,"statusCodeDistribution":{}}`)
		return 0
	case mode == "hang":
		time.Sleep(time.Minute) // stands for a ghz that never ends; the caller must kill it
		return 0
	}
	return 2
}

// fakeDev plays a `keybroker dev` child: ok serves until SIGTERM, stubborn
// ignores SIGTERM, exit fails at start, garbage prints a broken JSON line.
func fakeDev(mode string) int {
	if len(os.Args) < 2 || os.Args[1] != "dev" {
		fmt.Fprintln(os.Stderr, "fake keybroker: want the dev command, got", os.Args[1:])
		return 2
	}
	term := make(chan os.Signal, 1)
	switch mode {
	case "ok":
		signal.Notify(term, syscall.SIGTERM)
		fmt.Fprintln(os.Stderr, "time=... level=INFO msg=serving")
		// Split writes, as a real process may make them.
		fmt.Print(fakeLine[:40])
		fmt.Println(fakeLine[40:] + "\n\nkeybroker dev is serving on 127.0.0.1:7443. Try:")
	case "stubborn":
		signal.Ignore(syscall.SIGTERM)
		fmt.Println(fakeLine)
	case "exit":
		fmt.Fprintln(os.Stderr, "keybroker: dev PKI: permission denied")
		return 1
	case "garbage":
		signal.Notify(term, syscall.SIGTERM)
		fmt.Println("{this is not json")
	}
	select {
	case <-term:
		return 0
	case <-time.After(time.Minute): // never outlive a crashed test for long
		return 3
	}
}

func startFake(t *testing.T, mode string, logw io.Writer) (*devBroker, error) {
	t.Helper()
	t.Setenv(fakeDevEnv, mode)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return startDevBroker(ctx, os.Args[0], t.TempDir(), logw)
}

// killFake makes sure a fake broker is gone even when Stop is broken.
func killFake(b *devBroker) {
	select {
	case <-b.exited:
		return
	default:
	}
	_ = signalGroup(b.cmd.Process, syscall.SIGKILL)
	select {
	case <-b.exited:
	case <-time.After(10 * time.Second):
	}
}

// groupGone reports whether no process is left in the group pid led.
func groupGone(pid int) bool {
	return errors.Is(syscall.Kill(-pid, 0), syscall.ESRCH)
}

func TestDevBrokerLifecycle(t *testing.T) {
	tests := []struct {
		name        string
		mode        string
		wantErr     string // substring of the start error; "" = starts
		wantLog     string
		stopTimeout time.Duration
	}{
		{name: "serves, stops on SIGTERM", mode: "ok", wantLog: "keybroker dev is serving", stopTimeout: 20 * time.Second},
		{name: "ignores SIGTERM, killed", mode: "stubborn", stopTimeout: 300 * time.Millisecond},
		{name: "exits at start", mode: "exit", wantErr: "exited before serving", wantLog: "permission denied"},
		{name: "prints broken JSON", mode: "garbage", wantErr: "not valid JSON"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var log syncBuffer
			b, err := startFake(t, tc.mode, &log)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("startDevBroker() err = %v, want one containing %q", err, tc.wantErr)
				}
				if tc.wantLog != "" && !strings.Contains(log.String(), tc.wantLog) {
					t.Errorf("broker log = %q, want it to contain %q", log.String(), tc.wantLog)
				}
				return
			}
			if err != nil {
				t.Fatalf("startDevBroker() err = %v, want nil", err)
			}
			t.Cleanup(func() { killFake(b) })
			if b.info.Address != "127.0.0.1:7443" || b.info.EngineKey != "/tmp/e-key.pem" || b.ctl == nil {
				t.Errorf("startDevBroker() info = %+v, want the fake's JSON line", b.info)
			}
			b.stopTimeout = tc.stopTimeout
			if err := b.Stop(); err != nil {
				t.Fatalf("Stop() err = %v, want nil", err)
			}
			select {
			case <-b.exited:
			default:
				t.Fatalf("Stop() returned with the broker still running")
			}
			if !groupGone(b.cmd.Process.Pid) {
				t.Errorf("process group %d still has members after Stop()", b.cmd.Process.Pid)
			}
			if err := b.Stop(); err != nil {
				t.Errorf("second Stop() err = %v, want nil", err)
			}
			if tc.wantLog != "" {
				// Wait has returned, so the copy of stdout is complete.
				if !strings.Contains(log.String(), tc.wantLog) {
					t.Errorf("broker log = %q, want it to contain %q", log.String(), tc.wantLog)
				}
			}
		})
	}
}

func TestStartDevBrokerCancelled(t *testing.T) {
	t.Setenv(fakeDevEnv, "garbage-never") // an unknown mode prints nothing and waits
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	b, err := startDevBroker(ctx, os.Args[0], t.TempDir(), io.Discard)
	if !errors.Is(err, context.Canceled) {
		if b != nil {
			killFake(b)
		}
		t.Fatalf("startDevBroker(cancelled ctx) err = %v, want context.Canceled", err)
	}
}

func TestStartDevBrokerMissingBinary(t *testing.T) {
	_, err := startDevBroker(context.Background(), "/nonexistent/keybroker", t.TempDir(), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/keybroker") {
		t.Fatalf("startDevBroker(missing binary) err = %v, want one naming the binary", err)
	}
}

func TestGhzRun(t *testing.T) {
	tests := []struct {
		name    string
		mode    string
		wantErr string
	}{
		{name: "report", mode: "ok:" + "LOG"},
		{name: "ghz fails", mode: "fail", wantErr: "connection refused"},
		{name: "no call made", mode: "empty", wantErr: "made no call"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mode := strings.Replace(tc.mode, "LOG", t.TempDir()+"/calls", 1)
			t.Setenv(fakeGhzEnv, mode)
			g := ghzRun{bin: os.Args[0], addr: "127.0.0.1:1", concurrency: 1, conns: 1}
			rep, raw, err := g.run(context.Background(), "grpc.health.v1.Health/Check", "{}", time.Second)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("run() err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("run() err = %v, want nil", err)
			}
			if rep.Count != 13859 || len(raw) == 0 {
				t.Errorf("run() = count %d, %d raw bytes, want the fake's report", rep.Count, len(raw))
			}
		})
	}
}

func TestGhzRunCancelled(t *testing.T) {
	t.Setenv(fakeGhzEnv, "hang")
	ctx, cancel := context.WithCancel(context.Background())
	g := ghzRun{bin: os.Args[0], addr: "127.0.0.1:1", concurrency: 1, conns: 1}
	done := make(chan error, 1)
	go func() {
		_, _, err := g.run(ctx, "grpc.health.v1.Health/Check", "{}", time.Hour)
		done <- err
	}()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("run(cancelled) err = %v, want context.Canceled", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run() did not return within 20s of its context being cancelled")
	}
}

func TestMeasureInterleavesAndRotates(t *testing.T) {
	log := t.TempDir() + "/calls"
	t.Setenv(fakeGhzEnv, "ok:"+log)
	out := t.TempDir()
	calls := benchCalls([]byte("dek"), []byte("aad"), []byte("blob"))
	g := ghzRun{bin: os.Args[0], addr: "127.0.0.1:1", concurrency: 1, conns: 1}
	results, err := measure(context.Background(), g, calls, 2, time.Second, out, io.Discard)
	if err != nil {
		t.Fatalf("measure() err = %v, want nil", err)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for r := range 2 {
		for k := range calls {
			want = append(want, calls[(k+r)%len(calls)].call)
		}
	}
	if got := strings.Fields(string(b)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("measure() ran ghz in the order\n%q\nwant\n%q", got, want)
	}
	for i, c := range calls {
		if len(results[i]) != 2 {
			t.Fatalf("measure() results[%d] has %d rounds, want 2", i, len(results[i]))
		}
		for r, res := range results[i] {
			wantFile := fmt.Sprintf("round%d-%s.json", r+1, strings.ReplaceAll(shortName(c.call), "/", "-"))
			if res.file != wantFile {
				t.Errorf("results[%d][%d].file = %q, want %q", i, r, res.file, wantFile)
			}
			raw, err := os.ReadFile(filepath.Join(out, res.file))
			if err != nil {
				t.Errorf("report %s: %v", res.file, err)
				continue
			}
			if strings.Contains(string(raw), `"details"`) {
				t.Errorf("report %s kept its details", res.file)
			}
		}
	}
}
