package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// exposition is a trimmed /metrics of a broker.
const exposition = `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes 3.3554432e+07
# HELP keybroker_state 1 for the state the broker is in.
# TYPE keybroker_state gauge
keybroker_state{state="DEGRADED"} 0
keybroker_state{state="PAUSED"} 0
keybroker_state{state="SERVING"} 1
# HELP keybroker_validity_checks_total Validity checks run.
# TYPE keybroker_validity_checks_total counter
keybroker_validity_checks_total{outcome="ok"} 3
keybroker_validity_checks_total{outcome="unavailable"} 1
# HELP keybroker_azure_call_duration_seconds Azure calls.
# TYPE keybroker_azure_call_duration_seconds histogram
keybroker_azure_call_duration_seconds_bucket{operation="unwrap",outcome="ok",region="primary",le="+Inf"} 4
keybroker_azure_call_duration_seconds_sum{operation="unwrap",outcome="ok",region="primary"} 0.1
keybroker_azure_call_duration_seconds_count{operation="unwrap",outcome="ok",region="primary"} 4
keybroker_azure_call_duration_seconds_bucket{operation="unwrap",outcome="unavailable",region="primary",le="+Inf"} 2
keybroker_azure_call_duration_seconds_sum{operation="unwrap",outcome="unavailable",region="primary"} 0.1
keybroker_azure_call_duration_seconds_count{operation="unwrap",outcome="unavailable",region="primary"} 2
keybroker_azure_call_duration_seconds_bucket{operation="get",outcome="ok",region="primary",le="+Inf"} 3
keybroker_azure_call_duration_seconds_sum{operation="get",outcome="ok",region="primary"} 0.1
keybroker_azure_call_duration_seconds_count{operation="get",outcome="ok",region="primary"} 3
# HELP keybroker_master_key_age_seconds Age.
# TYPE keybroker_master_key_age_seconds gauge
keybroker_master_key_age_seconds{key="master"} 10
# HELP rpc_server_call_duration_seconds Duration.
# TYPE rpc_server_call_duration_seconds histogram
rpc_server_call_duration_seconds_bucket{rpc_method="keybroker.v1.KeyBrokerService/GetMasterKey",rpc_response_status_code="OK",le="+Inf"} 900
rpc_server_call_duration_seconds_sum{rpc_method="keybroker.v1.KeyBrokerService/GetMasterKey",rpc_response_status_code="OK"} 1
rpc_server_call_duration_seconds_count{rpc_method="keybroker.v1.KeyBrokerService/GetMasterKey",rpc_response_status_code="OK"} 900
rpc_server_call_duration_seconds_bucket{rpc_method="keybroker.v1.KeyBrokerService/WrapDEK",rpc_response_status_code="OK",le="+Inf"} 100
rpc_server_call_duration_seconds_sum{rpc_method="keybroker.v1.KeyBrokerService/WrapDEK",rpc_response_status_code="OK"} 1
rpc_server_call_duration_seconds_count{rpc_method="keybroker.v1.KeyBrokerService/WrapDEK",rpc_response_status_code="OK"} 100
rpc_server_call_duration_seconds_bucket{rpc_method="keybroker.v1.KeyBrokerService/GetMasterKey",rpc_response_status_code="UNAVAILABLE",le="+Inf"} 2
rpc_server_call_duration_seconds_sum{rpc_method="keybroker.v1.KeyBrokerService/GetMasterKey",rpc_response_status_code="UNAVAILABLE"} 1
rpc_server_call_duration_seconds_count{rpc_method="keybroker.v1.KeyBrokerService/GetMasterKey",rpc_response_status_code="UNAVAILABLE"} 2
rpc_server_call_duration_seconds_bucket{rpc_method="grpc.reflection.v1.ServerReflection/ServerReflectionInfo",rpc_response_status_code="CANCELED",le="+Inf"} 7
rpc_server_call_duration_seconds_sum{rpc_method="grpc.reflection.v1.ServerReflection/ServerReflectionInfo",rpc_response_status_code="CANCELED"} 1
rpc_server_call_duration_seconds_count{rpc_method="grpc.reflection.v1.ServerReflection/ServerReflectionInfo",rpc_response_status_code="CANCELED"} 7
`

