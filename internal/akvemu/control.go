package akvemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// controlHandler serves the control API: JSON in and out, one route per
// Control method (see docs/emulator.md).
func (s *Server) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /info", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.Info()) })
	mux.HandleFunc("POST /keys", s.ctlCreateKey)
	mux.HandleFunc("POST /keys/{vault}/{name}/rotate", s.ctlRotateKey)
	mux.HandleFunc("POST /keys/{vault}/{name}/disable", s.ctlSetEnabled(false))
	mux.HandleFunc("POST /keys/{vault}/{name}/enable", s.ctlSetEnabled(true))
	mux.HandleFunc("DELETE /keys/{vault}/{name}", s.ctlKeyAction(func(v *vault, n string) error { _, err := s.deleteKey(v, n); return err }))
	mux.HandleFunc("POST /keys/{vault}/{name}/recover", s.ctlKeyAction(func(v *vault, n string) error { _, err := s.recoverKey(v, n); return err }))
	mux.HandleFunc("POST /keys/{vault}/{name}/purge", s.ctlKeyAction(s.purgeKey))
	mux.HandleFunc("POST /access/revoke", s.ctlRevoke)
	mux.HandleFunc("POST /access/grant", s.ctlGrant)
	mux.HandleFunc("POST /clients", s.ctlAddClient)
	mux.HandleFunc("POST /clients/{id}/rotate-secret", s.ctlRotateSecret)
	mux.HandleFunc("POST /clients/{id}/expire-secret", s.ctlExpireSecret)
	mux.HandleFunc("GET /faults", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.faults.snapshot()) })
	mux.HandleFunc("POST /faults", s.ctlInjectFault)
	mux.HandleFunc("DELETE /faults", func(w http.ResponseWriter, r *http.Request) { s.faults.clear(); w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("GET /counters", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, http.StatusOK, s.counters.snapshot()) })
	mux.HandleFunc("DELETE /counters", func(w http.ResponseWriter, r *http.Request) { s.counters.reset(); w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("GET /throttle", s.ctlGetThrottle)
	mux.HandleFunc("POST /throttle", s.ctlSetThrottle)
	mux.HandleFunc("DELETE /throttle", func(w http.ResponseWriter, r *http.Request) { s.throttle.reset(); w.WriteHeader(http.StatusNoContent) })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		ctlError(w, fmt.Errorf("%w: no control route %s %s; see docs/emulator.md", ErrNotFound, r.Method, r.URL.Path))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The control API has no authentication; refusing foreign Host
		// headers keeps a web page from driving it through DNS rebinding.
		h := hostOnly(r.Host)
		if ip := net.ParseIP(h); h != "localhost" && (ip == nil || !ip.IsLoopback()) {
			ctlError(w, fmt.Errorf("%w: control requests must use a loopback host, not %q", ErrBadRequest, truncate(h, 80)))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		mux.ServeHTTP(w, r)
	})
}

func (t *faultTable) snapshot() []Fault {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]Fault, 0, len(t.list))
	for _, a := range t.list {
		f := a.f
		if f.Count > 0 {
			f.Count = a.left
		}
		out = append(out, f)
	}
	return out
}

// ctlError answers a control request with {"error": "..."}.
func ctlError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrBadRequest), errors.Is(err, ErrConfig):
		status = http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrConflict):
		status = http.StatusConflict
	}
	writeJSON(w, status, map[string]string{"error": err.Error()})
}

// decodeControl reads a JSON body strictly: unknown fields are errors.
func decodeControl(r *http.Request, v any) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return fmt.Errorf("%w: reading the body: %v (at most 1 MiB)", ErrBadRequest, err)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return fmt.Errorf("%w: the body is empty; send a JSON object", ErrBadRequest)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: the body is not the expected JSON object: %v", ErrBadRequest, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data after the JSON object", ErrBadRequest)
	}
	return nil
}

type keyRequest struct {
	Vault string `json:"vault"`
	Name  string `json:"name"`
	Size  int    `json:"size"`
	HSM   bool   `json:"hsm"`
}

type keyIDResponse struct {
	KID string `json:"kid"`
}

