package akvemu

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	// federatedIssuer is the "cluster OIDC issuer" whose tokens the
	// registered clients trust as federated credentials.
	federatedIssuer   = "https://oidc.akvemu.keybroker.test"
	federatedAudience = "api://AzureADTokenExchange"
	federatedTokenTTL = 24 * time.Hour
	jwtBearerType     = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	miAPIVersion      = "2019-08-01"
	// assertionLeeway is the clock skew Entra tolerates on client assertions.
	assertionLeeway = 5 * time.Minute
	maxBody         = 1 << 20
)

// federatedSubject is the subject a client's federated credential trusts:
// a Kubernetes service account named after the client.
func federatedSubject(clientID string) string {
	return "system:serviceaccount:keybroker:" + clientID
}

func (s *Server) tokenIssuer() string { return "https://sts.windows.net/" + s.tenant + "/" }

// keyThumb names a signing key in JWT headers and the JWKS.
func keyThumb(pub *ecdsa.PublicKey) string {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	h := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(h[:12])
}

// issueAccessToken signs a Key Vault access token for a client. appidacr
// says how the client authenticated, as Entra's tokens do: "1" secret, "2"
// certificate or assertion, "0" managed identity. The caller holds s.mu.
func (s *Server) issueAccessToken(clientID, appidacr string) (string, time.Time, error) {
	c := s.st.Clients[clientID]
	now := s.now()
	exp := now.Add(s.ttl)
	claims := jwt.MapClaims{
		"aud":      VaultResource,
		"iss":      s.tokenIssuer(),
		"iat":      now.Unix(),
		"nbf":      now.Unix(),
		"exp":      exp.Unix(),
		"appid":    clientID,
		"appidacr": appidacr,
		"idp":      s.tokenIssuer(),
		"idtyp":    "app",
		"oid":      c.ObjectID,
		"sub":      c.ObjectID,
		"tid":      s.tenant,
		"uti":      randomString(16),
		"ver":      "1.0",
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	t.Header["kid"] = keyThumb(&s.tokenKey.PublicKey)
	signed, err := t.SignedString(s.tokenKey)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("akvemu: signing access token: %w", err)
	}
	return signed, exp, nil
}

// issueFederatedToken signs a workload identity token for a client. The
// caller holds s.mu (read).
func (s *Server) issueFederatedToken(clientID string, ttl time.Duration) (string, error) {
	now := s.now()
	claims := jwt.MapClaims{
		"iss": federatedIssuer,
		"sub": federatedSubject(clientID),
		"aud": []string{federatedAudience},
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(ttl).Unix(),
		"jti": newGUID(),
	}
	t := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	t.Header["kid"] = keyThumb(&s.oidcKey.PublicKey)
	signed, err := t.SignedString(s.oidcKey)
	if err != nil {
		return "", fmt.Errorf("akvemu: signing federated token: %w", err)
	}
	return signed, nil
}

// tokenError is an Entra error answer.
type tokenError struct {
	status int
	name   string // OAuth error: invalid_client, unauthorized_client...
	code   int    // AADSTS code
	desc   string // what is wrong and what to do; never a secret
}

func (e *tokenError) Error() string { return fmt.Sprintf("AADSTS%d: %s", e.code, e.desc) }

func badRequest(desc string) *tokenError {
	return &tokenError{http.StatusBadRequest, "invalid_request", 9002313, "Invalid request. Request is malformed or invalid. " + desc}
}

func missingParam(p string) *tokenError {
	return &tokenError{http.StatusBadRequest, "invalid_request", 900144, "The request body must contain the following parameter: '" + p + "'."}
}

func invalidClient(code int, desc string) *tokenError {
	return &tokenError{http.StatusUnauthorized, "invalid_client", code, desc}
}

// writeEntraError answers with Entra's error body.
func writeEntraError(w http.ResponseWriter, r *http.Request, e *tokenError) {
	ts := time.Now().UTC().Format("2006-01-02 15:04:05Z")
	trace, corr := newGUID(), newGUID()
	body := map[string]any{
		"error":             e.name,
		"error_description": fmt.Sprintf("AADSTS%d: %s Trace ID: %s Correlation ID: %s Timestamp: %s", e.code, e.desc, trace, corr, ts),
		"error_codes":       []int{e.code},
		"timestamp":         ts,
		"trace_id":          trace,
		"correlation_id":    corr,
		"error_uri":         "https://" + r.Host + "/error?code=" + strconv.Itoa(e.code),
	}
	w.Header().Set("Cache-Control", "no-store, no-cache")
	writeJSON(w, e.status, body)
}

