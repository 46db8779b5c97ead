package kektest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/keybroker/keybroker/internal/kek"
)

// The operation names a Fake counts and fails; they match kek.Error.Op.
const (
	OpWrap    = "wrap"
	OpUnwrap  = "unwrap"
	OpKeyInfo = "get"
	// OpAny, given to SetError or FailNext, applies to every operation.
	OpAny = "*"
)

// FakeAlgorithm is the wrapping algorithm a Fake reports. AES-GCM keeps the
// fake fast; the Azure adapter reports RSA-OAEP-256 instead.
const FakeAlgorithm = "A256GCM"

// maxFakeKeyLen bounds what a Fake wraps. RSA-OAEP-256 under a 2048-bit key
// takes at most 190 bytes; the fake is more generous but not unbounded.
const maxFakeKeyLen = 1024

// Fake is an in-memory key wrapper for unit tests: real AES-256-GCM under a
// random key-encryption key per key version, identifiers in the Azure form
// https://fake-<region>.vault.keybroker.test/keys/<name>/<version>, and knobs
// to inject errors, latency and black holes. Older versions keep unwrapping
// after Rotate, as in Key Vault.
//
// A Fake is safe for concurrent use, knobs included.
type Fake struct {
	region string
	key    *fakeKey // shared with replicas

	mu       sync.Mutex
	sticky   map[string]error // op -> error returned by every call
	failNext map[string]*failN
	latency  time.Duration
	blocked  chan struct{} // non-nil while blocked; closed by Unblock
	calls    map[string]int
	inFlight int
	changed  chan struct{} // closed and replaced whenever calls or inFlight change
}

type failN struct {
	n   int
	err error
}

// fakeKey is one vault key with its versions; replicas share it.
type fakeKey struct {
	base string // https://host/keys/name, no version

	mu       sync.RWMutex
	versions map[string]cipher.AEAD
	created  map[string]time.Time
	newest   string
	enabled  bool
}

// NewFake returns a Fake for region holding one enabled key called name
// ("cmk" when empty) with one version.
func NewFake(region, name string) *Fake {
	if name == "" {
		name = "cmk"
	}
	k := &fakeKey{
		base:     "https://fake-" + strings.ToLower(region) + ".vault.keybroker.test/keys/" + name,
		versions: map[string]cipher.AEAD{},
		created:  map[string]time.Time{},
		enabled:  true,
	}
	k.rotate()
	return newFakeFor(region, k)
}

func newFakeFor(region string, k *fakeKey) *Fake {
	return &Fake{
		region:   region,
		key:      k,
		sticky:   map[string]error{},
		failNext: map[string]*failN{},
		calls:    map[string]int{},
		changed:  make(chan struct{}),
	}
}

// Replica returns a Fake for another region that reaches the same vault key
// (a private endpoint, or a geo-replicated vault): same identifiers, same key
// versions, its own knobs and counters.
func (f *Fake) Replica(region string) *Fake { return newFakeFor(region, f.key) }

// Region returns the region the Fake was made for.
func (f *Fake) Region() string { return f.region }

// KeyID returns the identifier, with version, of the newest key version.
func (f *Fake) KeyID() string {
	f.key.mu.RLock()
	defer f.key.mu.RUnlock()
	return f.key.base + "/" + f.key.newest
}

// Rotate adds a new key version, used by later wraps, and returns its
// identifier. Copies wrapped by older versions still unwrap.
func (f *Fake) Rotate() string {
	f.key.rotate()
	return f.KeyID()
}

// Disable disables the key, as a customer revoking it would: KeyInfo
// reports Enabled false and wrap and unwrap fail with a KindRevoked
// error (403 KeyDisabled). Replicas see it too.
func (f *Fake) Disable() { f.key.setEnabled(false) }

// Enable undoes Disable.
func (f *Fake) Enable() { f.key.setEnabled(true) }

// SetError makes every later call of op (OpWrap, OpUnwrap, OpKeyInfo or
// OpAny) fail with err, after any latency; nil clears it. An unknown op
// panics: it is a bug in the test.
func (f *Fake) SetError(op string, err error) {
	ops := opsOf(op)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, o := range ops {
		if err == nil {
			delete(f.sticky, o)
		} else {
			f.sticky[o] = err
		}
	}
}

