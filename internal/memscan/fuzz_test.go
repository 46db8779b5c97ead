package memscan

import (
	"strings"
	"testing"
)

// FuzzParseMaps: ParseMaps never panics, and what it accepts is well formed.
func FuzzParseMaps(f *testing.F) {
	f.Add("00400000-00452000 r-xp 00000000 08:02 173521 /usr/bin/x\n7f00-7f10 rw-p 0 00:00 0\n")
	f.Add("1000-2000 ---p 0 0:0 0 [stack]\n")
	f.Add("ffffffffffffffff-0 r 0\n")
	f.Fuzz(func(t *testing.T, in string) {
		regs, err := ParseMaps(strings.NewReader(in))
		if err != nil {
			return
		}
		for _, r := range regs {
			if r.End < r.Start || len(r.Perms) != 4 {
				t.Fatalf("ParseMaps(%q) accepted %+v", in, r)
			}
		}
	})
}
