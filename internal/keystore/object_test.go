package keystore

import (
	"errors"
	"reflect"
	"testing"
)

func testObject() Object {
	return Object{Owner: "spiffe://keybroker.dev/engine", Type: ObjectSymmetricKey, Algorithm: "AES", Length: 256, UsageMask: 12, Names: []string{"audit"}}
}

// TestObjectRoundTrip: a KMIP object survives Open with every attribute, in
// a version-2 key file, while master-key files stay version 1 (readable by
// a keybroker that predates KMIP objects).
func TestObjectRoundTrip(t *testing.T) {
	fx := newFixture(t)
	s := mustOpen(t, fx.dir, Options{Now: newClock().Now})
	seed := make([]byte, 96)
	for _, tc := range []struct {
		name string
		obj  Object
		key  []byte
	}{
		{"aes-256", testObject(), randomKey(t)},
		{"secret data seed", Object{Owner: "cn:client", Type: ObjectSecretData, SecretDataType: "SEED", Length: 768}, seed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k, err := s.CreateObject(tc.obj, StatePreActive, Version{Copies: wrap(t, tc.key, vaultA, vaultB)})
			if err != nil {
				t.Fatalf("CreateObject err = %v, want nil", err)
			}
			if k.Name != objectKeyPrefix+k.ID || k.Object == nil || k.Object.Owner != tc.obj.Owner {
				t.Fatalf("CreateObject = %+v, want name kmip-<id> and the object", k)
			}
			if v := readBytes(t, fx.keyFile(k))[9]; v != 2 {
				t.Fatalf("object key file has format version %d, want 2", v)
			}
			if k, err = s.SetState(k.ID, StateActive); err != nil || k.Object.Activated.IsZero() {
				t.Fatalf("SetState(ACTIVE) = %+v, %v; want Activated set", k.Object, err)
			}
		})
	}
	if v := readBytes(t, fx.keyFile(fx.master))[9]; v != 1 {
		t.Fatalf("master key file has format version %d, want 1", v)
	}
	want := s.Keys()
	s.Close()
	again := mustOpen(t, fx.dir, Options{})
	if got := again.Keys(); !reflect.DeepEqual(got, want) {
		t.Fatalf("keys after Open = %+v, want %+v", got, want)
	}
}

// TestObjectRules: an object never gets a new version, its state changes
// stamp its dates, Destroy drops its copies and keeps its attributes.
func TestObjectRules(t *testing.T) {
	s := mustCreate(t, newDir(t), Options{Now: newClock().Now})
	k, err := s.CreateObject(testObject(), StatePreActive, Version{Copies: wrap(t, randomKey(t), vaultA)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddVersion(k.ID, Version{Copies: wrap(t, randomKey(t), vaultA)}); !errors.Is(err, ErrState) {
		t.Fatalf("AddVersion(object) err = %v, want ErrState", err)
	}
	if _, err := s.SetState(k.ID, StateActive); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetState(k.ID, StateDestroyed); !errors.Is(err, ErrState) {
		t.Fatalf("SetState(ACTIVE object, DESTROYED) err = %v, want ErrState", err)
	}
	k, err = s.SetState(k.ID, StateDeactivated)
	if err != nil || k.Object.Deactivated.IsZero() {
		t.Fatalf("SetState(DEACTIVATED) = %+v, %v; want Deactivated set", k.Object, err)
	}
	k, err = s.SetState(k.ID, StateDestroyed)
	if err != nil || len(k.Versions[0].Copies) != 0 || k.Object == nil || k.Object.Owner != testObject().Owner {
		t.Fatalf("SetState(DESTROYED) = %+v, %v; want no copies and the object kept", k, err)
	}
	k, err = s.UpdateObject(k.ID, func(o *Object) error { o.Names = append(o.Names, "second"); return nil })
	if err != nil || !reflect.DeepEqual(k.Object.Names, []string{"audit", "second"}) {
		t.Fatalf("UpdateObject(add name) = %v, %v", k.Object, err)
	}
	if _, err := s.UpdateObject("master-does-not-exist", func(*Object) error { return nil }); !errors.Is(err, ErrKeyNotFound) {
		t.Fatalf("UpdateObject(unknown) err = %v, want ErrKeyNotFound", err)
	}
}

func TestCreateObjectInvalid(t *testing.T) {
	s := mustCreate(t, newDir(t), Options{})
	m := mustCreateKey(t, s, "master", Version{Copies: wrap(t, randomKey(t), vaultA)})
	if _, err := s.UpdateObject(m.ID, func(*Object) error { return nil }); !errors.Is(err, ErrInvalid) {
		t.Fatalf("UpdateObject(master key) err = %v, want ErrInvalid", err)
	}
	for _, tc := range []struct {
		name string
		edit func(o *Object)
	}{
		{"no owner", func(o *Object) { o.Owner = "" }},
		{"unknown type", func(o *Object) { o.Type = "PRIVATE_KEY" }},
		{"AES of 100 bits", func(o *Object) { o.Length = 100 }},
		{"AES of 512 bits", func(o *Object) { o.Length = 512 }},
		{"not AES", func(o *Object) { o.Algorithm = "DES" }},
		{"secret data type on a key", func(o *Object) { o.SecretDataType = "SEED" }},
		{"too long secret data", func(o *Object) { o.Type, o.Algorithm, o.Length = ObjectSecretData, "", 8*(maxObjectBytes+1) }},
		{"bad name", func(o *Object) { o.Names = []string{" padded"} }},
		{"too many names", func(o *Object) { o.Names = make([]string, maxObjectNames+1) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := testObject()
			tc.edit(&o)
			if _, err := s.CreateObject(o, StatePreActive, Version{Copies: wrap(t, randomKey(t), vaultA)}); !errors.Is(err, ErrInvalid) {
				t.Fatalf("CreateObject err = %v, want ErrInvalid", err)
			}
		})
	}
}

// TestObjectInVersion1IsCorrupt: the "kmip" field exists from format
// version 2 on; a version-1 file holding it is corrupt, not misread.
func TestObjectInVersion1IsCorrupt(t *testing.T) {
	dir := newDir(t)
	s := mustCreate(t, dir, Options{})
	k, err := s.CreateObject(testObject(), StatePreActive, Version{Copies: wrap(t, randomKey(t), vaultA)})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	p := fixture{dir: dir}.keyFile(k)
	writeBytes(t, p, reframe(1, kindKey, 0, body(t, readBytes(t, p))))
	if _, err := Open(dir, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Open(version-1 file with kmip) err = %v, want ErrCorrupt", err)
	}
}
