// Package akv is the Azure adapter: it wraps and unwraps keys with a
// customer-managed key (CMK) in Azure Key Vault or Managed HSM, through the
// real azkeys and azidentity clients.
//
// It builds credentials for the four supported kinds (NewCredential), knows
// the Azure clouds and custom environments (Environment), validates key
// identifiers (ParseKeyID) and turns every failure into a *kek.Error whose
// kind tells revocation from outage (Classify). The broker and the failover
// wrapper use a *Wrapper, one per vault key; nothing else in the tree talks
// to Azure.
package akv

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"

	"github.com/keybroker/keybroker/internal/kek"
)

// keyWrapper is the broker's interface (declared in internal/broker), repeated
// here so the compiler checks Wrapper against it without importing the broker.
type keyWrapper interface {
	WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error)
	UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error)
	KeyInfo(ctx context.Context) (kek.KeyInfo, error)
}

var _ keyWrapper = (*Wrapper)(nil)

// Operation names in errors and logs.
const (
	opGet    = "get"
	opWrap   = "wrap"
	opUnwrap = "unwrap"
)

// ErrConfig is wrapped by every Config validation error.
var ErrConfig = errors.New("akv: invalid configuration")

// Config configures a Wrapper for one vault key. It is not changed after it
// is passed to New.
type Config struct {
	// KeyID is the CMK identifier, https://{vault}.{suffix}/keys/{name}[/{version}].
	// With a version that version is used. Without one, the key's current
	// (newest) version is used, resolved by the first operation and
	// re-resolved by every KeyInfo call; a disabled current version is
	// reported as disabled, never skipped for an older one, so disabling it
	// revokes.
	KeyID string
	// Endpoint is the vault URL to talk to, e.g. a private endpoint; "" means
	// the key identifier's vault. In the Azure clouds it must be a vault host
	// of the environment (private endpoints keep the vault's name and are
	// reached through private DNS); in CUSTOM environments any https URL.
	Endpoint string
	// Region names this vault in errors, logs and metrics; "" is fine.
	Region      string
	Environment Environment
	// Credential authenticates to Entra ID; see NewCredential.
	Credential azcore.TokenCredential
	// Timeout bounds each attempt of a call (SDK TryTimeout); 0 means 10s.
	Timeout time.Duration
	// MaxRetries is the number of SDK retries per call (408, 429, 5xx,
	// transport errors), honouring Retry-After; 0 means 2, -1 none.
	MaxRetries int
	// RetryDelay is the first backoff between retries; 0 means 800ms.
	RetryDelay time.Duration
	// MaxRetryDelay caps the backoff; a Retry-After above it is not waited
	// for, the call fails as throttled at once. 0 means 10s.
	MaxRetryDelay time.Duration
	// LocalWrap wraps with the key's cached public key (RSA-OAEP-256)
	// instead of calling the vault, once one vault unwrap per key version has
	// proven that what the public key wraps the vault unwraps. It never
	// applies to disabled, expired or not-yet-valid keys, keys without
	// wrapKey in their operations, or non-RSA keys, and it is dropped on any
	// revocation answer.
	LocalWrap bool
	// Logger receives one line per failed call (and debug lines per
	// success); nil discards. Key bytes, tokens and secrets are never logged.
	Logger *slog.Logger
	// Now is the clock for key validity dates and Retry-After dates; nil
	// means time.Now.
	Now func() time.Time
}

// Wrapper wraps and unwraps keys with one Key Vault or Managed HSM key. It
// is safe for concurrent use.
type Wrapper struct {
	id             KeyID // as configured, maybe versionless
	env            Environment
	region         string
	client         *azkeys.Client
	hc             *http.Client // nil: the SDK's shared default transport
	localWrap      bool
	verifyResource bool
	log            *slog.Logger
	now            func() time.Time

	mu       sync.Mutex
	current  string               // resolved version, "" until resolved
	versions map[string]*keyState // by version
}

// keyState is what the wrapper knows of one key version.
type keyState struct {
	info   kek.KeyInfo
	alg    azkeys.EncryptionAlgorithm // "" when the key type cannot wrap
	pub    *rsa.PublicKey             // nil unless an RSA key
	proven bool                       // a vault unwrap undid a local wrap
}

