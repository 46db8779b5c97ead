// Package mount tells whether a path is a mount point, from the kernel's
// mount table (/proc/self/mountinfo). keybroker uses it to refuse to create
// or serve a keystore on the root disk when it belongs on a data volume that
// is not mounted yet.
package mount

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrFormat is returned for a mount table line that cannot be read.
var ErrFormat = errors.New("mount: malformed mountinfo line")

// maxLine bounds one mountinfo line; the kernel's are far shorter.
const maxLine = 64 << 10

// mountInfo is the kernel's mount table of this process's mount namespace.
const mountInfo = "/proc/self/mountinfo"

// IsMountPoint reports whether path, made absolute and with symbolic links
// resolved, is the mount point of a mounted file system.
func IsMountPoint(path string) (bool, error) { return isMountPoint(mountInfo, path) }

// isMountPoint is IsMountPoint reading the mount table table.
func isMountPoint(table, path string) (bool, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return false, fmt.Errorf("mount: %w", err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return false, fmt.Errorf("mount: %w", err)
	}
	f, err := os.Open(table)
	if err != nil {
		return false, fmt.Errorf("mount: reading the mount table: %w", err)
	}
	defer f.Close()
	points, err := ParseMountInfo(f)
	if err != nil {
		return false, err
	}
	for _, p := range points {
		if p == real {
			return true, nil
		}
	}
	return false, nil
}

// ParseMountInfo returns the mount points listed in a mountinfo table
// (proc(5)): the fifth field of each line, with the kernel's octal escapes
// (\040 for a space) decoded.
func ParseMountInfo(r io.Reader) ([]string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), maxLine)
	var points []string
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		fields := strings.Fields(line)
		// id parent major:minor root mount-point options [optional...] - fstype source super-options
		if len(fields) < 5 {
			return nil, fmt.Errorf("%w %d: %d fields, want at least 5", ErrFormat, n, len(fields))
		}
		p, err := unescape(fields[4])
		if err != nil {
			return nil, fmt.Errorf("%w %d: mount point: %v", ErrFormat, n, err)
		}
		if !strings.HasPrefix(p, "/") {
			return nil, fmt.Errorf("%w %d: mount point %q is not absolute", ErrFormat, n, clip(p))
		}
		points = append(points, p)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("mount: reading the mount table: %w", err)
	}
	return points, nil
}

// unescape decodes the kernel's \ooo octal escapes.
func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("truncated escape in %q", clip(s))
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape %q in %q", s[i:i+4], clip(s))
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}

func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}
