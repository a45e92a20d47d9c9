# Sluice — make help lists the targets.
GO      ?= go
BIN     ?= bin/sluice
PKGS    := ./...
export CGO_ENABLED ?= 0

.PHONY: help generate check-generated build test unit e2e fuzz bench demo lint tidy-check clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-16s %s\n", $$1, $$2}'

generate: ## rebuild the bpf2go output from bpf/*.c (needs clang, llvm, libbpf-dev)
	$(GO) generate ./bpf/...

check-generated: generate ## fail if the committed bpf2go output is stale
	git diff --exit-code -- bpf/

build: ## build bin/sluice
	$(GO) build -o $(BIN) ./cmd/sluice

test: build ## everything CI runs: vet, unit tests, e2e tests when SLUICE_E2E=1
	$(GO) vet $(PKGS)
	$(GO) test -count=1 $(PKGS)

unit: ## unit tests only (no root needed)
	$(GO) test -count=1 $(shell $(GO) list ./... | grep -v /test)

e2e: build ## privileged end-to-end tests (root; sets SLUICE_E2E=1)
	SLUICE_E2E=1 $(GO) test -count=1 -v ./test/...

fuzz: ## run each fuzz target for FUZZTIME (default 20s)
	./scripts/fuzz.sh $${FUZZTIME:-20s}

bench: build ## HTTPS throughput and latency, direct vs through Sluice
	$(GO) test -run '^$$' -bench . -benchtime 3s ./mitm/...

demo: build ## a small topology with an API and an MCP-like client under sluice run (root)
	./scripts/demo.sh

lint: ## gofmt, go vet and staticcheck (a go.mod tool: go tool staticcheck)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet $(PKGS)
	$(GO) tool staticcheck $(PKGS)

tidy-check: ## fail if go mod tidy would change go.mod or go.sum
	$(GO) mod tidy -diff

clean: ## remove build output
	rm -rf bin
