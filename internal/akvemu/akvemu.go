// Package akvemu is an Azure Key Vault emulator: an HTTPS server speaking the
// REST protocol the official Go SDK (azkeys, azidentity) speaks, with a
// Microsoft Entra ID token endpoint, an App Service-style managed-identity
// endpoint, RSA keys with real RSA-OAEP wrapping, and a plain-HTTP control API
// to disable, delete, revoke, rotate and inject faults.
//
// Tests and the broker's dev mode start it in-process with Start; the
// akv-emulator command runs it on its own. The real azkeys and azidentity
// clients work against it unmodified: trust Info.CAFile, dial Info.Endpoint,
// use Info.AuthorityHost as the authority host, disable instance discovery
// and challenge resource verification. See docs/emulator.md.
//
// It is a test and development tool: keys are kept in software and, with a
// data directory, on disk in the clear.
package akvemu

import (
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults used when the matching Config field is zero.
const (
	DefaultVaultHost = "keybroker-dev.vault.keybroker.test"
	DefaultKeyName   = "cmk"
	DefaultKeySize   = 3072
	DefaultTenantID  = "7d4e8a2c-5b1f-4c3e-9a6d-2f8b0c1e4a57"
	DefaultClientID  = "3b9f6c1a-8e2d-4f7b-b5a0-9c4d2e1f6a83"
	DefaultTokenTTL  = 15 * time.Minute
	DefaultPageSize  = 25
)

// VaultResource is the resource (audience) of Key Vault access tokens, sent
// in the bearer challenge exactly as Azure does.
const VaultResource = "https://vault.azure.net"

// HostLogin is the host name under which the Entra ID and managed-identity
// endpoints are counted and targeted by faults.
const HostLogin = "login"

// Operation names, shared by faults (Fault.Op) and counters.
const (
	OpToken     = "token"     // Entra token endpoint and managed-identity endpoint
	OpDiscovery = "discovery" // OpenID configuration, instance discovery, signing keys
	OpGet       = "get"       // get a key (latest or a version) or a deleted key
	OpCreate    = "create"    // create a key or a new version of it
	OpRotate    = "rotate"    // rotate a key (new version, same parameters)
	OpList      = "list"      // list keys, key versions or deleted keys
	OpImport    = "import"    // import an RSA key
	OpUpdate    = "update"    // update a key version's attributes
	OpDelete    = "delete"    // soft-delete a key
	OpRecover   = "recover"   // recover a soft-deleted key
	OpPurge     = "purge"     // purge a soft-deleted key
	OpWrapKey   = "wrapkey"   // RSA-OAEP wrap
	OpUnwrapKey = "unwrapkey" // RSA-OAEP unwrap
	OpEncrypt   = "encrypt"   // RSA-OAEP encrypt
	OpDecrypt   = "decrypt"   // RSA-OAEP decrypt
	OpOther     = "other"     // any request that matches no route
)

// Ops returns every operation name, in a stable order.
func Ops() []string {
	return []string{OpToken, OpDiscovery, OpGet, OpCreate, OpRotate, OpList, OpImport, OpUpdate,
		OpDelete, OpRecover, OpPurge, OpWrapKey, OpUnwrapKey, OpEncrypt, OpDecrypt, OpOther}
}

// Errors returned by Start, the Go hooks and Control.
var (
	ErrConfig     = errors.New("akvemu: invalid configuration")
	ErrNotFound   = errors.New("akvemu: not found")
	ErrConflict   = errors.New("akvemu: conflict")
	ErrBadRequest = errors.New("akvemu: bad request")
	ErrControl    = errors.New("akvemu: control request failed")
)

// Config configures an emulator. Zero values mean the defaults given. It is
// not changed by Start and must not be changed after it is passed to Start.
type Config struct {
	// Dir is the data directory: state, CA, certificates, client secret,
	// certificate and token files. Required unless Ephemeral.
	Dir string
	// Ephemeral keeps state in memory; the files it must write (CA,
	// secret...) go to a temporary directory removed by Close. Dir is
	// ignored.
	Ephemeral bool
	// Addr is the HTTPS listen address, "" = "127.0.0.1:0".
	Addr string
	// ControlAddr is the control API (plain HTTP) listen address; it must be
	// a loopback address. "" = "127.0.0.1:0".
	ControlAddr string
	// Vaults are the vault hosts served; nil = one vault DefaultVaultHost.
	Vaults []VaultSpec
	// Keys are created at first start when absent (a soft-deleted key
	// counts as present); nil = one RSA-3072 key "cmk" in the first vault.
	Keys []KeySpec
	// TenantID is the Entra tenant, "" = DefaultTenantID.
	TenantID string
	// ClientID is the one registered client, "" = DefaultClientID. More can
	// be added through the control API.
	ClientID string
	// TokenTTL is the access-token lifetime, 0 = 15m.
	TokenTTL time.Duration
	// CertFile, KeyFile and CAFile serve TLS with these instead of a
	// generated CA and server certificate. CAFile is reported in Info.
	CertFile, KeyFile, CAFile string
	// PageSize is the number of items per page of list answers, 0 = 25 (as
	// Azure); a request's maxresults query parameter lowers it.
	PageSize int
	// Logger receives request logs; nil = discard. It never sees keys,
	// secrets or tokens.
	Logger *slog.Logger
	// Now is the clock for token expiry, nbf/exp checks and timestamps;
	// nil = time.Now.
	Now func() time.Time
	// Throttle turns on Key Vault's throttling model (per vault, per 10 s
	// window, weighted by key type, size and protection); the zero value
	// is off. The control API changes it at run time.
	Throttle Throttle
}

// VaultSpec is one vault. Aliases are more host names (e.g. a regional
// private endpoint) serving the same keys; faults and counters are per
// requested host name. Key identifiers always name Host.
type VaultSpec struct {
	Host    string
	Aliases []string
}

// KeySpec is a key created at first start. Vault is a vault host (or alias);
// Size is 2048, 3072 or 4096 (0 = 3072).
type KeySpec struct {
	Vault, Name string
	Size        int
	HSM         bool // an RSA-HSM key (Managed HSM or Premium vault), for the throttling weights
}

// Info tells a client how to reach the emulator. The akv-emulator command
// prints it as one JSON line once ready.
type Info struct {
	// VaultURLs are "https://{host}/" for every vault host and alias.
	VaultURLs []string `json:"vault_urls"`
	// Endpoint is "127.0.0.1:port": every vault host and the authority are
	// served here. Dial it; TLS verifies the vault host name (SANs).
	Endpoint string `json:"endpoint"`
	// AuthorityHost is "https://127.0.0.1:port/".
	AuthorityHost      string   `json:"authority_host"`
	TenantID           string   `json:"tenant_id"`
	ClientID           string   `json:"client_id"`
	ClientSecretFile   string   `json:"client_secret_file"`
	ClientCertFile     string   `json:"client_certificate_file"` // PEM: certificate + PKCS#8 key, registered for ClientID
	FederatedTokenFile string   `json:"federated_token_file"`    // a valid federated (workload identity) token for ClientID
	IdentityEndpoint   string   `json:"identity_endpoint"`       // App Service-style managed identity endpoint (IDENTITY_ENDPOINT)
	IdentityHeader     string   `json:"identity_header"`         // its X-IDENTITY-HEADER value (IDENTITY_HEADER)
	CAFile             string   `json:"ca_file"`
	KeyIDs             []string `json:"key_ids"`     // full key identifiers with version
	ControlURL         string   `json:"control_url"` // "http://127.0.0.1:port"
}

// vault is one configured vault and the host names that serve it.
type vault struct {
	host  string   // primary host, used in key identifiers
	hosts []string // host and aliases
}

// Server is a running emulator. It is safe for concurrent use.
type Server struct {
	cfg       Config
	log       *slog.Logger
	now       func() time.Time
	tenant    string
	clientID  string
	ttl       time.Duration
	pageSize  int
	dir       string // where files are written
	tempDir   bool   // dir is removed by Close
	ephemeral bool

	vaults    []*vault
	hostVault map[string]*vault // every host and alias, lower case

	mu       sync.RWMutex // guards st and the derived keys below
	st       *state
	tokenKey *ecdsa.PrivateKey // signs access tokens
	oidcKey  *ecdsa.PrivateKey // signs federated (workload identity) tokens

	faults   *faultTable
	counters *counterTable
	throttle *throttler

	ln, ctlLn   net.Listener
	srv, ctlSrv *http.Server
	caFile      string
	endpoint    string
	authority   string // "https://127.0.0.1:port/"
	controlURL  string
	control     *Control
	closing     chan struct{}
	closeOnce   sync.Once
	closeErr    error
	wg          sync.WaitGroup
	clientFiles map[string]ClientFiles
	filesMu     sync.Mutex // serialises writes of client files

	onHold atomic.Pointer[func()] // test hook: a request is being held by a fault
}

// Start starts an emulator and returns once both listeners accept
// connections. Close stops it. The context bounds start-up only.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	s, err := newServer(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	return s, nil
}