func TestParseMetrics(t *testing.T) {
	s, err := parseMetrics(strings.NewReader(exposition))
	if err != nil {
		t.Fatalf("parseMetrics err = %v, want nil", err)
	}
	if s.Goroutines != 42 || s.RSS != 32<<20 || s.State != "SERVING" || s.Checks != 4 || s.ActiveKeys != 1 || s.Unwraps != 4 {
		t.Errorf("parseMetrics = goroutines %v, RSS %v, state %q, checks %v, active keys %d, unwraps %v; want 42, 32 MiB, SERVING, 4, 1, 4",
			s.Goroutines, s.RSS, s.State, s.Checks, s.ActiveKeys, s.Unwraps)
	}
	if s.rpcTotal() != 1002 || s.rpcErrors() != 2 {
		t.Errorf("rpcTotal, rpcErrors = %v, %v, want 1002, 2", s.rpcTotal(), s.rpcErrors())
	}

	tests := []struct {
		name, in, want string
	}{
		{"not prometheus", "{\"json\": true}", "not Prometheus text"},
		{"no RSS", strings.Replace(exposition, "process_resident_memory_bytes 3.3554432e+07\n", "", 1), "no process_resident_memory_bytes"},
		{"no goroutines", strings.Replace(exposition, "go_goroutines 42\n", "", 1), "no go_goroutines"},
		{"no state", strings.Replace(exposition, `keybroker_state{state="SERVING"} 1`, `keybroker_state{state="SERVING"} 0`, 1), "no keybroker_state at 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := parseMetrics(strings.NewReader(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseMetrics err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestScrapeMetrics(t *testing.T) {
	code := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(code)
		_, _ = w.Write([]byte(exposition))
	}))
	defer srv.Close()
	if err := checkAdminURL(srv.URL); err != nil {
		t.Fatalf("checkAdminURL(%s) err = %v, want nil", srv.URL, err)
	}
	s, err := scrapeMetrics(context.Background(), srv.Client(), srv.URL)
	if err != nil || s.Goroutines != 42 || s.At.IsZero() {
		t.Fatalf("scrapeMetrics = %+v, %v, want 42 goroutines and a time", s, err)
	}
	code = http.StatusServiceUnavailable
	if _, err := scrapeMetrics(context.Background(), srv.Client(), srv.URL); err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Errorf("scrapeMetrics(503) err = %v, want one naming HTTP 503", err)
	}
}

func TestCheckAdminURL(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"http://127.0.0.1:9464", true},
		{"http://[::1]:9464", true},
		{"", false},
		{"http://127.0.0.1", false},
		{"https://127.0.0.1:9464", false},
		{"http://10.0.0.1:9464", false},
		{"http://example.com:9464", false},
	}
	for _, tc := range tests {
		if err := checkAdminURL(tc.in); (err == nil) != tc.ok {
			t.Errorf("checkAdminURL(%q) err = %v, want ok %v", tc.in, err, tc.ok)
		}
	}
}

func TestAKVHotPath(t *testing.T) {
	a := sumAKV(map[string]map[string]int64{
		"login":                     {"token": 1},
		"kb.vault.keybroker.test":   {"get": 2, "unwrapkey": 3, "wrapkey": 1},
		"kb-2.vault.keybroker.test": {"unwrapkey": 1},
	})
	if a.KeyOps != 7 || a.Unwraps != 4 || a.Gets != 2 || a.Tokens != 1 {
		t.Fatalf("sumAKV = %+v, want 7 key ops, 4 unwraps, 2 gets, 1 token", a)
	}
	tests := []struct {
		checks float64
		keys   int
		want   int64
	}{
		{0, 1, 7},
		{2, 1, 3}, // two checks: 2 gets and 2 unwraps are theirs
		{2, 2, 1}, // two keys each: 4 unwraps
		{9, 1, 1}, // more checks than calls counted: only what was counted
	}
	for _, tc := range tests {
		if got := a.hotPath(tc.checks, tc.keys); got != tc.want {
			t.Errorf("hotPath(%v checks, %d keys) = %d, want %d", tc.checks, tc.keys, got, tc.want)
		}
	}
}
