// Package memscan searches a live process's memory for byte strings: every
// readable mapping listed in /proc/PID/maps, read through /proc/PID/mem.
// The memory-scan tests use it to prove that no copy of a key is left in the
// broker after a pause, an eviction or a shutdown. Linux only; reading
// another process's memory needs ptrace rights over it (same user and
// dumpable, or CAP_SYS_PTRACE).
//
// Forms lists the encodings a key may hide in (raw, hex, base64,
// base64url), so a scan looks for all of them at once.
package memscan

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// ErrMalformed means a line of /proc/PID/maps could not be read.
var ErrMalformed = errors.New("memscan: malformed maps line")

// Region is one mapping of /proc/PID/maps.
type Region struct {
	Start, End uint64
	Perms      string // "r-xp" and so on
	Offset     uint64
	Path       string // "" for anonymous mappings, "[heap]", "[stack]", a file...
}

// Readable reports whether the mapping can be read.
func (r Region) Readable() bool { return len(r.Perms) > 0 && r.Perms[0] == 'r' }

// maxMapsLine bounds one line of /proc/PID/maps (a path can be long).
const maxMapsLine = 8 << 10

// ParseMaps reads the format of /proc/PID/maps:
//
//	start-end perms offset dev inode [path]
func ParseMaps(r io.Reader) ([]Region, error) {
	var out []Region
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1024), maxMapsLine)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" {
			continue
		}
		reg, err := parseLine(line)
		if err != nil {
			return nil, fmt.Errorf("%w %d: %w", ErrMalformed, n, err)
		}
		out = append(out, reg)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("memscan: reading maps: %w", err)
	}
	return out, nil
}

func parseLine(line string) (Region, error) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return Region{}, fmt.Errorf("%d fields, want at least 5", len(f))
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return Region{}, errors.New("address range without '-'")
	}
	start, err := strconv.ParseUint(lo, 16, 64)
	if err != nil {
		return Region{}, fmt.Errorf("start address: %w", err)
	}
	end, err := strconv.ParseUint(hi, 16, 64)
	if err != nil {
		return Region{}, fmt.Errorf("end address: %w", err)
	}
	if end < start {
		return Region{}, fmt.Errorf("end %#x before start %#x", end, start)
	}
	if len(f[1]) != 4 {
		return Region{}, fmt.Errorf("permissions %q, want 4 characters", f[1])
	}
	off, err := strconv.ParseUint(f[2], 16, 64)
	if err != nil {
		return Region{}, fmt.Errorf("offset: %w", err)
	}
	reg := Region{Start: start, End: end, Perms: f[1], Offset: off}
	if len(f) > 5 {
		reg.Path = strings.Join(f[5:], " ")
	}
	return reg, nil
}

// Forms returns the encodings of key a scan should look for, by name: raw
// bytes, lower- and upper-case hex, and base64 and base64url at each of the
// three alignments a key can have inside a longer encoded string (the
// middle of the encoding, which does not depend on the neighbouring bytes).
func Forms(key []byte) map[string][]byte {
	out := map[string][]byte{
		"raw": bytes.Clone(key),
		"hex": []byte(hex.EncodeToString(key)),
		"HEX": []byte(strings.ToUpper(hex.EncodeToString(key))),
	}
	for shift := range 3 {
		if len(key)-shift < 6 {
			break
		}
		part := key[shift : shift+(len(key)-shift)/3*3]
		out["base64@"+strconv.Itoa(shift)] = []byte(base64.StdEncoding.EncodeToString(part))
		out["base64url@"+strconv.Itoa(shift)] = []byte(base64.URLEncoding.EncodeToString(part))
	}
	return out
}

// Needle is one byte string to look for, under a name for the report.
type Needle struct {
	Name  string
	Bytes []byte
}

// Hit counts the copies of one needle, and where the first few were.
type Hit struct {
	Name  string
	Count int
	Where []string // "0xADDR path" of up to 4 copies
	// Before holds, for the same copies, up to 48 bytes that precede
	// each one (quoted), to tell what structure holds it.
	Before []string
	// Addrs are the addresses of every copy.
	Addrs []uint64
}

// Result is what one scan found.
type Result struct {
	Hits          []Hit // needles found at least once
	BytesScanned  uint64
	RegionsRead   int
	RegionsFailed int // readable mappings the kernel refused ([vvar] and the like)
}

// Total is the number of copies of every needle together.
func (r Result) Total() int {
	n := 0
	for _, h := range r.Hits {
		n += h.Count
	}
	return n
}

// chunk is how much of a mapping is read at a time.
const chunk = 1 << 20

