package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keybroker/keybroker/internal/cli"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// Reconnection backoff of `keybroker watch`: exponential from
// watchMinBackoff up to --max-backoff, with jitter so the watchers of many
// nodes do not reconnect in step; back to the minimum after a stream that
// delivered an event.
const (
	watchMinBackoff  = 250 * time.Millisecond
	watchHookWait    = 5 * time.Second // after a hook's timeout, for its output pipes
	maxHookReasonLen = 4 << 10         // of KEYBROKER_REASON
)

// errExitOnPause ends a watch started with --exit-on-pause.
var errExitOnPause = errors.New("the broker is PAUSED: access to the customer key was revoked (--exit-on-pause)")

// errStdout marks a failure to print an event: the reader is gone.
var errStdout = errors.New("writing the event to stdout")

// watchOptions are the flags of `keybroker watch` beyond the connection.
type watchOptions struct {
	onPause, onResume string
	exitOnPause       bool
	maxBackoff        time.Duration
	hookTimeout       time.Duration
}

// watchLine is the JSON line printed per event.
type watchLine struct {
	Kind   string `json:"kind"`
	State  string `json:"state"`
	Reason string `json:"reason"`
	Time   string `json:"time"`
}

func runWatch(ctx context.Context, e *env, args []string) error {
	fs := newFlagSet(e, "watch", "[--on-pause CMD] [--on-resume CMD] [--exit-on-pause] [--max-backoff 30s] [connection flags]")
	var cf clientFlags
	cf.register(fs, "engine")
	var o watchOptions
	fs.StringVar(&o.onPause, "on-pause", "", "command run with sh -c when the broker pauses (e.g. stop the engine); KEYBROKER_EVENT, KEYBROKER_STATE, KEYBROKER_REASON and KEYBROKER_TIME describe the event")
	fs.StringVar(&o.onResume, "on-resume", "", "command run with sh -c when the broker resumes after a pause (e.g. start the engine); same variables")
	fs.BoolVar(&o.exitOnPause, "exit-on-pause", false, fmt.Sprintf("exit with code %d when the broker pauses (after --on-pause has run)", exitPaused))
	fs.DurationVar(&o.maxBackoff, "max-backoff", 30*time.Second, "longest wait between reconnection attempts")
	fs.DurationVar(&o.hookTimeout, "hook-timeout", 5*time.Minute, "longest an --on-pause or --on-resume command may run before it is killed")
	if err := cli.ParseFlags(fs, args); err != nil {
		return err
	}
	switch {
	case o.maxBackoff < watchMinBackoff:
		return cli.UsageErrorf("--max-backoff %v: want at least %v", o.maxBackoff, watchMinBackoff)
	case o.hookTimeout <= 0:
		return cli.UsageErrorf("--hook-timeout %v: want a positive duration such as 5m", o.hookTimeout)
	case cf.timeout <= 0:
		return cli.UsageErrorf("--timeout %v: want a positive duration such as 15s", cf.timeout)
	}
	// Fail now on bad TLS files or address, not in the retry loop.
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	conn.Close()

	stderr := &lockedWriter{w: e.stderr}
	w := &watch{
		cf:     &cf,
		opts:   o,
		stdout: e.stdout,
		stderr: stderr,
		hooks:  newHookRunner(stderr, o.hookTimeout),
	}
	hooksCtx, stopHooks := context.WithCancel(ctx)
	defer stopHooks()
	go w.hooks.run(hooksCtx)
	return w.run(ctx)
}

// watch is one `keybroker watch`: it streams WatchKeyState, reconnecting
// across broker restarts, prints each event and starts the hooks.
type watch struct {
	cf     *clientFlags
	opts   watchOptions
	stdout io.Writer
	stderr io.Writer
	hooks  *hookRunner
	last   keybrokerv1.State // the state last seen, kept across reconnections
}

