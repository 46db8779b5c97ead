// Package config reads keybroker's YAML configuration file. Decoding is
// strict: an unknown key is an error naming the key and its line, and a
// missing or invalid field is an error naming the field and the line of the
// section it belongs in. It reads only the bytes it is given; cmd/keybroker
// supplies the file and the environment.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// MaxSize bounds a configuration file.
const MaxSize = 1 << 20

// ErrInvalid is wrapped by every error Parse returns.
var ErrInvalid = errors.New("config: invalid")

// Config is the whole file. Zero values mean the documented defaults, which
// Parse fills in.
type Config struct {
	Keystore      Keystore      `yaml:"keystore"`
	Listen        Listen        `yaml:"listen"`
	TLS           TLS           `yaml:"tls"`
	Authorization Authorization `yaml:"authorization"`
	Azure         Azure         `yaml:"azure"`
	Cache         Cache         `yaml:"cache"`
	Validation    Validation    `yaml:"validation"`
	Rotation      Rotation      `yaml:"rotation"`
	Log           Log           `yaml:"log"`
	Admin         Admin         `yaml:"admin"`
	// Telemetry comes from the environment only, never from the file.
	Telemetry Telemetry `yaml:"-"`
	// KMIP configures the KMIP front-end (kmip.go); an empty address is off.
	KMIP KMIP `yaml:"kmip"`
}

// Keystore says where the wrapped master keys live.
type Keystore struct {
	Dir        string `yaml:"dir"`         // required
	DefaultKey string `yaml:"default_key"` // default "master"
	// RequireMount, when set, is a path that must be a mount point for init
	// and serve to run: the data volume keystore.dir lives on. It keeps a
	// bootstrap script run before the volume is mounted from creating a new
	// master key on the root disk.
	RequireMount string `yaml:"require_mount"`
}

// Listen says where the gRPC service listens. At least one is required.
type Listen struct {
	Address string `yaml:"address"` // host:port, e.g. 127.0.0.1:7443
	Unix    string `yaml:"unix"`    // path of a unix socket (mTLS as on TCP)
}

// TLS is the server's certificate and the CA its clients' certificates
// must chain to.
type TLS struct {
	CertFile     string `yaml:"cert_file"`
	KeyFile      string `yaml:"key_file"`
	ClientCAFile string `yaml:"client_ca_file"`
}

// Authorization lists the client identities (URI SAN as is, "dns:NAME" or
// "cn:NAME") allowed each role.
type Authorization struct {
	Engine []string `yaml:"engine"`
	Admin  []string `yaml:"admin"`
}

// Azure configures the customer key and how to reach it.
type Azure struct {
	Environment string      `yaml:"environment"` // AZURE (default), AZURE_CHINA, AZURE_US_GOVERNMENT, CUSTOM
	Custom      Custom      `yaml:"custom"`
	Credential  Credential  `yaml:"credential"`
	KeyID       string      `yaml:"key_id"`    // the CMK, for a single region
	VaultURL    string      `yaml:"vault_url"` // endpoint to reach KeyID through; default its vault
	Regions     []Region    `yaml:"regions"`   // ordered by preference; replaces key_id/vault_url
	Timeout     Duration    `yaml:"timeout"`   // per attempt, default 10s
	MaxRetries  *int        `yaml:"max_retries"`
	LocalWrap   bool        `yaml:"local_wrap"`
	Failover    FailoverCfg `yaml:"failover"`
}

// Custom describes a private cloud or the emulator.
type Custom struct {
	AuthorityHost    string `yaml:"authority_host"`
	VaultSuffix      string `yaml:"vault_suffix"`
	ManagedHSMSuffix string `yaml:"managed_hsm_suffix"`
	CAFile           string `yaml:"ca_file"`
	ConnectTo        string `yaml:"connect_to"`
}

