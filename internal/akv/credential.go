package akv

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// Credential kinds, the values of CredentialConfig.Kind.
const (
	CredClientSecret      = "client_secret"
	CredClientCertificate = "client_certificate"
	CredWorkloadIdentity  = "workload_identity"
	CredManagedIdentity   = "managed_identity"
)

// ErrCredential is wrapped by every credential configuration error.
var ErrCredential = errors.New("akv: invalid credential configuration")

// CredentialConfig says how the broker authenticates to Entra ID. Secrets in
// it are never logged nor put in errors.
type CredentialConfig struct {
	Kind               string // client_secret | client_certificate | workload_identity | managed_identity
	TenantID, ClientID string
	// ClientSecret is given by the caller (cmd reads it from a file or
	// AZURE_CLIENT_SECRET); never logged.
	ClientSecret string
	// ClientSecretFile is read instead of ClientSecret when that is empty;
	// surrounding white space is trimmed.
	ClientSecretFile    string
	CertificateFile     string // PEM (certificate and PKCS#8 or PKCS#1 key) or PKCS#12
	CertificatePassword string // for an encrypted PKCS#12 file
	FederatedTokenFile  string // workload identity: the projected service account token
	// ManagedIdentityClientID selects a user-assigned managed identity; ""
	// means the system-assigned one.
	ManagedIdentityClientID string

	// Timeout bounds each token request; 0 means 10s.
	Timeout time.Duration
	// MaxRetries is the number of retries of a failed token request; 0
	// means 2, -1 none.
	MaxRetries int
	// RetryDelay is the first delay between token request retries; 0 means 800ms.
	RetryDelay time.Duration
}

// NewCredential builds the azidentity credential cfg describes, configured
// for env: its cloud (or a custom authority with instance discovery off),
// and for CUSTOM environments an HTTP client trusting env.CAFile and dialling
// env.ConnectTo. It reads the secret or certificate file but does not touch
// the network. The credential is safe for concurrent use and caches its
// tokens in memory.
func NewCredential(cfg CredentialConfig, env Environment) (azcore.TokenCredential, error) {
	if err := env.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout < 0 || cfg.RetryDelay < 0 || cfg.MaxRetries < -1 {
		return nil, fmt.Errorf("%w: Timeout and RetryDelay must not be negative, MaxRetries must be -1 (none) or more", ErrCredential)
	}
	hc, err := env.httpClient()
	if err != nil {
		return nil, err
	}
	opts := azcore.ClientOptions{
		Cloud: env.cloudConfig(),
		Retry: policy.RetryOptions{
			MaxRetries: retries(cfg.MaxRetries),
			TryTimeout: orDefault(cfg.Timeout, defaultTimeout),
			RetryDelay: orDefault(cfg.RetryDelay, defaultRetryDelay),
			// The vault call around the token request has its own deadline;
			// a long Retry-After from Entra is not worth waiting for here.
			MaxRetryDelay: defaultMaxRetryDelay,
		},
	}
	if hc != nil {
		opts.Transport = hc
	}
	noDiscovery := env.disableInstanceDiscovery()

	if err := checkUnused(cfg); err != nil {
		return nil, err
	}
	switch cfg.Kind {
	case CredClientSecret:
		if err := needTenantAndClient(cfg); err != nil {
			return nil, err
		}
		build := func(secret string) (azcore.TokenCredential, error) {
			c, err := azidentity.NewClientSecretCredential(cfg.TenantID, cfg.ClientID, secret, &azidentity.ClientSecretCredentialOptions{
				ClientOptions:            opts,
				DisableInstanceDiscovery: noDiscovery,
			})
			if err != nil {
				return nil, fmt.Errorf("%w: client_secret: %v", ErrCredential, err)
			}
			return c, nil
		}
		if cfg.ClientSecretFile != "" && cfg.ClientSecret == "" {
			// Follow the file, so a renewed secret is picked up without a restart.
			return newSecretFileCredential(cfg.ClientSecretFile, build)
		}
		secret, err := clientSecret(cfg)
		if err != nil {
			return nil, err
		}
		return build(secret)

	case CredClientCertificate:
		if err := needTenantAndClient(cfg); err != nil {
			return nil, err
		}
		if cfg.CertificateFile == "" {
			return nil, fmt.Errorf("%w: client_certificate needs CertificateFile: a PEM file with the certificate and its private key, or a PKCS#12 file", ErrCredential)
		}
		data, err := os.ReadFile(cfg.CertificateFile)
		if err != nil {
			return nil, fmt.Errorf("%w: reading CertificateFile: %v", ErrCredential, err)
		}
		certs, key, err := azidentity.ParseCertificates(data, []byte(cfg.CertificatePassword))
		clear(data)
		if err != nil {
			// ParseCertificates' messages name what is missing, never the key.
			return nil, fmt.Errorf("%w: CertificateFile %s: %v: give a PEM file with a CERTIFICATE and an unencrypted PRIVATE KEY, or a PKCS#12 file and its password", ErrCredential, cfg.CertificateFile, err)
		}
		c, err := azidentity.NewClientCertificateCredential(cfg.TenantID, cfg.ClientID, certs, key, &azidentity.ClientCertificateCredentialOptions{
			ClientOptions:            opts,
			DisableInstanceDiscovery: noDiscovery,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: client_certificate: %v", ErrCredential, err)
		}
		return c, nil

	case CredWorkloadIdentity:
		if err := needTenantAndClient(cfg); err != nil {
			return nil, err
		}
		if cfg.FederatedTokenFile == "" {
			return nil, fmt.Errorf("%w: workload_identity needs FederatedTokenFile, the projected service account token (AZURE_FEDERATED_TOKEN_FILE)", ErrCredential)
		}
		if _, err := os.Stat(cfg.FederatedTokenFile); err != nil {
			return nil, fmt.Errorf("%w: FederatedTokenFile: %v: check the pod's projected token volume", ErrCredential, err)
		}
		// All three fields are set, so azidentity reads no environment variable.
		c, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions:            opts,
			ClientID:                 cfg.ClientID,
			TenantID:                 cfg.TenantID,
			TokenFilePath:            cfg.FederatedTokenFile,
			DisableInstanceDiscovery: noDiscovery,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: workload_identity: %v", ErrCredential, err)
		}
		return c, nil

	case CredManagedIdentity:
		if cfg.ClientID != "" || cfg.TenantID != "" {
			return nil, fmt.Errorf("%w: managed_identity takes no TenantID or ClientID: set ManagedIdentityClientID for a user-assigned identity, or nothing for the system-assigned one", ErrCredential)
		}
		o := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: opts}
		if cfg.ManagedIdentityClientID != "" {
			o.ID = azidentity.ClientID(cfg.ManagedIdentityClientID)
		}
		c, err := azidentity.NewManagedIdentityCredential(o)
		if err != nil {
			return nil, fmt.Errorf("%w: managed_identity: %v", ErrCredential, err)
		}
		return c, nil

	case "":
		return nil, fmt.Errorf("%w: no Kind: use client_secret, client_certificate, workload_identity or managed_identity", ErrCredential)
	}
	return nil, fmt.Errorf("%w: unknown Kind %q: use client_secret, client_certificate, workload_identity or managed_identity", ErrCredential, clip(cfg.Kind, 40))
}

