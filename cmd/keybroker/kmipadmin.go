package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipclient"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/cli"
	"github.com/keybroker/keybroker/internal/config"
	kmipsrv "github.com/keybroker/keybroker/internal/kmip"
	"github.com/keybroker/keybroker/internal/pki"
)

// runKMIP is `keybroker kmip list|revoke|destroy`: the admin's view of the
// KMIP objects, over KMIP itself with the admin identity, so it works on a
// running broker from anywhere its KMIP port is reachable.
func runKMIP(ctx context.Context, e *env, args []string) error {
	usage := "keybroker kmip list [--json] | revoke [--compromised] ID | destroy ID  [connection flags]"
	if len(args) == 0 {
		return cli.UsageErrorf("kmip: want a subcommand: %s", usage)
	}
	sub, args := args[0], args[1:]
	fs := newFlagSet(e, "kmip "+sub, "[flags]")
	var kf kmipFlags
	kf.register(fs)
	asJSON := fs.Bool("json", false, "list: print JSON lines")
	compromised := fs.Bool("compromised", false, "revoke: the key is compromised (state Compromised rather than Deactivated)")
	if err := fs.Parse(args); err != nil { // flags, then the identifier
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return cli.WithCode(exitUsage, err)
	}
	switch sub {
	case "list":
		if fs.NArg() != 0 {
			return cli.UsageErrorf("kmip list takes no argument")
		}
	case "revoke", "destroy":
		if fs.NArg() != 1 {
			return cli.UsageErrorf("kmip %s takes one object identifier (see 'keybroker kmip list')", sub)
		}
	default:
		return cli.UsageErrorf("kmip: unknown subcommand %q: %s", sub, usage)
	}
	c, err := kf.dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, kf.timeout)
	defer cancel()
	switch sub {
	case "list":
		return kmipList(ctx, e.stdout, c, *asJSON)
	case "revoke":
		code := kmip.RevocationReasonCodeCessationOfOperation
		if *compromised {
			code = kmip.RevocationReasonCodeKeyCompromise
		}
		if _, err := c.Revoke(fs.Arg(0)).WithRevocationReasonCode(code).ExecContext(ctx); err != nil {
			return kmipError("revoke", err)
		}
		fmt.Fprintf(e.stdout, "revoked %s\n", fs.Arg(0))
	case "destroy":
		if _, err := c.Destroy(fs.Arg(0)).ExecContext(ctx); err != nil {
			return kmipError("destroy", err)
		}
		fmt.Fprintf(e.stdout, "destroyed %s: its key material is gone; it keeps its identifier and says Destroyed\n", fs.Arg(0))
	}
	return nil
}

// kmipFlags are the connection flags of `keybroker kmip`.
type kmipFlags struct {
	addr, ca, cert, key, dev string
	timeout                  time.Duration
}

func (k *kmipFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&k.addr, "addr", "", "KMIP address host:port (default: kmip.address of --dev's configuration, else 127.0.0.1:5696)")
	fs.StringVar(&k.ca, "ca", "", "CA certificate that issued the broker's server certificate (PEM)")
	fs.StringVar(&k.cert, "cert", "", "client certificate (PEM) with the admin role")
	fs.StringVar(&k.key, "key", "", "client private key (PEM)")
	fs.StringVar(&k.dev, "dev", "", "a 'keybroker dev' directory: take --ca, --cert, --key (the admin client) and --addr from it")
	fs.DurationVar(&k.timeout, "timeout", 30*time.Second, "deadline for the command")
}