// Credential selects one azidentity credential. Secrets never appear here:
// client_secret_file names a file, or AZURE_CLIENT_SECRET supplies it.
type Credential struct {
	Kind                    string `yaml:"kind"` // client_secret, client_certificate, workload_identity, managed_identity
	TenantID                string `yaml:"tenant_id"`
	ClientID                string `yaml:"client_id"`
	ClientSecretFile        string `yaml:"client_secret_file"`
	CertificateFile         string `yaml:"certificate_file"`
	FederatedTokenFile      string `yaml:"federated_token_file"`
	ManagedIdentityClientID string `yaml:"managed_identity_client_id"`
	// ClientSecret comes only from AZURE_CLIENT_SECRET, never from the file.
	ClientSecret string `yaml:"-"`
}

// Region is one regional endpoint of the customer key.
type Region struct {
	Name     string   `yaml:"name"`
	VaultURL string   `yaml:"vault_url"` // public vault URL or private endpoint; default the key's vault
	KeyID    string   `yaml:"key_id"`    // default the azure.key_id
	Timeout  Duration `yaml:"timeout"`

	// Implied is set on the one region made from azure.key_id and
	// azure.vault_url when the file lists no regions, so messages name
	// those keys rather than a regions list the operator never wrote.
	Implied bool `yaml:"-"`
}

// FailoverCfg tunes the regional failover wrapper.
type FailoverCfg struct {
	HedgeDelay    Duration `yaml:"hedge_delay"`     // 0 = derived from observed latency
	FailBackAfter int      `yaml:"fail_back_after"` // probes in a row, default 3
	ProbeInterval Duration `yaml:"probe_interval"`  // default 30s
}

// Cache tunes the in-memory key cache.
type Cache struct {
	TTL      Duration `yaml:"ttl"`       // default 1h
	Size     int      `yaml:"size"`      // default 64
	MaxStale Duration `yaml:"max_stale"` // default 24h: serve from memory this long past TTL while no region answers
}

// Validation tunes the scheduled validity check.
type Validation struct {
	Interval Duration `yaml:"interval"` // default 60s
}

// Rotation tunes master-key rotation, the retention of old versions, CMK
// rewraps and the rotation alerts (docs/rotation.md).
type Rotation struct {
	// MasterKeyInterval is the age at which the master key is rotated, and
	// past which MASTER_KEY_ROTATION_DUE is raised; default 90d.
	MasterKeyInterval Duration `yaml:"master_key_interval"`
	// Automatic rotates every MasterKeyInterval; false only alerts. Default true.
	Automatic *bool `yaml:"automatic"`
	// RetainVersions keeps the newest N versions of each key; 0 (the
	// default) keeps every version. Removing a version makes data wrapped
	// under it unreadable, hence at least 2 when set.
	RetainVersions int `yaml:"retain_versions"`
	// RetainFor removes versions retired for longer than this; 0 (the
	// default) keeps them for ever. With RetainVersions too, a version goes
	// only when both say so.
	RetainFor Duration `yaml:"retain_for"`
	// CMKRotationAlert raises CMK_ROTATION_DUE when the customer key
	// version is older than this; default 90d.
	CMKRotationAlert Duration `yaml:"cmk_rotation_alert"`
	// CMKCopyRetention drops the copies wrapped by a previous customer key
	// this long after the rewrap; 0 (the default) keeps them until
	// `keybroker rotate-cmk --finalize`.
	CMKCopyRetention Duration `yaml:"cmk_copy_retention"`
}

// Log configures logging.
type Log struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // json (default) or text
}

// Admin configures the admin HTTP listener: Prometheus /metrics, /healthz
// and /readyz, without TLS or authentication, so keep it on loopback or a
// private interface.
type Admin struct {
	Address string `yaml:"address"` // host:port, e.g. 127.0.0.1:9464; "" (default) = no admin listener
}

// Telemetry holds the OTELVariables the environment set: they select OTLP
// export of metrics and traces (docs/observability.md).
type Telemetry struct {
	OTEL map[string]string
}