// loginRoute is a request to the Entra or managed-identity endpoints.
type loginRoute struct {
	op     string
	kind   string // "openid", "instance", "jwks", "token", "msi", "" = none
	tenant string
	status int // for kind "": 404 or 405
}

func routeLogin(method, path string) loginRoute {
	seg := strings.Split(strings.TrimPrefix(path, "/"), "/")
	want := func(m string, r loginRoute) loginRoute {
		if method != m {
			return loginRoute{op: r.op, status: http.StatusMethodNotAllowed}
		}
		return r
	}
	switch {
	case len(seg) == 3 && seg[1] == "discovery" && seg[2] == "instance":
		return want(http.MethodGet, loginRoute{op: OpDiscovery, kind: "instance", tenant: seg[0]})
	case len(seg) == 4 && seg[1] == "v2.0" && seg[2] == ".well-known" && seg[3] == "openid-configuration":
		return want(http.MethodGet, loginRoute{op: OpDiscovery, kind: "openid", tenant: seg[0]})
	case len(seg) == 4 && seg[1] == "discovery" && seg[2] == "v2.0" && seg[3] == "keys":
		return want(http.MethodGet, loginRoute{op: OpDiscovery, kind: "jwks", tenant: seg[0]})
	case len(seg) == 4 && seg[1] == "oauth2" && seg[2] == "v2.0" && seg[3] == "token":
		return want(http.MethodPost, loginRoute{op: OpToken, kind: "token", tenant: seg[0]})
	case len(seg) == 2 && seg[0] == "msi" && seg[1] == "token":
		return want(http.MethodGet, loginRoute{op: OpToken, kind: "msi"})
	}
	return loginRoute{op: OpOther, status: http.StatusNotFound}
}

// serveLogin serves the Entra ID and managed-identity endpoints.
func (s *Server) serveLogin(w http.ResponseWriter, r *http.Request) {
	rt := routeLogin(r.Method, r.URL.Path)
	s.counters.add(HostLogin, rt.op)
	if s.applyFault(w, r, HostLogin, rt.op) {
		return
	}
	switch rt.kind {
	case "instance":
		s.serveInstanceDiscovery(w, r)
	case "openid":
		if rt.tenant != s.tenant {
			writeEntraError(w, r, unknownTenant(rt.tenant))
			return
		}
		s.serveOpenIDConfiguration(w, r)
	case "jwks":
		s.serveJWKS(w)
	case "token":
		s.serveToken(w, r, rt.tenant)
	case "msi":
		s.serveManagedIdentity(w, r)
	default:
		desc := "The emulator serves /{tenant}/v2.0/.well-known/openid-configuration, /{tenant}/oauth2/v2.0/token, /common/discovery/instance and /msi/token on this host; see docs/emulator.md."
		if rt.status == http.StatusMethodNotAllowed {
			desc = "Method " + r.Method + " is not allowed on " + r.URL.Path + "."
		}
		writeEntraError(w, r, &tokenError{rt.status, "invalid_request", 900561, desc})
	}
}

func unknownTenant(t string) *tokenError {
	return &tokenError{http.StatusBadRequest, "invalid_request", 90002,
		fmt.Sprintf("Tenant '%s' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud (this emulator's tenant is in its info line).", t)}
}

