package kmip

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/keystore"
)

// fakeCore is an in-memory Core for the tests of this package only; the
// real broker is exercised end to end in cmd/keybroker.
type fakeCore struct {
	mu     sync.Mutex
	next   int
	objs   map[string]*fakeObj
	paused bool
}

type fakeObj struct {
	info broker.ObjectInfo
	key  []byte
}

func newFakeCore() *fakeCore {
	f := &fakeCore{objs: map[string]*fakeObj{}}
	f.objs["master"] = &fakeObj{info: broker.ObjectInfo{ID: "master", MasterKey: true, State: keystore.StateActive,
		Object: keystore.Object{Type: keystore.ObjectSymmetricKey, Algorithm: "AES", Length: 256, UsageMask: 12, Names: []string{"master"}}},
		key: make([]byte, 32)}
	return f
}

func (f *fakeCore) find(c broker.Caller, id string) (*fakeObj, error) {
	o, ok := f.objs[id]
	if !ok || (!c.Admin && !o.info.MasterKey && o.info.Owner != c.Identity) {
		return nil, fmt.Errorf("%w: %q", broker.ErrNotFound, id)
	}
	return o, nil
}

func (f *fakeCore) info(o *fakeObj) broker.ObjectInfo {
	i := o.info
	if f.paused && i.State == keystore.StateActive {
		i.State = keystore.StateDeactivated
	}
	return i
}

func (f *fakeCore) add(c broker.Caller, spec keystore.Object, key []byte) (broker.ObjectInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paused {
		return broker.ObjectInfo{}, broker.ErrPaused
	}
	f.next++
	spec.Owner = c.Identity
	spec.Length = 8 * len(key)
	o := &fakeObj{info: broker.ObjectInfo{ID: fmt.Sprint(f.next), Object: spec, State: keystore.StatePreActive, Initial: time.Unix(1e9, 0), LastChange: time.Unix(1e9, 0)}, key: slices.Clone(key)}
	f.objs[o.info.ID] = o
	return o.info, nil
}

func (f *fakeCore) CreateObject(_ context.Context, c broker.Caller, spec keystore.Object) (broker.ObjectInfo, error) {
	return f.add(c, spec, make([]byte, spec.Length/8))
}

func (f *fakeCore) RegisterObject(_ context.Context, c broker.Caller, spec keystore.Object, m []byte) (broker.ObjectInfo, error) {
	return f.add(c, spec, m)
}

func (f *fakeCore) ObjectAttributes(_ context.Context, c broker.Caller, id string) (broker.ObjectInfo, error) {
	if id == "panic" {
		panic("fake core: asked to panic")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	o, err := f.find(c, id)
	if err != nil {
		return broker.ObjectInfo{}, err
	}
	return f.info(o), nil
}

func (f *fakeCore) ObjectKey(_ context.Context, c broker.Caller, id string) (broker.ObjectInfo, []byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.paused {
		return broker.ObjectInfo{}, nil, broker.ErrPaused
	}
	o, err := f.find(c, id)
	if err != nil {
		return broker.ObjectInfo{}, nil, err
	}
	return f.info(o), slices.Clone(o.key), nil
}

func (f *fakeCore) UseObject(ctx context.Context, c broker.Caller, id string, fn func(broker.ObjectInfo, []byte) error) error {
	info, key, err := f.ObjectKey(ctx, c, id)
	if err != nil {
		return err
	}
	return fn(info, key)
}

func (f *fakeCore) setState(c broker.Caller, id string, st keystore.State) (broker.ObjectInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o, err := f.find(c, id)
	if err != nil {
		return broker.ObjectInfo{}, err
	}
	if o.info.MasterKey {
		return broker.ObjectInfo{}, broker.ErrNotAllowed
	}
	if st.Destroyed() && o.info.State == keystore.StateActive {
		return broker.ObjectInfo{}, fmt.Errorf("%w: Revoke it first", broker.ErrKeyState)
	}
	o.info.State = st
	return f.info(o), nil
}

func (f *fakeCore) ActivateObject(_ context.Context, c broker.Caller, id string) (broker.ObjectInfo, error) {
	return f.setState(c, id, keystore.StateActive)
}

func (f *fakeCore) RevokeObject(_ context.Context, c broker.Caller, id string, _ bool) (broker.ObjectInfo, error) {
	return f.setState(c, id, keystore.StateDeactivated)
}

func (f *fakeCore) DestroyObject(_ context.Context, c broker.Caller, id string) (broker.ObjectInfo, error) {
	return f.setState(c, id, keystore.StateDestroyed)
}

func (f *fakeCore) SetObjectNames(_ context.Context, c broker.Caller, id string, fn func([]string) ([]string, error)) (broker.ObjectInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	o, err := f.find(c, id)
	if err != nil {
		return broker.ObjectInfo{}, err
	}
	names, err := fn(slices.Clone(o.info.Names))
	if err != nil {
		return broker.ObjectInfo{}, err
	}
	o.info.Names = names
	return f.info(o), nil
}

func (f *fakeCore) LocateObjects(_ context.Context, c broker.Caller, flt broker.ObjectFilter) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for id, o := range f.objs {
		if _, err := f.find(c, id); err != nil {
			continue
		}
		if flt.Name != "" && !slices.Contains(o.info.Names, flt.Name) {
			continue
		}
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

var _ Core = (*fakeCore)(nil)
