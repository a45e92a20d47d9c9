# Sluice — make help lists the targets.
GO      ?= go
BIN     ?= bin/sluice
PKGS    := ./...
# The packages whose tests need no privilege (all but test/), for unit and race.
UNIT_PKGS = $(shell $(GO) list ./... | grep -v /test)
export CGO_ENABLED ?= 0
# The version `sluice version` prints and the image's labels carry.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
CREATED  ?= $(shell git log -1 --format=%cI 2>/dev/null || echo unknown)
IMAGE    ?= sluice:dev
# The CA roots copied into the image.
CA_ROOTS ?= /etc/ssl/certs/ca-certificates.crt
IMAGE_CTX := bin/image

.PHONY: help generate check-generated build image test unit race e2e test-kube fuzz bench bench-peers pgo demo lint tidy-check clean

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-16s %s\n", $$1, $$2}'

generate: ## rebuild the bpf2go output from bpf/*.c (needs clang, llvm, libbpf-dev)
	$(GO) generate ./bpf/...

check-generated: generate ## fail if the committed bpf2go output is stale
	git diff --exit-code -- bpf/

build: ## build bin/sluice (static: CGO_ENABLED=0), version VERSION
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/sluice

image: build ## container image IMAGE (sluice:dev) FROM scratch: bin/sluice, CA_ROOTS, a non-root user, OCI labels
	@test -s $(CA_ROOTS) || { echo "$(CA_ROOTS): no CA roots to copy into the image; install ca-certificates or set CA_ROOTS"; exit 1; }
	rm -rf $(IMAGE_CTX)
	mkdir -p $(IMAGE_CTX)/rootfs/usr/local/bin $(IMAGE_CTX)/rootfs/etc/ssl/certs $(IMAGE_CTX)/rootfs/tmp $(IMAGE_CTX)/home
	cp $(BIN) $(IMAGE_CTX)/rootfs/usr/local/bin/sluice
	cp $(CA_ROOTS) $(IMAGE_CTX)/rootfs/etc/ssl/certs/ca-certificates.crt
	printf 'root:x:0:0:root:/root:/sbin/nologin\nsluice:x:65532:65532:sluice:/home/sluice:/sbin/nologin\n' > $(IMAGE_CTX)/rootfs/etc/passwd
	printf 'root:x:0:\nsluice:x:65532:\n' > $(IMAGE_CTX)/rootfs/etc/group
	chmod 1777 $(IMAGE_CTX)/rootfs/tmp
	docker build -f Dockerfile -t $(IMAGE) \
	  --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) --build-arg CREATED=$(CREATED) \
	  $(IMAGE_CTX)

test: build ## everything CI runs: vet, unit tests, e2e tests when SLUICE_E2E=1
	$(GO) vet $(PKGS)
	$(GO) test -count=1 $(PKGS)

unit: ## unit tests only (no root needed)
	$(GO) test -count=1 $(UNIT_PKGS)

race: ## unit tests under the race detector (needs cgo and a C compiler; not run by CI)
	CGO_ENABLED=1 $(GO) test -race -count=1 $(UNIT_PKGS)

e2e: build ## privileged end-to-end tests (root; sets SLUICE_E2E=1)
	SLUICE_E2E=1 $(GO) test -count=1 -v ./test/...

test-kube: ## the tests against a real Kubernetes API server named by SLUICE_KUBE_API, _CA and _TOKEN (README, Tests)
	@test -n "$$SLUICE_KUBE_API" || { echo "test-kube: set SLUICE_KUBE_API, SLUICE_KUBE_API_CA and SLUICE_KUBE_API_TOKEN (README, Tests)"; exit 1; }
	$(GO) test -count=1 -v -run RealAPI ./kubeapi/... ./containers ./webhook ./node

fuzz: ## run each fuzz target for FUZZTIME (default 20s)
	./scripts/fuzz.sh $${FUZZTIME:-20s}

bench: build ## HTTPS throughput and latency, direct vs through Sluice; the content scanner's MB/s; as root also the connect hooks' cost (BenchmarkConnectHook)
	$(GO) test -run '^$$' -bench . -skip IdleConn -benchtime 3s ./mitm/...
	@# An idle connection holds about four open files in this one process
	@# (client, proxy's two sides, upstream): a count, not a time, so that
	@# a fast machine's b.N stays under the open-file limit.
	$(GO) test -run '^$$' -bench IdleConn -benchtime 1000x ./mitm/
	$(GO) test -run '^$$' -bench BodyScan -benchtime 3s ./policy
	@if [ "$$(id -u)" = 0 ]; then \
	  SLUICE_E2E=1 $(GO) test -count=1 -run '^$$' -bench ConnectHook -benchtime 20000x ./test/; \
	else echo "BenchmarkConnectHook (ns per run of connect4, sluice CPU per connect event) needs root: skipped"; fi

bench-peers: ## Sluice vs nginx (wrk, h2load; root, not run by CI): req/s, p50/p99, CPU/request, handshakes/s, MB/s, KiB/idle conn; BENCH_* settings in scripts/bench-peers.sh
	./scripts/bench-peers.sh

# cmd/sluice/default.pgo is the CPU profile `go build` optimizes Sluice
# with (profile-guided optimization; Go applies a main package's
# default.pgo by itself). pgo takes it afresh from Sluice transparent
# under bench-peers' keep-alive, new-connection and HTTP/2 loads.
pgo: ## refresh cmd/sluice/default.pgo from a bench-peers run with CPU profiles (root, needs what bench-peers needs)
	rm -rf bin/pgo
	BENCH_TESTS="h1 newconn h2" BENCH_CONNS="32 256" BENCH_ROUNDS=1 BENCH_DURATION=12 BENCH_PROFILE=bin/pgo ./scripts/bench-peers.sh
	$(GO) tool pprof -proto $$(ls bin/pgo/*.pb.gz | grep -v '\.mutex\.') > cmd/sluice/default.pgo

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