// Scan reads every readable mapping of process pid and counts the copies
// of each needle. Needles must be non-empty and shorter than 4 KiB.
func Scan(pid int, needles []Needle) (Result, error) {
	maxLen := 0
	for _, n := range needles {
		if len(n.Bytes) == 0 || len(n.Bytes) >= 4096 {
			return Result{}, fmt.Errorf("memscan: needle %q is %d bytes, want 1 to 4095", n.Name, len(n.Bytes))
		}
		maxLen = max(maxLen, len(n.Bytes))
	}
	mf, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return Result{}, fmt.Errorf("memscan: %w", err)
	}
	regions, err := ParseMaps(mf)
	mf.Close()
	if err != nil {
		return Result{}, err
	}
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return Result{}, fmt.Errorf("memscan: %w (reading another process's memory needs ptrace rights over it)", err)
	}
	defer mem.Close()

	hits := make([]Hit, len(needles))
	for i, n := range needles {
		hits[i].Name = n.Name
	}
	var res Result
	buf := make([]byte, chunk+maxLen)
	for _, reg := range regions {
		if !reg.Readable() || reg.Path == "[vsyscall]" {
			continue
		}
		ok := scanRegion(mem, reg, buf, chunk, maxLen, needles, hits, &res.BytesScanned)
		if ok {
			res.RegionsRead++
		} else {
			res.RegionsFailed++
		}
	}
	clear(buf)
	for _, h := range hits {
		if h.Count > 0 {
			res.Hits = append(res.Hits, h)
		}
	}
	return res, nil
}

// scanRegion searches one mapping chunk by chunk; consecutive chunks
// overlap by maxLen-1 bytes so a copy across a chunk border is seen once.
// buf holds size+maxLen bytes.
func scanRegion(mem io.ReaderAt, reg Region, buf []byte, size, maxLen int, needles []Needle, hits []Hit, scanned *uint64) bool {
	carry := 0
	for pos := reg.Start; pos < reg.End; {
		n := min(uint64(size), reg.End-pos)
		got, err := mem.ReadAt(buf[carry:carry+int(n)], int64(pos))
		if got == 0 && err != nil {
			return pos != reg.Start
		}
		*scanned += uint64(got)
		data := buf[:carry+got]
		base := pos - uint64(carry)
		for i, nd := range needles {
			// Skip matches that lie wholly inside the carried-over bytes:
			// the previous chunk counted them.
			from := 0
			for {
				j := bytes.Index(data[from:], nd.Bytes)
				if j < 0 {
					break
				}
				at := from + j
				if at+len(nd.Bytes) > carry {
					hits[i].Count++
					hits[i].Addrs = append(hits[i].Addrs, base+uint64(at))
					if len(hits[i].Where) < 4 {
						hits[i].Where = append(hits[i].Where, fmt.Sprintf("%#x %s", base+uint64(at), regionName(reg)))
						hits[i].Before = append(hits[i].Before, escape(data[max(0, at-48):at]))
					}
				}
				from = at + 1
			}
		}
		pos += uint64(got)
		keep := min(maxLen-1, len(data))
		copy(buf, data[len(data)-keep:])
		carry = keep
		if got < int(n) {
			return true
		}
	}
	return true
}

// escape renders b with printable ASCII kept and other bytes as \xNN,
// without ever converting b to a string (which would leave a raw copy of
// whatever b holds behind in this process).
func escape(b []byte) string {
	const hexDigits = "0123456789abcdef"
	out := make([]byte, 0, 4*len(b))
	for _, c := range b {
		if c >= 0x20 && c < 0x7f && c != '\\' {
			out = append(out, c)
			continue
		}
		out = append(out, '\\', 'x', hexDigits[c>>4], hexDigits[c&15])
	}
	return string(out)
}

func regionName(r Region) string {
	if r.Path == "" {
		return "[anon " + r.Perms + "]"
	}
	return r.Path
}

// Locked returns VmLck of process pid in bytes, from /proc/PID/status.
func Locked(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("memscan: %w", err)
	}
	for line := range strings.Lines(string(b)) {
		rest, ok := strings.CutPrefix(line, "VmLck:")
		if !ok {
			continue
		}
		kb, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
		n, err := strconv.ParseUint(kb, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("memscan: VmLck %q: %w", strings.TrimSpace(rest), err)
		}
		return n << 10, nil
	}
	return 0, errors.New("memscan: no VmLck line in /proc/PID/status")
}

// LockedRanges returns the mappings of process pid that have locked pages
// (a "Locked:" line above 0 kB in /proc/PID/smaps).
func LockedRanges(pid int) ([]Region, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return nil, fmt.Errorf("memscan: %w", err)
	}
	var out []Region
	var cur Region
	have := false
	for line := range strings.Lines(string(b)) {
		line = strings.TrimRight(line, "\n")
		if rest, ok := strings.CutPrefix(line, "Locked:"); ok {
			kb, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
			if n, err := strconv.ParseUint(kb, 10, 64); err == nil && n > 0 && have {
				out = append(out, cur)
			}
			continue
		}
		// A mapping line starts with a hex range; field lines with "Name:".
		if f := strings.Fields(line); len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			if r, err := parseLine(line); err == nil {
				cur, have = r, true
			}
		}
	}
	return out, nil
}

// In reports whether addr lies in one of regions.
func In(addr uint64, regions []Region) bool {
	for _, r := range regions {
		if addr >= r.Start && addr < r.End {
			return true
		}
	}
	return false
}
