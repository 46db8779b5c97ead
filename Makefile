# keybroker build. Tools are pinned in tools/go.mod (buf, protoc plugins,
# staticcheck) and tools/ghz/go.mod (ghz), run with `go tool -modfile=...`.
GO        ?= go
TOOL      := $(GO) tool -modfile=tools/go.mod
BIN       := bin
DEV_DIR   ?= .dev
FUZZTIME  ?= 30s
# Every fuzz target, as "package:FuzzName".
FUZZ_TARGETS ?= \
	./internal/config:FuzzParse \
	./internal/envelope:FuzzParse \
	./internal/envelope:FuzzOpen \
	./internal/envelope:FuzzSealOpen \
	./internal/mtls:FuzzParseIdentity \
	./internal/mtls:FuzzParseKeyPair \
	./internal/pki:FuzzParsePEM \
	./internal/pki:FuzzClientIdentity \
	./internal/keystore:FuzzDecodeFile \
	./internal/keystore:FuzzDecodeBody \
	./internal/failover:FuzzKeyBase \
	./internal/kek/kektest:FuzzCheckKeyID \
	./internal/akv:FuzzParseKeyID \
	./internal/akv:FuzzRetryAfter \
	./internal/akv:FuzzParseErrorBody \
	./internal/akvemu:FuzzWrapRequest \
	./internal/akvemu:FuzzKeyRequests \
	./internal/akvemu:FuzzVaultRoute \
	./internal/akvemu:FuzzFault \
	./internal/akvemu:FuzzTokenRequest \
	./cmd/akv-emulator:FuzzParseFlagValues \
	./cmd/kbload:FuzzParseGhzReport \
	./cmd/kbload:FuzzParseDevInfo \
	./cmd/kbload:FuzzCPUModel \
	./internal/kek/kektest:FuzzFakeUnwrapKey \
	./internal/akvemu:FuzzState \
	./internal/memscan:FuzzParseMaps \
	./internal/akv:FuzzTakeValue \
	./cmd/kbload:FuzzParseFleetFlags \
	./internal/akvemu:FuzzThrottleRequest

.PHONY: all build run deps test test-go lint fmt vet staticcheck generate generate-check fuzz fuzz-ci bench bench-failover bench-revocation test-revocation-long load soak soak-ci crashtest clean test-memory test-memory-ci

all: build

build:
	@$(GO) build -buildvcs=auto -o $(BIN)/ ./cmd/...

## run: the main job, `keybroker dev` on the embedded default (emulator, dev PKI, fresh keystore).
run: build
	@$(BIN)/keybroker dev --dir $(DEV_DIR)

## test: what CI runs: generated code up to date, lint, unit and integration tests (race detector, every
## fuzz target's seed corpus), a short fuzz of the main parsers, a one-minute soak.
test: deps generate-check lint test-go fuzz-ci soak-ci test-memory-ci

# The Debian packages make test drives as real peers and checkers: PyKMIP's
# client and pykmip-server (test/kmip, bench-kmip; importable only under
# /usr/bin/python3) and systemd-analyze (deploy/systemd checks).
APT_PACKAGES ?= python3-pykmip systemd

## deps: installs the APT_PACKAGES that are missing (needs root, as on CI).
deps:
	@missing=; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

test-go:
	$(GO) test -race -count=1 -timeout 12m ./...

lint: fmt vet staticcheck

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$') 2>/dev/null); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck:
	$(TOOL) staticcheck ./...

generate:
	$(TOOL) buf lint
	$(TOOL) buf generate

## generate-check: fails when the committed generated code is stale.
generate-check:
	@tmp=$$(mktemp -d); trap 'rm -rf $$tmp' EXIT; \
	$(TOOL) buf lint && $(TOOL) buf generate -o $$tmp && \
	for f in $$(cd $$tmp && find . -name '*.go'); do \
		cmp -s $$tmp/$$f $$f || { echo "stale generated code: $$f (run make generate)"; exit 1; }; \
	done; \
	for f in $$(find proto -name '*.pb.go'); do \
		[ -f $$tmp/$$f ] || { echo "generated file with no source: $$f"; exit 1; }; \
	done; echo "generated code up to date"

# The parsers of untrusted or on-disk input, fuzzed briefly by make test.
FUZZ_CI_TARGETS ?= ./internal/keystore:FuzzDecodeFile ./internal/envelope:FuzzOpen ./internal/akv:FuzzParseKeyID ./internal/config:FuzzParse ./internal/akvemu:FuzzWrapRequest ./internal/mtls:FuzzParseIdentity
FUZZTIME_CI ?= 5s

