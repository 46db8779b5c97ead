package akvemu

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"net"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// akvError is a Key Vault error answer:
// {"error":{"code":...,"message":...,"innererror":{"code":...}}}.
type akvError struct {
	status int
	code   string
	inner  string // innererror code, "" = none
	msg    string // what is wrong and what to do; never key material
}

func (e *akvError) Error() string { return e.code + ": " + e.msg }

func badParameter(format string, a ...any) *akvError {
	return &akvError{http.StatusBadRequest, "BadParameter", "", fmt.Sprintf(format, a...)}
}

func keyNotFound(name, version string) *akvError {
	id := name
	if version != "" {
		id += "/" + version
	}
	return &akvError{http.StatusNotFound, "KeyNotFound", "", "A key with (name/id) " + id +
		" was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"}
}

func deletedKeyNotFound(name string) *akvError {
	return &akvError{http.StatusNotFound, "KeyNotFound", "", "Deleted Key not found: " + name + " is not in a deleted state."}
}

func keyDisabled(op string) *akvError {
	return &akvError{http.StatusForbidden, "Forbidden", "KeyDisabled", "Operation " + op + " is not allowed on a disabled key."}
}

func writeAKVError(w http.ResponseWriter, e *akvError) {
	body := map[string]any{"code": e.code, "message": e.msg}
	if e.inner != "" {
		body["innererror"] = map[string]string{"code": e.inner}
	}
	writeJSON(w, e.status, map[string]any{"error": body})
}

// vault route kinds.
const (
	rNone = iota
	rListKeys
	rGetKey
	rListVersions
	rImport
	rUpdate
	rDelete
	rCreate
	rRotate
	rCrypto
	rListDeleted
	rGetDeleted
	rPurge
	rRecover
)

// vaultRoute is a parsed vault request path.
type vaultRoute struct {
	kind    int
	op      string
	name    string
	version string // "" = latest
	crypto  string // wrapkey, unwrapkey, encrypt, decrypt
	status  int    // for rNone: 404 or 405
}

var cryptoOps = map[string]string{OpWrapKey: "wrapKey", OpUnwrapKey: "unwrapKey", OpEncrypt: "encrypt", OpDecrypt: "decrypt"}

// parseVaultRoute maps a method and path to a Key Vault operation. Paths
// are AKV's; an empty version segment (azkeys sends "/keys/k/" for the
// latest version) means the latest version.
func parseVaultRoute(method, path string) vaultRoute {
	none := vaultRoute{kind: rNone, op: OpOther, status: http.StatusNotFound}
	notAllowed := vaultRoute{kind: rNone, op: OpOther, status: http.StatusMethodNotAllowed}
	if !strings.HasPrefix(path, "/") {
		return none
	}
	seg := strings.Split(path[1:], "/")
	is := func(m string) bool { return method == m }
	switch strings.ToLower(seg[0]) {
	case "keys":
		switch {
		case len(seg) == 1 || len(seg) == 2 && seg[1] == "":
			if is(http.MethodGet) {
				return vaultRoute{kind: rListKeys, op: OpList}
			}
			return notAllowed
		case len(seg) == 2:
			n := seg[1]
			switch method {
			case http.MethodGet:
				return vaultRoute{kind: rGetKey, op: OpGet, name: n}
			case http.MethodPut:
				return vaultRoute{kind: rImport, op: OpImport, name: n}
			case http.MethodPatch:
				return vaultRoute{kind: rUpdate, op: OpUpdate, name: n}
			case http.MethodDelete:
				return vaultRoute{kind: rDelete, op: OpDelete, name: n}
			}
			return notAllowed
		case len(seg) == 3:
			n, s2 := seg[1], seg[2]
			l2 := strings.ToLower(s2)
			switch method {
			case http.MethodPost:
				switch {
				case l2 == "create":
					return vaultRoute{kind: rCreate, op: OpCreate, name: n}
				case l2 == "rotate":
					return vaultRoute{kind: rRotate, op: OpRotate, name: n}
				case cryptoOps[l2] != "":
					return vaultRoute{kind: rCrypto, op: l2, crypto: l2, name: n}
				}
				return none
			case http.MethodGet:
				if l2 == "versions" {
					return vaultRoute{kind: rListVersions, op: OpList, name: n}
				}
				return vaultRoute{kind: rGetKey, op: OpGet, name: n, version: s2}
			case http.MethodPatch:
				return vaultRoute{kind: rUpdate, op: OpUpdate, name: n, version: s2}
			case http.MethodDelete, http.MethodPut:
				return notAllowed
			}
			return notAllowed
		case len(seg) == 4:
			n, s2, l3 := seg[1], seg[2], strings.ToLower(seg[3])
			switch {
			case is(http.MethodPost) && cryptoOps[l3] != "":
				return vaultRoute{kind: rCrypto, op: l3, crypto: l3, name: n, version: s2}
			case is(http.MethodGet) && l3 == "" && strings.ToLower(s2) == "versions":
				return vaultRoute{kind: rListVersions, op: OpList, name: n}
			case is(http.MethodGet) && l3 == "":
				return vaultRoute{kind: rGetKey, op: OpGet, name: n, version: s2}
			case is(http.MethodPatch) && l3 == "":
				return vaultRoute{kind: rUpdate, op: OpUpdate, name: n, version: s2}
			}
			return none
		}
	case "deletedkeys":
		switch {
		case len(seg) == 1 || len(seg) == 2 && seg[1] == "":
			if is(http.MethodGet) {
				return vaultRoute{kind: rListDeleted, op: OpList}
			}
			return notAllowed
		case len(seg) == 2:
			switch method {
			case http.MethodGet:
				return vaultRoute{kind: rGetDeleted, op: OpGet, name: seg[1]}
			case http.MethodDelete:
				return vaultRoute{kind: rPurge, op: OpPurge, name: seg[1]}
			}
			return notAllowed
		case len(seg) == 3 && strings.ToLower(seg[2]) == "recover":
			if is(http.MethodPost) {
				return vaultRoute{kind: rRecover, op: OpRecover, name: seg[1]}
			}
			return notAllowed
		}
	}
	return none
}