// OTELVariables are the environment variables Parse copies into
// Telemetry.OTEL: those that decide whether and how OTLP export runs. The
// exporters read the other standard OTEL_EXPORTER_OTLP_* variables
// (headers, certificates, timeouts) themselves.
var OTELVariables = []string{
	"OTEL_SDK_DISABLED",
	"OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER",
	"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
	"OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
}

// Duration is a time.Duration written as "30s" or "1h", or a whole number
// of days, "90d", since rotation periods are counted in days.
type Duration time.Duration

// maxDays keeps "Nd" within time.Duration (about 292 years).
const maxDays = 100 * 365

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	var s string
	if err := n.Decode(&s); err != nil {
		return fmt.Errorf("line %d: want a duration like \"30s\"", n.Line)
	}
	v, err := parseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("line %d: %q is not a duration: write it like \"30s\", \"5m\", \"1h\" or \"90d\"", n.Line, s)
	}
	*d = Duration(v)
	return nil
}

func parseDuration(s string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok && days != "" && strings.Trim(days, "0123456789") == "" {
		n, err := strconv.Atoi(days)
		if err != nil || n > maxDays {
			return 0, fmt.Errorf("%q: at most %d days", s, maxDays)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	return time.ParseDuration(s)
}

// D returns the value as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// Defaults.
const (
	DefaultKeyName       = "master"
	DefaultTimeout       = 10 * time.Second
	DefaultCacheTTL      = time.Hour
	DefaultCacheSize     = 64
	DefaultMaxStale      = 24 * time.Hour
	DefaultCheckInterval = 60 * time.Second
	// DefaultMasterKeyInterval is 90 days: the master key's rotation period
	// in the system the broker stands in for.
	DefaultMasterKeyInterval = 90 * 24 * time.Hour
	// DefaultCMKRotationAlert is 90 days.
	DefaultCMKRotationAlert = 90 * 24 * time.Hour
)

// Parse decodes and validates a configuration file's bytes. name is used in
// error messages. getenv (nil = none) supplies azidentity's environment
// variables for what the file leaves empty: AZURE_TENANT_ID, AZURE_CLIENT_ID,
// AZURE_CLIENT_SECRET, AZURE_FEDERATED_TOKEN_FILE and AZURE_AUTHORITY_HOST,
// and the OTELVariables.
func Parse(name string, data []byte, getenv func(string) string) (*Config, error) {
	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: %s is %d bytes, more than %d: is it the right file?", ErrInvalid, name, len(data), MaxSize)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, name, cleanYAMLError(err))
	}
	cfg := new(Config)
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: %s is empty: see the README for a minimal configuration", ErrInvalid, name)
		}
		return nil, fmt.Errorf("%w: %s: %v", ErrInvalid, name, cleanYAMLError(err))
	}
	if getenv != nil {
		cfg.applyEnv(getenv)
	}
	v := validator{name: name, root: &root}
	v.check(cfg)
	if len(v.errs) > 0 {
		return nil, fmt.Errorf("%w: %s:\n  %s", ErrInvalid, name, strings.Join(v.errs, "\n  "))
	}
	cfg.fillDefaults()
	return cfg, nil
}

// cleanYAMLError turns yaml.v3's "field x not found in type config.Y" into
// words about the file.
func cleanYAMLError(err error) string {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	msg = strings.ReplaceAll(msg, "unmarshal errors:\n  ", "")
	var out []string
	for _, line := range strings.Split(msg, "\n") {
		line = strings.TrimSpace(line)
		if i := strings.Index(line, " not found in type "); i >= 0 {
			line = line[:i] + " is not a known key (check its spelling and indentation)"
			line = strings.Replace(line, "field ", "key ", 1)
		}
		out = append(out, line)
	}
	return strings.Join(out, "; ")
}