// New checks cfg and builds a Wrapper. It reads Environment.CAFile but does
// not touch the network.
func New(cfg Config) (*Wrapper, error) {
	env := cfg.Environment
	if err := env.Validate(); err != nil {
		return nil, err
	}
	id, err := ParseKeyID(cfg.KeyID, env)
	if err != nil {
		return nil, err
	}
	if cfg.Credential == nil {
		return nil, fmt.Errorf("%w: no Credential: build one with NewCredential", ErrConfig)
	}
	if cfg.Timeout < 0 || cfg.RetryDelay < 0 || cfg.MaxRetryDelay < 0 {
		return nil, fmt.Errorf("%w: Timeout, RetryDelay and MaxRetryDelay must not be negative (0 means the default)", ErrConfig)
	}
	if cfg.MaxRetries < -1 {
		return nil, fmt.Errorf("%w: MaxRetries %d: use -1 for no retries, 0 for the default (2), or a positive count", ErrConfig, cfg.MaxRetries)
	}
	endpoint, host := id.VaultURL, id.Host
	if cfg.Endpoint != "" {
		if endpoint, host, err = parseEndpoint(cfg.Endpoint, env); err != nil {
			return nil, err
		}
	}
	hc, err := env.httpClient()
	if err != nil {
		return nil, err
	}
	verify := verifyChallengeResource(host)
	opts := &azkeys.ClientOptions{
		ClientOptions: azcore.ClientOptions{
			PerRetryPolicies: []policy.Policy{scrubPolicy{}},
			Retry: policy.RetryOptions{
				MaxRetries:    retries(cfg.MaxRetries),
				TryTimeout:    orDefault(cfg.Timeout, defaultTimeout),
				RetryDelay:    orDefault(cfg.RetryDelay, defaultRetryDelay),
				MaxRetryDelay: orDefault(cfg.MaxRetryDelay, defaultMaxRetryDelay),
			},
		},
		DisableChallengeResourceVerification: !verify,
	}
	opts.Transport = newKeyOpTransport(hc)
	client, err := azkeys.NewClient(endpoint, cfg.Credential, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Wrapper{
		id:             id,
		env:            env,
		region:         cfg.Region,
		client:         client,
		hc:             hc,
		localWrap:      cfg.LocalWrap,
		verifyResource: verify,
		log:            log.With(slog.String("key_id", id.String()), slog.String("region", cfg.Region)),
		now:            now,
		current:        id.Version,
		versions:       map[string]*keyState{},
	}, nil
}

// parseEndpoint checks a vault endpoint URL and returns it normalised, with
// its host (and port).
func parseEndpoint(s string, env Environment) (endpoint, host string, err error) {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "", "", fmt.Errorf("%w: vault_url %q is not a URL: give https://{vault}.{suffix}/", ErrConfig, clip(s, 200))
	}
	if u.Scheme != "https" {
		return "", "", fmt.Errorf("%w: vault_url %q must use https", ErrConfig, clip(s, 200))
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return "", "", fmt.Errorf("%w: vault_url %q must be only scheme, host and port, e.g. https://myvault.vault.azure.net/", ErrConfig, clip(s, 200))
	}
	if env.Name != EnvCustom {
		h := strings.ToLower(u.Hostname())
		vault, _, err := splitVaultHost(s, h, env)
		if err == nil {
			err = checkVaultName(vault)
		}
		if err != nil || u.Port() != "" {
			return "", "", fmt.Errorf("%w: vault_url %q is not a vault host of %s: a private endpoint keeps the vault's own name (private DNS resolves it), so give https://{vault}.%s/", ErrConfig, clip(s, 200), env.Name, env.VaultSuffix)
		}
	}
	return "https://" + strings.ToLower(u.Host) + "/", strings.ToLower(u.Host), nil
}

// KeyID returns the configured key identifier in canonical form (versionless
// if it was configured so).
func (w *Wrapper) KeyID() string { return w.id.String() }

// Region returns the configured region name.
func (w *Wrapper) Region() string { return w.region }

// KeyInfo asks the vault for the key as it is now (enabled, dates, type,
// operations, version). For a versionless identifier it re-resolves the
// current version, which later wraps use.
func (w *Wrapper) KeyInfo(ctx context.Context) (kek.KeyInfo, error) {
	st, err := w.fetch(ctx)
	if err != nil {
		return kek.KeyInfo{}, err
	}
	return cloneInfo(st.info), nil
}