// apiVersionRE accepts the two shapes of Key Vault API versions: "7.4",
// "7.6-preview.2" and the newer "2025-07-01".
var apiVersionRE = regexp.MustCompile(`^(\d{1,2}\.\d{1,2}(-preview(\.\d{1,2})?)?|\d{4}-\d{2}-\d{2}(-preview)?)$`)

// serveVault serves one vault's REST API.
func (s *Server) serveVault(w http.ResponseWriter, r *http.Request, v *vault, host string) {
	rt := parseVaultRoute(r.Method, r.URL.Path)
	s.counters.add(host, rt.op)
	if s.applyFault(w, r, host, rt.op) {
		return
	}
	w.Header().Set("x-ms-request-id", newGUID())
	w.Header().Set("x-ms-keyvault-service-version", "1.9.0.0-akvemu")
	w.Header().Set("x-ms-keyvault-network-info", "conn_type=Ipv4;addr="+remoteIP(r)+";act_addr_fam=InterNetwork;")
	q := r.URL.Query()
	if av := q.Get("api-version"); av == "" {
		writeAKVError(w, badParameter("The api-version query parameter is missing; send ?api-version=2025-07-01 (or 7.x)."))
		return
	} else if !apiVersionRE.MatchString(av) {
		writeAKVError(w, badParameter("The specified version (%.40s) is not recognized. Consider using the latest supported version (2025-07-01).", av))
		return
	}
	clientID, msg := s.verifyAccessToken(r)
	if msg != "" {
		w.Header().Set("WWW-Authenticate", `Bearer authorization="`+s.authority+s.tenant+`", resource="`+VaultResource+`"`)
		writeAKVError(w, &akvError{http.StatusUnauthorized, "Unauthorized", "", msg})
		return
	}
	if rt.kind == rNone {
		if rt.status == http.StatusMethodNotAllowed {
			writeAKVError(w, &akvError{http.StatusMethodNotAllowed, "MethodNotAllowed", "", "Method " + r.Method + " is not allowed on " + r.URL.Path + "; see docs/emulator.md for the supported routes."})
			return
		}
		writeAKVError(w, &akvError{http.StatusNotFound, "NotFound", "", "No Key Vault route matches " + r.Method + " " + r.URL.Path + "; the emulator serves /keys and /deletedkeys (see docs/emulator.md)."})
		return
	}
	if e := s.checkAccess(r, clientID, v, rt); e != nil {
		writeAKVError(w, e)
		return
	}
	if rt.name != "" && !validKeyName(rt.name) {
		writeAKVError(w, badParameter("The request URI contains an invalid name: %.130s. Key names are 1-127 letters, digits and dashes.", rt.name))
		return
	}
	if s.applyThrottle(w, v, rt) {
		return
	}
	var body []byte
	if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
		var err error
		if body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody)); err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				writeAKVError(w, badParameter("The request body is larger than 1 MiB."))
				return
			}
			writeAKVError(w, badParameter("The request body could not be read."))
			return
		}
	}
	e := s.dispatchVault(w, r, v, rt, body)
	if e != nil {
		s.log.Info("akvemu: vault request refused", "host", host, "op", rt.op, "key", rt.name, "status", e.status, "code", e.code, "inner", e.inner)
		writeAKVError(w, e)
		return
	}
	s.log.Debug("akvemu: vault request", "host", host, "op", rt.op, "key", rt.name, "client_id", clientID)
}

