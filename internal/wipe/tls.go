package wipe

import (
	"bytes"
	"crypto/tls"
	"reflect"
)

// crypto/tls decrypts each record in place in the connection's rawInput
// buffer and hands the plaintext out from there (its input reader), so
// the last request a server read stays in that buffer until a later
// record overwrites it, if one ever does. crypto/tls has no API to clear
// it; these functions find the fields by name and type and leave them
// alone if a Go release renames them.

var (
	bytesBufferType = reflect.TypeFor[bytes.Buffer]()
	bytesReaderType = reflect.TypeFor[bytes.Reader]()
)

// ClearTLSInput zeroes the records c has decrypted and that have been read
// in full, and reports whether it did. It must be called by the goroutine
// that reads c, between reads: it does nothing while decrypted data is
// still waiting to be read, and never touches records not yet decrypted.
func ClearTLSInput(c *tls.Conn) bool {
	v := reflect.ValueOf(c).Elem()
	in := v.FieldByName("input")
	if !in.IsValid() || in.Type() != bytesReaderType {
		return false
	}
	s, i := in.FieldByName("s"), in.FieldByName("i")
	if !s.IsValid() || !i.IsValid() || s.Kind() != reflect.Slice || i.Kind() != reflect.Int64 {
		return false
	}
	if i.Int() < int64(s.Len()) {
		return false // unread plaintext
	}
	buf, off, ok := bufferFields(v.FieldByName("rawInput"))
	if !ok {
		return false
	}
	clear(buf[:off])
	return true
}

// ClearTLSBuffers zeroes every record buffer of a closed c: what it read
// (rawInput, the handshake buffer) over their whole capacity.
func ClearTLSBuffers(c *tls.Conn) {
	v := reflect.ValueOf(c).Elem()
	for _, name := range []string{"rawInput", "hand"} {
		if buf, _, ok := bufferFields(v.FieldByName(name)); ok {
			clear(buf[:cap(buf)])
		}
	}
}

// bufferFields returns a bytes.Buffer's slice and read offset.
func bufferFields(f reflect.Value) ([]byte, int, bool) {
	if !f.IsValid() || f.Type() != bytesBufferType {
		return nil, 0, false
	}
	buf, off := f.FieldByName("buf"), f.FieldByName("off")
	if !buf.IsValid() || buf.Kind() != reflect.Slice || buf.Type().Elem().Kind() != reflect.Uint8 || !off.IsValid() || off.Kind() != reflect.Int {
		return nil, 0, false
	}
	b := buf.Bytes()
	o := int(off.Int())
	if o > len(b) {
		return nil, 0, false
	}
	return b, o, true
}
