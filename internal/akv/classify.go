package akv

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"

	"github.com/keybroker/keybroker/internal/kek"
)

// ErrAttemptTimeout is the cause of a KindUnavailable error when one attempt
// (Config.Timeout) ran out while the caller's own context was still live. It
// deliberately does not match context.DeadlineExceeded: the caller's
// deadline did not pass.
var ErrAttemptTimeout = errors.New("akv: no answer within the per-attempt timeout")

// Classify turns an error from the Azure SDK (azkeys or azidentity) into a
// *kek.Error of the kind the broker acts on; it returns nil for nil, and the
// *kek.Error in err's chain when there is one.
//
//   - Key Vault 401 (after authenticating), 403 (ForbiddenByRbac,
//     ForbiddenByPolicy, ForbiddenByFirewall, KeyDisabled,
//     KeyOperationForbidden, any other): KindRevoked; Code is the innermost
//     innererror.code. KeyOperationForbidden is revocation-like: the key's
//     owner has removed wrapKey/unwrapKey from its permitted operations, a
//     definitive answer that retrying elsewhere cannot change.
//   - 404 (KeyNotFound): KindNotFound.
//   - 429: KindThrottled, RetryAfter from Retry-After (or retry-after-ms).
//   - 408, 5xx, and every transport failure (timeouts, refused or reset
//     connections, DNS, TLS): KindUnavailable.
//   - 400 (BadParameter) and other 4xx: KindInvalidInput.
//   - Entra ID refusing the credential (invalid_client, unauthorized_client,
//     AADSTS7000215, AADSTS7000222, AADSTS700016 and kin, or 401/403 from the
//     token endpoint): KindRevoked with the AADSTS code; a token endpoint
//     that cannot be reached or answers 408/5xx: KindUnavailable; 429:
//     KindThrottled; other refusals: KindInvalidInput (configuration).
//
// A context error is kept in the chain (errors.Is(err,
// context.DeadlineExceeded) holds) with KindUnavailable: Classify cannot tell
// the caller's deadline from an SDK per-attempt timeout. The Wrapper can, and
// keeps context errors only when the caller's context ended.
func Classify(op string, err error) error {
	if err == nil {
		return nil
	}
	return classify(op, err, false, time.Now)
}

// detail is the message a kek.Error shows for an SDK error: short, one
// line, no response dump, while errors.As still reaches the SDK error.
type detail struct {
	msg string
	err error
}

func (d *detail) Error() string { return d.msg }
func (d *detail) Unwrap() error { return d.err }

// classify is Classify; with attemptTimeout the caller's context is known to
// be live, so a context error can only be a per-attempt timeout.
func classify(op string, err error, attemptTimeout bool, now func() time.Time) *kek.Error {
	var ke *kek.Error
	if errors.As(err, &ke) {
		return ke
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return classifyVault(op, re, now)
	}
	var afe *azidentity.AuthenticationFailedError
	if errors.As(err, &afe) && afe.RawResponse != nil {
		return classifyEntra(op, afe, now)
	}
	return classifyTransport(op, err, afe != nil, attemptTimeout)
}

// vaultError is Key Vault's error body: {"error":{"code":..., "message":...,
// "innererror":{"code":..., "innererror":...}}}.
type vaultError struct {
	Code       string      `json:"code"`
	Message    string      `json:"message"`
	InnerError *vaultError `json:"innererror"`
}

// parseVaultError returns the most specific code in body (the innermost
// innererror.code, else error.code) and the message, both "" when body is
// not Key Vault's error JSON.
func parseVaultError(body []byte) (code, msg string) {
	var v struct {
		Error *vaultError `json:"error"`
	}
	if json.Unmarshal(body, &v) != nil || v.Error == nil {
		return "", ""
	}
	code, msg = v.Error.Code, v.Error.Message
	// Bounded: a hostile body cannot make this loop long, JSON nesting is
	// limited by the decoder and the body by the SDK.
	for in := v.Error.InnerError; in != nil; in = in.InnerError {
		if in.Code != "" {
			code = in.Code
		}
	}
	return code, msg
}

var vaultHints = map[string]string{
	"ForbiddenByRbac":       "grant the broker's identity a role allowing get, wrapKey and unwrapKey on the key (Key Vault Crypto Service Encryption User), unless access was revoked on purpose",
	"ForbiddenByPolicy":     "add get, wrapKey and unwrapKey for the broker's identity to the vault's access policy, unless access was revoked on purpose",
	"ForbiddenByFirewall":   "allow this node's network in the vault's firewall or private endpoint settings, unless it was blocked on purpose",
	"ForbiddenByConnection": "allow this node's network in the vault's firewall or private endpoint settings, unless it was blocked on purpose",
	"KeyDisabled":           "the key is disabled: enable it in the vault, unless it was disabled on purpose",
	"KeyOperationForbidden": "the key does not permit wrapKey/unwrapKey: add them to the key's permitted operations",
	"KeyNotFound":           "the key or this version does not exist (deleted or purged?): recover it from soft delete, or configure the right key identifier",
	"BadParameter":          "the vault rejected the request as malformed: check the key type, algorithm and wrapped data",
}

