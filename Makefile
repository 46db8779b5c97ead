# keybroker build. Tools are pinned in tools/go.mod (buf, protoc plugins,
# staticcheck) and tools/ghz/go.mod (ghz), run with `go tool -modfile=...`.
GO        ?= go
TOOL      := $(GO) tool -modfile=tools/go.mod
GHZ       := $(GO) tool -modfile=tools/ghz/go.mod ghz
BIN       := bin
DEV_DIR   ?= .dev
FUZZTIME  ?= 10s
# Go packages and their fuzz targets: "pkg:FuzzName" pairs.
FUZZ_TARGETS ?= ./internal/config:FuzzParse ./internal/envelope:FuzzParse ./internal/envelope:FuzzOpen ./internal/envelope:FuzzSealOpen ./internal/mtls:FuzzParseIdentity ./internal/mtls:FuzzParseKeyPair ./internal/pki:FuzzParsePEM ./internal/pki:FuzzClientIdentity ./internal/keystore:FuzzDecodeFile ./internal/keystore:FuzzDecodeBody ./internal/failover:FuzzKeyBase ./internal/kek/kektest:FuzzCheckKeyID ./internal/akv:FuzzParseKeyID ./internal/akv:FuzzRetryAfter ./internal/akv:FuzzParseErrorBody ./internal/akvemu:FuzzWrapRequest ./internal/akvemu:FuzzKeyRequests ./internal/akvemu:FuzzVaultRoute ./internal/akvemu:FuzzFault ./internal/akvemu:FuzzTokenRequest ./cmd/akv-emulator:FuzzParseFlagValues ./cmd/kbload:FuzzParseGhzReport ./cmd/kbload:FuzzParseDevInfo

.PHONY: all build run test test-go lint fmt vet staticcheck generate generate-check fuzz bench clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

## run: the main job, `keybroker dev` on the embedded default (emulator, dev PKI, fresh keystore).
run: build
	$(BIN)/keybroker dev --dir $(DEV_DIR)

## test: what CI runs: generated code up to date, lint, unit and integration tests (race detector), short fuzzing.
test: generate-check lint test-go fuzz

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

## fuzz: each fuzz target for FUZZTIME (CI: a short run; locally: make fuzz FUZZTIME=5m).
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name ($(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

## bench: kbload bench against a fresh `keybroker dev` (docs/bench.md); tune with BENCH_FLAGS="--rounds 5 --no-fail".
bench: build
	$(BIN)/kbload bench --keybroker $(BIN)/keybroker $(BENCH_FLAGS)

clean:
	rm -rf $(BIN) $(DEV_DIR)