## fuzz: every fuzz target for FUZZTIME (make fuzz FUZZTIME=5m for a long run).
## fuzz-ci: the main parsers for FUZZTIME_CI each, as make test runs them.
fuzz-ci:
	$(MAKE) fuzz FUZZ_TARGETS="$(FUZZ_CI_TARGETS)" FUZZTIME=$(FUZZTIME_CI)

fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

## bench: kbload bench against a fresh `keybroker dev` (docs/bench.md); tune with BENCH_FLAGS="--rounds 5 --no-fail".
bench: build
	$(BIN)/kbload bench --keybroker $(BIN)/keybroker --floor $(BIN)/kbfloor $(BENCH_FLAGS)

## bench-failover: the cold path while the primary region is black-holed, then answers 503 (docs/failover.md).
bench-failover: build
	$(BIN)/kbload bench-failover --keybroker $(BIN)/keybroker $(BENCH_FAILOVER_FLAGS)

## bench-revocation: revoke the key under GetMasterKey load (ghz + timestamped workers): time to PAUSE, keys served after it (docs/revocation.md).
bench-revocation: build
	$(BIN)/kbload bench-revocation --keybroker $(BIN)/keybroker

## test-revocation-long: every outage kind held for 30 validity intervals (make test holds each for 4).
test-revocation-long:
	$(GO) test -count=1 -timeout 10m -parallel 8 -run 'TestRevocationOutageNeverPauses' ./cmd/keybroker/ -args -outage-intervals=30

DURATION ?= 10m

## load: the ghz scenarios of load/ against keybroker dev: a table, ghz JSON+HTML reports in load/reports/ (docs/observability.md).
load: build
	$(BIN)/kbload load --keybroker $(BIN)/keybroker $(LOAD_FLAGS)

## soak: GetMasterKey load for DURATION sampling /metrics; fails on any error or growing memory/goroutines.
soak: build
	$(BIN)/kbload soak --keybroker $(BIN)/keybroker --duration $(DURATION)

## soak-ci: the one-minute soak make test runs.
soak-ci:
	$(MAKE) soak DURATION=1m

CRASH_KILLS ?= 200
## crashtest: SIGKILL the broker at random instants of init, rotations and CMK rewraps; check the keystore after each (make test runs 20 kills).
crashtest:
	KEYBROKER_CRASHTEST_KILLS=$(CRASH_KILLS) $(GO) test -race -count=1 -timeout 30m -v -run '^TestCrashRotation$$' ./cmd/keybroker/

clean:
	rm -rf $(BIN) $(DEV_DIR)

# Issue 13: the mount-table parser is fuzzed with the others.
FUZZ_TARGETS += ./internal/mount:FuzzParseMountInfo

.PHONY: check-rules
## check-rules: Prometheus's promtool (pinned in tools/promtool/go.mod) checks the example alert rules.
check-rules:
	$(GO) tool -modfile=tools/promtool/go.mod promtool check rules deploy/prometheus/keybroker-rules.yaml
# The memory-scan tests build with runtime/secret (docs/memory.md): the
# broker they start is the test binary, so it must carry the experiment.
MEMSCAN_GOEXPERIMENT ?= runtimesecret
MEMSCAN_CALLS ?= 3000

## test-memory-ci: the memory-scan tests as make test runs them (150 calls of each key RPC per scan).
test-memory-ci:
	GOEXPERIMENT=$(MEMSCAN_GOEXPERIMENT) $(GO) test -count=1 -timeout 10m -run '^TestMemoryScan' ./cmd/keybroker/

## test-memory: the memory-scan tests with MEMSCAN_CALLS calls of each key RPC per scan, verbose.
test-memory:
	GOEXPERIMENT=$(MEMSCAN_GOEXPERIMENT) $(GO) test -count=1 -timeout 30m -v -run '^TestMemoryScan' ./cmd/keybroker/ -args -memscan-calls=$(MEMSCAN_CALLS)

# KMIP front-end (issue 11): its message path is fuzzed with the others, and in make test.
FUZZ_TARGETS += ./internal/kmip:FuzzHandleMessage
FUZZ_CI_TARGETS += ./internal/kmip:FuzzHandleMessage

## bench-kmip: KMIP Get (1 and 20 connections) and new-connection State polls against keybroker dev and pykmip-server, plus gRPC GetMasterKey (docs/kmip.md).
bench-kmip: build
	$(BIN)/kbload bench-kmip --keybroker $(BIN)/keybroker $(BENCH_KMIP_FLAGS)
.PHONY: bench-kmip

FLEET_FLAGS ?= --nodes 100,500,1000,2000 --scale 2 --intervals 2
.PHONY: bench-fleet
## bench-fleet: N broker cores against one throttled emulator vault: steady-state Key Vault calls, cold start of the whole fleet, SVG plot in load/reports/fleet/ (docs/capacity.md).
bench-fleet: build
	$(BIN)/kbload bench-fleet $(FLEET_FLAGS)
