package kmip

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/kmipserver"
	"github.com/ovh/kmip-go/payloads"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/broker"
	"github.com/keybroker/keybroker/internal/wipe"
)

// maxCryptData bounds the data of one Encrypt or Decrypt.
const maxCryptData = 1 << 20

// mode is a resolved block cipher mode.
type mode struct {
	gcm    bool
	pad    bool // PKCS5, CBC only
	tagLen int  // GCM only
	// randomIV asks the server to generate the IV even if none is absent.
	randomIV bool
}

// cryptMode reads the Cryptographic Parameters: AES-GCM, or AES-CBC with
// PKCS5 padding (the default when none are given) or no padding.
func cryptMode(p *kmip.CryptographicParameters) (mode, error) {
	if p == nil {
		return mode{pad: true}, nil
	}
	if p.CryptographicAlgorithm != 0 && p.CryptographicAlgorithm != kmip.CryptographicAlgorithmAES {
		return mode{}, fail(kmip.ResultReasonInvalidField, "keybroker encrypts with AES only, not %s", ttlv.EnumStr(p.CryptographicAlgorithm))
	}
	m := mode{randomIV: p.RandomIV != nil && *p.RandomIV}
	switch p.BlockCipherMode {
	case kmip.BlockCipherModeGCM:
		m.gcm = true
		m.tagLen = 16
		if p.TagLength != 0 {
			if p.TagLength < 12 || p.TagLength > 16 {
				return mode{}, fail(kmip.ResultReasonInvalidField, "GCM Tag Length %d: use 12 to 16 bytes", p.TagLength)
			}
			m.tagLen = int(p.TagLength)
		}
		if p.PaddingMethod != 0 && p.PaddingMethod != kmip.PaddingMethodNone {
			return mode{}, fail(kmip.ResultReasonInvalidField, "GCM takes no padding")
		}
	case 0, kmip.BlockCipherModeCBC:
		switch p.PaddingMethod {
		case 0, kmip.PaddingMethodPKCS5:
			m.pad = true
		case kmip.PaddingMethodNone:
		default:
			return mode{}, fail(kmip.ResultReasonInvalidField, "CBC pads with PKCS5 or not at all, not %s", ttlv.EnumStr(p.PaddingMethod))
		}
	default:
		return mode{}, fail(kmip.ResultReasonFeatureNotSupported, "keybroker encrypts with AES-GCM or AES-CBC, not %s", ttlv.EnumStr(p.BlockCipherMode))
	}
	return m, nil
}

// separateTag reports whether the GCM tag travels in its own field, which
// exists from KMIP 1.4 on; before, it is appended to the data.
func separateTag(ctx context.Context) bool {
	defer func() { _ = recover() }()
	return ttlv.CompareVersions(kmipserver.GetProtocolVersion(ctx), kmip.V1_4) >= 0
}

// cryptRequest checks what Encrypt and Decrypt (verb) ask alike: the
// object's identifier, the cipher mode, the data's size, and one call, not
// a stream. It returns the identifier and the mode.
func cryptRequest(ctx context.Context, verb, uid string, p *kmip.CryptographicParameters, data []byte, streaming bool) (string, mode, error) {
	uid, err := id(ctx, uid)
	if err != nil {
		return "", mode{}, err
	}
	m, err := cryptMode(p)
	if err != nil {
		return "", mode{}, err
	}
	if len(data) > maxCryptData {
		return "", mode{}, fail(kmip.ResultReasonInvalidField, "the data is %d bytes, at most %d", len(data), maxCryptData)
	}
	if streaming {
		return "", mode{}, fail(kmip.ResultReasonFeatureNotSupported, "keybroker %ss in one call; streaming (Init/Final Indicator) is not supported", verb)
	}
	return uid, m, nil
}