// FailNext makes the next n calls of op fail with err, ahead of any error
// set by SetError. An unknown op panics: it is a bug in the test.
func (f *Fake) FailNext(op string, n int, err error) {
	ops := opsOf(op)
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, o := range ops {
		if n <= 0 || err == nil {
			delete(f.failNext, o)
		} else {
			f.failNext[o] = &failN{n: n, err: err}
		}
	}
}

// SetLatency delays every later call by d, or until its context ends.
func (f *Fake) SetLatency(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.latency = d
}

// Block turns the Fake into a black hole: every call hangs until its
// context ends (or Unblock), as a dropped connection would.
func (f *Fake) Block() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blocked == nil {
		f.blocked = make(chan struct{})
	}
}

// Unblock ends Block; calls hanging in it go on as if nothing happened.
func (f *Fake) Unblock() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blocked != nil {
		close(f.blocked)
		f.blocked = nil
	}
}

// Calls returns how many calls of op have started, failed ones included.
// OpAny counts every operation.
func (f *Fake) Calls(op string) int {
	ops := opsOf(op)
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, o := range ops {
		n += f.calls[o]
	}
	return n
}

// InFlight returns how many calls have started and not yet returned. Tests
// use it to check that cancelled calls (hedging losers, black holes) return.
func (f *Fake) InFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inFlight
}

// WaitCalls blocks until at least n calls of op have started or ctx ends.
// It lets tests synchronise on a call starting without sleeping.
func (f *Fake) WaitCalls(ctx context.Context, op string, n int) error {
	ops := opsOf(op)
	for {
		f.mu.Lock()
		got := 0
		for _, o := range ops {
			got += f.calls[o]
		}
		ch := f.changed
		f.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("kektest: waiting for %d %s calls in region %s, saw %d: %w", n, op, f.region, got, ctx.Err())
		}
	}
}

func opsOf(op string) []string {
	switch op {
	case OpWrap, OpUnwrap, OpKeyInfo:
		return []string{op}
	case OpAny:
		return []string{OpWrap, OpUnwrap, OpKeyInfo}
	}
	panic(fmt.Sprintf("kektest: unknown op %q: use OpWrap, OpUnwrap, OpKeyInfo or OpAny", op))
}

// notify wakes WaitCalls; f.mu must be held.
func (f *Fake) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// begin counts the call and applies the knobs in the order a real vault
// would show them: the connection hangs or is slow, then the answer is an
// error or not. The returned func must be called when the call returns.
func (f *Fake) begin(ctx context.Context, op string) (end func(), err error) {
	f.mu.Lock()
	f.calls[op]++
	f.inFlight++
	f.notify()
	blocked, latency := f.blocked, f.latency
	injected := f.sticky[op]
	if fn := f.failNext[op]; fn != nil {
		injected = fn.err
		if fn.n--; fn.n == 0 {
			delete(f.failNext, op)
		}
	}
	f.mu.Unlock()

	end = func() {
		f.mu.Lock()
		f.inFlight--
		f.notify()
		f.mu.Unlock()
	}
	if err := ctx.Err(); err != nil {
		return end, err
	}
	if blocked != nil {
		select {
		case <-blocked:
		case <-ctx.Done():
			return end, ctx.Err()
		}
	}
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return end, ctx.Err()
		}
	}
	return end, injected
}

// WrapKey wraps key under the newest key version and returns one copy.
func (f *Fake) WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
	end, err := f.begin(ctx, OpWrap)
	defer end()
	if err != nil {
		return nil, err
	}
	if len(key) == 0 || len(key) > maxFakeKeyLen {
		return nil, f.errorf(kek.KindInvalidInput, OpWrap, "", 400, "BadParameter",
			"key to wrap is %d bytes, want 1 to %d", len(key), maxFakeKeyLen)
	}
	k := f.key
	k.mu.RLock()
	defer k.mu.RUnlock()
	id := k.base + "/" + k.newest
	if !k.enabled {
		return nil, f.errorf(kek.KindRevoked, OpWrap, id, 403, "KeyDisabled", "the key is disabled; enable it in the vault")
	}
	aead := k.versions[k.newest]
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(key)+aead.Overhead())
	_, _ = rand.Read(nonce)
	ct := aead.Seal(nonce, nonce, key, []byte(id))
	return []kek.Wrapped{{KeyID: id, Algorithm: FakeAlgorithm, Ciphertext: ct}}, nil
}