func (s *Server) serveOpenIDConfiguration(w http.ResponseWriter, r *http.Request) {
	base := "https://" + r.Host + "/" + s.tenant
	writeJSON(w, http.StatusOK, map[string]any{
		"token_endpoint":                        base + "/oauth2/v2.0/token",
		"token_endpoint_auth_methods_supported": []string{"client_secret_post", "private_key_jwt", "client_secret_basic"},
		"jwks_uri":                              base + "/discovery/v2.0/keys",
		"response_modes_supported":              []string{"query", "fragment", "form_post"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"ES256"},
		"response_types_supported":              []string{"code", "id_token", "code id_token", "id_token token"},
		"scopes_supported":                      []string{"openid", "profile", "email", "offline_access"},
		"issuer":                                base + "/v2.0",
		"request_uri_parameter_supported":       false,
		"authorization_endpoint":                base + "/oauth2/v2.0/authorize",
		"device_authorization_endpoint":         base + "/oauth2/v2.0/devicecode",
		"end_session_endpoint":                  base + "/oauth2/v2.0/logout",
		"http_logout_supported":                 true,
		"frontchannel_logout_supported":         true,
		"tenant_region_scope":                   nil,
		"cloud_instance_name":                   "keybroker.test",
		"claims_supported":                      []string{"sub", "iss", "aud", "exp", "iat", "nbf", "tid", "oid", "appid"},
	})
}

func (s *Server) serveInstanceDiscovery(w http.ResponseWriter, r *http.Request) {
	tenant := s.tenant
	if ae := r.URL.Query().Get("authorization_endpoint"); ae != "" {
		if u, err := url.Parse(ae); err == nil {
			if seg := strings.Split(strings.TrimPrefix(u.Path, "/"), "/"); seg[0] != "" {
				tenant = seg[0]
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"tenant_discovery_endpoint": "https://" + r.Host + "/" + url.PathEscape(tenant) + "/v2.0/.well-known/openid-configuration",
		"api-version":               "1.1",
		"metadata": []map[string]any{{
			"preferred_network": r.Host,
			"preferred_cache":   r.Host,
			"aliases":           []string{r.Host},
		}},
	})
}

func (s *Server) serveJWKS(w http.ResponseWriter) {
	pub := &s.tokenKey.PublicKey
	pt, err := pub.ECDH()
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": "signing key unavailable"})
		return
	}
	raw := pt.Bytes() // 0x04 || X || Y
	writeJSON(w, http.StatusOK, map[string]any{"keys": []map[string]string{{
		"kty": "EC", "use": "sig", "crv": "P-256", "kid": keyThumb(pub),
		"x": base64.RawURLEncoding.EncodeToString(raw[1:33]),
		"y": base64.RawURLEncoding.EncodeToString(raw[33:65]),
	}}})
}