// fetch gets the configured key (version) from the vault and records it.
func (w *Wrapper) fetch(ctx context.Context) (*keyState, error) {
	if err := ctx.Err(); err != nil {
		return nil, w.fail(ctx, opGet, w.id, err)
	}
	resp, err := w.client.GetKey(ctx, w.id.Name, w.id.Version, nil)
	if err != nil {
		return nil, w.fail(ctx, opGet, w.id, err)
	}
	st, err := w.stateFrom(resp.KeyBundle)
	if err != nil {
		return nil, w.fail(ctx, opGet, w.id, err)
	}
	v := versionOf(st.info.KeyID)
	w.mu.Lock()
	if old := w.versions[v]; old != nil && old.proven && old.pub != nil && st.pub != nil && old.pub.Equal(st.pub) {
		st.proven = true
	}
	w.versions[v] = st
	w.current = v
	w.mu.Unlock()
	w.log.LogAttrs(ctx, slog.LevelDebug, "akv: key info", slog.String("op", opGet), slog.String("version", v), slog.Bool("enabled", st.info.Enabled))
	return st, nil
}

func versionOf(full string) string {
	return full[strings.LastIndexByte(full, '/')+1:]
}

// stateFrom checks the vault's key bundle and turns it into a keyState.
func (w *Wrapper) stateFrom(b azkeys.KeyBundle) (*keyState, error) {
	if b.Key == nil || b.Key.KID == nil {
		return nil, &kek.Error{Kind: kek.KindUnavailable, Code: "MalformedResponse", Err: errors.New("the vault's answer has no key identifier: check vault_url and any proxy in between")}
	}
	kidHost, name, version, ok := splitKID(string(*b.Key.KID))
	if !ok || !strings.EqualFold(name, w.id.Name) || checkVersion(version) != nil || version == "" ||
		(w.id.Version != "" && version != w.id.Version) {
		return nil, &kek.Error{Kind: kek.KindUnavailable, Code: "MalformedResponse", Err: fmt.Errorf("the vault answered with key identifier %q, not a version of the configured key: check vault_url and any proxy in between", clip(string(*b.Key.KID), 200))}
	}
	if vault, _, err := splitVaultHost("", kidHost, w.env); err == nil && vault != "" && kidHost != w.id.Host {
		return nil, &kek.Error{Kind: kek.KindInvalidInput, Code: "WrongVault", Err: fmt.Errorf("the endpoint serves vault %s, not %s: vault_url must reach the key's own vault", kidHost, w.id.Host)}
	}
	info := kek.KeyInfo{KeyID: w.id.WithVersion(version).String()}
	if a := b.Attributes; a != nil {
		// A missing enabled flag is not taken as enabled: Key Vault always
		// sends it, and the safe reading of its absence is "not usable".
		info.Enabled = a.Enabled != nil && *a.Enabled
		info.NotBefore = timeOf(a.NotBefore)
		info.Expires = timeOf(a.Expires)
		info.Created = timeOf(a.Created)
	}
	if b.Key.Kty != nil {
		info.KeyType = string(*b.Key.Kty)
	}
	for _, op := range b.Key.KeyOps {
		if op != nil {
			info.KeyOps = append(info.KeyOps, string(*op))
		}
	}
	st := &keyState{info: info}
	switch azkeys.KeyType(info.KeyType) {
	case azkeys.KeyTypeRSA, azkeys.KeyTypeRSAHSM:
		st.alg = azkeys.EncryptionAlgorithmRSAOAEP256
		if len(b.Key.N) > 0 && len(b.Key.E) > 0 && len(b.Key.E) <= 4 {
			e := new(big.Int).SetBytes(b.Key.E)
			n := new(big.Int).SetBytes(b.Key.N)
			if e.IsInt64() && e.Int64() > 1 && n.BitLen() >= 2048 {
				st.pub = &rsa.PublicKey{N: n, E: int(e.Int64())}
			}
		}
	case azkeys.KeyTypeOct, azkeys.KeyTypeOctHSM:
		// Managed HSM AES keys: 256-bit AES key wrap.
		st.alg = azkeys.EncryptionAlgorithmA256KW
	}
	return st, nil
}