func (w *watch) run(ctx context.Context) error {
	attempt := 0
	for {
		delivered, err := w.stream(ctx)
		switch {
		case ctx.Err() != nil:
			return nil // interrupted (SIGINT, SIGTERM): a normal end
		case errors.Is(err, errExitOnPause):
			return cli.WithCode(exitPaused, err)
		case errors.Is(err, errStdout):
			return err
		case permanentWatchError(err):
			return rpcError("watch", err)
		}
		if delivered {
			attempt = 0
		}
		attempt++
		d := backoffDelay(attempt, watchMinBackoff, w.opts.maxBackoff, rand.Int64N)
		fmt.Fprintf(w.stderr, "keybroker watch: %s; reconnecting in %v\n", describeStreamEnd(err), d.Round(time.Millisecond))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// stream runs one WatchKeyState stream until it ends. delivered reports
// whether it received at least one event.
func (w *watch) stream(ctx context.Context) (delivered bool, err error) {
	conn, err := w.cf.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The connection, the call and the first event must come within
	// --timeout; the stream itself has no deadline.
	first := time.AfterFunc(w.cf.timeout, cancel)
	defer first.Stop()
	st, err := keybrokerv1.NewKeyBrokerServiceClient(conn).WatchKeyState(sctx, &keybrokerv1.WatchKeyStateRequest{}, grpc.WaitForReady(true))
	for err == nil {
		var resp *keybrokerv1.WatchKeyStateResponse
		resp, err = st.Recv()
		if err != nil {
			break
		}
		if !delivered {
			first.Stop()
			delivered = true
			fmt.Fprintf(w.stderr, "keybroker watch: connected to %s\n", w.cf.addr)
		}
		if err = w.handle(resp.GetEvent()); err != nil {
			return delivered, err
		}
	}
	if ctx.Err() == nil && sctx.Err() != nil && !delivered {
		return delivered, status.Errorf(codes.DeadlineExceeded, "no event within --timeout %v", w.cf.timeout)
	}
	return delivered, err
}

// handle prints one event and starts the hook it calls for.
func (w *watch) handle(ev *keybrokerv1.KeyStateEvent) error {
	line := watchLine{
		Kind:   strings.TrimPrefix(ev.GetKind().String(), "KIND_"),
		State:  strings.TrimPrefix(ev.GetState().String(), "STATE_"),
		Reason: ev.GetReason(),
		Time:   ev.GetTime().AsTime().UTC().Format(time.RFC3339Nano),
	}
	b, err := json.Marshal(line)
	if err != nil {
		return err
	}
	if _, err := w.stdout.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%w: %w", errStdout, err)
	}
	hook, paused := hookFor(w.last, ev.GetState())
	w.last = ev.GetState()
	var done <-chan struct{}
	switch hook {
	case "on-pause":
		done = w.hooks.enqueue(hook, w.opts.onPause, line)
	case "on-resume":
		done = w.hooks.enqueue(hook, w.opts.onResume, line)
	}
	if paused && w.opts.exitOnPause {
		<-done // the engine is stopped before the script goes on
		return errExitOnPause
	}
	return nil
}

// hookFor says which hook a new state calls for, given the state seen
// before it (STATE_UNSPECIFIED before the first event): on-pause when the
// broker enters PAUSED, on-resume when it leaves it. States rather than
// event kinds decide, so that a change missed while disconnected, or
// replaced by a newer one in the broker's one-slot mailbox, still runs its
// hook from the CURRENT event (or the next change) that follows. paused
// reports entering PAUSED.
func hookFor(prev, next keybrokerv1.State) (hook string, paused bool) {
	switch {
	case next == keybrokerv1.State_STATE_PAUSED && prev != keybrokerv1.State_STATE_PAUSED:
		return "on-pause", true
	case next != keybrokerv1.State_STATE_PAUSED && prev == keybrokerv1.State_STATE_PAUSED:
		return "on-resume", false
	}
	return "", false
}

// permanentWatchError reports failures that retrying cannot fix: the
// certificate is refused, or the broker does not know the call. Files that
// cannot be read at a reconnection are retried: they were readable at the
// start, and may be being replaced (a certificate renewal).
func permanentWatchError(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.Unimplemented, codes.InvalidArgument:
		return true
	}
	return false
}