func (s *Server) ctlCreateKey(w http.ResponseWriter, r *http.Request) {
	var req keyRequest
	if err := decodeControl(r, &req); err != nil {
		ctlError(w, err)
		return
	}
	v, err := s.vaultFor(req.Vault)
	if err != nil {
		ctlError(w, err)
		return
	}
	if !validKeyName(req.Name) {
		ctlError(w, fmt.Errorf("%w: key name %q: use 1-127 letters, digits and dashes", ErrBadRequest, truncate(req.Name, 130)))
		return
	}
	size := req.Size
	if size == 0 {
		size = DefaultKeySize
	}
	if !validKeySize(size) {
		ctlError(w, fmt.Errorf("%w: key size %d: use %s", ErrBadRequest, size, sizeList()))
		return
	}
	kty := "RSA"
	if req.HSM {
		kty = "RSA-HSM"
	}
	ver, err := s.createKey(v, req.Name, createParams{Kty: kty, Size: size}, true)
	if err != nil {
		ctlError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, keyIDResponse{keyID(v.host, req.Name, ver.ID)})
}

// ctlKey resolves the {vault} and {name} of a control route.
func (s *Server) ctlKey(r *http.Request) (*vault, string, error) {
	v, err := s.vaultFor(r.PathValue("vault"))
	if err != nil {
		return nil, "", err
	}
	name := r.PathValue("name")
	if !validKeyName(name) {
		return nil, "", fmt.Errorf("%w: key name %q: use 1-127 letters, digits and dashes", ErrBadRequest, truncate(name, 130))
	}
	return v, name, nil
}

func (s *Server) ctlRotateKey(w http.ResponseWriter, r *http.Request) {
	v, name, err := s.ctlKey(r)
	if err != nil {
		ctlError(w, err)
		return
	}
	s.mu.RLock()
	k := s.st.key(v.host, name)
	var p createParams
	if k != nil && k.Deleted == nil {
		p = rotateParams(k)
	}
	s.mu.RUnlock()
	if k == nil || k.Deleted != nil {
		ctlError(w, fmt.Errorf("%w: key %s in vault %s", ErrNotFound, name, v.host))
		return
	}
	ver, err := s.createKey(v, name, p, false)
	if err != nil {
		ctlError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, keyIDResponse{keyID(v.host, name, ver.ID)})
}

func (s *Server) ctlSetEnabled(enabled bool) http.HandlerFunc {
	return s.ctlKeyAction(func(v *vault, name string) error { return s.setEnabled(v, name, enabled) })
}

