// Package broker is the keybroker gRPC service: it serves the node's master
// keys from memory to a storage engine and wraps the engine's data keys under
// them. It validates requests, asks the cache, reaches the customer's key
// through the KeyWrapper it is given, tracks the serving state (SERVING,
// DEGRADED, PAUSED) and maps every error to a gRPC status code in one place.
//
// cmd/keybroker builds a Broker with New and registers it on a grpc.Server.
package broker

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/keybroker/keybroker/internal/cache"
	"github.com/keybroker/keybroker/internal/kek"
	"github.com/keybroker/keybroker/internal/keystore"
	"github.com/keybroker/keybroker/internal/secret"
	keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"
)

// MasterKeySize is the size of a master key: 256 random bits.
const MasterKeySize = 32

// DefaultKeyName is the keystore key served when a request names none.
const DefaultKeyName = "master"

// KeyWrapper wraps and unwraps master keys with the customer's key held in
// Azure Key Vault (one region, or several behind internal/failover).
// Implementations are safe for concurrent use.
type KeyWrapper interface {
	// WrapKey returns one wrapped copy per configured key-encryption key.
	WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error)
	// UnwrapKey unwraps whichever of the copies it can; the caller clears the result.
	UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error)
	// KeyInfo reports the key-encryption key as the vault sees it now.
	KeyInfo(ctx context.Context) (kek.KeyInfo, error)
}

// RegionReporter is implemented by wrappers that span several regions
// (internal/failover); GetStatus shows what it reports.
type RegionReporter interface {
	RegionStatus() []RegionStatus
	// PartialRevocation reports whether some, but not all, regions that
	// answered gave revocation evidence: DEGRADED with an alert, not PAUSED.
	PartialRevocation() bool
}

// RegionStatus is one region's health as GetStatus shows it.
type RegionStatus struct {
	Name          string
	VaultURL      string
	KeyID         string
	Healthy       bool
	LastErrorKind kek.Kind
	LastError     string
	Latency       time.Duration
	Preferred     bool
	Active        bool
}

// Config configures a Broker. It is not changed after New.
type Config struct {
	Store   *keystore.Store // required: the opened keystore
	Wrapper KeyWrapper      // required
	// DefaultKey is the keystore key served when a request names none;
	// "" means DefaultKeyName.
	DefaultKey string
	// Cache configures the in-memory key cache (TTL, size, staleness).
	Cache cache.Config
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// AfterFunc replaces time.AfterFunc for the scheduled validity checks
	// (RunChecks), so tests can drive them with a fake clock; nil means
	// time.AfterFunc. stop reports whether it stopped the timer.
	AfterFunc func(d time.Duration, f func()) (stop func() bool)
	// Rotation configures automatic master-key rotation, retention, CMK
	// rewraps and the rotation alerts (RunRotation, RotateCMK); its timers
	// come from AfterFunc too.
	Rotation RotationConfig
	// Metrics, if set, is told of every validity check and state change
	// (internal/telemetry implements it); nil records nothing.
	Metrics Metrics
	// KeyInfoInterval is how often a scheduled validity check also asks
	// Key Vault for the key's info (expiry alerts, a versionless CMK's new
	// version); the other scheduled checks unwrap only. 0 means 1h.
	KeyInfoInterval time.Duration
	// Rand returns a uniformly random duration in [0, n), for the jitter
	// of scheduled checks and start-up retries; nil means math/rand/v2.
	Rand func(n time.Duration) time.Duration
}

// Metrics receives what the broker measures as it happens. Calls must
// return quickly and must not call the Broker.
type Metrics interface {
	// ValidityCheck reports a finished validity check: the error that
	// decided it (nil when every region gave access) and its duration.
	ValidityCheck(err error, d time.Duration)
	// StateChange reports that the broker entered state to.
	StateChange(to State)
}

// Stats is a snapshot of the broker's counters, for telemetry.
type Stats struct {
	Cache      cache.Stats
	CachedKeys int // master-key versions held in memory
	// LastGoodValidation is when a validity check last found access to
	// the customer key in at least one region, or start-up last loaded the
	// keys through Key Vault; zero before either.
	LastGoodValidation time.Time
}

// Broker is the keybroker service. It is safe for concurrent use.
type Broker struct {
	keybrokerv1.UnimplementedKeyBrokerServiceServer

	store      *keystore.Store
	wrapper    KeyWrapper
	defaultKey string
	cache      *cache.Cache
	log        *slog.Logger
	now        func() time.Time
	health     *health.Server
	hub        *stateHub

	rotateMu sync.Mutex // one rotation or rewrap at a time; reads go on
	rot      *rotation

	afterFunc func(time.Duration, func()) func() bool
	checks    *checker // validity checks: one at a time, the latest result

	metrics  Metrics      // nil: none
	lastGood atomic.Int64 // Stats.LastGoodValidation, Unix nanoseconds; 0: never
}