// serveToken is the v2 token endpoint, client credentials grant only.
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, tenant string) {
	clientID, acr, terr := s.authenticateClient(w, r, tenant)
	if terr != nil {
		s.log.Info("akvemu: token request refused", "client_id", clientID, "code", terr.code)
		writeEntraError(w, r, terr)
		return
	}
	s.mu.RLock()
	tok, _, err := s.issueAccessToken(clientID, acr)
	s.mu.RUnlock()
	if err != nil {
		writeEntraError(w, r, &tokenError{http.StatusInternalServerError, "server_error", 50000, "There was an error issuing a token."})
		return
	}
	secs := int64(s.ttl / time.Second)
	resp := map[string]any{"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs, "access_token": tok}
	if s.ttl >= 2*time.Hour {
		// Entra tells clients to refresh long-lived tokens at half life.
		resp["refresh_in"] = secs / 2
	}
	s.log.Info("akvemu: token issued", "client_id", clientID, "appidacr", acr)
	w.Header().Set("Cache-Control", "no-store, no-cache")
	writeJSON(w, http.StatusOK, resp)
}

// authenticateClient checks a token request and returns the client and how
// it authenticated.
func (s *Server) authenticateClient(w http.ResponseWriter, r *http.Request, tenant string) (string, string, *tokenError) {
	if tenant != s.tenant {
		return "", "", unknownTenant(tenant)
	}
	form, terr := readForm(w, r)
	if terr != nil {
		return "", "", terr
	}
	switch gt := form.Get("grant_type"); gt {
	case "":
		return "", "", missingParam("grant_type")
	case "client_credentials":
	default:
		return "", "", &tokenError{http.StatusBadRequest, "unsupported_grant_type", 70003, "The app requested an unsupported grant type '" + gt + "'. The emulator supports client_credentials only."}
	}
	clientID := form.Get("client_id")
	if clientID == "" {
		return "", "", missingParam("client_id")
	}
	scope := form.Get("scope")
	if scope == "" {
		return clientID, "", missingParam("scope")
	}
	if terr := checkScope(scope, s.tenant); terr != nil {
		return clientID, "", terr
	}
	s.mu.RLock()
	c := s.st.Clients[clientID]
	var secret string
	var expired bool
	var cert []byte
	if c != nil {
		secret, expired, cert = c.Secret, c.SecretExpired, c.CertDER
	}
	s.mu.RUnlock()
	if c == nil {
		return clientID, "", unknownClient(clientID, s.tenant)
	}
	sec, assertion := form.Get("client_secret"), form.Get("client_assertion")
	switch {
	case sec != "" && assertion != "":
		return clientID, "", badRequest("Send either client_secret or client_assertion, not both.")
	case sec != "":
		if subtle.ConstantTimeCompare([]byte(sec), []byte(secret)) != 1 {
			return clientID, "", invalidClient(7000215, "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '"+clientID+"'.")
		}
		if expired {
			return clientID, "", invalidClient(7000222, "The provided client secret keys for app '"+clientID+"' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds. (emulator: rotate it with POST /clients/"+clientID+"/rotate-secret)")
		}
		return clientID, "1", nil
	case assertion != "":
		if at := form.Get("client_assertion_type"); at != jwtBearerType {
			return clientID, "", badRequest("client_assertion_type must be '" + jwtBearerType + "'.")
		}
		if terr := s.checkAssertion(assertion, clientID, cert, "https://"+r.Host+r.URL.Path); terr != nil {
			return clientID, "", terr
		}
		return clientID, "2", nil
	}
	return clientID, "", invalidClient(7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.")
}

func unknownClient(clientID, tenant string) *tokenError {
	return &tokenError{http.StatusBadRequest, "unauthorized_client", 700016,
		fmt.Sprintf("Application with identifier '%s' was not found in the directory '%s'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.", clientID, tenant)}
}

// checkScope accepts the one resource the emulator issues tokens for.
func checkScope(scope, tenant string) *tokenError {
	var scopes []string
	for _, sc := range strings.Fields(scope) {
		// MSAL always adds the OpenID scopes; Entra ignores them here.
		if sc != "openid" && sc != "profile" && sc != "offline_access" {
			scopes = append(scopes, sc)
		}
	}
	if len(scopes) != 1 || !strings.HasSuffix(scopes[0], "/.default") {
		return &tokenError{http.StatusBadRequest, "invalid_scope", 1002012,
			"The provided value for scope " + scope + " is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."}
	}
	if res := strings.TrimSuffix(strings.TrimSuffix(scopes[0], ".default"), "/"); strings.TrimSuffix(res, "/") != VaultResource {
		return &tokenError{http.StatusBadRequest, "invalid_resource", 500011,
			"The resource principal named " + res + " was not found in the tenant named " + tenant + ". The emulator issues tokens for " + VaultResource + " only."}
	}
	return nil
}

// readForm reads a form-encoded body of at most 1 MiB.
func readForm(w http.ResponseWriter, r *http.Request) (url.Values, *tokenError) {
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, badRequest("The request body is larger than 1 MiB.")
		}
		return nil, badRequest("The form body could not be parsed.")
	}
	for k, v := range r.PostForm {
		if len(v) > 1 {
			return nil, badRequest("Parameter '" + k + "' is repeated.")
		}
	}
	return r.PostForm, nil
}