func (s *Server) ctlKeyAction(f func(*vault, string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v, name, err := s.ctlKey(r)
		if err == nil {
			err = f(v, name)
		}
		if err != nil {
			ctlError(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

type accessRequest struct {
	ClientID string `json:"client_id"`
	Vault    string `json:"vault"`
	Code     string `json:"code,omitempty"`
}

// accessTargets resolves an access request's client and vaults.
func (s *Server) accessTargets(req *accessRequest) ([]*vault, error) {
	if req.ClientID == "" {
		req.ClientID = s.clientID
	}
	if req.Vault == "" {
		return s.vaults, nil
	}
	v, err := s.vaultFor(req.Vault)
	if err != nil {
		return nil, err
	}
	return []*vault{v}, nil
}

func (s *Server) ctlRevoke(w http.ResponseWriter, r *http.Request) {
	var req accessRequest
	if err := decodeControl(r, &req); err != nil {
		ctlError(w, err)
		return
	}
	switch req.Code {
	case "":
		req.Code = CodeForbiddenByRbac
	case CodeForbiddenByRbac, CodeForbiddenByPolicy, CodeForbiddenByFirewall:
	default:
		ctlError(w, fmt.Errorf("%w: code %q: use %s, %s or %s", ErrBadRequest, truncate(req.Code, 40), CodeForbiddenByRbac, CodeForbiddenByPolicy, CodeForbiddenByFirewall))
		return
	}
	vaults, err := s.accessTargets(&req)
	if err != nil {
		ctlError(w, err)
		return
	}
	err = s.updateClient(req.ClientID, func(c *clientState) {
		if c.Revoked == nil {
			c.Revoked = map[string]string{}
		}
		for _, v := range vaults {
			c.Revoked[v.host] = req.Code
		}
	})
	if err != nil {
		ctlError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) ctlGrant(w http.ResponseWriter, r *http.Request) {
	var req accessRequest
	if err := decodeControl(r, &req); err != nil {
		ctlError(w, err)
		return
	}
	if req.Code != "" {
		ctlError(w, fmt.Errorf("%w: grant takes no code", ErrBadRequest))
		return
	}
	vaults, err := s.accessTargets(&req)
	if err != nil {
		ctlError(w, err)
		return
	}
	err = s.updateClient(req.ClientID, func(c *clientState) {
		for _, v := range vaults {
			delete(c.Revoked, v.host)
		}
		if len(c.Revoked) == 0 {
			c.Revoked = nil
		}
	})
	if err != nil {
		ctlError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// updateClient changes a client and persists it, undoing the change when
// it cannot be saved.
func (s *Server) updateClient(id string, f func(*clientState)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.st.Clients[id]
	if c == nil {
		return fmt.Errorf("%w: client %q is not registered", ErrNotFound, id)
	}
	old := *c
	old.Revoked = make(map[string]string, len(c.Revoked))
	for k, v := range c.Revoked {
		old.Revoked[k] = v
	}
	f(c)
	if err := s.saveLocked(); err != nil {
		*c = old
		return err
	}
	return nil
}

type clientRequest struct {
	ClientID string `json:"client_id"`
}

func (s *Server) ctlAddClient(w http.ResponseWriter, r *http.Request) {
	var req clientRequest
	if err := decodeControl(r, &req); err != nil {
		ctlError(w, err)
		return
	}
	if req.ClientID == "" {
		req.ClientID = newGUID()
	}
	if !validClientID(req.ClientID) {
		ctlError(w, fmt.Errorf("%w: client ID %q: use 1-64 letters, digits and dashes (a GUID)", ErrBadRequest, truncate(req.ClientID, 80)))
		return
	}
	c, err := newClient(req.ClientID)
	if err != nil {
		ctlError(w, err)
		return
	}
	s.mu.Lock()
	if s.st.Clients[req.ClientID] != nil {
		s.mu.Unlock()
		ctlError(w, fmt.Errorf("%w: client %s is already registered", ErrConflict, req.ClientID))
		return
	}
	s.st.Clients[req.ClientID] = c
	if err := s.saveLocked(); err != nil {
		delete(s.st.Clients, req.ClientID)
		s.mu.Unlock()
		ctlError(w, err)
		return
	}
	s.mu.Unlock()
	cf, err := s.writeClientFiles(req.ClientID)
	if err != nil {
		ctlError(w, err)
		return
	}
	s.log.Info("akvemu: client registered", "client_id", req.ClientID)
	writeJSON(w, http.StatusCreated, cf)
}

func (s *Server) ctlRotateSecret(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	err := s.updateClient(id, func(c *clientState) { c.Secret, c.SecretExpired = newSecret(), false })
	if err == nil {
		_, err = s.writeClientFiles(id)
	}
	if err != nil {
		ctlError(w, err)
		return
	}
	s.log.Info("akvemu: client secret rotated", "client_id", id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) ctlExpireSecret(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if err := s.updateClient(id, func(c *clientState) { c.SecretExpired = true }); err != nil {
		ctlError(w, err)
		return
	}
	s.log.Info("akvemu: client secret expired", "client_id", id)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) ctlInjectFault(w http.ResponseWriter, r *http.Request) {
	var f Fault
	if err := decodeControl(r, &f); err != nil {
		ctlError(w, err)
		return
	}
	if err := s.validateFault(&f); err != nil {
		ctlError(w, err)
		return
	}
	s.faults.add(f)
	s.log.Info("akvemu: fault added", "host", f.Host, "op", f.Op, "status", f.Status, "count", f.Count)
	w.WriteHeader(http.StatusNoContent)
}

// Control is a Go client of the control API. It is safe for concurrent use.
type Control struct {
	base string
	hc   *http.Client
}

// NewControl returns a client of the control API at baseURL (Info.ControlURL).
// A nil hc means a client with a 30s timeout.
func NewControl(baseURL string, hc *http.Client) *Control {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	return &Control{base: strings.TrimSuffix(baseURL, "/"), hc: hc}
}

// do sends one control request; a non-2xx answer becomes an error that
// wraps ErrNotFound, ErrConflict, ErrBadRequest or ErrControl.
func (c *Control) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("akvemu: control %s %s: encoding: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("akvemu: control %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("akvemu: control %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fmt.Errorf("akvemu: control %s %s: reading answer: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(b))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		sentinel := ErrControl
		switch resp.StatusCode {
		case http.StatusNotFound:
			sentinel = ErrNotFound
		case http.StatusConflict:
			sentinel = ErrConflict
		case http.StatusBadRequest:
			sentinel = ErrBadRequest
		}
		return fmt.Errorf("akvemu: control %s %s: HTTP %d: %s: %w", method, path, resp.StatusCode, truncate(msg, 500), sentinel)
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("akvemu: control %s %s: decoding answer: %w", method, path, err)
		}
	}
	return nil
}

func keyPath(vault, name string) string {
	return "/keys/" + url.PathEscape(vault) + "/" + url.PathEscape(name)
}

// Info fetches the emulator's Info.
func (c *Control) Info(ctx context.Context) (Info, error) {
	var info Info
	err := c.do(ctx, http.MethodGet, "/info", nil, &info)
	return info, err
}

// CreateKey creates an RSA key (size 0 = 3072) and returns its identifier
// with version. It fails with ErrConflict when the key exists, even deleted.
func (c *Control) CreateKey(ctx context.Context, vault, name string, size int) (keyID string, err error) {
	var out keyIDResponse
	err = c.do(ctx, http.MethodPost, "/keys", keyRequest{Vault: vault, Name: name, Size: size}, &out)
	return out.KID, err
}

// RotateKey adds a version to a key and returns its identifier.
func (c *Control) RotateKey(ctx context.Context, vault, name string) (keyID string, err error) {
	var out keyIDResponse
	err = c.do(ctx, http.MethodPost, keyPath(vault, name)+"/rotate", nil, &out)
	return out.KID, err
}

// SetKeyEnabled enables or disables a whole key (all versions).
func (c *Control) SetKeyEnabled(ctx context.Context, vault, name string, enabled bool) error {
	action := "/disable"
	if enabled {
		action = "/enable"
	}
	return c.do(ctx, http.MethodPost, keyPath(vault, name)+action, nil, nil)
}

// DeleteKey soft-deletes a key.
func (c *Control) DeleteKey(ctx context.Context, vault, name string) error {
	return c.do(ctx, http.MethodDelete, keyPath(vault, name), nil, nil)
}

// RecoverKey recovers a soft-deleted key.
func (c *Control) RecoverKey(ctx context.Context, vault, name string) error {
	return c.do(ctx, http.MethodPost, keyPath(vault, name)+"/recover", nil, nil)
}

// PurgeKey purges a soft-deleted key.
func (c *Control) PurgeKey(ctx context.Context, vault, name string) error {
	return c.do(ctx, http.MethodPost, keyPath(vault, name)+"/purge", nil, nil)
}

// RevokeAccess makes key operations of a client (clientID "" = the
// configured client) answer 403 with code (ForbiddenByRbac (default),
// ForbiddenByPolicy, ForbiddenByFirewall) in one vault, or all for vault "".
func (c *Control) RevokeAccess(ctx context.Context, clientID, vault, code string) error {
	return c.do(ctx, http.MethodPost, "/access/revoke", accessRequest{ClientID: clientID, Vault: vault, Code: code}, nil)
}

// GrantAccess undoes RevokeAccess for one vault, or all for vault "".
func (c *Control) GrantAccess(ctx context.Context, clientID, vault string) error {
	return c.do(ctx, http.MethodPost, "/access/grant", accessRequest{ClientID: clientID, Vault: vault}, nil)
}

// AddClient registers another client (clientID "" = a new GUID) with a
// secret, a certificate and a federated credential, and returns its files.
func (c *Control) AddClient(ctx context.Context, clientID string) (ClientFiles, error) {
	var out ClientFiles
	err := c.do(ctx, http.MethodPost, "/clients", clientRequest{ClientID: clientID}, &out)
	return out, err
}

// RotateClientSecret writes a new secret to the client's secret file; the
// old one stops working.
func (c *Control) RotateClientSecret(ctx context.Context, clientID string) error {
	return c.do(ctx, http.MethodPost, "/clients/"+url.PathEscape(clientID)+"/rotate-secret", nil, nil)
}

// ExpireClientSecret makes token requests with the client's secret fail
// with AADSTS7000222 until it is rotated.
func (c *Control) ExpireClientSecret(ctx context.Context, clientID string) error {
	return c.do(ctx, http.MethodPost, "/clients/"+url.PathEscape(clientID)+"/expire-secret", nil, nil)
}

// InjectFault adds a fault. Faults are tried in the order added; the first
// that matches a request applies.
func (c *Control) InjectFault(ctx context.Context, f Fault) error {
	return c.do(ctx, http.MethodPost, "/faults", f, nil)
}

// Faults lists the active faults (Count = uses left).
func (c *Control) Faults(ctx context.Context) ([]Fault, error) {
	var out []Fault
	err := c.do(ctx, http.MethodGet, "/faults", nil, &out)
	return out, err
}

// ClearFaults removes every fault and releases held requests.
func (c *Control) ClearFaults(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, "/faults", nil, nil)
}

// Counters returns host -> operation -> requests seen, faulted ones
// included. Entra endpoints count under HostLogin.
func (c *Control) Counters(ctx context.Context) (map[string]map[string]int64, error) {
	out := map[string]map[string]int64{}
	err := c.do(ctx, http.MethodGet, "/counters", nil, &out)
	return out, err
}

// ResetCounters sets every counter back to zero.
func (c *Control) ResetCounters(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, "/counters", nil, nil)
}
