package main

import (
	"fmt"
	"log/slog"

	"github.com/keybroker/keybroker/internal/akv"
	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
)

// azureEnvironment turns the configuration into an akv.Environment.
func azureEnvironment(a config.Azure) (akv.Environment, error) {
	if a.Environment == akv.EnvCustom {
		env := akv.Environment{
			Name:             akv.EnvCustom,
			AuthorityHost:    a.Custom.AuthorityHost,
			VaultSuffix:      a.Custom.VaultSuffix,
			ManagedHSMSuffix: a.Custom.ManagedHSMSuffix,
			CAFile:           a.Custom.CAFile,
			ConnectTo:        a.Custom.ConnectTo,
		}
		if err := env.Validate(); err != nil {
			return akv.Environment{}, cli.WithCode(exitUsage, fmt.Errorf("azure.custom: %w", err))
		}
		return env, nil
	}
	env, err := akv.LookupEnvironment(a.Environment)
	if err != nil {
		return akv.Environment{}, cli.WithCode(exitUsage, fmt.Errorf("azure.environment: %w", err))
	}
	return env, nil
}

// buildWrapper builds the broker's KeyWrapper: one Azure adapter per
// configured region, behind the failover wrapper when there are several.
// The returned func releases what it started.
func buildWrapper(cfg *config.Config, logger *slog.Logger) (broker.KeyWrapper, func(), error) {
	return buildObservedWrapper(cfg, logger, nil)
}

// buildObservedWrapper is buildWrapper with spans and metrics around every
// region's Azure calls (telemetry.go); a nil obs instruments nothing.
func buildObservedWrapper(cfg *config.Config, logger *slog.Logger, obs *observability) (broker.KeyWrapper, func(), error) {
	regions, err := buildRegions(cfg, logger)
	if err != nil {
		return nil, nil, err
	}
	if len(regions) == 1 {
		return obs.instrument(cfg.Azure.Regions[0].Name, regions[0]), func() {}, nil
	}
	return newFailover(cfg, regions, logger, obs)
}

// buildRegions builds one Azure adapter per configured region, in the
// configured order, sharing one credential. It does not touch the network.
// Most callers want buildWrapper; rewrap needs the regions one by one.
func buildRegions(cfg *config.Config, logger *slog.Logger) ([]*akv.Wrapper, error) {
	env, err := azureEnvironment(cfg.Azure)
	if err != nil {
		return nil, err
	}
	c := cfg.Azure.Credential
	cred, err := akv.NewCredential(akv.CredentialConfig{
		Kind:                    c.Kind,
		TenantID:                c.TenantID,
		ClientID:                c.ClientID,
		ClientSecret:            c.ClientSecret,
		ClientSecretFile:        c.ClientSecretFile,
		CertificateFile:         c.CertificateFile,
		FederatedTokenFile:      c.FederatedTokenFile,
		ManagedIdentityClientID: c.ManagedIdentityClientID,
	}, env)
	if err != nil {
		return nil, cli.WithCode(exitUsage, fmt.Errorf("azure.credential: %w", err))
	}
	maxRetries := 0
	if cfg.Azure.MaxRetries != nil {
		maxRetries = *cfg.Azure.MaxRetries
		if maxRetries == 0 {
			maxRetries = -1 // akv: -1 means none, 0 its default
		}
	}
	var regions []*akv.Wrapper
	for i, r := range cfg.Azure.Regions {
		w, err := akv.New(akv.Config{
			KeyID:       r.KeyID,
			Endpoint:    r.VaultURL,
			Region:      r.Name,
			Environment: env,
			Credential:  cred,
			Timeout:     r.Timeout.D(),
			MaxRetries:  maxRetries,
			LocalWrap:   cfg.Azure.LocalWrap,
			Logger:      logger,
		})
		if err != nil {
			return nil, cli.WithCode(exitUsage, fmt.Errorf("%s: %w", regionKeys(i, r), err))
		}
		regions = append(regions, w)
	}
	return regions, nil
}

// regionKeys names, for a message, the configuration keys that made region
// i: azure.key_id and azure.vault_url when the file lists no regions.
func regionKeys(i int, r config.Region) string {
	if r.Implied {
		if r.VaultURL != "" {
			return "azure.key_id or azure.vault_url"
		}
		return "azure.key_id"
	}
	return fmt.Sprintf("azure.regions[%d] (%s)", i, r.Name)
}
