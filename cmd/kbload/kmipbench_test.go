package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestKMIPJudge(t *testing.T) {
	good := kmipSummary{
		Keybroker: kmipFigures{GetOne: kmipRate{PerSec: 2000}, GetConc: kmipRate{PerSec: 9000}, Polls: kmipRate{PerSec: 2100}},
		Peer:      kmipFigures{GetOne: kmipRate{PerSec: 100}, GetConc: kmipRate{PerSec: 300}, Polls: kmipRate{PerSec: 100}},
		GRPC:      kmipRate{PerSec: 10000},
	}
	tests := []struct {
		name     string
		edit     func(*kmipSummary)
		wantPass bool
		wantFail string // name of the failing check
	}{
		{"all targets met", func(*kmipSummary) {}, true, ""},
		{"polls below 20x the peer", func(s *kmipSummary) { s.Keybroker.Polls.PerSec = 1999 }, false, "State polls, new connection each: keybroker / pykmip-server"},
		{"a peer figure of zero", func(s *kmipSummary) { s.Peer.GetOne.PerSec = 0 }, false, "Get, 1 connection: keybroker / pykmip-server"},
		{"KMIP below 0.8x gRPC", func(s *kmipSummary) { s.GRPC.PerSec = 11251 }, false, "KMIP Get / gRPC GetMasterKey, 20 connections"},
		{"an error on keybroker", func(s *kmipSummary) { s.Keybroker.GetConc.Errors = 1 }, false, "Get, 20 connections: keybroker errors"},
		{"a Key Vault call on the hot path", func(s *kmipSummary) { s.AKV.HotPath = 1 }, false, "Key Vault calls after warm-up (beyond scheduled checks)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.edit(&s)
			checks, pass := kmipJudge(s, 20)
			if pass != tc.wantPass {
				t.Fatalf("kmipJudge pass = %v, want %v (checks %+v)", pass, tc.wantPass, checks)
			}
			var failed []string
			for _, c := range checks {
				if !c.Pass {
					failed = append(failed, c.Name)
				}
			}
			if tc.wantFail == "" && len(failed) != 0 || tc.wantFail != "" && (len(failed) != 1 || failed[0] != tc.wantFail) {
				t.Fatalf("failed checks %q, want [%s]", failed, tc.wantFail)
			}
		})
	}
}

func TestPrintKMIPReport(t *testing.T) {
	s := kmipSummary{Settings: map[string]any{"duration": "5s"}, Keybroker: kmipFigures{GetOne: kmipRate{PerSec: 2000}}, Peer: kmipFigures{GetOne: kmipRate{PerSec: 100}}}
	s.Checks, s.Pass = kmipJudge(s, 20)
	var b bytes.Buffer
	printKMIPReport(&b, s, 20)
	for _, want := range []string{"Get, 1 connection", "20.0x", "FAIL  State polls", "gRPC GetMasterKey, 20 conns"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}
