package wipe

import (
	"reflect"
	"unsafe"
)

// Value zeroes the memory a cipher value points to, such as the key
// schedule of an AES block (crypto/aes.NewCipher) or of a mode built on it
// (cipher.NewGCM, cipher.NewCBCEncrypter: each holds its own copy of the
// schedule), and reports whether it found any. It only touches a pointer
// (or a struct of one pointer) to pointer-free memory, the layout of the
// standard library's AES values on every platform except s390x; anything
// else is left alone and Value reports false. v must not be used after.
func Value(v any) bool {
	m := Memory(v)
	clear(m)
	return m != nil
}

// Memory returns the memory Value would zero, nil when there is none.
func Memory(v any) []byte {
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Struct && rv.NumField() == 1 {
		rv = rv.Field(0)
	}
	if rv.Kind() != reflect.Pointer || rv.IsNil() {
		return nil
	}
	t := rv.Type().Elem()
	if !pointerFree(t) || t.Size() == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(rv.UnsafePointer()), t.Size())
}

// pointerFree reports whether values of t hold no pointers, so zeroing
// their bytes cannot confuse the garbage collector.
func pointerFree(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Bool, reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Complex64, reflect.Complex128:
		return true
	case reflect.Array:
		return pointerFree(t.Elem())
	case reflect.Struct:
		for i := range t.NumField() {
			if !pointerFree(t.Field(i).Type) {
				return false
			}
		}
		return true
	}
	return false
}
