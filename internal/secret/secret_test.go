package secret

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestNeverPrints(t *testing.T) {
	key := []byte("super-secret-key-material-000001")
	s := New(key)
	var logBuf bytes.Buffer
	slog.New(slog.NewTextHandler(&logBuf, nil)).Info("loaded", "key", s)
	js, err := json.Marshal(struct{ K *Bytes }{s})
	if err != nil {
		t.Fatalf("json.Marshal err = %v, want nil", err)
	}
	verbs := map[string]string{"slog": logBuf.String(), "json": string(js)}
	for _, verb := range []string{"%v", "%s", "%#v", "%+v", "%q", "%x"} {
		verbs[verb] = fmt.Sprintf(verb, s)
	}
	for name, out := range verbs {
		if strings.Contains(out, string(key)) || !strings.Contains(out, Redacted) {
			t.Errorf("%s printed %q, want %s and no key", name, out, Redacted)
		}
	}
}

func TestCopiesAndEqual(t *testing.T) {
	in := []byte{1, 2, 3, 4}
	s := New(in)
	in[0] = 9
	if got := s.Bytes(); !bytes.Equal(got, []byte{1, 2, 3, 4}) {
		t.Fatalf("Bytes() = %v, want a copy taken at New", got)
	}
	out := s.Bytes()
	out[1] = 9
	if !s.Equal(New([]byte{1, 2, 3, 4})) {
		t.Errorf("Equal(same bytes) = false, want true")
	}
	if s.Equal(New([]byte{1, 2, 3, 5})) || s.Equal(New([]byte{1, 2, 3})) {
		t.Errorf("Equal(different bytes) = true, want false")
	}
}

func TestWipe(t *testing.T) {
	s := New(bytes.Repeat([]byte{0xAB}, 32))
	s.Wipe()
	s.Wipe()
	if !s.Wiped() || s.Bytes() != nil || s.Len() != 0 {
		t.Fatalf("after Wipe: Wiped() = %v, Bytes() = %v; want true, nil", s.Wiped(), s.Bytes())
	}
	for i, b := range s.Raw() {
		if b != 0 {
			t.Fatalf("Raw()[%d] = %#x after Wipe, want 0", i, b)
		}
	}
	if s.Use(func([]byte) { t.Error("Use called f on a wiped key") }) {
		t.Errorf("Use on wiped key = true, want false")
	}
}

type countingAttachment struct{ uses, wipes *int }

func (c countingAttachment) Wipe() { *c.wipes++ }

func TestUseAttached(t *testing.T) {
	s := New(bytes.Repeat([]byte{7}, 32))
	var makes, uses, wipes int
	mk := func(key []byte) (Attachment, error) {
		makes++
		if key[0] != 7 {
			t.Errorf("make got key[0] = %d, want 7", key[0])
		}
		return countingAttachment{&uses, &wipes}, nil
	}
	for range 3 {
		ok, err := s.UseAttached(mk, func(Attachment) { uses++ })
		if !ok || err != nil {
			t.Fatalf("UseAttached = %v, %v; want true, nil", ok, err)
		}
	}
	if makes != 1 || uses != 3 {
		t.Errorf("make ran %d times, f %d times; want 1 and 3", makes, uses)
	}
	s.Wipe()
	if wipes != 1 {
		t.Errorf("Wipe wiped the attachment %d times, want 1", wipes)
	}
	if ok, _ := s.UseAttached(mk, func(Attachment) { t.Error("f called on a wiped key") }); ok {
		t.Errorf("UseAttached on a wiped key = true, want false")
	}
	if makes != 1 {
		t.Errorf("make ran again on a wiped key")
	}
}