// encrypt encrypts with an Active AES key, with the IV given or one it
// generates and returns. Refused while PAUSED.
func (h *handlers) encrypt(ctx context.Context, req *payloads.EncryptRequestPayload) (*payloads.EncryptResponsePayload, error) {
	streaming := req.InitIndicator != nil || req.FinalIndicator != nil || len(req.CorrelationValue) > 0
	uid, m, err := cryptRequest(ctx, "encrypt", req.UniqueIdentifier, req.CryptographicParameters, req.Data, streaming)
	if err != nil {
		return nil, err
	}
	iv := req.IVCounterNonce
	generated := len(iv) == 0 || m.randomIV
	if generated {
		n := aes.BlockSize
		if m.gcm {
			n = 12
		}
		iv = make([]byte, n)
		_, _ = rand.Read(iv)
	}
	resp := &payloads.EncryptResponsePayload{}
	err = h.core.UseObject(ctx, callOf(ctx).caller, uid, func(info broker.ObjectInfo, key []byte) error {
		resp.UniqueIdentifier = info.ID
		if info.UsageMask != 0 && info.UsageMask&uint32(kmip.CryptographicUsageEncrypt) == 0 {
			return fail(kmip.ResultReasonPermissionDenied, "object %s's Cryptographic Usage Mask does not allow Encrypt", info.ID)
		}
		var err error
		sep := separateTag(ctx)
		wipe.Do(func() { resp.Data, resp.AuthenticatedEncryptionTag, err = sealData(key, m, iv, req, sep) })
		return err
	})
	if err != nil {
		return nil, err
	}
	if generated {
		resp.IVCounterNonce = iv
	}
	return resp, nil
}