func (c *Config) applyEnv(getenv func(string) string) {
	fill := func(dst *string, name string) {
		if *dst == "" {
			*dst = strings.TrimSpace(getenv(name))
		}
	}
	cred := &c.Azure.Credential
	fill(&cred.TenantID, "AZURE_TENANT_ID")
	fill(&cred.ClientID, "AZURE_CLIENT_ID")
	fill(&cred.FederatedTokenFile, "AZURE_FEDERATED_TOKEN_FILE")
	if cred.ClientSecretFile == "" {
		cred.ClientSecret = getenv("AZURE_CLIENT_SECRET")
	}
	if c.Azure.Environment == "CUSTOM" {
		fill(&c.Azure.Custom.AuthorityHost, "AZURE_AUTHORITY_HOST")
	}
	for _, name := range OTELVariables {
		if v := strings.TrimSpace(getenv(name)); v != "" {
			if c.Telemetry.OTEL == nil {
				c.Telemetry.OTEL = make(map[string]string)
			}
			c.Telemetry.OTEL[name] = v
		}
	}
}

func (c *Config) fillDefaults() {
	if c.Keystore.DefaultKey == "" {
		c.Keystore.DefaultKey = DefaultKeyName
	}
	if c.Azure.Environment == "" {
		c.Azure.Environment = "AZURE"
	}
	if c.Azure.Timeout == 0 {
		c.Azure.Timeout = Duration(DefaultTimeout)
	}
	if c.Cache.TTL == 0 {
		c.Cache.TTL = Duration(DefaultCacheTTL)
	}
	if c.Cache.Size == 0 {
		c.Cache.Size = DefaultCacheSize
	}
	if c.Cache.MaxStale == 0 {
		c.Cache.MaxStale = Duration(DefaultMaxStale)
	}
	if c.Validation.Interval == 0 {
		c.Validation.Interval = Duration(DefaultCheckInterval)
	}
	if c.Rotation.MasterKeyInterval == 0 {
		c.Rotation.MasterKeyInterval = Duration(DefaultMasterKeyInterval)
	}
	if c.Rotation.Automatic == nil {
		on := true
		c.Rotation.Automatic = &on
	}
	if c.Rotation.CMKRotationAlert == 0 {
		c.Rotation.CMKRotationAlert = Duration(DefaultCMKRotationAlert)
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	c.fillKMIPDefaults()
	if len(c.Azure.Regions) == 0 && c.Azure.KeyID != "" {
		c.Azure.Regions = []Region{{Name: "primary", VaultURL: c.Azure.VaultURL, KeyID: c.Azure.KeyID, Implied: true}}
	}
	for i := range c.Azure.Regions {
		r := &c.Azure.Regions[i]
		if r.KeyID == "" {
			r.KeyID = c.Azure.KeyID
		}
		if r.Timeout == 0 {
			r.Timeout = c.Azure.Timeout
		}
	}
}

// validator collects every problem, each with the line where it belongs.
type validator struct {
	name string
	root *yaml.Node
	errs []string
}

func (v *validator) addf(path, format string, args ...any) {
	v.errs = append(v.errs, fmt.Sprintf("line %d: %s: %s", v.line(path), path, fmt.Sprintf(format, args...)))
}

// line finds the line of path ("a.b.c") in the file, or of its closest
// ancestor present, so a missing key is reported where it should go.
func (v *validator) line(path string) int {
	n := v.root
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 1
	if n != nil && n.Line > 0 {
		line = n.Line
	}
	for _, part := range strings.Split(path, ".") {
		if n == nil || n.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				line = n.Content[i].Line
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}

func (v *validator) required(path, val, hint string) {
	if strings.TrimSpace(val) == "" {
		v.addf(path, "missing: %s", hint)
	}
}

func (v *validator) check(c *Config) {
	v.required("keystore.dir", c.Keystore.Dir, "the directory that holds the wrapped master keys")
	v.checkRequireMount(c.Keystore)
	if c.Listen.Address == "" && c.Listen.Unix == "" {
		v.addf("listen", "missing: set listen.address (host:port) or listen.unix (socket path), or both")
	}
	if a := c.Listen.Address; a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			v.addf("listen.address", "%q is not host:port (e.g. 127.0.0.1:7443)", a)
		}
	}
	v.required("tls.cert_file", c.TLS.CertFile, "the server certificate (PEM)")
	v.required("tls.key_file", c.TLS.KeyFile, "the server private key (PEM)")
	v.required("tls.client_ca_file", c.TLS.ClientCAFile, "the CA that issues engine and admin client certificates (PEM)")
	if len(c.Authorization.Engine) == 0 && len(c.Authorization.Admin) == 0 {
		v.addf("authorization", "missing: list the client identities allowed the engine and admin roles")
	}
	v.checkAzure(&c.Azure)
	if c.Cache.Size < 0 {
		v.addf("cache.size", "must not be negative")
	}
	if c.Validation.Interval != 0 && c.Validation.Interval.D() < time.Second {
		v.addf("validation.interval", "%s is too short: at least 1s", c.Validation.Interval.D())
	}
	v.checkRotation(&c.Rotation)
	v.checkKMIP(c)
	if l := c.Log.Level; l != "" && !slices.Contains([]string{"debug", "info", "warn", "error"}, l) {
		v.addf("log.level", "%q: want debug, info, warn or error", l)
	}
	if f := c.Log.Format; f != "" && f != "json" && f != "text" {
		v.addf("log.format", "%q: want json or text", f)
	}
	if a := c.Admin.Address; a != "" {
		if _, _, err := net.SplitHostPort(a); err != nil {
			v.addf("admin.address", "%q is not host:port (e.g. 127.0.0.1:9464)", a)
		}
	}
}

