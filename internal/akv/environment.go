package akv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
)

// Environment names.
const (
	EnvAzure           = "AZURE"
	EnvAzureChina      = "AZURE_CHINA"
	EnvAzureGovernment = "AZURE_US_GOVERNMENT"
	EnvCustom          = "CUSTOM"
)

// Environment is an Azure cloud: where Entra ID issues tokens and which host
// suffixes its key vaults and Managed HSMs live under. The three Azure clouds
// come from LookupEnvironment; a CUSTOM environment (a private cloud, the
// emulator) is built by the caller. An Environment is a plain value, safe to
// copy and to share.
type Environment struct {
	Name             string // AZURE, AZURE_CHINA, AZURE_US_GOVERNMENT or CUSTOM
	AuthorityHost    string // e.g. https://login.microsoftonline.com/
	VaultSuffix      string // e.g. vault.azure.net
	ManagedHSMSuffix string // e.g. managedhsm.azure.net; "" = no Managed HSM (CUSTOM only)
	// CAFile is, for CUSTOM only, a PEM bundle of roots trusted in addition
	// to the system's (private clouds, the emulator).
	CAFile string
	// ConnectTo is, for CUSTOM only, a host:port dialled for every
	// connection to a named host (TLS still verifies the requested name).
	// Addresses given as IP literals are dialled as they are. For the
	// emulator and tests.
	ConnectTo string
}

// ErrEnvironment is wrapped by every environment validation error.
var ErrEnvironment = errors.New("akv: invalid environment")

var azureEnvironments = map[string]Environment{
	EnvAzure: {
		Name:             EnvAzure,
		AuthorityHost:    "https://login.microsoftonline.com/",
		VaultSuffix:      "vault.azure.net",
		ManagedHSMSuffix: "managedhsm.azure.net",
	},
	EnvAzureChina: {
		Name:             EnvAzureChina,
		AuthorityHost:    "https://login.chinacloudapi.cn/",
		VaultSuffix:      "vault.azure.cn",
		ManagedHSMSuffix: "managedhsm.azure.cn",
	},
	EnvAzureGovernment: {
		Name:             EnvAzureGovernment,
		AuthorityHost:    "https://login.microsoftonline.us/",
		VaultSuffix:      "vault.usgovcloudapi.net",
		ManagedHSMSuffix: "managedhsm.usgovcloudapi.net",
	},
}

// LookupEnvironment returns one of the three Azure clouds by name (AZURE,
// AZURE_CHINA, AZURE_US_GOVERNMENT; case does not matter). A CUSTOM
// environment is not looked up: the caller builds it.
func LookupEnvironment(name string) (Environment, error) {
	n := strings.ToUpper(strings.TrimSpace(name))
	if e, ok := azureEnvironments[n]; ok {
		return e, nil
	}
	if n == EnvCustom {
		return Environment{}, fmt.Errorf("%w: a CUSTOM environment is built by the caller, not looked up: set AuthorityHost, VaultSuffix and, if needed, ManagedHSMSuffix, CAFile and ConnectTo", ErrEnvironment)
	}
	return Environment{}, fmt.Errorf("%w: unknown environment %q: use AZURE, AZURE_CHINA, AZURE_US_GOVERNMENT or CUSTOM", ErrEnvironment, name)
}

// Validate reports what is wrong with e, if anything. It does not read
// CAFile; NewCredential and New do.
func (e Environment) Validate() error {
	if az, ok := azureEnvironments[e.Name]; ok {
		// The Azure clouds are fixed: challenge verification and instance
		// discovery rely on them being exactly Azure's.
		if e.AuthorityHost != az.AuthorityHost || e.VaultSuffix != az.VaultSuffix || e.ManagedHSMSuffix != az.ManagedHSMSuffix {
			return fmt.Errorf("%w: %s has fixed hosts: take it from LookupEnvironment(%q), or name the environment CUSTOM", ErrEnvironment, e.Name, e.Name)
		}
		if e.CAFile != "" || e.ConnectTo != "" {
			return fmt.Errorf("%w: CAFile and ConnectTo are for CUSTOM environments only, not %s", ErrEnvironment, e.Name)
		}
		return nil
	}
	if e.Name != EnvCustom {
		return fmt.Errorf("%w: unknown environment name %q: use AZURE, AZURE_CHINA, AZURE_US_GOVERNMENT or CUSTOM", ErrEnvironment, e.Name)
	}
	if err := validateAuthorityHost(e.AuthorityHost); err != nil {
		return err
	}
	if e.VaultSuffix == "" {
		return fmt.Errorf("%w: CUSTOM environment has no VaultSuffix: set the vault host suffix, e.g. vault.example.test", ErrEnvironment)
	}
	if !isDNSName(e.VaultSuffix) {
		return fmt.Errorf("%w: VaultSuffix %q is not a host name suffix: give a bare DNS name such as vault.example.test, no scheme, dot or port", ErrEnvironment, e.VaultSuffix)
	}
	if e.ManagedHSMSuffix != "" && !isDNSName(e.ManagedHSMSuffix) {
		return fmt.Errorf("%w: ManagedHSMSuffix %q is not a host name suffix: give a bare DNS name such as managedhsm.example.test, or leave it empty", ErrEnvironment, e.ManagedHSMSuffix)
	}
	if strings.EqualFold(e.VaultSuffix, e.ManagedHSMSuffix) {
		return fmt.Errorf("%w: VaultSuffix and ManagedHSMSuffix are both %q: they must differ", ErrEnvironment, e.VaultSuffix)
	}
	if e.ConnectTo != "" {
		host, port, err := net.SplitHostPort(e.ConnectTo)
		if err != nil || host == "" || port == "" {
			return fmt.Errorf("%w: ConnectTo %q is not host:port: give e.g. 127.0.0.1:8443", ErrEnvironment, e.ConnectTo)
		}
	}
	return nil
}