func newServer(cfg Config) (*Server, error) {
	s := &Server{
		cfg:         cfg,
		log:         cfg.Logger,
		now:         cfg.Now,
		tenant:      cfg.TenantID,
		clientID:    cfg.ClientID,
		ttl:         cfg.TokenTTL,
		pageSize:    cfg.PageSize,
		ephemeral:   cfg.Ephemeral,
		hostVault:   map[string]*vault{},
		faults:      newFaultTable(),
		counters:    newCounterTable(),
		throttle:    newThrottler(cfg.Throttle),
		closing:     make(chan struct{}),
		clientFiles: map[string]ClientFiles{},
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	if s.tenant == "" {
		s.tenant = DefaultTenantID
	}
	if err := validThrottle(cfg.Throttle); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if !validClientID(s.tenant) {
		return nil, fmt.Errorf("%w: tenant ID %q: use a GUID such as %s", ErrConfig, s.tenant, DefaultTenantID)
	}
	if s.clientID == "" {
		s.clientID = DefaultClientID
	}
	if !validClientID(s.clientID) {
		return nil, fmt.Errorf("%w: client ID %q: use 1-64 letters, digits and dashes (a GUID)", ErrConfig, s.clientID)
	}
	if s.ttl == 0 {
		s.ttl = DefaultTokenTTL
	}
	if s.ttl < 0 {
		return nil, fmt.Errorf("%w: token TTL %v is negative", ErrConfig, s.ttl)
	}
	if s.pageSize == 0 {
		s.pageSize = DefaultPageSize
	}
	if s.pageSize < 0 {
		return nil, fmt.Errorf("%w: page size %d is negative", ErrConfig, s.pageSize)
	}
	if !cfg.Ephemeral && cfg.Dir == "" {
		return nil, fmt.Errorf("%w: a data directory (Dir) is required unless Ephemeral is set", ErrConfig)
	}
	if (cfg.CertFile == "") != (cfg.KeyFile == "") {
		return nil, fmt.Errorf("%w: CertFile and KeyFile go together: give both or neither", ErrConfig)
	}
	specs := cfg.Vaults
	if len(specs) == 0 {
		specs = []VaultSpec{{Host: DefaultVaultHost}}
	}
	for _, vs := range specs {
		v := &vault{}
		for i, h := range append([]string{vs.Host}, vs.Aliases...) {
			h = strings.ToLower(strings.TrimSpace(h))
			if err := validVaultHost(h); err != nil {
				return nil, fmt.Errorf("%w: vault host %q: %v", ErrConfig, h, err)
			}
			if _, dup := s.hostVault[h]; dup {
				return nil, fmt.Errorf("%w: vault host %q is configured twice", ErrConfig, h)
			}
			if i == 0 {
				v.host = h
			}
			v.hosts = append(v.hosts, h)
			s.hostVault[h] = v
		}
		s.vaults = append(s.vaults, v)
	}
	return s, nil
}

// validVaultHost accepts DNS names with at least one dot; IP addresses and
// localhost are reserved for the Entra endpoints.
func validVaultHost(h string) error {
	if h == "" {
		return errors.New("empty host name")
	}
	if net.ParseIP(h) != nil || h == "localhost" || !strings.Contains(h, ".") {
		return errors.New("want a DNS name with a dot, such as kb-east.vault.keybroker.test (IP addresses and localhost serve the Entra endpoints)")
	}
	if len(h) > 253 {
		return errors.New("longer than 253 characters")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("bad DNS label %q", label)
		}
		for _, c := range label {
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return fmt.Errorf("bad character %q in DNS label %q", c, label)
			}
		}
	}
	return nil
}

