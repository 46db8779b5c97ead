package keystore

import (
	"errors"
	"reflect"
	"testing"
)

// checkDecoded is what every fuzz input must satisfy: a clean error, or a
// key (or meta) that re-encodes to a file parsing to the same value.
func checkDecoded(t *testing.T, data []byte) {
	k, err := decodeKey("fuzz.key", data)
	if err != nil {
		checkDecodeErr(t, err)
	} else {
		again, err := encodeKey(k)
		if err != nil {
			t.Fatalf("encodeKey(decoded key) err = %v, want nil", err)
		}
		k2, err := decodeKey("fuzz.key", again)
		if err != nil {
			t.Fatalf("decodeKey(re-encoded key) err = %v, want nil", err)
		}
		if !reflect.DeepEqual(k, k2) {
			t.Fatalf("re-encoded key parses to %+v, want %+v", k2, k)
		}
	}
	m, err := decodeMeta("fuzz.meta", data)
	if err != nil {
		checkDecodeErr(t, err)
		return
	}
	again, err := encodeMeta(m)
	if err != nil {
		t.Fatalf("encodeMeta(decoded meta) err = %v, want nil", err)
	}
	m2, err := decodeMeta("fuzz.meta", again)
	if err != nil || !reflect.DeepEqual(m, m2) {
		t.Fatalf("re-encoded meta parses to %+v, %v; want %+v, nil", m2, err, m)
	}
}

func checkDecodeErr(t *testing.T, err error) {
	if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNewerFormat) {
		t.Fatalf("decode err = %v, want ErrCorrupt or ErrNewerFormat", err)
	}
	if n := len(err.Error()); n > 2048 {
		t.Fatalf("decode error is %d bytes long, want a bounded message", n)
	}
}

func fuzzSeeds(f *testing.F) fixture {
	fx := newFixture(f)
	s := mustOpen(f, fx.dir, Options{Now: newClock().Now})
	if _, err := s.SetState("other", StateDeactivated); err != nil {
		f.Fatal(err)
	}
	if _, err := s.SetState("other", StateDestroyed); err != nil {
		f.Fatal(err)
	}
	o, err := s.CreateObject(Object{Owner: "spiffe://keybroker.dev/engine", Type: ObjectSecretData, SecretDataType: "SEED", Length: 768, Names: []string{"seed"}},
		StateActive, Version{Copies: wrap(f, make([]byte, 96), vaultA)})
	if err != nil {
		f.Fatal(err)
	}
	fx.object = o
	s.Close()
	return fx
}

// FuzzDecodeFile feeds arbitrary bytes to the file decoders.
func FuzzDecodeFile(f *testing.F) {
	fx := fuzzSeeds(f)
	f.Add(readBytes(f, fx.keyFile(fx.master)))
	f.Add(readBytes(f, fx.keyFile(fx.other)))
	f.Add(readBytes(f, fx.metaFile()))
	f.Add(readBytes(f, fx.keyFile(fx.object)))
	f.Add([]byte{})
	f.Add([]byte(magic))
	f.Add(encodeFrame(kindKey, []byte("{}")))
	f.Fuzz(func(t *testing.T, data []byte) { checkDecoded(t, data) })
}

// FuzzDecodeBody feeds arbitrary JSON bodies behind a valid frame and
// checksum, which random bytes would almost never get past.
func FuzzDecodeBody(f *testing.F) {
	fx := fuzzSeeds(f)
	for _, p := range []string{fx.keyFile(fx.master), fx.keyFile(fx.other), fx.metaFile(), fx.keyFile(fx.object)} {
		b := readBytes(f, p)
		f.Add(b[10], b[headerLen:len(b)-sumLen])
	}
	f.Add(kindKey, []byte(`{"id":"","versions":[{"copies":[{}]}]}`))
	f.Add(kindMeta, []byte(`{"store_id":"00000000000000000000000000000000","created":"0001-01-01T00:00:00+01:00"}`))
	f.Fuzz(func(t *testing.T, kind byte, body []byte) {
		if len(body) > maxBody {
			return
		}
		checkDecoded(t, encodeFrame(kind, body))
		checkDecoded(t, encodeFrameVersion(kind, 2, body)) // with KMIP object attributes
	})
}