func classifyVault(op string, re *azcore.ResponseError, now func() time.Time) *kek.Error {
	body, _ := payload(re.RawResponse)
	code, msg := parseVaultError(body)
	if code == "" {
		code = re.ErrorCode
	}
	e := &kek.Error{Op: op, Status: re.StatusCode, Code: code}
	hint := vaultHints[code]
	switch s := re.StatusCode; {
	case s == http.StatusUnauthorized:
		e.Kind = kek.KindRevoked
		if hint == "" {
			hint = "the vault rejected the broker's token after authentication: check that the identity belongs to the vault's tenant, unless access was revoked on purpose"
		}
	case s == http.StatusForbidden:
		e.Kind = kek.KindRevoked
		if hint == "" {
			hint = "the vault denies the broker's identity access to the key: restore its access, unless access was revoked on purpose"
		}
	case s == http.StatusNotFound:
		e.Kind = kek.KindNotFound
		if hint == "" {
			hint = vaultHints["KeyNotFound"]
		}
	case s == http.StatusTooManyRequests:
		e.Kind = kek.KindThrottled
		if re.RawResponse != nil {
			e.RetryAfter = retryAfter(re.RawResponse.Header, now)
		}
		hint = "the vault is throttling requests: retry later or elsewhere"
	case s == http.StatusRequestTimeout || s >= 500:
		e.Kind = kek.KindUnavailable
		hint = "the vault is failing or overloaded: retry later or elsewhere"
	case s >= 400:
		e.Kind = kek.KindInvalidInput
		if hint == "" {
			hint = "the vault rejected the request: check the configuration and the wrapped data"
		}
	default:
		e.Kind = kek.KindUnavailable
		hint = "the vault gave an unexpected answer: check vault_url and any proxy in between"
	}
	m := fmt.Sprintf("Key Vault answered HTTP %d", re.StatusCode)
	if msg = oneLine(msg, 200); msg != "" {
		m += ": " + msg
	}
	e.Err = &detail{msg: m + "; " + hint, err: re}
	return e
}

// entraError is Entra ID's OAuth error body. Managed identity endpoints
// answer with "message" instead.
type entraError struct {
	Error       string `json:"error"`
	Description string `json:"error_description"`
	Codes       []int  `json:"error_codes"`
	Message     string `json:"message"`
}

var aadstsRE = regexp.MustCompile(`AADSTS[0-9]{1,9}`)

// parseEntraError returns the AADSTS code (or the OAuth error when there is
// none), the OAuth error and the description of an Entra ID error body.
func parseEntraError(body []byte) (code, oauthErr, desc string) {
	var v entraError
	if json.Unmarshal(body, &v) != nil {
		return "", "", ""
	}
	desc = v.Description
	if desc == "" {
		desc = v.Message
	}
	switch {
	case len(v.Codes) > 0 && v.Codes[0] > 0:
		code = "AADSTS" + strconv.Itoa(v.Codes[0])
	case aadstsRE.MatchString(desc):
		code = aadstsRE.FindString(desc)
	default:
		code = v.Error
	}
	return code, v.Error, desc
}

// revokedAADSTS are Entra ID answers that the credential itself is no longer
// valid: deleted or expired secrets, deleted or disabled applications,
// removed certificates and federated credentials.
var revokedAADSTS = map[string]string{
	"AADSTS7000215": "the client secret is invalid (wrong, or rotated): give the current secret value, not its ID",
	"AADSTS7000222": "the client secret has expired: create a new secret and give it to the broker",
	"AADSTS700016":  "the application was not found in the tenant (deleted, or wrong ClientID/TenantID)",
	"AADSTS7000112": "the application is disabled in the tenant",
	"AADSTS700027":  "the client certificate is not registered with the application (removed or wrong certificate)",
	"AADSTS70021":   "no federated identity credential matches the workload's token: check the federated credential on the application",
	"AADSTS700213":  "no federated identity credential matches the workload's token subject: check the federated credential on the application",
	"AADSTS700024":  "the workload's federated token is outside its validity window: check the projected token and the node clock",
}