// checkAssertion verifies a client assertion: a JWT signed with the client's
// registered certificate, or a federated token from the emulator's issuer.
func (s *Server) checkAssertion(assertion, clientID string, certDER []byte, tokenEndpoint string) *tokenError {
	unverified, _, err := jwt.NewParser().ParseUnverified(assertion, jwt.MapClaims{})
	if err != nil {
		return &tokenError{http.StatusBadRequest, "invalid_request", 50027, "JWT token is invalid or malformed."}
	}
	iss, _ := unverified.Claims.GetIssuer()
	if iss == federatedIssuer {
		return s.checkFederated(assertion, clientID)
	}
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return &tokenError{http.StatusInternalServerError, "server_error", 50000, "The registered certificate is unreadable."}
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return &tokenError{http.StatusInternalServerError, "server_error", 50000, "The registered certificate is not RSA."}
	}
	s256, s1 := sha256.Sum256(certDER), sha1.Sum(certDER)
	notRegistered := errors.New("certificate not registered")
	keyFunc := func(t *jwt.Token) (any, error) {
		if h, ok := t.Header["x5t#S256"].(string); ok && thumbMatches(h, s256[:]) {
			return pub, nil
		}
		if h, ok := t.Header["x5t"].(string); ok && thumbMatches(h, s1[:]) {
			return pub, nil
		}
		return nil, notRegistered
	}
	_, err = jwt.Parse(assertion, keyFunc,
		jwt.WithValidMethods([]string{"PS256", "PS384", "PS512", "RS256", "RS384", "RS512"}),
		jwt.WithTimeFunc(s.now), jwt.WithLeeway(assertionLeeway), jwt.WithExpirationRequired(),
		jwt.WithAudience(tokenEndpoint), jwt.WithIssuer(clientID), jwt.WithSubject(clientID))
	switch {
	case err == nil:
		return nil
	case errors.Is(err, notRegistered):
		return invalidClient(700027, "The certificate with identifier used to sign the client assertion is not registered on application "+clientID+". Put the x5t#S256 thumbprint of the registered certificate in the assertion header.")
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return invalidClient(700027, "Client assertion failed signature validation.")
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return invalidClient(700024, "Client assertion is not within its valid time range (check nbf and exp, and the clock).")
	case errors.Is(err, jwt.ErrTokenInvalidIssuer), errors.Is(err, jwt.ErrTokenInvalidSubject):
		return invalidClient(700021, "Client assertion application identifier doesn't match 'client_id' parameter. iss and sub must both be the client ID.")
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return invalidClient(700024, "Client assertion contains an invalid audience; it must be the token endpoint "+tokenEndpoint+".")
	}
	return &tokenError{http.StatusBadRequest, "invalid_request", 50027, "JWT token is invalid or malformed."}
}

// thumbMatches compares a thumbprint header, which MSAL encodes with padded
// standard base64 and others with base64url.
func thumbMatches(h string, want []byte) bool {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(h); err == nil && bytes.Equal(b, want) {
			return true
		}
	}
	return false
}

func (s *Server) checkFederated(assertion, clientID string) *tokenError {
	keyFunc := func(*jwt.Token) (any, error) { return &s.oidcKey.PublicKey, nil }
	tok, err := jwt.Parse(assertion, keyFunc,
		jwt.WithValidMethods([]string{"ES256"}), jwt.WithTimeFunc(s.now), jwt.WithLeeway(assertionLeeway),
		jwt.WithExpirationRequired(), jwt.WithIssuer(federatedIssuer))
	switch {
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return invalidClient(700027, "Client assertion failed signature validation: the federated token was not signed by the emulator's issuer "+federatedIssuer+".")
	case errors.Is(err, jwt.ErrTokenExpired), errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return invalidClient(700024, "Client assertion is not within its valid time range. Re-read the federated token file: the emulator rewrites it before it expires.")
	case err != nil:
		return &tokenError{http.StatusBadRequest, "invalid_request", 50027, "JWT token is invalid or malformed."}
	}
	aud, _ := tok.Claims.GetAudience()
	if !containsString(aud, federatedAudience) {
		return &tokenError{http.StatusBadRequest, "invalid_request", 700212,
			fmt.Sprintf("No matching federated identity record found for presented assertion audience '%s'. The audience must be %s.", strings.Join(aud, " "), federatedAudience)}
	}
	if sub, _ := tok.Claims.GetSubject(); sub != federatedSubject(clientID) {
		return &tokenError{http.StatusBadRequest, "invalid_request", 70021,
			fmt.Sprintf("No matching federated identity record found for presented assertion. Assertion Issuer: '%s'. Assertion Subject: '%s'. Assertion Audience: '%s'. The application %s trusts subject '%s'.",
				federatedIssuer, sub, federatedAudience, clientID, federatedSubject(clientID))}
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// miError is the App Service managed identity endpoint's error shape.
func writeMIError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"statusCode": status, "message": msg, "correlationId": newGUID()})
}

