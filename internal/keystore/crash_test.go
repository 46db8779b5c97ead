package keystore

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"
)

// steps are the points writeFileAtomic offers a hook, in order; a crash
// "at" a step happens just before it.
var steps = []string{"create", "write", "write-half", "sync", "close", "rename", "syncdir", "done"}

// renamed reports whether the rename has happened when a crash hits step:
// from then on the new state is what a reader sees (the directory fsync
// only decides whether a power loss could still undo it).
func renamed(step string) bool { return step == "syncdir" || step == "done" }

func crashAt(step string) func(string) error {
	return func(s string) error {
		if s == step {
			return errCrash
		}
		return nil
	}
}

func failAt(step string, err error) func(string) error {
	return func(s string) error {
		if s == step {
			return err
		}
		return nil
	}
}

// withoutKeyIDs blanks key ids, the one thing two runs of CreateKey draw
// at random.
func withoutKeyIDs(ks []Key) []Key {
	for i := range ks {
		ks[i].ID = ""
	}
	return ks
}

type crashOp struct {
	name string
	do   func(s *Store) error
}

func crashOps(t *testing.T, f fixture) []crashOp {
	newV := NewID()
	copies := wrap(t, randomKey(t), vaultA, vaultB)
	rewrap := wrap(t, f.plain1, vaultB)
	return []crashOp{
		{"CreateKey", func(s *Store) error {
			_, err := s.CreateKey("new", StatePreActive, Version{ID: newV, Copies: copies})
			return err
		}},
		{"AddVersion", func(s *Store) error { _, err := s.AddVersion("master", Version{ID: newV, Copies: copies}); return err }},
		{"SetCopies", func(s *Store) error { _, err := s.SetCopies("master", f.master.Versions[0].ID, rewrap); return err }},
		{"SetState", func(s *Store) error { _, err := s.SetState("other", StateDeactivated); return err }},
		{"RemoveVersion", func(s *Store) error { _, err := s.RemoveVersion("master", f.master.Versions[0].ID); return err }},
	}
}

// TestCrashAtEachStep stops every kind of write at every step of the
// atomic replace, as a SIGKILL would, and checks that the keystore then
// opens to exactly the old state or exactly the new one.
func TestCrashAtEachStep(t *testing.T) {
	golden := newFixture(t)
	old := withoutKeyIDs([]Key{golden.master, golden.other})
	for _, op := range crashOps(t, golden) {
		// The state the write produces when nothing goes wrong.
		refDir := newDir(t)
		copyTree(t, golden.dir, refDir)
		ref := mustOpen(t, refDir, Options{Now: newClock().Now})
		if err := op.do(ref); err != nil {
			t.Fatalf("%s err = %v, want nil", op.name, err)
		}
		updated := withoutKeyIDs(ref.Keys())
		ref.Close()

		for _, step := range steps {
			t.Run(op.name+"/"+step, func(t *testing.T) {
				dir := newDir(t)
				copyTree(t, golden.dir, dir)
				s, err := open(dir, Options{Now: newClock().Now}, crashAt(step))
				if err != nil {
					t.Fatalf("Open err = %v, want nil", err)
				}
				if err := op.do(s); !errors.Is(err, errCrash) {
					t.Fatalf("%s with a crash at %s err = %v, want the crash", op.name, step, err)
				}
				s.Close() // the process is gone; the kernel drops its lock

				want := old
				if renamed(step) {
					want = updated
				}
				got := withoutKeyIDs(mustOpen(t, dir, Options{ReadOnly: true}).Keys())
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("after a crash at %s, Open().Keys() = %+v, want %+v", step, got, want)
				}

				// The next writer removes the debris and carries on.
				w := mustOpen(t, dir, Options{})
				if left := tempFiles(t, dir); len(left) != 0 {
					t.Errorf("after a writer's Open, temp files remain: %v", left)
				}
				if _, err := w.AddVersion("master", Version{Copies: wrap(t, randomKey(t), vaultA)}); err != nil {
					t.Errorf("AddVersion after recovery err = %v, want nil", err)
				}
			})
		}
	}
}

// TestWriteIOErrors fails each step with an ordinary I/O error: before the
// rename nothing changed and the Store stays usable; after it the outcome
// is unknown, so the Store refuses further writes until reopened.
func TestWriteIOErrors(t *testing.T) {
	golden := newFixture(t)
	ioErr := errors.New("input/output error")
	for _, op := range crashOps(t, golden) {
		for _, step := range steps {
			t.Run(op.name+"/"+step, func(t *testing.T) {
				dir := newDir(t)
				copyTree(t, golden.dir, dir)
				s, err := open(dir, Options{Now: newClock().Now}, failAt(step, ioErr))
				if err != nil {
					t.Fatalf("Open err = %v, want nil", err)
				}
				defer s.Close()
				before := s.Keys()
				err = op.do(s)
				if !errors.Is(err, ioErr) {
					t.Fatalf("%s failing at %s err = %v, want the I/O error", op.name, step, err)
				}
				if got := s.Keys(); !reflect.DeepEqual(got, before) {
					t.Errorf("a failed write changed the keys in memory")
				}
				if left := tempFiles(t, dir); len(left) != 0 {
					t.Errorf("a failed write left temp files: %v", left)
				}
				s.hook = nil
				err = op.do(s)
				if !renamed(step) {
					if err != nil {
						t.Fatalf("retrying %s after an I/O error err = %v, want nil", op.name, err)
					}
					return
				}
				if !errors.Is(err, ErrWriteFailed) {
					t.Fatalf("writing after an unknown outcome err = %v, want ErrWriteFailed", err)
				}
				s.Close()
				if got := mustOpen(t, dir, Options{ReadOnly: true}).Keys(); reflect.DeepEqual(got, before) {
					t.Errorf("after the rename the reopened keystore shows the old state, want the new one")
				}
			})
		}
	}
}

