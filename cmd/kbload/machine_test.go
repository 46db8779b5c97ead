package main

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestCPUModel(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{
			name: "x86",
			in:   "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R)   Platinum 8370C CPU @ 2.80GHz\n\nprocessor\t: 1\nmodel name\t: Other\n",
			want: "Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz",
		},
		{
			name: "arm64 with a Model line",
			in:   "processor\t: 0\nBogoMIPS\t: 108.00\nCPU part\t: 0xd0c\n\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n",
			want: "Raspberry Pi 5 Model B Rev 1.0",
		},
		{name: "ppc64le", in: "processor\t: 0\ncpu\t\t: POWER9 (architected), altivec supported\n", want: "POWER9 (architected), altivec supported"},
		{name: "empty model name falls through", in: "model name\t:\ncpu\t: RISC-V\n", want: "RISC-V"},
		{name: "nothing known", in: "processor\t: 0\nflags\t: fpu vme\n", want: ""},
		{name: "not cpuinfo", in: "\x00\xff garbage", want: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := cpuModel([]byte(tc.in)); got != tc.want {
				t.Errorf("cpuModel(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestDescribeMachine(t *testing.T) {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	m := describeMachine(exe)
	if m.CPUs != runtime.NumCPU() || m.GoVersion != runtime.Version() {
		t.Errorf("describeMachine() = %+v, want %d CPUs and %s", m, runtime.NumCPU(), runtime.Version())
	}
	// The test binary is a Go binary too: its version is readable.
	if m.BrokerGoVersion != runtime.Version() {
		t.Errorf("describeMachine(test binary).BrokerGoVersion = %q, want %q", m.BrokerGoVersion, runtime.Version())
	}
	if runtime.GOOS == "linux" && m.CPUModel == "unknown CPU" {
		t.Errorf("describeMachine().CPUModel = %q, want the model from /proc/cpuinfo", m.CPUModel)
	}
	if m := describeMachine("/nonexistent"); !strings.Contains(m.BrokerGoVersion, "unknown") {
		t.Errorf("describeMachine(/nonexistent).BrokerGoVersion = %q, want it to say unknown", m.BrokerGoVersion)
	}
}

func FuzzCPUModel(f *testing.F) {
	f.Add([]byte("model name\t: AMD EPYC 7763 64-Core Processor\n"))
	f.Add([]byte("Model\t: " + strings.Repeat("é", 150) + "\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := cpuModel(b)
		if len(got) > 203 {
			t.Fatalf("cpuModel() = %d bytes, want at most 200 and \"...\"", len(got))
		}
		if utf8.Valid(b) && !utf8.ValidString(got) {
			t.Fatalf("cpuModel(%q) = %q: split a UTF-8 sequence", b, got)
		}
	})
}
