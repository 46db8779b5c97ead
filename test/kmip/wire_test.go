package kmip_test

import (
	"fmt"
	"strings"
	"testing"
)

// node is one TTLV item of a response, as kmipflow.py's raw parser reports it.
type node struct {
	Tag   string `json:"tag"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

func (n node) children() []node {
	items, _ := n.Value.([]any)
	out := make([]node, 0, len(items))
	for _, it := range items {
		m, _ := it.(map[string]any)
		c := node{Value: m["value"]}
		c.Tag, _ = m["tag"].(string)
		c.Type, _ = m["type"].(string)
		out = append(out, c)
	}
	return out
}

func (n node) tags() []string {
	var s []string
	for _, c := range n.children() {
		s = append(s, c.Tag)
	}
	return s
}

// child is the only child with tag; it fails the test otherwise.
func (n node) child(t *testing.T, tag string) node {
	t.Helper()
	var found []node
	for _, c := range n.children() {
		if c.Tag == tag {
			found = append(found, c)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%s holds %d %s, want 1 (children: %s)", n.Tag, len(found), tag, strings.Join(n.tags(), ", "))
	}
	return found[0]
}

func (n node) has(tag string) bool {
	for _, c := range n.children() {
		if c.Tag == tag {
			return true
		}
	}
	return false
}

func (n node) int(t *testing.T) int {
	t.Helper()
	f, ok := n.Value.(float64)
	if !ok {
		t.Fatalf("%s is %s %v, want a number", n.Tag, n.Type, n.Value)
	}
	return int(f)
}

// KMIP enumeration values the checks compare with.
const (
	opCreate        = 0x01
	opGet           = 0x0A
	opGetAttributes = 0x0B
	opDestroy       = 0x14
	statusSuccess   = 0
	statusFailed    = 1
	reasonNotFound  = 0x01
	keyFormatRaw    = 0x01
	algorithmAES    = 0x03
	stateActive     = 0x02
)

// checkMessage checks what mongod's and libkmip's parsers need of every
// response, and returns its one batch item: the header is Protocol Version
// (the request's), Time Stamp, Batch Count 1, in that order; the batch item
// echoes the Operation and holds a Result Status; a failure holds a Result
// Reason and a non-empty Result Message.
func checkMessage(t *testing.T, raw []node, version string, op, status int) node {
	t.Helper()
	if len(raw) != 1 || raw[0].Tag != "RESPONSE_MESSAGE" {
		t.Fatalf("response is %v, want one RESPONSE_MESSAGE", raw)
	}
	msg := raw[0]
	if got := strings.Join(msg.tags(), ","); got != "RESPONSE_HEADER,BATCH_ITEM" {
		t.Fatalf("RESPONSE_MESSAGE holds %s, want RESPONSE_HEADER,BATCH_ITEM", got)
	}
	h := msg.child(t, "RESPONSE_HEADER")
	if got := strings.Join(h.tags(), ","); got != "PROTOCOL_VERSION,TIME_STAMP,BATCH_COUNT" {
		t.Fatalf("RESPONSE_HEADER holds %s, want PROTOCOL_VERSION,TIME_STAMP,BATCH_COUNT", got)
	}
	pv := h.child(t, "PROTOCOL_VERSION")
	if got := fmt.Sprintf("%d.%d", pv.child(t, "PROTOCOL_VERSION_MAJOR").int(t), pv.child(t, "PROTOCOL_VERSION_MINOR").int(t)); got != version {
		t.Fatalf("response Protocol Version %s, want the request's %s", got, version)
	}
	if ts := h.child(t, "TIME_STAMP"); ts.Type != "DateTime" || ts.int(t) <= 0 {
		t.Fatalf("Time Stamp is %s %v, want a DateTime", ts.Type, ts.Value)
	}
	if n := h.child(t, "BATCH_COUNT").int(t); n != 1 {
		t.Fatalf("Batch Count %d, want 1", n)
	}
	item := msg.child(t, "BATCH_ITEM")
	if got := item.child(t, "OPERATION").int(t); got != op {
		t.Fatalf("batch item Operation %#x, want the request's %#x echoed", got, op)
	}
	if got := item.child(t, "RESULT_STATUS").int(t); got != status {
		t.Fatalf("Result Status %d, want %d", got, status)
	}
	if status != statusSuccess {
		item.child(t, "RESULT_REASON")
		if m, _ := item.child(t, "RESULT_MESSAGE").Value.(string); m == "" {
			t.Fatal("a failure's Result Message is empty")
		}
	}
	return item
}

// TestWireShapes checks the bytes of the responses mongod and Percona parse,
// at KMIP 1.2 and 1.0, and with Percona's request header.
func TestWireShapes(t *testing.T) {
	t.Parallel()
	d := sharedDev(t)
	for _, tc := range []struct {
		name, version string
		args          []string
	}{
		{"mongod KMIP 1.2", "1.2", nil},
		{"mongod KMIP 1.0", "1.0", nil},
		{"Percona header KMIP 1.0", "1.0", []string{"--percona-header"}},
	} {
		version := tc.version
		t.Run(tc.name, func(t *testing.T) {
			var r struct {
				UID           string `json:"uid"`
				Create        []node `json:"create"`
				Get           []node `json:"get"`
				State         []node `json:"state"`
				GetUnknown    []node `json:"get_unknown"`
				StateUnknown  []node `json:"state_unknown"`
				DestroyActive []node `json:"destroy_active"`
			}
			flow(t, engineEndpoint(d), &r, "wire", append([]string{"--version", version}, tc.args...)...)
			checkMessage(t, r.Create, version, opCreate, statusSuccess)

			// Get: Object Type, Unique Identifier, Symmetric Key; its key
			// block Raw, then Key Value (32 bytes), then Algorithm and
			// Length, and no Key Wrapping Data.
			get := checkMessage(t, r.Get, version, opGet, statusSuccess).child(t, "RESPONSE_PAYLOAD")
			if got := strings.Join(get.tags(), ","); got != "OBJECT_TYPE,UNIQUE_IDENTIFIER,SYMMETRIC_KEY" {
				t.Fatalf("Get payload holds %s, want OBJECT_TYPE,UNIQUE_IDENTIFIER,SYMMETRIC_KEY", got)
			}
			if id := get.child(t, "UNIQUE_IDENTIFIER"); id.Type != "TextString" || id.Value != r.UID {
				t.Fatalf("Get's Unique Identifier is %s %v, want Text String %s", id.Type, id.Value, r.UID)
			}
			kb := get.child(t, "SYMMETRIC_KEY").child(t, "KEY_BLOCK")
			if got := strings.Join(kb.tags(), ","); got != "KEY_FORMAT_TYPE,KEY_VALUE,CRYPTOGRAPHIC_ALGORITHM,CRYPTOGRAPHIC_LENGTH" {
				t.Fatalf("Key Block holds %s, want KEY_FORMAT_TYPE,KEY_VALUE,CRYPTOGRAPHIC_ALGORITHM,CRYPTOGRAPHIC_LENGTH (no Key Wrapping Data)", got)
			}
			if f := kb.child(t, "KEY_FORMAT_TYPE").int(t); f != keyFormatRaw {
				t.Fatalf("Key Format Type %d, want Raw (1)", f)
			}
			if a, l := kb.child(t, "CRYPTOGRAPHIC_ALGORITHM").int(t), kb.child(t, "CRYPTOGRAPHIC_LENGTH").int(t); a != algorithmAES || l != 256 {
				t.Fatalf("Cryptographic Algorithm %d Length %d, want AES (3) 256", a, l)
			}
			if m, _ := kb.child(t, "KEY_VALUE").child(t, "KEY_MATERIAL").Value.(string); len(m) != 64 {
				t.Fatalf("Key Material is %d bytes, want 32", len(m)/2)
			}

			// Get Attributes(State): exactly one attribute, the State.
			st := checkMessage(t, r.State, version, opGetAttributes, statusSuccess).child(t, "RESPONSE_PAYLOAD")
			if st.child(t, "UNIQUE_IDENTIFIER").Value != r.UID {
				t.Fatalf("Get Attributes answered for another Unique Identifier than %s", r.UID)
			}
			attr := st.child(t, "ATTRIBUTE")
			if name := attr.child(t, "ATTRIBUTE_NAME").Value; name != "State" {
				t.Fatalf("Get Attributes(State) returned attribute %v, want State", name)
			}
			if v := attr.child(t, "ATTRIBUTE_VALUE").int(t); v != stateActive {
				t.Fatalf("State %d, want Active (2)", v)
			}

			// Failures echo the Operation with a reason and a message.
			it := checkMessage(t, r.GetUnknown, version, opGet, statusFailed)
			if got := it.child(t, "RESULT_REASON").int(t); got != reasonNotFound {
				t.Fatalf("Get of an unknown identifier: Result Reason %#x, want Item Not Found", got)
			}
			it = checkMessage(t, r.StateUnknown, version, opGetAttributes, statusFailed)
			if got := it.child(t, "RESULT_REASON").int(t); got != reasonNotFound {
				t.Fatalf("Get Attributes of an unknown identifier: Result Reason %#x, want Item Not Found", got)
			}
			it = checkMessage(t, r.DestroyActive, version, opDestroy, statusFailed)
			if it.has("RESPONSE_PAYLOAD") && len(it.child(t, "RESPONSE_PAYLOAD").children()) > 0 {
				t.Fatal("a failed Destroy carries a payload")
			}
		})
	}
}
