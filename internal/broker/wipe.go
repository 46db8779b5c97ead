package broker

import keybrokerv1 "github.com/keybroker/keybroker/proto/keybroker/v1"

// SecretMessage reports whether a keybroker.v1 message carries plaintext
// key bytes on the wire: a master key, or a caller's data key. The gRPC
// codec (internal/wipe) zeroes the buffers of these messages.
func SecretMessage(v any) bool {
	switch v.(type) {
	case *keybrokerv1.GetMasterKeyResponse, *keybrokerv1.WrapDEKRequest, *keybrokerv1.UnwrapDEKResponse:
		return true
	}
	return false
}

// ScrubMessage clears the plaintext key bytes of a reply once it is
// encoded: the handler's copy dies with its use.
func ScrubMessage(v any) {
	switch m := v.(type) {
	case *keybrokerv1.GetMasterKeyResponse:
		clear(m.GetKey())
	case *keybrokerv1.WrapDEKRequest:
		clear(m.GetDek())
	case *keybrokerv1.UnwrapDEKResponse:
		clear(m.GetDek())
	}
}
