package kmip

import (
	"slices"

	"github.com/ovh/kmip-go"
	"github.com/ovh/kmip-go/ttlv"

	"github.com/keybroker/keybroker/internal/secret"
	"github.com/keybroker/keybroker/internal/wipe"
)

// replyPool holds the buffers of key-carrying responses too big for a
// page (a Decrypt of up to 1 MiB); it zeroes them when they come back.
var replyPool = wipe.NewPool()

// marshal is kmip-go's TTLV encoder; tests watch it.
var marshal = ttlv.MarshalTTLV

// encoded is an encoded response; release zeroes and recycles its buffer
// (the connection has zeroed the bytes already, once written).
type encoded struct {
	data    []byte
	release func()
}

// encode encodes resp. Without secrets it is ttlv.MarshalTTLV. With them
// (the payload fields that hold key bytes: a Get's Key Material, a
// Decrypt's Data), the key bytes never enter kmip-go's encoder, whose
// buffer grows by append and leaves each outgrown copy to the garbage
// collector: resp is encoded twice with every secret field swapped for
// a placeholder of its length, zeros then the byte i+1 for secret i; the
// two encodings differ exactly where the secrets go, and the first is
// copied into a locked page (or a zeroing pool buffer when it is over a
// page) where the secrets are then written in.
func encode(resp *kmip.ResponseMessage, secrets []*[]byte) encoded {
	live := secrets[:0:0]
	for _, p := range secrets {
		// A field listed twice would be saved as its own placeholder.
		if p != nil && len(*p) > 0 && !slices.Contains(live, p) {
			live = append(live, p)
		}
	}
	if len(live) == 0 {
		return encoded{data: marshal(resp), release: func() {}}
	}
	if len(live) < 256 {
		if e, ok := encodeSecrets(resp, live); ok {
			return e
		}
	}
	// Unreachable unless kmip-go encodes a byte string other than as its
	// bytes: send the plain encoding (correct, but its garbage holds the
	// key until reused) and zero it after the write like the rest.
	return encoded{data: marshal(resp), release: func() {}}
}

func encodeSecrets(resp *kmip.ResponseMessage, secrets []*[]byte) (encoded, bool) {
	orig := make([][]byte, len(secrets))
	for i, p := range secrets {
		orig[i] = *p
		*p = make([]byte, len(orig[i]))
	}
	zeros := marshal(resp)
	for i, p := range secrets {
		b := *p
		for j := range b {
			b[j] = byte(i + 1)
		}
	}
	marks := marshal(resp)
	for i, p := range secrets {
		*p = orig[i]
	}
	if len(zeros) != len(marks) {
		return encoded{}, false
	}
	data, release := replyBuffer(len(zeros))
	copy(data, zeros)
	for j := 0; j < len(zeros); j++ {
		if zeros[j] == marks[j] {
			continue
		}
		i := int(marks[j]) - 1
		if i < 0 || i >= len(secrets) || j+len(orig[i]) > len(data) || !isRun(zeros[j:j+len(orig[i])], 0) || !isRun(marks[j:j+len(orig[i])], marks[j]) {
			release()
			return encoded{}, false
		}
		copy(data[j:], orig[i])
		j += len(orig[i]) - 1
	}
	return encoded{data: data, release: release}, true
}

func isRun(b []byte, v byte) bool {
	for _, c := range b {
		if c != v {
			return false
		}
	}
	return true
}

// replyBuffer returns n bytes in a locked page when they fit in one, else
// from replyPool, and the function that zeroes and recycles them.
func replyBuffer(n int) ([]byte, func()) {
	if n <= secret.PageSize() {
		if p, locked := secret.Page(); p != nil {
			return p[:n], func() { secret.Release(p, locked) }
		}
	}
	b := replyPool.Get(n)
	return *b, func() { replyPool.Put(b) }
}