func (k *kmipFlags) dial(ctx context.Context) (*kmipclient.Client, error) {
	if k.dev != "" {
		fill := func(dst *string, v string) {
			if *dst == "" {
				*dst = v
			}
		}
		fill(&k.ca, filepath.Join(k.dev, devPKIDir, pki.CAFile))
		fill(&k.cert, filepath.Join(k.dev, devPKIDir, pki.AdminCertFile))
		fill(&k.key, filepath.Join(k.dev, devPKIDir, pki.AdminKeyFile))
		if k.addr == "" {
			p := filepath.Join(k.dev, devConfigFile)
			if data, err := os.ReadFile(p); err == nil {
				if cfg, err := config.Parse(p, data, nil); err == nil && cfg.KMIP.Address != "" && !strings.HasSuffix(cfg.KMIP.Address, ":0") {
					k.addr = cfg.KMIP.Address
				}
			}
			if k.addr == "" {
				return nil, cli.UsageErrorf("--addr is required: %s does not name a fixed KMIP port (take kmip_address from dev's JSON line)", p)
			}
		}
	}
	if k.addr == "" {
		k.addr = "127.0.0.1:5696"
	}
	if k.ca == "" || k.cert == "" || k.key == "" {
		return nil, cli.UsageErrorf("--ca, --cert and --key are required (or --dev DIR for a 'keybroker dev' broker)")
	}
	host, _, err := net.SplitHostPort(k.addr)
	if err != nil {
		return nil, cli.UsageErrorf("--addr %q: want host:port", k.addr)
	}
	dctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	c, err := kmipclient.DialContext(dctx, k.addr, kmipclient.WithRootCAFile(k.ca), kmipclient.WithClientCertFiles(k.cert, k.key), kmipclient.WithServerName(host))
	if err != nil {
		return nil, cli.WithCode(exitUnavailable, fmt.Errorf("connecting to KMIP at %s: %w", k.addr, err))
	}
	return c, nil
}

// kmipObject is one line of `keybroker kmip list`.
type kmipObject struct {
	ID      string    `json:"id"`
	Name    string    `json:"name"`
	Type    string    `json:"type"`
	Bits    int32     `json:"bits"`
	State   string    `json:"state"`
	Owner   string    `json:"owner"`
	Created time.Time `json:"created"`
}

func kmipList(ctx context.Context, w io.Writer, c *kmipclient.Client, asJSON bool) error {
	loc, err := c.Locate().ExecContext(ctx)
	if err != nil {
		return kmipError("list", err)
	}
	var objs []kmipObject
	for _, id := range loc.UniqueIdentifier {
		ga, err := c.GetAttributes(id, kmip.AttributeNameName, kmip.AttributeNameObjectType, kmip.AttributeNameCryptographicLength,
			kmip.AttributeNameState, kmip.AttributeNameInitialDate, kmipsrv.OwnerAttribute).ExecContext(ctx)
		if err != nil {
			return kmipError("list", err)
		}
		o := kmipObject{ID: id}
		for _, a := range ga.Attribute {
			switch v := a.AttributeValue.(type) {
			case kmip.Name:
				if o.Name == "" {
					o.Name = v.NameValue
				}
			case kmip.ObjectType:
				o.Type = ttlv.EnumStr(v)
			case int32:
				o.Bits = v
			case kmip.State:
				o.State = ttlv.EnumStr(v)
			case time.Time:
				o.Created = v.UTC()
			case ttlv.Value:
				if s, ok := v.Value.(string); ok && a.AttributeName == kmipsrv.OwnerAttribute {
					o.Owner = s
				}
			}
		}
		objs = append(objs, o)
	}
	if asJSON {
		enc := json.NewEncoder(w)
		for _, o := range objs {
			if err := enc.Encode(o); err != nil {
				return err
			}
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tNAME\tTYPE\tBITS\tSTATE\tOWNER\tCREATED")
	for _, o := range objs {
		owner := o.Owner
		if owner == "" {
			owner = "(broker master key)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", o.ID, dash(o.Name), o.Type, o.Bits, o.State, owner, o.Created.Format(time.RFC3339))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// kmipError gives a failed KMIP operation an exit code from its reason.
func kmipError(what string, err error) error {
	msg := err.Error()
	code := exitFailure
	switch {
	case strings.Contains(msg, "ItemNotFound"):
		code = exitNotFound
	case strings.Contains(msg, "PermissionDenied") && strings.Contains(msg, "PAUSED"):
		code = exitRevoked
	case strings.Contains(msg, "PermissionDenied"):
		code = exitDenied
	}
	var ne net.Error
	if errors.As(err, &ne) {
		code = exitUnavailable
	}
	return cli.WithCode(code, fmt.Errorf("kmip %s: %w", what, err))
}