// splitKID splits https://{host}/keys/{name}/{version} without judging the
// host.
func splitKID(s string) (host, name, version string, ok bool) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", "", false
	}
	segs := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
	if len(segs) != 3 || segs[0] != "keys" {
		return "", "", "", false
	}
	return strings.ToLower(u.Hostname()), segs[1], segs[2], true
}

func timeOf(t *time.Time) time.Time {
	if t == nil {
		return time.Time{}
	}
	return *t
}

func cloneInfo(i kek.KeyInfo) kek.KeyInfo {
	i.KeyOps = slices.Clone(i.KeyOps)
	return i
}

// state returns the current version's state, asking the vault once if the
// version is not resolved or not known yet.
func (w *Wrapper) state(ctx context.Context) (*keyState, error) {
	w.mu.Lock()
	st := w.versions[w.current]
	w.mu.Unlock()
	if st != nil {
		return st, nil
	}
	return w.fetch(ctx)
}

// WrapKey wraps key with the key-encryption key: one copy, whose KeyID is
// the full identifier with version. The key is not kept.
func (w *Wrapper) WrapKey(ctx context.Context, key []byte) ([]kek.Wrapped, error) {
	if err := ctx.Err(); err != nil {
		return nil, w.fail(ctx, opWrap, w.id, err)
	}
	if len(key) == 0 {
		return nil, &kek.Error{Kind: kek.KindInvalidInput, Op: opWrap, Region: w.region, KeyID: w.id.String(), Err: errors.New("nothing to wrap: the key is empty")}
	}
	st, err := w.state(ctx)
	if err != nil {
		return nil, err
	}
	kid := w.id.WithVersion(versionOf(st.info.KeyID))
	if st.alg == "" {
		return nil, &kek.Error{Kind: kek.KindInvalidInput, Op: opWrap, Region: w.region, KeyID: kid.String(), Code: "UnsupportedKeyType",
			Err: fmt.Errorf("key type %q cannot wrap keys: use an RSA key (or an AES key on Managed HSM)", st.info.KeyType)}
	}
	if w.localWrap && w.canWrapLocally(st) {
		ct, err := w.wrapLocally(ctx, kid, st, key)
		if err != nil {
			return nil, err
		}
		return []kek.Wrapped{{KeyID: kid.String(), Algorithm: string(st.alg), Ciphertext: ct}}, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, w.fail(ctx, opWrap, kid, err)
	}
	alg := st.alg
	resp, err := w.client.WrapKey(ctx, kid.Name, kid.Version, azkeys.KeyOperationParameters{Algorithm: &alg, Value: key}, nil)
	if err != nil {
		return nil, w.fail(ctx, opWrap, kid, err)
	}
	if len(resp.Result) == 0 {
		return nil, w.fail(ctx, opWrap, kid, &kek.Error{Kind: kek.KindUnavailable, Code: "MalformedResponse", Err: errors.New("the vault answered wrapKey without a result: check vault_url and any proxy in between")})
	}
	if resp.KID != nil {
		// The vault says which version wrapped; it is the one asked for, but
		// the copy must name the one that can unwrap it.
		if _, name, v, ok := splitKID(string(*resp.KID)); ok && strings.EqualFold(name, kid.Name) && v != "" && checkVersion(v) == nil {
			kid.Version = v
		}
	}
	w.log.LogAttrs(ctx, slog.LevelDebug, "akv: wrapped", slog.String("op", opWrap), slog.String("version", kid.Version), slog.Bool("local", false))
	return []kek.Wrapped{{KeyID: kid.String(), Algorithm: string(alg), Ciphertext: resp.Result}}, nil
}

// canWrapLocally reports whether the cached key allows a local wrap now.
func (w *Wrapper) canWrapLocally(st *keyState) bool {
	if st.pub == nil || st.alg != azkeys.EncryptionAlgorithmRSAOAEP256 || !st.info.Enabled {
		return false
	}
	now := w.now()
	if !st.info.NotBefore.IsZero() && now.Before(st.info.NotBefore) {
		return false
	}
	if !st.info.Expires.IsZero() && !now.Before(st.info.Expires) {
		return false
	}
	return len(st.info.KeyOps) == 0 || slices.Contains(st.info.KeyOps, string(azkeys.KeyOperationWrapKey))
}