func remoteIP(r *http.Request) string {
	h, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return h
}

func (s *Server) dispatchVault(w http.ResponseWriter, r *http.Request, v *vault, rt vaultRoute, body []byte) *akvError {
	switch rt.kind {
	case rListKeys:
		return s.listKeys(w, r, v, false)
	case rListDeleted:
		return s.listKeys(w, r, v, true)
	case rListVersions:
		return s.listVersions(w, r, v, rt.name)
	case rGetKey:
		return s.getKey(w, v, rt.name, rt.version)
	case rCreate:
		p, e := parseCreateRequest(body)
		if e != nil {
			return e
		}
		return s.createVersion(w, v, rt.name, p)
	case rImport:
		p, e := parseImportRequest(body)
		if e != nil {
			return e
		}
		return s.createVersion(w, v, rt.name, p)
	case rRotate:
		s.mu.RLock()
		k := s.st.key(v.host, rt.name)
		var p createParams
		if k != nil && k.Deleted == nil {
			p = rotateParams(k)
		}
		s.mu.RUnlock()
		if k == nil || k.Deleted != nil {
			return keyNotFound(rt.name, "")
		}
		return s.createVersion(w, v, rt.name, p)
	case rUpdate:
		u, e := parseUpdateRequest(body)
		if e != nil {
			return e
		}
		return s.updateKey(w, v, rt.name, rt.version, u)
	case rDelete:
		k, err := s.deleteKey(v, rt.name)
		if err != nil {
			return storeError(err, rt.name)
		}
		s.mu.RLock()
		defer s.mu.RUnlock()
		writeJSON(w, http.StatusOK, deletedBundle(v.host, rt.name, k))
		return nil
	case rGetDeleted:
		s.mu.RLock()
		defer s.mu.RUnlock()
		k := s.st.key(v.host, rt.name)
		if k == nil || k.Deleted == nil {
			return deletedKeyNotFound(rt.name)
		}
		writeJSON(w, http.StatusOK, deletedBundle(v.host, rt.name, k))
		return nil
	case rRecover:
		k, err := s.recoverKey(v, rt.name)
		if err != nil {
			return storeError(err, rt.name)
		}
		s.mu.RLock()
		defer s.mu.RUnlock()
		writeJSON(w, http.StatusOK, bundle(v.host, rt.name, k.latest()))
		return nil
	case rPurge:
		if err := s.purgeKey(v, rt.name); err != nil {
			return storeError(err, rt.name)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	case rCrypto:
		req, e := parseKeyOpRequest(body)
		if e != nil {
			return e
		}
		return s.keyOperation(w, v, rt, req)
	}
	return &akvError{http.StatusNotFound, "NotFound", "", "No route."}
}

// storeError maps the state errors to AKV answers.
func storeError(err error, name string) *akvError {
	switch {
	case errors.Is(err, errNotDeleted):
		return deletedKeyNotFound(name)
	case errors.Is(err, ErrNotFound):
		return keyNotFound(name, "")
	case errors.Is(err, ErrConflict):
		return &akvError{http.StatusConflict, "Conflict", "", strings.TrimPrefix(err.Error(), ErrConflict.Error()+": ")}
	}
	return &akvError{http.StatusInternalServerError, "InternalServerError", "", "The emulator could not save its state; see its log."}
}

// Key Vault JSON shapes (see azkeys models_serde.go).
type jsonWebKey struct {
	KID    string   `json:"kid"`
	Kty    string   `json:"kty"`
	KeyOps []string `json:"key_ops"`
	N      string   `json:"n"`
	E      string   `json:"e"`
}

type keyAttributes struct {
	Enabled         bool   `json:"enabled"`
	NotBefore       *int64 `json:"nbf,omitempty"`
	Expires         *int64 `json:"exp,omitempty"`
	Created         int64  `json:"created"`
	Updated         int64  `json:"updated"`
	RecoveryLevel   string `json:"recoveryLevel"`
	RecoverableDays int    `json:"recoverableDays"`
	Exportable      bool   `json:"exportable"`
}

type keyBundle struct {
	Key                jsonWebKey        `json:"key"`
	Attributes         keyAttributes     `json:"attributes"`
	Tags               map[string]string `json:"tags,omitempty"`
	RecoveryID         string            `json:"recoveryId,omitempty"`
	DeletedDate        int64             `json:"deletedDate,omitempty"`
	ScheduledPurgeDate int64             `json:"scheduledPurgeDate,omitempty"`
}

type keyItem struct {
	KID                string            `json:"kid"`
	Attributes         keyAttributes     `json:"attributes"`
	Tags               map[string]string `json:"tags,omitempty"`
	RecoveryID         string            `json:"recoveryId,omitempty"`
	DeletedDate        int64             `json:"deletedDate,omitempty"`
	ScheduledPurgeDate int64             `json:"scheduledPurgeDate,omitempty"`
}

type listResult struct {
	Value    []keyItem `json:"value"`
	NextLink *string   `json:"nextLink"`
}

func attributes(ver *versionState) keyAttributes {
	return keyAttributes{
		Enabled: ver.Enabled, NotBefore: ver.NotBefore, Expires: ver.Expires,
		Created: ver.Created, Updated: ver.Updated,
		RecoveryLevel: recoveryLevel, RecoverableDays: recoverableDays,
	}
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func bundle(host, name string, ver *versionState) keyBundle {
	pub := &ver.priv.PublicKey
	return keyBundle{
		Key: jsonWebKey{
			KID: keyID(host, name, ver.ID), Kty: ver.Kty, KeyOps: ver.KeyOps,
			N: b64(pub.N.Bytes()), E: b64(big.NewInt(int64(pub.E)).Bytes()),
		},
		Attributes: attributes(ver),
		Tags:       ver.Tags,
	}
}

func deletedBundle(host, name string, k *keyState) keyBundle {
	b := bundle(host, name, k.latest())
	b.RecoveryID = "https://" + host + "/deletedkeys/" + name
	b.DeletedDate, b.ScheduledPurgeDate = k.Deleted.Date, k.Deleted.ScheduledPurge
	return b
}

func (s *Server) getKey(w http.ResponseWriter, v *vault, name, version string) *akvError {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k := s.st.key(v.host, name)
	if k == nil || k.Deleted != nil {
		return keyNotFound(name, version)
	}
	ver := k.version(version)
	if ver == nil {
		return keyNotFound(name, version)
	}
	if !ver.Enabled {
		return keyDisabled("get")
	}
	writeJSON(w, http.StatusOK, bundle(v.host, name, ver))
	return nil
}

func (s *Server) createVersion(w http.ResponseWriter, v *vault, name string, p createParams) *akvError {
	ver, err := s.createKey(v, name, p, false)
	if err != nil {
		return storeError(err, name)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	writeJSON(w, http.StatusOK, bundle(v.host, name, ver))
	return nil
}

func (s *Server) updateKey(w http.ResponseWriter, v *vault, name, version string, u updateParams) *akvError {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.st.key(v.host, name)
	if k == nil || k.Deleted != nil {
		return keyNotFound(name, version)
	}
	ver := k.version(version)
	if ver == nil {
		return keyNotFound(name, version)
	}
	old := *ver
	if u.KeyOps != nil {
		ver.KeyOps = u.KeyOps
	}
	if u.Enabled != nil {
		ver.Enabled = *u.Enabled
	}
	if u.NotBefore != nil {
		ver.NotBefore = u.NotBefore
	}
	if u.Expires != nil {
		ver.Expires = u.Expires
	}
	if u.Tags != nil {
		ver.Tags = u.Tags
	}
	ver.Updated = s.now().Unix()
	if err := s.saveLocked(); err != nil {
		*ver = old
		return storeError(err, name)
	}
	writeJSON(w, http.StatusOK, bundle(v.host, name, ver))
	return nil
}

// page cuts a list according to $skiptoken and maxresults and builds the
// next link, which carries the api-version so that the SDK can follow it.
func (s *Server) page(r *http.Request, n int) (start, end int, next *string, e *akvError) {
	q := r.URL.Query()
	size := s.pageSize
	if mr := q.Get("maxresults"); mr != "" {
		m, err := strconv.Atoi(mr)
		if err != nil || m < 1 || m > 25 {
			return 0, 0, nil, badParameter("maxresults must be an integer from 1 to 25.")
		}
		size = min(size, m)
	}
	if tok := q.Get("$skiptoken"); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		off, ok := strings.CutPrefix(string(b), "offset:")
		if err != nil || !ok {
			return 0, 0, nil, badParameter("The $skiptoken is not one this vault issued; follow nextLink as given.")
		}
		if start, err = strconv.Atoi(off); err != nil || start < 0 || start > n {
			return 0, 0, nil, badParameter("The $skiptoken is not one this vault issued; follow nextLink as given.")
		}
	}
	end = min(start+size, n)
	if end < n {
		link := "https://" + r.Host + r.URL.EscapedPath() + "?api-version=" + q.Get("api-version") +
			"&$skiptoken=" + b64([]byte("offset:"+strconv.Itoa(end)))
		if mr := q.Get("maxresults"); mr != "" {
			link += "&maxresults=" + mr
		}
		next = &link
	}
	return start, end, next, nil
}

func (s *Server) listKeys(w http.ResponseWriter, r *http.Request, v *vault, deleted bool) *akvError {
	s.mu.RLock()
	defer s.mu.RUnlock()
	vs := s.st.Vaults[v.host]
	names := make([]string, 0, len(vs.Keys))
	for n, k := range vs.Keys {
		if (k.Deleted != nil) == deleted {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	start, end, next, e := s.page(r, len(names))
	if e != nil {
		return e
	}
	res := listResult{Value: []keyItem{}, NextLink: next}
	for _, n := range names[start:end] {
		k := vs.Keys[n]
		l := k.latest()
		it := keyItem{KID: "https://" + v.host + "/keys/" + n, Attributes: attributes(l), Tags: l.Tags}
		if deleted {
			it.RecoveryID = "https://" + v.host + "/deletedkeys/" + n
			it.DeletedDate, it.ScheduledPurgeDate = k.Deleted.Date, k.Deleted.ScheduledPurge
		}
		res.Value = append(res.Value, it)
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Server) listVersions(w http.ResponseWriter, r *http.Request, v *vault, name string) *akvError {
	s.mu.RLock()
	defer s.mu.RUnlock()
	k := s.st.key(v.host, name)
	if k == nil || k.Deleted != nil {
		return keyNotFound(name, "")
	}
	start, end, next, e := s.page(r, len(k.Versions))
	if e != nil {
		return e
	}
	res := listResult{Value: []keyItem{}, NextLink: next}
	for _, ver := range k.Versions[start:end] {
		res.Value = append(res.Value, keyItem{KID: keyID(v.host, name, ver.ID), Attributes: attributes(ver), Tags: ver.Tags})
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// keyOperation runs wrapkey, unwrapkey, encrypt or decrypt. Like Azure, the
// validity window (nbf/exp) blocks only encrypt and wrapKey: data protected
// while the key was valid stays recoverable.
func (s *Server) keyOperation(w http.ResponseWriter, v *vault, rt vaultRoute, req keyOpRequest) *akvError {
	opName := cryptoOps[rt.crypto]
	s.mu.RLock()
	k := s.st.key(v.host, rt.name)
	if k == nil || k.Deleted != nil {
		s.mu.RUnlock()
		return keyNotFound(rt.name, rt.version)
	}
	ver := k.version(rt.version)
	if ver == nil {
		s.mu.RUnlock()
		return keyNotFound(rt.name, rt.version)
	}
	enabled, ops, nbf, exp, priv, id := ver.Enabled, slices.Clone(ver.KeyOps), ver.NotBefore, ver.Expires, ver.priv, ver.ID
	s.mu.RUnlock()

	if !enabled {
		return keyDisabled(opName)
	}
	if !slices.Contains(ops, opName) {
		return &akvError{http.StatusForbidden, "Forbidden", "KeyOperationForbidden", "Operation " + opName + " is not permitted on this key."}
	}
	if rt.crypto == OpWrapKey || rt.crypto == OpEncrypt {
		now := s.now().Unix()
		if nbf != nil && now < *nbf {
			return &akvError{http.StatusForbidden, "Forbidden", "", "Operation " + opName + " is not allowed on a key that is not yet valid (nbf " + strconv.FormatInt(*nbf, 10) + ")."}
		}
		if exp != nil && now >= *exp {
			return &akvError{http.StatusForbidden, "Forbidden", "", "Operation " + opName + " is not allowed on an expired key (exp " + strconv.FormatInt(*exp, 10) + ")."}
		}
	}
	var h hash.Hash
	if req.alg == "RSA-OAEP" {
		h = sha1.New()
	} else {
		h = sha256.New()
	}
	var out []byte
	var err error
	switch rt.crypto {
	case OpWrapKey, OpEncrypt:
		out, err = rsa.EncryptOAEP(h, rand.Reader, &priv.PublicKey, req.value, nil)
		if err != nil {
			max := priv.Size() - 2*h.Size() - 2
			return badParameter("The value is too long for %s with a %d-bit key: at most %d bytes.", req.alg, priv.N.BitLen(), max)
		}
	default:
		out, err = rsa.DecryptOAEP(h, nil, priv, req.value, nil)
		if err != nil {
			return badParameter("The value could not be decrypted with key version %s and algorithm %s: check the key version and algorithm it was wrapped with.", id, req.alg)
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"kid": keyID(v.host, rt.name, id), "value": b64(out)})
	return nil
}

// keyOpRequest is a parsed wrapkey/unwrapkey/encrypt/decrypt body.
type keyOpRequest struct {
	alg   string
	value []byte
}

// supportedAlgs are the RSA algorithms the emulator implements. RSA1_5 is
// left out: Go deprecates PKCS #1 v1.5 encryption, and so should clients.
var supportedAlgs = []string{"RSA-OAEP", "RSA-OAEP-256"}

// parseKeyOpRequest parses {"alg":"RSA-OAEP-256","value":"<base64url>"}.
func parseKeyOpRequest(body []byte) (keyOpRequest, *akvError) {
	var p struct {
		Alg   *string `json:"alg"`
		Value *string `json:"value"`
	}
	if e := decodeJSON(body, &p); e != nil {
		return keyOpRequest{}, e
	}
	if p.Alg == nil || *p.Alg == "" {
		return keyOpRequest{}, badParameter("The alg parameter is required: RSA-OAEP or RSA-OAEP-256.")
	}
	if !slices.Contains(supportedAlgs, *p.Alg) {
		return keyOpRequest{}, badParameter("Invalid algorithm %q for an RSA key: use RSA-OAEP or RSA-OAEP-256.", truncate(*p.Alg, 40))
	}
	if p.Value == nil || *p.Value == "" {
		return keyOpRequest{}, badParameter("The value parameter is required (base64url, no padding).")
	}
	val, err := decodeB64URL(*p.Value)
	if err != nil {
		return keyOpRequest{}, badParameter("The value parameter is not valid base64url (RFC 4648 §5, no padding): %v.", err)
	}
	return keyOpRequest{alg: *p.Alg, value: val}, nil
}

// decodeB64URL decodes unpadded base64url, tolerating trailing padding.
func decodeB64URL(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// decodeJSON decodes one JSON object.
func decodeJSON(body []byte, v any) *akvError {
	if len(strings.TrimSpace(string(body))) == 0 {
		return badParameter("The request body is empty; send a JSON object.")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return badParameter("The request body has a bad type for %q: got JSON %s, want %s.", truncate(te.Field, 40), te.Value, te.Type)
		}
		return badParameter("The request body is not valid JSON: %v.", err)
	}
	return nil
}

type attrParams struct {
	Enabled    *bool  `json:"enabled"`
	NotBefore  *int64 `json:"nbf"`
	Expires    *int64 `json:"exp"`
	Exportable *bool  `json:"exportable"`
}

func checkKeyOps(ops []string) *akvError {
	for _, o := range ops {
		if !slices.Contains(knownKeyOps, o) {
			return badParameter("Invalid key operation %q: use encrypt, decrypt, sign, verify, wrapKey, unwrapKey, import or export.", truncate(o, 40))
		}
	}
	return nil
}

func checkAttrs(a *attrParams) *akvError {
	if a == nil {
		return nil
	}
	if a.Exportable != nil && *a.Exportable {
		return badParameter("Exportable keys need a release policy, which the emulator does not support.")
	}
	if a.NotBefore != nil && a.Expires != nil && *a.Expires <= *a.NotBefore {
		return badParameter("attributes.exp must be after attributes.nbf.")
	}
	return nil
}

func checkTags(t map[string]string) *akvError {
	if len(t) > 15 {
		return badParameter("A key can have at most 15 tags.")
	}
	for k, v := range t {
		if len(k) > 512 || len(v) > 256 {
			return badParameter("Tag names are at most 512 characters and values at most 256.")
		}
	}
	return nil
}

// parseCreateRequest parses a create body: kty RSA or RSA-HSM, key_size
// 2048/3072/4096 (default 2048, as Azure), public_exponent 65537 only.
func parseCreateRequest(body []byte) (createParams, *akvError) {
	var p struct {
		Kty            *string           `json:"kty"`
		KeySize        *int              `json:"key_size"`
		PublicExponent *int              `json:"public_exponent"`
		KeyOps         []string          `json:"key_ops"`
		Attributes     *attrParams       `json:"attributes"`
		Tags           map[string]string `json:"tags"`
		Crv            *string           `json:"crv"`
	}
	if e := decodeJSON(body, &p); e != nil {
		return createParams{}, e
	}
	if p.Kty == nil || *p.Kty == "" {
		return createParams{}, badParameter("The kty parameter is required: RSA or RSA-HSM.")
	}
	if *p.Kty != "RSA" && *p.Kty != "RSA-HSM" {
		return createParams{}, badParameter("Key type %q is not supported by the emulator: use RSA or RSA-HSM.", truncate(*p.Kty, 20))
	}
	if p.Crv != nil {
		return createParams{}, badParameter("crv applies to EC keys only.")
	}
	size := 2048
	if p.KeySize != nil {
		size = *p.KeySize
	}
	if !validKeySize(size) {
		return createParams{}, badParameter("key_size %d is not supported: use %s.", size, sizeList())
	}
	if p.PublicExponent != nil && *p.PublicExponent != 65537 {
		return createParams{}, badParameter("public_exponent %d is not supported: use 65537.", *p.PublicExponent)
	}
	return withChecked(createParams{Kty: *p.Kty, Size: size, KeyOps: p.KeyOps, Tags: p.Tags}, p.Attributes)
}

// withChecked validates what create and import share (key_ops,
// attributes, tags) and copies the attributes into cp.
func withChecked(cp createParams, attrs *attrParams) (createParams, *akvError) {
	if e := checkKeyOps(cp.KeyOps); e != nil {
		return createParams{}, e
	}
	if e := checkAttrs(attrs); e != nil {
		return createParams{}, e
	}
	if e := checkTags(cp.Tags); e != nil {
		return createParams{}, e
	}
	if attrs != nil {
		cp.Enabled, cp.NotBefore, cp.Expires = attrs.Enabled, attrs.NotBefore, attrs.Expires
	}
	return cp, nil
}

// updateParams are the PATCH /keys/{name}/{version} parameters.
type updateParams struct {
	KeyOps    []string
	Enabled   *bool
	NotBefore *int64
	Expires   *int64
	Tags      map[string]string
}

func parseUpdateRequest(body []byte) (updateParams, *akvError) {
	var p struct {
		KeyOps     []string          `json:"key_ops"`
		Attributes *attrParams       `json:"attributes"`
		Tags       map[string]string `json:"tags"`
	}
	if e := decodeJSON(body, &p); e != nil {
		return updateParams{}, e
	}
	if e := checkKeyOps(p.KeyOps); e != nil {
		return updateParams{}, e
	}
	if e := checkAttrs(p.Attributes); e != nil {
		return updateParams{}, e
	}
	if e := checkTags(p.Tags); e != nil {
		return updateParams{}, e
	}
	u := updateParams{KeyOps: p.KeyOps, Tags: p.Tags}
	if a := p.Attributes; a != nil {
		u.Enabled, u.NotBefore, u.Expires = a.Enabled, a.NotBefore, a.Expires
	}
	return u, nil
}

// parseImportRequest parses an import body with an RSA private JWK.
func parseImportRequest(body []byte) (createParams, *akvError) {
	var p struct {
		Key *struct {
			Kty    string   `json:"kty"`
			KeyOps []string `json:"key_ops"`
			N      string   `json:"n"`
			E      string   `json:"e"`
			D      string   `json:"d"`
			P      string   `json:"p"`
			Q      string   `json:"q"`
		} `json:"key"`
		HSM        *bool             `json:"hsm"`
		Attributes *attrParams       `json:"attributes"`
		Tags       map[string]string `json:"tags"`
	}
	if e := decodeJSON(body, &p); e != nil {
		return createParams{}, e
	}
	if p.Key == nil {
		return createParams{}, badParameter("The key parameter is required: an RSA private key as a JSON web key.")
	}
	k := p.Key
	if k.Kty != "RSA" && k.Kty != "RSA-HSM" {
		return createParams{}, badParameter("Key type %q cannot be imported into the emulator: use RSA or RSA-HSM.", truncate(k.Kty, 20))
	}
	fields := map[string]*big.Int{}
	for _, f := range []struct{ name, val string }{{"n", k.N}, {"e", k.E}, {"d", k.D}, {"p", k.P}, {"q", k.Q}} {
		if f.val == "" {
			return createParams{}, badParameter("The key's %s is required: import needs n, e, d, p and q.", f.name)
		}
		b, err := decodeB64URL(f.val)
		if err != nil || len(b) == 0 || len(b) > 1024 {
			return createParams{}, badParameter("The key's %s is not valid base64url.", f.name)
		}
		fields[f.name] = new(big.Int).SetBytes(b)
	}
	if !fields["e"].IsInt64() || fields["e"].Int64() != 65537 {
		return createParams{}, badParameter("The key's public exponent must be 65537.")
	}
	if !validKeySize(fields["n"].BitLen()) {
		return createParams{}, badParameter("The key is %d bits: import %s-bit RSA keys.", fields["n"].BitLen(), sizeList())
	}
	priv := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: fields["n"], E: 65537},
		D:         fields["d"],
		Primes:    []*big.Int{fields["p"], fields["q"]},
	}
	if err := priv.Validate(); err != nil {
		return createParams{}, badParameter("The key is not a valid RSA private key: n, d, p and q do not belong together.")
	}
	priv.Precompute()
	kty := k.Kty
	if p.HSM != nil && *p.HSM {
		kty = "RSA-HSM"
	}
	return withChecked(createParams{Kty: kty, Size: priv.N.BitLen(), KeyOps: k.KeyOps, Tags: p.Tags, priv: priv}, p.Attributes)
}

// checkAccess applies RevokeAccess: a revoked client gets 403 with the
// chosen inner code and Azure's message for it.
func (s *Server) checkAccess(r *http.Request, clientID string, v *vault, rt vaultRoute) *akvError {
	s.mu.RLock()
	var code, oid string
	if c := s.st.Clients[clientID]; c != nil {
		code, oid = c.Revoked[v.host], c.ObjectID
	}
	s.mu.RUnlock()
	if code == "" {
		return nil
	}
	caller := "appid=" + clientID + ";oid=" + oid + ";iss=" + s.tokenIssuer()
	vaultName, _, _ := strings.Cut(v.host, ".")
	perm, action := permissionFor(rt)
	var msg string
	switch code {
	case CodeForbiddenByPolicy:
		msg = "The user, group or application '" + caller + "' does not have keys " + perm + " permission on key vault '" + vaultName + ";location=emulator'. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125287"
	case CodeForbiddenByFirewall:
		msg = "Client address is not authorized and caller is not a trusted service.\r\nClient address: " + remoteIP(r) + "\r\nCaller: " + caller + "\r\nVault: " + vaultName + ";location=emulator"
	default:
		msg = "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: " + caller +
			"\r\nAction: 'Microsoft.KeyVault/vaults/" + action + "'\r\nResource: '/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/akvemu/providers/microsoft.keyvault/vaults/" + vaultName +
			"'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\nVault: " + vaultName + ";location=emulator\r\n"
	}
	return &akvError{http.StatusForbidden, "Forbidden", code, msg}
}

// permissionFor names the access-policy permission and RBAC data action of
// an operation, as Azure's 403 messages do.
func permissionFor(rt vaultRoute) (perm, action string) {
	switch rt.op {
	case OpGet:
		return "get", "keys/read"
	case OpList:
		return "list", "keys/read"
	case OpCreate:
		return "create", "keys/create/action"
	case OpRotate:
		return "rotate", "keys/rotate/action"
	case OpImport:
		return "import", "keys/import/action"
	case OpUpdate:
		return "update", "keys/write"
	case OpDelete:
		return "delete", "keys/delete"
	case OpRecover:
		return "recover", "deletedKeys/recover/action"
	case OpPurge:
		return "purge", "deletedKeys/delete"
	case OpWrapKey:
		return "wrapKey", "keys/wrap/action"
	case OpUnwrapKey:
		return "unwrapKey", "keys/unwrap/action"
	case OpEncrypt:
		return "encrypt", "keys/encrypt/action"
	case OpDecrypt:
		return "decrypt", "keys/decrypt/action"
	}
	return rt.op, "keys/read"
}