// validClientID keeps client IDs usable as file names.
func validClientID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func (s *Server) start(ctx context.Context) error {
	if s.ephemeral {
		d, err := os.MkdirTemp("", "akvemu-")
		if err != nil {
			return fmt.Errorf("akvemu: temporary directory: %w", err)
		}
		s.dir, s.tempDir = d, true
	} else {
		s.dir = s.cfg.Dir
		if err := os.MkdirAll(s.dir, 0o700); err != nil {
			return fmt.Errorf("akvemu: data directory: %w", err)
		}
	}
	if err := s.loadState(); err != nil {
		return err
	}
	if err := s.ensureKeys(ctx); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	addr := s.cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ctlAddr := s.cfg.ControlAddr
	if ctlAddr == "" {
		ctlAddr = "127.0.0.1:0"
	}
	if err := checkLoopback(ctlAddr); err != nil {
		return err
	}
	tlsCert, err := s.tlsCertificate()
	if err != nil {
		return err
	}
	var lc net.ListenConfig
	if s.ln, err = lc.Listen(ctx, "tcp", addr); err != nil {
		return fmt.Errorf("akvemu: listen on %s: %w", addr, err)
	}
	if s.ctlLn, err = lc.Listen(ctx, "tcp", ctlAddr); err != nil {
		return fmt.Errorf("akvemu: control listen on %s: %w", ctlAddr, err)
	}
	s.endpoint = s.ln.Addr().String()
	s.authority = "https://" + s.endpoint + "/"
	s.controlURL = "http://" + s.ctlLn.Addr().String()
	s.control = NewControl(s.controlURL, nil)

	if err := s.writeAllClientFiles(); err != nil {
		return err
	}

	// HTTP/1.1 only: the reset fault hijacks the connection, which HTTP/2
	// does not allow.
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.serveHTTPS),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{tlsCert}, MinVersion: tls.VersionTLS12},
		Protocols:         protocols,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.ctlSrv = &http.Server{
		Handler:           s.controlHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	tlsLn := tls.NewListener(s.ln, s.srv.TLSConfig)
	s.wg.Add(3)
	go func() { defer s.wg.Done(); _ = s.srv.Serve(tlsLn) }()
	go func() { defer s.wg.Done(); _ = s.ctlSrv.Serve(s.ctlLn) }()
	go func() { defer s.wg.Done(); s.refreshFederatedTokens() }()
	s.log.Info("akvemu: ready", "endpoint", s.endpoint, "control_url", s.controlURL, "dir", s.dir, "ephemeral", s.ephemeral)
	return nil
}

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%w: control address %q: %v", ErrConfig, addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%w: control address %q is not loopback: the control API has no authentication, bind it to 127.0.0.1 or ::1", ErrConfig, addr)
	}
	return nil
}