func (v *validator) checkAzure(a *Azure) {
	envs := []string{"AZURE", "AZURE_CHINA", "AZURE_US_GOVERNMENT", "CUSTOM"}
	if a.Environment != "" && !slices.Contains(envs, a.Environment) {
		v.addf("azure.environment", "%q: want one of %s", a.Environment, strings.Join(envs, ", "))
	}
	if a.Environment == "CUSTOM" {
		v.required("azure.custom.authority_host", a.Custom.AuthorityHost, "the Entra ID authority (https://...) of the custom cloud")
		v.required("azure.custom.vault_suffix", a.Custom.VaultSuffix, "the vault host suffix of the custom cloud")
		if u := a.Custom.AuthorityHost; u != "" {
			if p, err := url.Parse(u); err != nil || p.Scheme != "https" || p.Host == "" {
				v.addf("azure.custom.authority_host", "%q is not an https URL", u)
			}
		}
	} else if a.Custom != (Custom{}) {
		v.addf("azure.custom", "only allowed with environment: CUSTOM")
	}
	cred := a.Credential
	kinds := []string{"client_secret", "client_certificate", "workload_identity", "managed_identity"}
	switch cred.Kind {
	case "":
		v.addf("azure.credential.kind", "missing: one of %s", strings.Join(kinds, ", "))
	case "client_secret":
		v.required("azure.credential.tenant_id", cred.TenantID, "the Entra tenant of the broker's app registration (or AZURE_TENANT_ID)")
		v.required("azure.credential.client_id", cred.ClientID, "the broker's app (client) id (or AZURE_CLIENT_ID)")
		if cred.ClientSecretFile == "" && cred.ClientSecret == "" {
			v.addf("azure.credential.client_secret_file", "missing: name a file holding the client secret, or set AZURE_CLIENT_SECRET")
		}
	case "client_certificate":
		v.required("azure.credential.tenant_id", cred.TenantID, "the Entra tenant of the broker's app registration")
		v.required("azure.credential.client_id", cred.ClientID, "the broker's app (client) id")
		v.required("azure.credential.certificate_file", cred.CertificateFile, "a PEM or PKCS#12 file with the certificate and its key")
	case "workload_identity":
		v.required("azure.credential.tenant_id", cred.TenantID, "the Entra tenant")
		v.required("azure.credential.client_id", cred.ClientID, "the federated app (client) id")
		v.required("azure.credential.federated_token_file", cred.FederatedTokenFile, "the projected service account token file")
	case "managed_identity":
	default:
		v.addf("azure.credential.kind", "%q: want one of %s", cred.Kind, strings.Join(kinds, ", "))
	}
	if len(a.Regions) == 0 {
		v.required("azure.key_id", a.KeyID, "the customer key identifier, https://{vault}.vault.azure.net/keys/{name}/{version}")
	} else if a.VaultURL != "" {
		v.addf("azure.vault_url", "set vault_url per region when regions are listed")
	}
	seen := map[string]bool{}
	for i, r := range a.Regions {
		p := fmt.Sprintf("azure.regions[%d]", i)
		if r.Name == "" {
			v.errs = append(v.errs, fmt.Sprintf("line %d: %s.name: missing: a short region name, e.g. eastus", v.line("azure.regions"), p))
		} else if seen[r.Name] {
			v.errs = append(v.errs, fmt.Sprintf("line %d: %s.name: %q is listed twice", v.line("azure.regions"), p, r.Name))
		}
		seen[r.Name] = true
		if r.KeyID == "" && a.KeyID == "" {
			v.errs = append(v.errs, fmt.Sprintf("line %d: %s.key_id: missing: set it here or set azure.key_id", v.line("azure.regions"), p))
		}
	}
	if a.MaxRetries != nil && (*a.MaxRetries < 0 || *a.MaxRetries > 10) {
		v.addf("azure.max_retries", "%d: want 0 to 10", *a.MaxRetries)
	}
}