// wrapLocally wraps key with the cached public key; the first time per key
// version a vault unwrap must give key back before the copy is trusted.
func (w *Wrapper) wrapLocally(ctx context.Context, kid KeyID, st *keyState, key []byte) ([]byte, error) {
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, st.pub, key, nil)
	if err != nil {
		return nil, &kek.Error{Kind: kek.KindInvalidInput, Op: opWrap, Region: w.region, KeyID: kid.String(),
			Err: fmt.Errorf("wrapping locally: %w: the key is too long for this RSA key", err)}
	}
	w.mu.Lock()
	proven := st.proven
	w.mu.Unlock()
	if !proven {
		if err := ctx.Err(); err != nil {
			return nil, w.fail(ctx, opWrap, kid, err)
		}
		got, err := w.unwrapCall(ctx, kid, st.alg, ct)
		if err != nil {
			return nil, w.fail(ctx, opWrap, kid, err)
		}
		ok := subtle.ConstantTimeCompare(got, key) == 1
		clear(got)
		if !ok {
			return nil, w.fail(ctx, opWrap, kid, &kek.Error{Kind: kek.KindUnknown, Code: "PublicKeyMismatch",
				Err: errors.New("the vault did not unwrap what the key's public key wrapped: the cached public key is not this key's; local wrapping is refused")})
		}
		w.mu.Lock()
		st.proven = true
		w.mu.Unlock()
		w.log.LogAttrs(ctx, slog.LevelInfo, "akv: local wrap proven by a vault unwrap", slog.String("version", kid.Version))
	}
	w.log.LogAttrs(ctx, slog.LevelDebug, "akv: wrapped", slog.String("op", opWrap), slog.String("version", kid.Version), slog.Bool("local", true))
	return ct, nil
}

// wrapAlgorithms are the algorithms a wrapped copy may name.
var wrapAlgorithms = map[string]bool{
	string(azkeys.EncryptionAlgorithmRSAOAEP256):       true,
	string(azkeys.EncryptionAlgorithmRSAOAEP):          true,
	string(azkeys.EncryptionAlgorithmRSA15):            true,
	string(azkeys.EncryptionAlgorithmA128KW):           true,
	string(azkeys.EncryptionAlgorithmA192KW):           true,
	string(azkeys.EncryptionAlgorithmA256KW):           true,
	string(azkeys.EncryptionAlgorithmCKMAESKEYWRAP):    true,
	string(azkeys.EncryptionAlgorithmCKMAESKEYWRAPPAD): true,
}

// UnwrapKey unwraps the first of copies this wrapper's key (any version)
// can unwrap, asking the vault with the copy's version and algorithm. Copies
// of other keys are skipped; if none is left the error is KindInvalidInput.
// A copy that fails as invalid or not found (that version deleted) gives way
// to the next; other failures are returned at once. The caller owns and
// should clear the result.
func (w *Wrapper) UnwrapKey(ctx context.Context, copies []kek.Wrapped) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, w.fail(ctx, opUnwrap, w.id, err)
	}
	var first error
	tried := 0
	for _, c := range copies {
		id, err := ParseKeyID(c.KeyID, w.env)
		if err != nil || !id.SameKey(w.id) {
			continue
		}
		tried++
		// The configured spelling: names and hosts are compared without case.
		key, err := w.unwrapOne(ctx, w.id.WithVersion(id.Version), c)
		if err == nil {
			return key, nil
		}
		if first == nil {
			first = err
		}
		if k := kek.KindOf(err); k != kek.KindInvalidInput && k != kek.KindNotFound {
			return nil, err
		}
	}
	if tried == 0 {
		return nil, &kek.Error{Kind: kek.KindInvalidInput, Op: opUnwrap, Region: w.region, KeyID: w.id.String(),
			Err: fmt.Errorf("none of the %d wrapped copies was wrapped by %s (any version): unwrap them with the wrapper of the key that wrapped them", len(copies), w.id.Versionless())}
	}
	return nil, first
}

