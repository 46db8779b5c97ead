package main

import (
	"bufio"
	"bytes"
	"debug/buildinfo"
	"os"
	"runtime"
	"strings"
)

// describeMachine says where a benchmark ran. brokerBin is the measured
// binary, whose Go version may differ from kbload's.
func describeMachine(brokerBin string) machine {
	m := machine{
		CPUs:            runtime.NumCPU(),
		CPUModel:        "unknown CPU",
		GoVersion:       runtime.Version(),
		BrokerGoVersion: "an unknown Go version",
		OSArch:          runtime.GOOS + "/" + runtime.GOARCH,
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if model := cpuModel(b); model != "" {
			m.CPUModel = model
		}
	}
	if bi, err := buildinfo.ReadFile(brokerBin); err == nil {
		m.BrokerGoVersion = bi.GoVersion
	}
	return m
}

// cpuModel returns the CPU model named in /proc/cpuinfo: "model name" on
// x86, else the first of the names other architectures use; "" if none.
func cpuModel(cpuinfo []byte) string {
	fields := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(cpuinfo))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if _, seen := fields[k]; !seen && v != "" {
			fields[k] = v
		}
	}
	for _, k := range []string{"model name", "Model", "Hardware", "cpu", "uarch"} {
		if v := fields[k]; v != "" {
			return truncate(strings.Join(strings.Fields(v), " "), 200)
		}
	}
	return ""
}