func classifyEntra(op string, afe *azidentity.AuthenticationFailedError, now func() time.Time) *kek.Error {
	resp := afe.RawResponse
	body, _ := payload(resp)
	code, oauthErr, desc := parseEntraError(body)
	e := &kek.Error{Op: op, Status: resp.StatusCode, Code: code}
	hint, known := revokedAADSTS[code]
	switch s := resp.StatusCode; {
	case s == http.StatusTooManyRequests:
		e.Kind = kek.KindThrottled
		e.RetryAfter = retryAfter(resp.Header, now)
		hint = "Entra ID is throttling token requests: retry later"
	case s == http.StatusRequestTimeout || s >= 500:
		e.Kind = kek.KindUnavailable
		hint = "Entra ID is failing or overloaded: retry later"
	case known || oauthErr == "invalid_client" || oauthErr == "unauthorized_client" ||
		s == http.StatusUnauthorized || s == http.StatusForbidden:
		e.Kind = kek.KindRevoked
		if hint == "" {
			hint = "Entra ID refuses the broker's credential: renew it, unless it was revoked on purpose"
		}
	case s >= 400:
		e.Kind = kek.KindInvalidInput
		hint = "Entra ID refused the token request: check TenantID, ClientID and the credential settings"
	default:
		e.Kind = kek.KindUnavailable
		hint = "Entra ID gave an unexpected answer: check the authority host and any proxy in between"
	}
	m := fmt.Sprintf("Entra ID answered the token request with HTTP %d", resp.StatusCode)
	if d := oneLine(desc, 240); d != "" {
		m += ": " + d
	} else if oauthErr != "" {
		m += ": " + oneLine(oauthErr, 60)
	}
	e.Err = &detail{msg: m + "; " + hint, err: afe}
	return e
}

func classifyTransport(op string, err error, token, attemptTimeout bool) *kek.Error {
	e := &kek.Error{Op: op, Kind: kek.KindUnavailable}
	where := "the vault"
	if token {
		where = "the token endpoint"
	}
	var (
		dnsErr     *net.DNSError
		netErr     net.Error
		unknownCA  x509.UnknownAuthorityError
		hostErr    x509.HostnameError
		invalidErr x509.CertificateInvalidError
		verifyErr  *tls.CertificateVerificationError
	)
	isCtx := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
	text := sanitize(err.Error())
	switch {
	case isCtx && attemptTimeout:
		// The caller's context is live: an attempt timed out. Keep the
		// context error out of the chain so the broker does not report the
		// caller's deadline as passed.
		e.Code = "Timeout"
		e.Err = &detail{msg: fmt.Sprintf("no answer from %s within the per-attempt timeout: it or the network is slow or down", where), err: ErrAttemptTimeout}
		return e
	case isCtx:
		e.Code = "Timeout"
		e.Err = &detail{msg: fmt.Sprintf("no answer from %s before the deadline: %s", where, text), err: err}
		return e
	case errors.As(err, &dnsErr):
		e.Code = "DNSFailure"
		text += ": check the host name and the node's DNS"
	case errors.Is(err, syscall.ECONNREFUSED):
		e.Code = "ConnectionRefused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.EPIPE), errors.Is(err, net.ErrClosed):
		e.Code = "ConnectionReset"
	case errors.As(err, &unknownCA), errors.As(err, &hostErr), errors.As(err, &invalidErr), errors.As(err, &verifyErr):
		e.Code = "TLSFailure"
		text += ": check the endpoint's certificate and the trusted CAs (CAFile)"
	case errors.As(err, &netErr) && netErr.Timeout():
		e.Code = "Timeout"
	case token:
		// azidentity keeps only the text of MSAL's transport errors.
		e.Code = "TokenEndpointUnreachable"
	default:
		e.Code = "NetworkError"
	}
	e.Err = &detail{msg: fmt.Sprintf("cannot reach %s: %s", where, text), err: err}
	return e
}

// payload returns the response body azcore buffered, or nil.
func payload(resp *http.Response) ([]byte, error) {
	if resp == nil || resp.Body == nil {
		return nil, nil
	}
	return runtime.Payload(resp)
}

// retryAfter reads the server's retry hint: retry-after-ms,
// x-ms-retry-after-ms, or Retry-After in seconds or as an HTTP date. It
// returns 0 when there is none or it is not in the future, and at most an
// hour.
func retryAfter(h http.Header, now func() time.Time) time.Duration {
	const maxHint = time.Hour
	limit := func(d time.Duration) time.Duration {
		if d <= 0 {
			return 0
		}
		return min(d, maxHint)
	}
	for _, k := range []string{"Retry-After-Ms", "X-Ms-Retry-After-Ms"} {
		if v := strings.TrimSpace(h.Get(k)); v != "" {
			if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
				return limit(time.Duration(min(ms, int64(maxHint/time.Millisecond))) * time.Millisecond)
			}
		}
	}
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil {
		return limit(time.Duration(min(max(s, 0), int64(maxHint/time.Second))) * time.Second)
	}
	if t, err := http.ParseTime(v); err == nil {
		return limit(t.Sub(now()))
	}
	return 0
}

var urlQueryRE = regexp.MustCompile(`(https?://[^\s"?]*)\?[^\s"]*`)

var spaceRE = regexp.MustCompile(`\s+`)

// sanitize drops URL queries (they can carry identity parameters) from an
// error text and folds it onto one short line (MSAL puts the cause of a
// transport error on its second line).
func sanitize(s string) string {
	s = urlQueryRE.ReplaceAllString(s, "$1")
	return clip(strings.TrimSpace(spaceRE.ReplaceAllString(s, " ")), 300)
}

// oneLine keeps the first line of s, at most n bytes.
func oneLine(s string, n int) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	return clip(s, n)
}