// serveManagedIdentity is the App Service managed identity endpoint
// (IDENTITY_ENDPOINT, api-version 2019-08-01). The system-assigned identity
// is the configured client; client_id selects another registered client.
func (s *Server) serveManagedIdentity(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	want := s.st.IdentityHeader
	s.mu.RUnlock()
	got := r.Header.Get("X-IDENTITY-HEADER")
	if got == "" {
		writeMIError(w, http.StatusBadRequest, "The X-IDENTITY-HEADER header is missing: send the IDENTITY_HEADER value from the emulator's info line.")
		return
	}
	if subtle.ConstantTimeCompare([]byte(got), []byte(want)) != 1 {
		writeMIError(w, http.StatusUnauthorized, "The X-IDENTITY-HEADER header does not match this emulator's identity header.")
		return
	}
	q := r.URL.Query()
	if v := q.Get("api-version"); v != miAPIVersion {
		writeMIError(w, http.StatusBadRequest, "api-version '"+v+"' is not supported: use "+miAPIVersion+".")
		return
	}
	res := q.Get("resource")
	if res == "" {
		writeMIError(w, http.StatusBadRequest, "The resource query parameter is required, e.g. resource="+VaultResource+".")
		return
	}
	if strings.TrimSuffix(res, "/") != VaultResource {
		writeMIError(w, http.StatusBadRequest, "AADSTS500011: The resource principal named "+res+" was not found in the tenant. The emulator issues tokens for "+VaultResource+" only.")
		return
	}
	for _, p := range []string{"mi_res_id", "msi_res_id", "object_id", "principal_id"} {
		if q.Get(p) != "" {
			writeMIError(w, http.StatusBadRequest, "The emulator selects user-assigned identities by client_id only, not "+p+".")
			return
		}
	}
	clientID := q.Get("client_id")
	if clientID == "" {
		clientID = s.clientID
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.st.Clients[clientID] == nil {
		writeMIError(w, http.StatusBadRequest, "No managed identity with client_id '"+clientID+"' is assigned to this resource.")
		return
	}
	tok, exp, err := s.issueAccessToken(clientID, "0")
	if err != nil {
		writeMIError(w, http.StatusInternalServerError, "The token could not be issued.")
		return
	}
	s.log.Info("akvemu: managed identity token issued", "client_id", clientID)
	writeJSON(w, http.StatusOK, map[string]string{
		"access_token": tok,
		"expires_on":   strconv.FormatInt(exp.Unix(), 10),
		"resource":     res,
		"token_type":   "Bearer",
		"client_id":    clientID,
	})
}

// verifyAccessToken checks a bearer token and returns the client it was
// issued to, or the AKV 401 message.
func (s *Server) verifyAccessToken(r *http.Request) (string, string) {
	h := r.Header.Get("Authorization")
	scheme, raw, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(raw) == "" {
		return "", "AKV10000: Request is missing a Bearer or PoP token."
	}
	keyFunc := func(*jwt.Token) (any, error) { return &s.tokenKey.PublicKey, nil }
	tok, err := jwt.Parse(strings.TrimSpace(raw), keyFunc,
		jwt.WithValidMethods([]string{"ES256"}), jwt.WithTimeFunc(s.now), jwt.WithExpirationRequired(),
		jwt.WithIssuer(s.tokenIssuer()), jwt.WithAudience(VaultResource))
	switch {
	case errors.Is(err, jwt.ErrTokenExpired):
		return "", "[TokenExpired] Error validating token: 'S2S12086'."
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "", "[TokenNotYetValid] Error validating token: the token's nbf is in the future."
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "", "AKV10022: Invalid audience. Expected " + VaultResource + "."
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return "", "AKV10032: Invalid issuer. Expected one of " + s.tokenIssuer() + "."
	case err != nil:
		return "", "AKV10046: Unable to resolve the key used for signature validation."
	}
	mc, _ := tok.Claims.(jwt.MapClaims)
	appid, _ := mc["appid"].(string)
	s.mu.RLock()
	known := s.st.Clients[appid] != nil
	s.mu.RUnlock()
	if !known {
		return "", "AKV10046: The token's application is not registered."
	}
	return appid, ""
}

// writeJSON answers with a JSON body.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, "encoding failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
