package akv

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
)

func TestTakeValue(t *testing.T) {
	key := bytes.Repeat([]byte{0xfb, 0xff, 0x01}, 11)[:32]
	enc := base64.RawURLEncoding.EncodeToString(key)
	tests := []struct {
		name    string
		body    string
		want    []byte
		wantErr error
	}{
		{name: "azure answer", body: `{"kid":"https://v.vault.azure.net/keys/k/1","value":"` + enc + `"}`, want: key},
		{name: "padded, spaces", body: "{ \"value\" : \"" + base64.URLEncoding.EncodeToString(key) + "\" ,\"kid\":\"x\"}", want: key},
		{name: "value as another member's content", body: `{"kid":"value","value":"` + enc + `"}`, want: key},
		{name: "nested value ignored", body: `{"a":{"value":"AAAA"},"value":"` + enc + `"}`, want: key},
		{name: "escaped quote in kid", body: `{"kid":"a\"value\":\"x","value":"` + enc + `"}`, want: key},
		{name: "no value", body: `{"kid":"x"}`, wantErr: errNoValue},
		{name: "two values", body: `{"value":"AAAA","value":"` + enc + `"}`, wantErr: errNoValue},
		{name: "value not a string", body: `{"value":3}`, wantErr: errNoValue},
		{name: "not base64url", body: `{"value":"+/+/"}`, wantErr: errBadValue},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			got, err := takeValue(body)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("takeValue err = %v, want %v", err, tc.wantErr)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("takeValue = %x, want %x", got, tc.want)
			}
			if err != nil {
				return
			}
			if bytes.Contains(body, []byte(enc)) {
				t.Errorf("body still holds the key after takeValue: %s", body)
			}
			// azkeys still parses the body, and finds zeros.
			var out struct {
				Value string `json:"value"`
			}
			if err := json.Unmarshal(body, &out); err != nil {
				t.Fatalf("body after takeValue is not JSON: %v (%s)", err, body)
			}
			dec, err := base64.RawURLEncoding.DecodeString(out.Value)
			if err != nil {
				dec, err = base64.URLEncoding.DecodeString(out.Value)
			}
			if err != nil || !bytes.Equal(dec, make([]byte, len(key))) {
				t.Errorf("value left in the body = %q (%v), want base64 of %d zero bytes", out.Value, err, len(key))
			}
		})
	}
}

// FuzzTakeValue: takeValue never panics, and what it returns is what a JSON
// parser reads as the value, for bodies a JSON parser accepts.
func FuzzTakeValue(f *testing.F) {
	f.Add([]byte(`{"kid":"https://v/keys/k/1","value":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}`))
	f.Add([]byte(`{"value":"AA=="}`))
	f.Add([]byte(`{"kid":"a\"value\":\"x","value":"_-_-"}`))
	f.Add([]byte(`[{"value":"AA"}]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var want struct {
			Value *string `json:"value"`
		}
		jsonOK := json.Unmarshal(body, &want) == nil && bytes.HasPrefix(bytes.TrimLeft(body, " \t\r\n"), []byte("{"))
		orig := bytes.Clone(body)
		got, err := takeValue(body)
		if len(body) != len(orig) {
			t.Fatalf("takeValue changed the body's length")
		}
		if !jsonOK || err != nil || want.Value == nil {
			return
		}
		if bytes.Contains([]byte(*want.Value), []byte(`\`)) {
			return // escapes are never in base64url
		}
		exp, derr := base64.RawURLEncoding.DecodeString(string(bytes.TrimRight([]byte(*want.Value), "=")))
		if derr == nil && !bytes.Equal(got, exp) {
			t.Fatalf("takeValue(%q) = %x, want %x", orig, got, exp)
		}
	})
}