func describeStreamEnd(err error) string {
	if err == nil || errors.Is(err, io.EOF) {
		return "the broker ended the stream"
	}
	if _, ok := status.FromError(err); !ok {
		return "cannot connect: " + err.Error()
	}
	st := status.Convert(err)
	return fmt.Sprintf("stream ended: %s: %s", st.Code(), st.Message())
}

// backoffDelay is the wait before reconnection attempt n (n >= 1): base
// doubled n-1 times, capped at max, half of it fixed and half random
// (rnd(n) returns [0, n)).
func backoffDelay(n int, base, max time.Duration, rnd func(int64) int64) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	half := d / 2
	return half + time.Duration(rnd(int64(d-half)+1))
}

// hookRunner runs the hooks one at a time, in order, off the event stream:
// a slow command never delays the events printed after it. Safe for
// concurrent use.
type hookRunner struct {
	stderr  io.Writer
	timeout time.Duration

	mu    sync.Mutex
	queue []hookJob
	wake  chan struct{}
}

type hookJob struct {
	name, command string
	ev            watchLine
	done          chan struct{}
}

func newHookRunner(stderr io.Writer, timeout time.Duration) *hookRunner {
	return &hookRunner{stderr: stderr, timeout: timeout, wake: make(chan struct{}, 1)}
}

// enqueue queues command (none when empty) for ev and returns a channel
// closed once it has run.
func (h *hookRunner) enqueue(name, command string, ev watchLine) <-chan struct{} {
	done := make(chan struct{})
	if command == "" {
		close(done)
		return done
	}
	h.mu.Lock()
	h.queue = append(h.queue, hookJob{name: name, command: command, ev: ev, done: done})
	h.mu.Unlock()
	select {
	case h.wake <- struct{}{}:
	default:
	}
	return done
}

// run runs queued hooks until ctx ends; a hook running then is killed.
func (h *hookRunner) run(ctx context.Context) {
	for {
		h.mu.Lock()
		var job *hookJob
		if len(h.queue) > 0 {
			job = &h.queue[0]
			h.queue = h.queue[1:]
		}
		h.mu.Unlock()
		if job == nil {
			select {
			case <-ctx.Done():
				return
			case <-h.wake:
				continue
			}
		}
		h.exec(ctx, *job)
		close(job.done)
	}
}

// exec runs one hook with sh -c. Its output goes to stderr: stdout carries
// only the JSON lines.
func (h *hookRunner) exec(ctx context.Context, j hookJob) {
	ctx, cancel := context.WithTimeout(ctx, h.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", j.command)
	reason := j.ev.Reason
	if len(reason) > maxHookReasonLen {
		reason = reason[:maxHookReasonLen]
	}
	cmd.Env = append(os.Environ(),
		"KEYBROKER_EVENT="+j.ev.Kind, "KEYBROKER_STATE="+j.ev.State,
		"KEYBROKER_REASON="+reason, "KEYBROKER_TIME="+j.ev.Time)
	cmd.Stdout, cmd.Stderr = h.stderr, h.stderr
	cmd.WaitDelay = watchHookWait
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start).Round(time.Millisecond)
	switch {
	case err == nil:
		fmt.Fprintf(h.stderr, "keybroker watch: --%s command for %s finished in %v\n", j.name, j.ev.Kind, took)
	case ctx.Err() == context.DeadlineExceeded:
		fmt.Fprintf(h.stderr, "keybroker watch: --%s command for %s killed after --hook-timeout %v\n", j.name, j.ev.Kind, h.timeout)
	default:
		fmt.Fprintf(h.stderr, "keybroker watch: --%s command for %s failed after %v: %v\n", j.name, j.ev.Kind, took, err)
	}
}

// lockedWriter serializes writes from the watch and its hooks' output
// copiers.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