func (v *validator) checkRotation(r *Rotation) {
	// Floors catch units typed wrong ("90s" for "90d"): each of these is
	// counted in hours or days in practice.
	if i := r.MasterKeyInterval.D(); i != 0 && i < time.Hour {
		v.addf("rotation.master_key_interval", "%s is too short: at least 1h (the default is 90d)", i)
	}
	if n := r.RetainVersions; n < 0 || n == 1 {
		v.addf("rotation.retain_versions", "%d: want 0 (keep every version) or at least 2; 1 would drop the previous version at each rotation, and the data still wrapped under it with it", n)
	}
	if d := r.RetainFor.D(); d != 0 && d < 24*time.Hour {
		v.addf("rotation.retain_for", "%s is too short: at least 1d, or 0 to keep versions for ever", d)
	}
	if d := r.CMKRotationAlert.D(); d != 0 && d < time.Hour {
		v.addf("rotation.cmk_rotation_alert", "%s is too short: at least 1h (the default is 90d)", d)
	}
	if d := r.CMKCopyRetention.D(); d != 0 && d < time.Hour {
		v.addf("rotation.cmk_copy_retention", "%s is too short: at least 1h, or 0 to keep the old copies until keybroker rotate-cmk --finalize", d)
	}
}

// checkRequireMount checks that keystore.require_mount is an absolute path
// holding keystore.dir; whether it is mounted is checked when it is used.
func (v *validator) checkRequireMount(k Keystore) {
	m := k.RequireMount
	if m == "" {
		return
	}
	if !filepath.IsAbs(m) {
		v.addf("keystore.require_mount", "%q is not an absolute path: give the mount point of the volume keystore.dir lives on, e.g. /var/lib/keybroker", m)
		return
	}
	if k.Dir == "" {
		return
	}
	dir, err := filepath.Abs(k.Dir)
	if err != nil {
		return
	}
	if rel, err := filepath.Rel(filepath.Clean(m), dir); err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		v.addf("keystore.require_mount", "keystore.dir %s is not on %s: set require_mount to the mount point of the volume that holds keystore.dir", k.Dir, m)
	}
}