// New builds a Broker over an opened keystore. It does not touch the network;
// call Warm to load the keys before serving.
func New(cfg Config) (*Broker, error) {
	if cfg.Store == nil {
		return nil, errors.New("broker: no keystore")
	}
	if cfg.Wrapper == nil {
		return nil, errors.New("broker: no key wrapper")
	}
	b := &Broker{
		store:      cfg.Store,
		wrapper:    cfg.Wrapper,
		defaultKey: cfg.DefaultKey,
		log:        cfg.Logger,
		now:        cfg.Now,
		health:     health.NewServer(),
		afterFunc:  cfg.AfterFunc,
		checks:     newChecker(cfg),
		rot:        newRotation(cfg.Rotation),
		metrics:    cfg.Metrics,
	}
	if b.afterFunc == nil {
		b.afterFunc = func(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }
	}
	if b.defaultKey == "" {
		b.defaultKey = DefaultKeyName
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if b.now == nil {
		b.now = time.Now
	}
	if _, err := b.store.Key(b.defaultKey); err != nil {
		return nil, fmt.Errorf("broker: default key %q: %w", b.defaultKey, err)
	}
	cc := cfg.Cache
	if cc.Now == nil {
		cc.Now = b.now
	}
	if cc.Logger == nil {
		cc.Logger = b.log
	}
	b.cache = cache.New(cc, b.load)
	b.hub = newStateHub(b.now())
	b.setHealth(StateServing)
	return b, nil
}

// Register registers the KeyBroker service and grpc.health.v1 on s.
func (b *Broker) Register(s grpc.ServiceRegistrar) {
	keybrokerv1.RegisterKeyBrokerServiceServer(s, b)
	healthpb.RegisterHealthServer(s, b.health)
}

// Warm loads the current version of every active key into memory, so the
// first engine request makes no vault call. A failure is returned and also
// moves the state as a validity check would.
func (b *Broker) Warm(ctx context.Context) error {
	for _, k := range b.store.Keys() {
		if k.State != keystore.StateActive {
			continue
		}
		v, ok := k.Current()
		if !ok {
			continue
		}
		if _, err := b.cache.Get(ctx, v.ID); err != nil {
			b.observe(err)
			return fmt.Errorf("broker: loading key %q version %s: %w", k.Name, v.ID, err)
		}
	}
	if b.hub.current().State == StateServing {
		b.hub.set(StateServing, "keys loaded through Key Vault", b.now())
	}
	b.lastGood.Store(b.now().UnixNano())
	b.checks.sched.loaded(b.now()) // schedule.go: the load proves the key; the next check comes an interval after it
	return nil
}

// Stats returns a snapshot of the broker's counters. It takes no lock a
// validity check holds, so a metrics scrape never waits on Key Vault.
func (b *Broker) Stats() Stats {
	s := Stats{Cache: b.cache.Stats(), CachedKeys: b.cache.Len()}
	if n := b.lastGood.Load(); n != 0 {
		s.LastGoodValidation = time.Unix(0, n)
	}
	return s
}

// Close wipes every key held in memory and marks the service NOT_SERVING.
func (b *Broker) Close() {
	b.health.Shutdown()
	b.cache.Close()
}

// State returns the current state and why.
func (b *Broker) State() Event { return b.hub.current() }

// load is the cache's loader: it unwraps one master-key version through the
// vault. Only the cache calls it, single-flight per version.
func (b *Broker) load(ctx context.Context, versionID string) (*secret.Bytes, error) {
	if b.hub.current().State == StatePaused {
		return nil, errPaused{reason: b.hub.current().Reason}
	}
	if err := b.checks.sched.gate(b.now()); err != nil {
		return nil, err // start-up is backing off: no extra Key Vault call (schedule.go)
	}
	k, v, err := b.findVersion(versionID)
	if err != nil {
		return nil, err
	}
	raw, err := b.wrapper.UnwrapKey(ctx, v.Copies)
	if err != nil {
		b.observe(err)
		return nil, err
	}
	defer clear(raw)
	if len(raw) != keySize(k) {
		return nil, fmt.Errorf("broker: key %q version %s unwrapped to %d bytes, want %d: the keystore copy is not the key it describes", k.Name, v.ID, len(raw), keySize(k))
	}
	b.observe(nil)
	return secret.New(raw), nil
}

// findVersion finds a master-key version by id in any key.
func (b *Broker) findVersion(versionID string) (keystore.Key, keystore.Version, error) {
	k, v, err := b.store.FindVersion(versionID)
	if err != nil {
		return keystore.Key{}, keystore.Version{}, fmt.Errorf("%w: master-key version %q", errNotFound, versionID)
	}
	return k, v, nil
}

// newMasterKey makes a fresh master key, wraps it under every configured
// CMK and proves the copies unwrap to the same bytes before returning them.
// Nothing is persisted here.
func newMasterKey(ctx context.Context, w KeyWrapper) (*secret.Bytes, []kek.Wrapped, error) {
	raw := make([]byte, MasterKeySize)
	defer clear(raw)
	if _, err := rand.Read(raw); err != nil {
		return nil, nil, fmt.Errorf("broker: reading random bytes: %w", err)
	}
	copies, err := w.WrapKey(ctx, raw)
	if err != nil {
		return nil, nil, err
	}
	if len(copies) == 0 {
		return nil, nil, errors.New("broker: the key wrapper returned no wrapped copy")
	}
	if err := proveCopies(ctx, w, raw, copies); err != nil {
		return nil, nil, fmt.Errorf("broker: %w", err)
	}
	return secret.New(raw), copies, nil
}

// NewVersion makes the first version of a new master key: 32 random bytes
// wrapped by w and checked by an unwrap. The plaintext is wiped before it
// returns; the caller persists the version.
func NewVersion(ctx context.Context, w KeyWrapper) (keystore.Version, error) {
	key, copies, err := newMasterKey(ctx, w)
	if err != nil {
		return keystore.Version{}, err
	}
	key.Wipe()
	return keystore.Version{ID: keystore.NewID(), Created: time.Now().UTC(), Copies: copies}, nil
}

// setHealth mirrors the state into grpc.health.v1.
func (b *Broker) setHealth(s State) {
	st := healthpb.HealthCheckResponse_SERVING
	if s == StatePaused {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	b.health.SetServingStatus("", st)
	b.health.SetServingStatus(keybrokerv1.KeyBrokerService_ServiceDesc.ServiceName, st)
}
