package akv

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
)

// A Key Vault unwrapKey answer is {"kid": "...", "value": "<base64url of the
// plaintext key>"}. azkeys decodes it through several copies (the body,
// json.RawMessage, a string, the decoded bytes) that nobody clears. So the
// pipeline takes the key out first: scrubPolicy decodes the value into the
// caller's keySlot and overwrites it in the body with 'A's (base64 of zero
// bits), so every copy azkeys makes afterwards holds only zeros.

// keySlot receives the plaintext of one unwrapKey call.
type keySlot struct {
	key []byte // owned by the caller, who clears it
	err error
}

type keySlotCtx struct{}

// withKeySlot returns ctx carrying a fresh keySlot for one unwrapKey call.
func withKeySlot(ctx context.Context) (context.Context, *keySlot) {
	s := &keySlot{}
	return context.WithValue(ctx, keySlotCtx{}, s), s
}

// scrubPolicy is a per-retry pipeline policy (it runs after the body is
// downloaded) that moves the key out of unwrapKey answers.
type scrubPolicy struct{}

func (scrubPolicy) Do(req *policy.Request) (*http.Response, error) {
	resp, err := req.Next()
	if err != nil || resp == nil || resp.StatusCode != http.StatusOK {
		return resp, err
	}
	slot, _ := req.Raw().Context().Value(keySlotCtx{}).(*keySlot)
	if slot == nil {
		return resp, err
	}
	body, perr := runtime.Payload(resp)
	if perr != nil {
		slot.err = perr
		return resp, err
	}
	clear(slot.key)
	slot.key, slot.err = takeValue(body)
	return resp, err
}

// Errors of takeValue.
var (
	errNoValue  = errors.New("akv: unwrapKey answer has no \"value\" string")
	errBadValue = errors.New("akv: unwrapKey answer's value is not base64url")
)

// takeValue finds the top-level "value" string of a JSON object, decodes
// it (base64url, padded or not) into a new slice and overwrites its
// characters in body with 'A'. It is not a JSON validator: azkeys parses
// the body afterwards, and any answer it accepts has the shape looked for.
func takeValue(body []byte) ([]byte, error) {
	start, end, ok := findValue(body)
	if !ok {
		return nil, errNoValue
	}
	enc := body[start:end]
	dec := base64.RawURLEncoding
	trimmed := bytes.TrimRight(enc, "=")
	out := make([]byte, dec.DecodedLen(len(trimmed)))
	n, err := dec.Decode(out, trimmed)
	if err != nil {
		clear(out)
		for i := range enc {
			enc[i] = 'A'
		}
		return nil, errBadValue
	}
	for i := range enc {
		if enc[i] != '=' {
			enc[i] = 'A'
		}
	}
	return out[:n], nil
}

// findValue returns the bounds of the contents of the string that is the
// value of the top-level "value" member of the JSON object in b; a second
// such member (JSON parsers disagree on which one counts) is refused.
func findValue(b []byte) (start, end int, ok bool) {
	depth, found := 0, false
	i := 0
	for i < len(b) {
		switch c := b[i]; c {
		case '{', '[':
			depth++
			i++
		case '}', ']':
			depth--
			i++
		case '"':
			s, e, next, ok := readString(b, i)
			if !ok {
				return 0, 0, false
			}
			i = next
			if depth != 1 || string(b[s:e]) != "value" {
				continue
			}
			j := skipSpace(b, next)
			if j >= len(b) || b[j] != ':' {
				continue
			}
			if found {
				return 0, 0, false
			}
			j = skipSpace(b, j+1)
			if j >= len(b) || b[j] != '"' {
				return 0, 0, false
			}
			vs, ve, vnext, ok := readString(b, j)
			if !ok {
				return 0, 0, false
			}
			start, end, found, i = vs, ve, true, vnext
		default:
			i++
		}
	}
	return start, end, found
}

// readString reads the JSON string opening at b[i] ('"'): the bounds of
// its contents and the index after the closing quote.
func readString(b []byte, i int) (start, end, next int, ok bool) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return i + 1, j, j + 1, true
		}
	}
	return 0, 0, 0, false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}