func needTenantAndClient(cfg CredentialConfig) error {
	if cfg.TenantID == "" || cfg.ClientID == "" {
		return fmt.Errorf("%w: %s needs TenantID and ClientID (AZURE_TENANT_ID, AZURE_CLIENT_ID)", ErrCredential, cfg.Kind)
	}
	return nil
}

func clientSecret(cfg CredentialConfig) (string, error) {
	switch {
	case cfg.ClientSecret != "" && cfg.ClientSecretFile != "":
		return "", fmt.Errorf("%w: both ClientSecret and ClientSecretFile are set: give one", ErrCredential)
	case cfg.ClientSecret != "":
		return cfg.ClientSecret, nil
	case cfg.ClientSecretFile != "":
		b, err := os.ReadFile(cfg.ClientSecretFile)
		if err != nil {
			return "", fmt.Errorf("%w: reading ClientSecretFile: %v", ErrCredential, err)
		}
		s := strings.TrimSpace(string(b))
		clear(b)
		if s == "" {
			return "", fmt.Errorf("%w: ClientSecretFile %s is empty: put the client secret value in it", ErrCredential, cfg.ClientSecretFile)
		}
		return s, nil
	}
	return "", fmt.Errorf("%w: client_secret needs ClientSecret or ClientSecretFile (the secret's value, not its ID)", ErrCredential)
}

// checkUnused rejects settings that belong to another kind: they mean the
// operator configured something other than what will be used.
func checkUnused(cfg CredentialConfig) error {
	type field struct {
		name string
		set  bool
		kind string
	}
	for _, f := range []field{
		{"ClientSecret", cfg.ClientSecret != "", CredClientSecret},
		{"ClientSecretFile", cfg.ClientSecretFile != "", CredClientSecret},
		{"CertificateFile", cfg.CertificateFile != "", CredClientCertificate},
		{"CertificatePassword", cfg.CertificatePassword != "", CredClientCertificate},
		{"FederatedTokenFile", cfg.FederatedTokenFile != "", CredWorkloadIdentity},
		{"ManagedIdentityClientID", cfg.ManagedIdentityClientID != "", CredManagedIdentity},
	} {
		if f.set && cfg.Kind != f.kind && cfg.Kind != "" {
			return fmt.Errorf("%w: %s is set but Kind is %s: it is used only by %s; remove it or change Kind", ErrCredential, f.name, clip(cfg.Kind, 40), f.kind)
		}
	}
	return nil
}

const (
	defaultTimeout       = 10 * time.Second
	defaultMaxRetries    = 2
	defaultRetryDelay    = 800 * time.Millisecond
	defaultMaxRetryDelay = 10 * time.Second
)

// retries maps the package's convention (0 = default, -1 = none) to azcore's
// (0 = its own default of 3, negative = none).
func retries(n int) int32 {
	switch {
	case n == 0:
		return defaultMaxRetries
	case n < 0:
		return -1
	case n > 100:
		return 100
	}
	return int32(n)
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}