// refreshFederatedTokens rewrites the federated token files well before they
// expire, as the kubelet does for projected service account tokens.
func (s *Server) refreshFederatedTokens() {
	t := time.NewTicker(federatedTokenTTL / 4)
	defer t.Stop()
	for {
		select {
		case <-s.closing:
			return
		case <-t.C:
			if err := s.writeAllClientFiles(); err != nil {
				s.log.Warn("akvemu: refreshing client files failed", "err", err)
			}
		}
	}
}

// Info describes how to reach the emulator. KeyIDs reflect the keys now.
func (s *Server) Info() Info {
	info := Info{
		Endpoint:         s.endpoint,
		AuthorityHost:    s.authority,
		TenantID:         s.tenant,
		ClientID:         s.clientID,
		IdentityEndpoint: s.authority + "msi/token",
		CAFile:           s.caFile,
		ControlURL:       s.controlURL,
		VaultURLs:        []string{},
		KeyIDs:           []string{},
	}
	for _, v := range s.vaults {
		for _, h := range v.hosts {
			info.VaultURLs = append(info.VaultURLs, "https://"+h+"/")
		}
	}
	s.filesMu.Lock()
	cf := s.clientFiles[s.clientID]
	s.filesMu.Unlock()
	info.ClientSecretFile, info.ClientCertFile, info.FederatedTokenFile = cf.ClientSecretFile, cf.ClientCertFile, cf.FederatedTokenFile

	s.mu.RLock()
	defer s.mu.RUnlock()
	info.IdentityHeader = s.st.IdentityHeader
	for _, v := range s.vaults {
		vs := s.st.Vaults[v.host]
		if vs == nil {
			continue
		}
		names := make([]string, 0, len(vs.Keys))
		for n, k := range vs.Keys {
			if k.Deleted == nil && len(k.Versions) > 0 {
				names = append(names, n)
			}
		}
		sort.Strings(names)
		for _, n := range names {
			info.KeyIDs = append(info.KeyIDs, keyID(v.host, n, vs.Keys[n].latest().ID))
		}
	}
	return info
}

// Control returns a client of the control API, talking to it over its HTTP
// listener.
func (s *Server) Control() *Control { return s.control }