// TestCreateCrash: a Create interrupted anywhere leaves either no keystore
// (and Create can run again) or a complete empty one.
func TestCreateCrash(t *testing.T) {
	for _, step := range steps {
		t.Run(step, func(t *testing.T) {
			dir := newDir(t)
			_, err := create(dir, Options{}, crashAt(step))
			if !errors.Is(err, errCrash) {
				t.Fatalf("Create with a crash at %s err = %v, want the crash", step, err)
			}
			exists, err := Exists(dir)
			if err != nil || exists != renamed(step) {
				t.Fatalf("Exists after a crash at %s = %v, %v; want %v, nil", step, exists, err, renamed(step))
			}
			var s *Store
			if exists {
				s = mustOpen(t, dir, Options{})
			} else {
				s = mustCreate(t, dir, Options{})
			}
			if len(s.Keys()) != 0 || len(tempFiles(t, dir)) != 0 {
				t.Errorf("recovered keystore has %d keys and temp files %v, want none", len(s.Keys()), tempFiles(t, dir))
			}
		})
	}
}

// helperEnv names the keystore a helper process works on; helperMode says
// what it does.
const (
	helperEnv  = "KEYSTORE_TEST_HELPER_DIR"
	helperMode = "KEYSTORE_TEST_HELPER_MODE"
)

// TestHelperProcess is not a test: the tests below run the test binary
// again as a second process with it.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		t.Skip("only runs as a helper process")
	}
	s, err := Open(dir, Options{})
	if os.Getenv(helperMode) == "open" {
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(0)
		}
		fmt.Println("OK")
		os.Exit(0)
	}
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	k, err := s.Key("master")
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(1)
	}
	cur, _ := k.Current()
	// Bounded even if the parent never kills it.
	deadline := time.Now().Add(20 * time.Second)
	for i := 0; i < 5000 && time.Now().Before(deadline); i++ {
		id := NewID()
		if _, err := s.AddVersion("master", Version{ID: id, Copies: cur.Copies}); err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		fmt.Println(id) // acknowledged: the version is on disk
	}
	os.Exit(0)
}

func helper(t *testing.T, dir, mode string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir, helperMode+"="+mode)
	return cmd
}

func TestSecondProcessRefused(t *testing.T) {
	f := newFixture(t)
	s := mustOpen(t, f.dir, Options{})
	out, err := helper(t, f.dir, "open").Output()
	if err != nil {
		t.Fatalf("helper process err = %v", err)
	}
	if got := string(out); !strings.HasPrefix(got, "ERR ") || !strings.Contains(got, ErrLocked.Error()) || !strings.Contains(got, f.dir) {
		t.Fatalf("second process Open printed %q, want ErrLocked naming %s", got, f.dir)
	}
	s.Close()
	out, err = helper(t, f.dir, "open").Output()
	if err != nil || !strings.HasPrefix(string(out), "OK") {
		t.Fatalf("second process Open after Close printed %q, %v; want OK", out, err)
	}
}

// TestKillDuringWrites SIGKILLs a process that is adding versions as fast
// as it can: every version it acknowledged must survive, and the keystore
// must open cleanly (torn temp files removed, lock released by the kernel).
func TestKillDuringWrites(t *testing.T) {
	if testing.Short() {
		t.Skip("starts helper processes")
	}
	f := newFixture(t)
	for round := range 3 {
		cmd := helper(t, f.dir, "rotate")
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting the helper err = %v", err)
		}
		killed := false
		kill := func() {
			if !killed {
				killed = true
				cmd.Process.Kill()
			}
		}
		timer := time.AfterFunc(20*time.Second, kill)
		var acked []string
		sc := bufio.NewScanner(stdout)
		want := 5 + 7*round
		for len(acked) < want && sc.Scan() {
			line := sc.Text()
			if strings.HasPrefix(line, "ERR") {
				kill()
				t.Fatalf("helper: %s", line)
			}
			if validID(line) {
				acked = append(acked, line)
			}
		}
		kill()
		timer.Stop()
		cmd.Wait()
		if len(acked) < want {
			t.Fatalf("round %d: helper acknowledged %d versions before it stopped, want %d", round, len(acked), want)
		}

		s, err := Open(f.dir, Options{})
		if err != nil {
			t.Fatalf("round %d: Open after SIGKILL err = %v, want nil", round, err)
		}
		k, err := s.Key("master")
		if err != nil {
			t.Fatalf("Key(master) err = %v", err)
		}
		for _, id := range acked {
			if _, ok := k.Version(id); !ok {
				t.Errorf("round %d: acknowledged version %s is lost", round, id)
			}
		}
		if left := tempFiles(t, f.dir); len(left) != 0 {
			t.Errorf("round %d: temp files remain after a writer's Open: %v", round, left)
		}
		s.Close()
	}
}
