package memscan

import (
	"bytes"
	"crypto/rand"
	"os"
	"runtime"
	"strings"
	"testing"
)

func TestParseMaps(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []Region
		wantErr bool
	}{
		{
			name: "file and anonymous",
			in: "00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus daemon\n" +
				"7f0000000000-7f0000021000 rw-p 00000000 00:00 0 \n",
			want: []Region{
				{Start: 0x400000, End: 0x452000, Perms: "r-xp", Path: "/usr/bin/dbus daemon"},
				{Start: 0x7f0000000000, End: 0x7f0000021000, Perms: "rw-p"},
			},
		},
		{name: "no range dash", in: "00400000 r-xp 0 08:02 1\n", wantErr: true},
		{name: "bad hex", in: "zz-00452000 r-xp 0 08:02 1\n", wantErr: true},
		{name: "end before start", in: "2000-1000 r-xp 0 08:02 1\n", wantErr: true},
		{name: "short perms", in: "1000-2000 r 0 08:02 1\n", wantErr: true},
		{name: "too few fields", in: "1000-2000 r-xp 0\n", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMaps(strings.NewReader(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("ParseMaps err = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			if len(got) != len(tc.want) {
				t.Fatalf("ParseMaps = %+v, want %+v", got, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Errorf("region %d = %+v, want %+v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestForms(t *testing.T) {
	key := bytes.Repeat([]byte{0xfb}, 32)
	f := Forms(key)
	for _, name := range []string{"raw", "hex", "HEX", "base64@0", "base64@1", "base64@2", "base64url@0", "base64url@1", "base64url@2"} {
		if len(f[name]) == 0 {
			t.Errorf("Forms()[%q] is empty", name)
		}
	}
	if !bytes.Contains(f["base64url@0"], []byte("-")) || !bytes.Contains(f["base64@0"], []byte("+")) {
		t.Errorf("base64 forms %q / %q do not use their alphabets", f["base64@0"], f["base64url@0"])
	}
}

// TestScanRegionBorders counts copies at the start, the end and across
// every chunk border of a region, with chunks much smaller than the region.
func TestScanRegionBorders(t *testing.T) {
	needle := []byte("0123456789abcdef")
	tests := []struct {
		name  string
		at    []int
		size  int
		total int
	}{
		{name: "start and end", at: []int{0, 1000 - 16}, size: 64, total: 1000},
		{name: "across borders", at: []int{60, 120, 250}, size: 64, total: 1000},
		{name: "overlapping copies", at: []int{300, 316}, size: 20, total: 1000},
		{name: "none", size: 64, total: 1000},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mem := make([]byte, tc.total)
			for _, at := range tc.at {
				copy(mem[at:], needle)
			}
			hits := []Hit{{Name: "n"}}
			var scanned uint64
			buf := make([]byte, tc.size+len(needle))
			reg := Region{Start: 0, End: uint64(tc.total), Perms: "rw-p"}
			if !scanRegion(bytes.NewReader(mem), reg, buf, tc.size, len(needle), []Needle{{Name: "n", Bytes: needle}}, hits, &scanned) {
				t.Fatal("scanRegion reported an unreadable region")
			}
			if hits[0].Count != len(tc.at) || scanned != uint64(tc.total) {
				t.Errorf("scanRegion count = %d over %d bytes, want %d over %d (where: %v)", hits[0].Count, scanned, len(tc.at), tc.total, hits[0].Where)
			}
		})
	}
}

// TestScanSelf reads this process's own memory, where planted copies of a
// needle must be found. (Exact counts are for TestScanRegionBorders: in its
// own process a scan also meets the copies its read buffer makes.)
func TestScanSelf(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("memscan reads /proc")
	}
	needle := make([]byte, 32)
	if _, err := rand.Read(needle); err != nil {
		t.Fatal(err)
	}
	plant := make([]byte, 3*len(needle))
	copy(plant[5:], needle)
	copy(plant[5+len(needle)+3:], needle)
	res, err := Scan(os.Getpid(), []Needle{{Name: "probe", Bytes: needle}})
	if err != nil {
		t.Fatalf("Scan(self) err = %v, want nil", err)
	}
	if res.RegionsRead == 0 || res.BytesScanned == 0 {
		t.Fatalf("Scan(self) read %d regions, %d bytes; want some", res.RegionsRead, res.BytesScanned)
	}
	if n := res.Total(); n < 3 {
		t.Errorf("Scan(self) = %d copies, want at least 3 (the needle and 2 planted)", n)
	}
	runtime.KeepAlive(plant)
	if _, err := Locked(os.Getpid()); err != nil {
		t.Errorf("Locked(self) err = %v, want nil", err)
	}
}

func TestLockedRangesSelf(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("memscan reads /proc")
	}
	if _, err := LockedRanges(os.Getpid()); err != nil {
		t.Fatalf("LockedRanges(self) err = %v, want nil", err)
	}
	regs := []Region{{Start: 0x1000, End: 0x2000}}
	if !In(0x1000, regs) || In(0x2000, regs) || In(0xfff, regs) {
		t.Errorf("In() bounds are not [Start, End)")
	}
}