func (w *Wrapper) unwrapOne(ctx context.Context, id KeyID, c kek.Wrapped) ([]byte, error) {
	invalid := func(msg string) error {
		return &kek.Error{Kind: kek.KindInvalidInput, Op: opUnwrap, Region: w.region, KeyID: id.String(), Err: errors.New(msg)}
	}
	switch {
	case id.Version == "":
		return nil, invalid("the wrapped copy names no key version: copies must carry the full identifier with version")
	case !wrapAlgorithms[c.Algorithm]:
		return nil, invalid(fmt.Sprintf("the wrapped copy's algorithm %q is not a Key Vault wrapping algorithm", clip(c.Algorithm, 40)))
	case len(c.Ciphertext) == 0:
		return nil, invalid("the wrapped copy has no ciphertext")
	}
	if err := ctx.Err(); err != nil {
		return nil, w.fail(ctx, opUnwrap, id, err)
	}
	alg := azkeys.EncryptionAlgorithm(c.Algorithm)
	key, err := w.unwrapCall(ctx, id, alg, c.Ciphertext)
	if err != nil {
		return nil, w.fail(ctx, opUnwrap, id, err)
	}
	if len(key) == 0 {
		return nil, w.fail(ctx, opUnwrap, id, &kek.Error{Kind: kek.KindUnavailable, Code: "MalformedResponse", Err: errors.New("the vault answered unwrapKey without a result: check vault_url and any proxy in between")})
	}
	w.log.LogAttrs(ctx, slog.LevelDebug, "akv: unwrapped", slog.String("op", opUnwrap), slog.String("version", id.Version))
	return key, nil
}

// unwrapCall asks the vault to unwrap ct. The key comes out of the answer
// through scrubPolicy, never through azkeys' decoded copy, which holds
// zeros; the caller owns and clears the result.
func (w *Wrapper) unwrapCall(ctx context.Context, id KeyID, alg azkeys.EncryptionAlgorithm, ct []byte) ([]byte, error) {
	sctx, slot := withKeySlot(ctx)
	resp, err := w.client.UnwrapKey(sctx, id.Name, id.Version, azkeys.KeyOperationParameters{Algorithm: &alg, Value: ct}, nil)
	clear(resp.Result)
	if err != nil {
		clear(slot.key)
		return nil, err
	}
	if slot.err != nil {
		return nil, &kek.Error{Kind: kek.KindUnavailable, Code: "MalformedResponse", Err: slot.err}
	}
	return slot.key, nil
}

// fail classifies err from op on key id, logs it, forgets what a revocation
// makes stale, and returns the *kek.Error.
func (w *Wrapper) fail(ctx context.Context, op string, id KeyID, err error) error {
	var e *kek.Error
	if ctxErr := ctx.Err(); ctxErr != nil && !answered(err) {
		// The caller's own deadline or cancellation: keep it in the chain
		// for errors.Is. It says nothing about the vault.
		e = &kek.Error{Kind: kek.KindUnavailable, Code: "CallerContext",
			Err: fmt.Errorf("the caller's context ended before the vault answered: %w", ctxErr)}
	} else {
		e = classify(op, err, true, w.now)
	}
	// Copy: e may be a shared *kek.Error, and Op, Region and KeyID are ours.
	ce := *e
	if ce.Op == "" {
		ce.Op = op
	}
	ce.Region = w.region
	ce.KeyID = id.String()
	if ce.Kind.IsRevocation() {
		w.forget()
	}
	attrs := []slog.Attr{slog.String("op", ce.Op), slog.String("key_version", id.Version), slog.String("kind", ce.Kind.String()),
		slog.String("code", ce.Code), slog.Int("status", ce.Status)}
	if rid := requestID(err); rid != "" {
		attrs = append(attrs, slog.String("request_id", rid))
	}
	w.log.LogAttrs(ctx, slog.LevelWarn, "akv: call failed", attrs...)
	return &ce
}

// requestID returns Key Vault's x-ms-request-id for err, which Azure support
// asks for, or "".
func requestID(err error) string {
	var re *azcore.ResponseError
	if errors.As(err, &re) && re.RawResponse != nil {
		return clip(re.RawResponse.Header.Get("x-ms-request-id"), 64)
	}
	return ""
}

// answered reports whether err carries an answer from the vault or Entra
// ID, which stands even if the caller's context ended meanwhile.
func answered(err error) bool {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return true
	}
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) && afe.RawResponse != nil {
		return true
	}
	var ke *kek.Error
	return errors.As(err, &ke)
}

// forget drops local-wrap proofs and the resolved version after a
// revocation answer, so the next wrap asks the vault again.
func (w *Wrapper) forget() {
	w.mu.Lock()
	defer w.mu.Unlock()
	clear(w.versions)
	w.current = w.id.Version
}