func validateAuthorityHost(s string) error {
	if s == "" {
		return fmt.Errorf("%w: CUSTOM environment has no AuthorityHost: set the Entra ID authority, e.g. https://login.example.test/", ErrEnvironment)
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%w: AuthorityHost %q is not a URL: give e.g. https://login.example.test/", ErrEnvironment, s)
	}
	if u.Scheme != "https" {
		return fmt.Errorf("%w: AuthorityHost %q must use https", ErrEnvironment, s)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" || (u.Path != "" && u.Path != "/") {
		return fmt.Errorf("%w: AuthorityHost %q must be just scheme and host, e.g. https://login.example.test/", ErrEnvironment, s)
	}
	return nil
}

// isDNSName reports whether s is a lower- or mixed-case DNS name of at least
// two labels, with no trailing dot.
func isDNSName(s string) bool {
	if len(s) > 253 {
		return false
	}
	labels := strings.Split(s, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}

func isDNSLabel(l string) bool {
	if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// cloudConfig is the azcore cloud configuration of e.
func (e Environment) cloudConfig() cloud.Configuration {
	switch e.Name {
	case EnvAzure:
		return cloud.AzurePublic
	case EnvAzureChina:
		return cloud.AzureChina
	case EnvAzureGovernment:
		return cloud.AzureGovernment
	}
	return cloud.Configuration{
		ActiveDirectoryAuthorityHost: e.AuthorityHost,
		Services:                     map[cloud.ServiceName]cloud.ServiceConfiguration{},
	}
}

// disableInstanceDiscovery reports whether MSAL must skip instance discovery:
// it asks login.microsoftonline.com about the authority, which a private
// authority is not known to.
func (e Environment) disableInstanceDiscovery() bool {
	_, azure := azureEnvironments[e.Name]
	return !azure
}

// azureVaultSuffixes are the domains Azure itself serves key vaults and
// Managed HSMs under; challenge resource verification stays on for them.
var azureVaultSuffixes = []string{
	"vault.azure.net", "vault.azure.cn", "vault.usgovcloudapi.net",
	"managedhsm.azure.net", "managedhsm.azure.cn", "managedhsm.usgovcloudapi.net",
}

// verifyChallengeResource reports whether the SDK must check that the
// resource in a vault's 401 challenge belongs to the vault's own domain. It
// is on for every host under Azure's vault domains, whatever the environment
// says, so a token for Azure's vaults is never sent where a forged challenge
// points; only custom hosts turn it off (their resource is not Azure's).
func verifyChallengeResource(host string) bool {
	h := strings.ToLower(host)
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	for _, s := range azureVaultSuffixes {
		if h == s || strings.HasSuffix(h, "."+s) {
			return true
		}
	}
	return false
}

// httpClient returns the HTTP client for e: nil (the SDK's default) for the
// Azure clouds, and for CUSTOM a client trusting CAFile and dialling
// ConnectTo.
func (e Environment) httpClient() (*http.Client, error) {
	if e.Name != EnvCustom || (e.CAFile == "" && e.ConnectTo == "") {
		return nil, nil
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	tr.TLSHandshakeTimeout = 10 * time.Second
	if e.CAFile != "" {
		pem, err := os.ReadFile(e.CAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: reading CAFile: %v: give a readable PEM bundle", ErrEnvironment, err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil || pool == nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: CAFile %s holds no PEM certificate: give a PEM bundle of CA certificates", ErrEnvironment, e.CAFile)
		}
		tr.TLSClientConfig.RootCAs = pool
	}
	if e.ConnectTo != "" {
		// A proxy would receive the connection meant for ConnectTo.
		tr.Proxy = nil
		target := e.ConnectTo
		d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
		tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, _, err := net.SplitHostPort(addr); err == nil && net.ParseIP(host) == nil {
				addr = target
			}
			return d.DialContext(ctx, network, addr)
		}
	}
	return &http.Client{Transport: tr}, nil
}
