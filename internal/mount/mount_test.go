package mount

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseMountInfo(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    []string
		wantErr string
	}{
		{"typical", "21 26 0:20 / /proc rw,relatime - proc proc rw\n26 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n",
			[]string{"/proc", "/"}, ""},
		{"escaped space", `40 26 8:17 / /var/lib/key\040store rw - ext4 /dev/sdb1 rw` + "\n", []string{"/var/lib/key store"}, ""},
		{"blank lines", "\n\n21 26 0:20 / /proc rw - proc proc rw\n", []string{"/proc"}, ""},
		{"empty", "", nil, ""},
		{"too few fields", "21 26 0:20 /\n", nil, "line 1: 4 fields"},
		{"relative", "21 26 0:20 / proc rw - proc proc rw\n", nil, "not absolute"},
		{"truncated escape", `21 26 0:20 / /a\04 rw - proc proc rw`, nil, "truncated escape"},
		{"bad escape", `21 26 0:20 / /a\09x rw - proc proc rw`, nil, "bad escape"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMountInfo(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseMountInfo err = %v, want ErrFormat containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("ParseMountInfo = %q, %v; want %q, nil", got, err, tc.want)
			}
		})
	}
}

func TestIsMountPoint(t *testing.T) {
	dir := t.TempDir()
	table := filepath.Join(dir, "mountinfo")
	data := "26 1 8:1 / / rw - ext4 /dev/sda1 rw\n40 26 8:17 / " + dir + "/data rw - ext4 /dev/sdb1 rw\n"
	if err := os.WriteFile(table, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"data", "empty"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(dir, "data"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path    string
		want    bool
		wantErr bool
	}{
		{filepath.Join(dir, "data"), true, false},
		{filepath.Join(dir, "data") + "/", true, false},
		{filepath.Join(dir, "link"), true, false},
		{filepath.Join(dir, "empty"), false, false},
		{"/", true, false},
		{filepath.Join(dir, "missing"), false, true},
	}
	for _, tc := range tests {
		got, err := isMountPoint(table, tc.path)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("IsMountPoint(%q) = %v, %v; want %v, error %v", tc.path, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestIsMountPointLive reads this machine's real mount table.
func TestIsMountPointLive(t *testing.T) {
	if _, err := os.Stat(mountInfo); err != nil {
		t.Skipf("no %s here: %v", mountInfo, err)
	}
	if ok, err := IsMountPoint("/"); !ok || err != nil {
		t.Errorf("IsMountPoint(/) = %v, %v; want true, nil", ok, err)
	}
	if ok, err := IsMountPoint(t.TempDir()); ok || err != nil {
		t.Errorf("IsMountPoint(a fresh temp dir) = %v, %v; want false, nil", ok, err)
	}
}

func FuzzParseMountInfo(f *testing.F) {
	f.Add("21 26 0:20 / /proc rw,relatime - proc proc rw\n")
	f.Add(`40 26 8:17 / /var/lib/key\040store rw - ext4 /dev/sdb1 rw`)
	f.Add(`1 2 3 4 /\`)
	f.Fuzz(func(t *testing.T, in string) {
		points, err := ParseMountInfo(strings.NewReader(in))
		if err != nil {
			if !errors.Is(err, ErrFormat) && !strings.HasPrefix(err.Error(), "mount: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
			return
		}
		for _, p := range points {
			if !strings.HasPrefix(p, "/") {
				t.Fatalf("mount point %q is not absolute", p)
			}
		}
	})
}