// decrypt decrypts with an Active AES key. Refused while PAUSED.
func (h *handlers) decrypt(ctx context.Context, req *payloads.DecryptRequestPayload) (*payloads.DecryptResponsePayload, error) {
	streaming := req.InitIndicator != nil || req.FinalIndicator != nil || len(req.CorrelationValue) > 0
	uid, m, err := cryptRequest(ctx, "decrypt", req.UniqueIdentifier, req.CryptographicParameters, req.Data, streaming)
	if err != nil {
		return nil, err
	}
	iv := req.IVCounterNonce
	if len(iv) == 0 {
		return nil, fail(kmip.ResultReasonMissingData, "Decrypt needs the IV/Counter/Nonce that Encrypt used")
	}
	resp := &payloads.DecryptResponsePayload{}
	err = h.core.UseObject(ctx, callOf(ctx).caller, uid, func(info broker.ObjectInfo, key []byte) error {
		resp.UniqueIdentifier = info.ID
		if info.UsageMask != 0 && info.UsageMask&uint32(kmip.CryptographicUsageDecrypt) == 0 {
			return fail(kmip.ResultReasonPermissionDenied, "object %s's Cryptographic Usage Mask does not allow Decrypt", info.ID)
		}
		var err error
		sep := separateTag(ctx)
		wipe.Do(func() { resp.Data, err = openData(key, m, iv, req, sep) })
		// The plaintext is key material to the engine (libmongocrypt
		// decrypts data keys): encoded into locked memory, then cleared.
		callOf(ctx).wipe.add(&resp.Data)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// schedules are the AES values one call builds: the block and the mode
// made from it each hold a copy of the key schedule. wipe zeroes them.
type schedules []any

func (s *schedules) add(v any) { *s = append(*s, v) }

// wipe is called deferred, so it takes a pointer: the values added after
// the defer statement are the ones to zero.
func (s *schedules) wipe() {
	for _, v := range *s {
		wipe.Value(v)
	}
}

// newBlock is aes.NewCipher, its schedule recorded in s.
func newBlock(key []byte, s *schedules) (cipher.Block, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fail(kmip.ResultReasonCryptographicFailure, "the key is not an AES key")
	}
	s.add(block)
	return block, nil
}

// sealData encrypts req.Data under key; with separate, a GCM tag is
// returned on its own (KMIP 1.4), else appended. Every key schedule it
// builds is zeroed before it returns.
func sealData(key []byte, m mode, iv []byte, req *payloads.EncryptRequestPayload, separate bool) (data, tag []byte, err error) {
	var s schedules
	defer s.wipe()
	block, err := newBlock(key, &s)
	if err != nil {
		return nil, nil, err
	}
	if m.gcm {
		g, err := newGCM(block, len(iv), m.tagLen)
		if err != nil {
			return nil, nil, err
		}
		s.add(g)
		out := g.Seal(nil, iv, req.Data, req.AuthenticatedEncryptionAdditionalData)
		if separate {
			n := len(out) - g.Overhead()
			return out[:n], out[n:], nil
		}
		return out, nil, nil
	}
	if len(iv) != aes.BlockSize {
		return nil, nil, fail(kmip.ResultReasonInvalidField, "a CBC IV is %d bytes, not %d", aes.BlockSize, len(iv))
	}
	in := req.Data
	if m.pad {
		in = pkcs5Pad(req.Data)
		defer clear(in)
	} else if len(in)%aes.BlockSize != 0 {
		return nil, nil, fail(kmip.ResultReasonInvalidField, "without padding the data must be a multiple of %d bytes", aes.BlockSize)
	}
	out := make([]byte, len(in))
	enc := cipher.NewCBCEncrypter(block, iv)
	s.add(enc)
	enc.CryptBlocks(out, in)
	return out, nil, nil
}

// openData decrypts req.Data under key. Every key schedule it builds is
// zeroed before it returns, and so is the plaintext when it fails.
func openData(key []byte, m mode, iv []byte, req *payloads.DecryptRequestPayload, separate bool) ([]byte, error) {
	var s schedules
	defer s.wipe()
	block, err := newBlock(key, &s)
	if err != nil {
		return nil, err
	}
	if m.gcm {
		g, err := newGCM(block, len(iv), m.tagLen)
		if err != nil {
			return nil, err
		}
		s.add(g)
		ct := req.Data
		if separate {
			ct = append(bytes.Clone(req.Data), req.AuthenticatedEncryptionTag...)
		}
		out, err := g.Open(nil, iv, ct, req.AuthenticatedEncryptionAdditionalData)
		if err != nil {
			return nil, fail(kmip.ResultReasonCryptographicFailure, "authentication failed: wrong key, IV, tag or additional data, or altered ciphertext")
		}
		return out, nil
	}
	if len(iv) != aes.BlockSize || len(req.Data) == 0 || len(req.Data)%aes.BlockSize != 0 {
		return nil, fail(kmip.ResultReasonInvalidField, "CBC needs a %d-byte IV and data in whole %d-byte blocks", aes.BlockSize, aes.BlockSize)
	}
	out := make([]byte, len(req.Data))
	dec := cipher.NewCBCDecrypter(block, iv)
	s.add(dec)
	dec.CryptBlocks(out, req.Data)
	if !m.pad {
		return out, nil
	}
	n, ok := pkcs5Unpad(out)
	if !ok {
		clear(out)
		return nil, fail(kmip.ResultReasonCryptographicFailure, "bad PKCS5 padding: wrong key or IV, or altered ciphertext")
	}
	clear(out[n:])
	return out[:n], nil
}

func pkcs5Pad(b []byte) []byte {
	n := aes.BlockSize - len(b)%aes.BlockSize
	out := make([]byte, len(b)+n)
	copy(out, b)
	for i := len(b); i < len(out); i++ {
		out[i] = byte(n)
	}
	return out
}

// pkcs5Unpad returns the unpadded length; it checks the padding in
// constant time for its bytes.
func pkcs5Unpad(b []byte) (int, bool) {
	if len(b) == 0 {
		return 0, false
	}
	n := int(b[len(b)-1])
	if n == 0 || n > aes.BlockSize || n > len(b) {
		return 0, false
	}
	good := 1
	for _, c := range b[len(b)-n:] {
		good &= subtle.ConstantTimeByteEq(c, byte(n))
	}
	return len(b) - n, good == 1
}

// newGCM returns AES-GCM for an IV of ivLen bytes and a tag of tagLen:
// any IV length with a 16-byte tag, 12 bytes with a shorter one.
func newGCM(block cipher.Block, ivLen, tagLen int) (cipher.AEAD, error) {
	var g cipher.AEAD
	var err error
	switch {
	case ivLen == 0:
		err = fail(kmip.ResultReasonInvalidField, "GCM needs an IV")
	case tagLen == 16:
		g, err = cipher.NewGCMWithNonceSize(block, ivLen)
	case ivLen != 12:
		err = fail(kmip.ResultReasonInvalidField, "GCM with a %d-byte tag needs a 12-byte IV, not %d", tagLen, ivLen)
	default:
		g, err = cipher.NewGCMWithTagSize(block, tagLen)
	}
	if err != nil {
		if _, ok := err.(kmipserver.Error); !ok {
			err = fail(kmip.ResultReasonInvalidField, "GCM IV of %d bytes refused", ivLen)
		}
		return nil, err
	}
	return g, nil
}