// Close stops the emulator: black-holed and delayed requests are released,
// connections closed, and an Ephemeral emulator's files removed. It is safe
// to call more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		close(s.closing)
		var errs []error
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, srv := range []*http.Server{s.srv, s.ctlSrv} {
			if srv == nil {
				continue
			}
			if err := srv.Shutdown(ctx); err != nil {
				_ = srv.Close()
			}
		}
		for _, ln := range []net.Listener{s.ln, s.ctlLn} {
			if ln != nil {
				_ = ln.Close() // already closed by Shutdown when it started serving
			}
		}
		s.wg.Wait()
		if s.tempDir {
			if err := os.RemoveAll(s.dir); err != nil {
				errs = append(errs, fmt.Errorf("akvemu: removing %s: %w", s.dir, err))
			}
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// PrivateKey returns a copy of the private key of a key version (version ""
// = the latest). It is a Go-only test hook, on no HTTP API; it also finds
// soft-deleted keys.
func (s *Server) PrivateKey(vaultHost, name, version string) (*rsa.PrivateKey, error) {
	v := s.hostVault[strings.ToLower(vaultHost)]
	if v == nil {
		return nil, fmt.Errorf("%w: vault %q is not served by this emulator", ErrNotFound, vaultHost)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	k := s.st.key(v.host, name)
	if k == nil {
		return nil, fmt.Errorf("%w: key %q in vault %s", ErrNotFound, name, v.host)
	}
	kv := k.version(version)
	if kv == nil {
		return nil, fmt.Errorf("%w: version %q of key %q in vault %s", ErrNotFound, version, name, v.host)
	}
	der, err := x509.MarshalPKCS8PrivateKey(kv.priv)
	if err != nil {
		return nil, fmt.Errorf("akvemu: copying private key: %w", err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("akvemu: copying private key: %w", err)
	}
	return priv.(*rsa.PrivateKey), nil
}

// FederatedToken issues a federated (workload identity) token for a
// registered client that expires ttl after the emulator's clock. It is a
// Go-only test hook for exercising expiry; Info.FederatedTokenFile already
// holds a valid token.
func (s *Server) FederatedToken(clientID string, ttl time.Duration) (string, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.st.Clients[clientID] == nil {
		return "", fmt.Errorf("%w: client %q is not registered", ErrNotFound, clientID)
	}
	return s.issueFederatedToken(clientID, ttl)
}

// vaultFor resolves a host or alias to its vault.
func (s *Server) vaultFor(host string) (*vault, error) {
	v := s.hostVault[strings.ToLower(host)]
	if v == nil {
		hosts := make([]string, 0, len(s.vaults))
		for _, v := range s.vaults {
			hosts = append(hosts, v.host)
		}
		return nil, fmt.Errorf("%w: vault %q is not served by this emulator (served: %s)", ErrNotFound, host, strings.Join(hosts, ", "))
	}
	return v, nil
}

func keyID(host, name, version string) string {
	return "https://" + host + "/keys/" + name + "/" + version
}

// validKeySize reports whether AKV accepts an RSA key of that size.
func validKeySize(n int) bool { return slices.Contains([]int{2048, 3072, 4096}, n) }

func sizeList() string {
	return strconv.Itoa(2048) + ", " + strconv.Itoa(3072) + " or " + strconv.Itoa(4096)
}

// ensureKeys creates the configured keys that do not exist yet.
func (s *Server) ensureKeys(ctx context.Context) error {
	specs := s.cfg.Keys
	if specs == nil {
		specs = []KeySpec{{Vault: s.vaults[0].host, Name: DefaultKeyName, Size: DefaultKeySize}}
	}
	for _, ks := range specs {
		v, err := s.vaultFor(ks.Vault)
		if err != nil {
			return fmt.Errorf("%w: key %q: %v", ErrConfig, ks.Name, err)
		}
		if !validKeyName(ks.Name) {
			return fmt.Errorf("%w: key name %q: use 1-127 letters, digits and dashes", ErrConfig, ks.Name)
		}
		size := ks.Size
		if size == 0 {
			size = DefaultKeySize
		}
		if !validKeySize(size) {
			return fmt.Errorf("%w: key %s/%s: size %d: use %s", ErrConfig, v.host, ks.Name, size, sizeList())
		}
		s.mu.RLock()
		exists := s.st.key(v.host, ks.Name) != nil
		s.mu.RUnlock()
		if exists {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		kty := "RSA"
		if ks.HSM {
			kty = "RSA-HSM"
		}
		if _, err := s.createKey(v, ks.Name, createParams{Kty: kty, Size: size}, true); err != nil {
			return err
		}
	}
	return nil
}

// caPath and friends name the files in the data directory.
func (s *Server) path(name string) string { return filepath.Join(s.dir, name) }