// UnwrapKey unwraps the first of copies wrapped by this Fake's key. Copies
// of other keys are skipped; none left is KindInvalidInput, an unknown
// version of this key KindNotFound (Key Vault's 404), and a ciphertext that
// does not authenticate KindInvalidInput (Key Vault's 400 BadParameter).
func (f *Fake) UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error) {
	end, err := f.begin(ctx, OpUnwrap)
	defer end()
	if err != nil {
		return nil, err
	}
	if len(copies) == 0 {
		return nil, f.errorf(kek.KindInvalidInput, OpUnwrap, "", 400, "BadParameter",
			"no wrapped copies given; pass the copies WrapKey returned")
	}
	k := f.key
	k.mu.RLock()
	defer k.mu.RUnlock()
	var firstErr error
	for _, c := range copies {
		base, version, ok := splitKeyID(c.KeyID)
		if !ok || !strings.EqualFold(base, k.base) {
			continue
		}
		if !k.enabled {
			return nil, f.errorf(kek.KindRevoked, OpUnwrap, c.KeyID, 403, "KeyDisabled", "the key is disabled; enable it in the vault")
		}
		aead := k.versions[version]
		switch {
		case aead == nil:
			err = f.errorf(kek.KindNotFound, OpUnwrap, c.KeyID, 404, "KeyNotFound", "no such key version")
		case c.Algorithm != FakeAlgorithm:
			err = f.errorf(kek.KindInvalidInput, OpUnwrap, c.KeyID, 400, "BadParameter",
				"algorithm %q is not supported, want %s", c.Algorithm, FakeAlgorithm)
		case len(c.Ciphertext) < aead.NonceSize()+aead.Overhead():
			err = f.errorf(kek.KindInvalidInput, OpUnwrap, c.KeyID, 400, "BadParameter",
				"ciphertext is %d bytes, too short to be a wrapped key", len(c.Ciphertext))
		default:
			n := aead.NonceSize()
			pt, oerr := aead.Open(nil, c.Ciphertext[:n], c.Ciphertext[n:], []byte(k.base+"/"+version))
			if oerr == nil {
				return pt, nil
			}
			err = f.errorf(kek.KindInvalidInput, OpUnwrap, c.KeyID, 400, "BadParameter",
				"ciphertext does not authenticate under this key version; it is corrupt or was wrapped by another key")
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, firstErr
	}
	return nil, f.errorf(kek.KindInvalidInput, OpUnwrap, "", 400, "BadParameter",
		"none of the %d copies is wrapped by key %s", len(copies), k.base)
}

// KeyInfo reports the newest key version.
func (f *Fake) KeyInfo(ctx context.Context) (kek.KeyInfo, error) {
	end, err := f.begin(ctx, OpKeyInfo)
	defer end()
	if err != nil {
		return kek.KeyInfo{}, err
	}
	k := f.key
	k.mu.RLock()
	defer k.mu.RUnlock()
	return kek.KeyInfo{
		KeyID:   k.base + "/" + k.newest,
		Enabled: k.enabled,
		Created: k.created[k.newest],
		KeyType: "oct-HSM",
		KeyOps:  []string{"wrapKey", "unwrapKey"},
	}, nil
}

func (f *Fake) errorf(kind kek.Kind, op, keyID string, status int, code, format string, args ...any) *kek.Error {
	return &kek.Error{
		Kind:   kind,
		Op:     op,
		Region: f.region,
		KeyID:  keyID,
		Code:   code,
		Status: status,
		Err:    errors.New("kektest: " + fmt.Sprintf(format, args...)),
	}
}

func (k *fakeKey) rotate() {
	keyBytes := make([]byte, 32)
	ver := make([]byte, 16)
	_, _ = rand.Read(keyBytes) // crypto/rand.Read never fails (it crashes the process instead)
	_, _ = rand.Read(ver)
	block, _ := aes.NewCipher(keyBytes) // cannot fail for a 32-byte key
	aead, _ := cipher.NewGCM(block)     // cannot fail for AES
	clear(keyBytes)
	v := hex.EncodeToString(ver)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.versions[v] = aead
	k.created[v] = time.Now()
	k.newest = v
}

func (k *fakeKey) setEnabled(on bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.enabled = on
}

// splitKeyID splits https://host/keys/name/version into its versionless
// base and version.
func splitKeyID(id string) (base, version string, ok bool) {
	i := strings.LastIndexByte(id, '/')
	if i < 0 || i == len(id)-1 {
		return "", "", false
	}
	base, version = id[:i], id[i+1:]
	if !strings.HasPrefix(base, "https://") || !strings.Contains(base, "/keys/") {
		return "", "", false
	}
	return base, version, true
}
