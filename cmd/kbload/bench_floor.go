package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
)

// The floor: a bare grpc-go server (cmd/kbfloor) with the broker's
// certificates and TLS settings and grpc.health.v1 only, measured in the
// same rounds as the broker. Its Health/Check is the baseline: what TLS,
// HTTP/2, grpc-go and the machine allow with nothing of keybroker's on the
// path. The broker's calls are judged against it.
const (
	serverFloor = "floor"

	targetHealth = 0.95 // the broker's Health/Check: interceptors and telemetry only
	maxP99Ratio  = 1.2  // every broker call's p99 against the floor's
)

// withFloor puts the floor's Health/Check first, as the baseline, before
// the broker's calls (benchCalls), and gives every broker call its targets
// against it: the RPS ratios, and p99 at most maxP99Ratio of the floor's.
// floorPID and brokerPID are the processes whose CPU is read around each run.
func withFloor(calls []benchCall, fl *floorServer, brokerPID int) []benchCall {
	out := []benchCall{{call: healthCheck, data: "{}", server: serverFloor, addr: fl.addr, pid: fl.pid, protoset: fl.protoset}}
	for _, c := range calls {
		if c.call == healthCheck && c.minRatio == 0 {
			c.minRatio = targetHealth
		}
		c.maxP99, c.pid = maxP99Ratio, brokerPID
		out = append(out, c)
	}
	return out
}

const healthCheck = "grpc.health.v1.Health/Check"

// ghz is g aimed at the call's server.
func (c benchCall) ghz(g ghzRun) ghzRun {
	if c.addr != "" {
		g.addr = c.addr
	}
	if c.protoset != "" {
		g.extraArgs = append(slices.Clip(g.extraArgs), "--protoset", c.protoset)
	}
	return g
}

// writeHealthProtoset writes grpc.health.v1's descriptors as a protoset for
// ghz: the floor serves no reflection, which would be a second service.
func writeHealthProtoset(dir string) (string, error) {
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{
		protodesc.ToFileDescriptorProto(healthpb.File_grpc_health_v1_health_proto),
	}}
	b, err := proto.Marshal(set)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "health.protoset")
	return path, os.WriteFile(path, b, 0o644)
}

// cpu is the CPU time the call's server has used so far.
func (c benchCall) cpu() (time.Duration, error) {
	if c.pid == 0 {
		return 0, fmt.Errorf("no process to read")
	}
	return processCPU(c.pid)
}

// label names the call in progress lines and report files: the floor's
// Health/Check is "floor Health/Check".
func (c benchCall) label() string { return serverLabel(c.server, c.call) }

func serverLabel(server, call string) string {
	if server != "" {
		return server + " " + shortName(call)
	}
	return shortName(call)
}

// cpuText is the round's CPU per call for a progress line, "" when unknown.
func (r roundResult) cpuText() string {
	if us, ok := r.cpuPerCall(); ok {
		return fmt.Sprintf("  CPU %.1fµs/call", us)
	}
	return ""
}

// cpuPerCall is the server's CPU time over the round divided by the calls
// ghz completed, in microseconds.
func (r roundResult) cpuPerCall() (float64, bool) {
	if !r.cpuKnown || r.report.Count == 0 {
		return 0, false
	}
	return float64(r.cpu) / float64(time.Microsecond) / float64(r.report.Count), true
}

// startFloor starts the floor server (building kbfloor first when bin is
// empty) with the certificates in the dev broker's configuration file.
func (s *session) startFloor(ctx context.Context, bin, brokerConfig string) (*floorServer, error) {
	if bin == "" {
		fmt.Fprintln(s.progress, "kbload: building kbfloor ...")
		var err error
		if bin, err = buildFloor(ctx, s.tmp); err != nil {
			return nil, err
		}
	} else if _, err := os.Stat(bin); err != nil {
		return nil, usageErrorf("--floor %s: %v; build it with: go build -o bin/ ./cmd/kbfloor (or make build)", bin, err)
	}
	cert, key, ca, err := floorTLSFiles(brokerConfig)
	if err != nil {
		return nil, err
	}
	logFile, logPath, err := s.openLog("kbfloor.log", os.O_TRUNC)
	if err != nil {
		return nil, err
	}
	protoset, err := writeHealthProtoset(s.tmp)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(s.progress, "kbload: starting the floor server %s (log: %s) ...\n", bin, logPath)
	fl, err := startFloor(ctx, bin, cert, key, ca, logFile)
	if err != nil {
		return nil, err
	}
	fl.protoset = protoset
	return fl, nil
}
