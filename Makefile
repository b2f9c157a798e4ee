# berth: make help lists the targets.
GO       ?= go
VERSION  ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin/berth
DATA     ?= $(CURDIR)/.berth/data
SOCKET   ?= $(CURDIR)/.berth/berth.sock
BENCHTIME ?= 1x
FUZZTIME ?= 60s
# Go minimizes each new input for up to 60 s by default, which left the
# slower targets (FuzzExtract: about 200 runs a minute) doing little else.
FUZZMINIMIZE ?= 3s

.DEFAULT_GOAL := help
.PHONY: help build dev-etcd example run test bench bench-fleet lint fuzz e2e e2e-systemd e2e-load e2e-fleet clean

help: ## show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/berth (version from git via -ldflags -X)
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/berth

dev-etcd: ## run a single-member etcd for fleet mode on http://127.0.0.1:2379 (data in ./.etcd; development only)
	CGO_ENABLED=0 $(GO) build -o bin/berth-etcd ./cmd/berth-etcd
	bin/berth-etcd --data $(CURDIR)/.etcd

example: ## pack examples/hello into bin/hello.tar.gz (a release tarball)
	rm -rf bin/hello-build && mkdir -p bin/hello-build
	CGO_ENABLED=0 $(GO) build -o bin/hello-build/hello ./examples/hello
	cp examples/hello/Procfile examples/hello/berth.json bin/hello-build/
	tar -C bin/hello-build --owner=0 --group=0 -czf bin/hello.tar.gz .

run: build example ## run the agent in the foreground under ./.berth, with the example app deployed
	@mkdir -p $(DATA)/inbox
	@if [ ! -e $(DATA)/apps/hello ]; then cp bin/hello.tar.gz $(DATA)/inbox/hello.tar.gz; fi
	@echo "agent: data $(DATA), socket $(SOCKET)"
	@echo "try:   export BERTH_SOCKET=$(SOCKET); $(BIN) ps -a hello"
	BERTH_BASE_PORT=$${BERTH_BASE_PORT:-5000} $(BIN) agent --data-dir $(DATA) --socket $(SOCKET)

test: ## gofmt check, go vet, go test -race ./... (fuzz targets run their seed corpus)
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt needed:"; echo "$$fmt"; exit 1; fi
	$(GO) vet ./...
	$(GO) test -race -timeout 15m ./...

bench: ## run the benchmarks once each and print their figures (BENCHTIME=1x)
	# -p 1: one package at a time, so no package's benchmarks share the
	# machine with another's (they compare berth with a floor in one run).
	$(GO) test -p 1 -run '^$$' -bench . -benchtime $(BENCHTIME) -timeout 60m ./...

bench-fleet: ## fleet scale benchmark (issue 15): 200 simulated agents, one embedded etcd; figures in agent/fleet/SCALE.md
	# -v: the benchmark logs its figures as tables for SCALE.md, which
	# go test cuts to a few lines without it. BERTH_SCALE_NODES=N changes
	# the fleet's size.
	$(GO) test ./agent/fleet -run '^$$' -bench FleetConverge200 -benchtime 1x -timeout 20m -v

lint: ## gofmt and go vet
	@fmt=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$fmt" ]; then echo "gofmt needed:"; echo "$$fmt"; exit 1; fi
	$(GO) vet ./...

fuzz: ## fuzz each parser of untrusted input for FUZZTIME (default 60s)
	$(GO) test ./state/build -run '^$$' -fuzz '^FuzzExtract$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./state/build -run '^$$' -fuzz '^FuzzProcfile$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./state/build -run '^$$' -fuzz '^FuzzManifest$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./agent/api -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./agent/api -run '^$$' -fuzz '^FuzzDecodeKeys$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./agent/api -run '^$$' -fuzz '^FuzzDecodeRun$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./agent -run '^$$' -fuzz '^FuzzInboxTarget$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./agent/fleet -run '^$$' -fuzz '^FuzzViewApply$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./supervisor -run '^$$' -fuzz '^FuzzLogLines$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./supervisor -run '^$$' -fuzz '^FuzzReadLogs$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./agent/internal/procfs -run '^$$' -fuzz '^FuzzParseStat$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./agent/internal/procfs -run '^$$' -fuzz '^FuzzParseNetTCP$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)
	$(GO) test ./agent/internal/procfs -run '^$$' -fuzz '^FuzzParseDiag$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE)

e2e: e2e-systemd e2e-load e2e-fleet ## all slow end-to-end suites

e2e-systemd: build example ## boot systemd in systemd-nspawn and test install, reboot, kill -9, watchdog, stop, power cut
	$(GO) test -tags e2e_systemd -run . -v -count=1 -timeout 20m ./systemd/e2e/

e2e-load: build example ## requests during 10 deploys + 10 config changes on six apps; 50 switches without SIGKILL; config set time
	$(GO) test -tags e2e_load -run . -v -count=1 -timeout 20m ./agent/e2e/load/

e2e-fleet: build example ## three agents in network namespaces follow one etcd: waves of one, a bad release rolled back, a 30 s etcd outage
	$(GO) test -tags e2e_fleet -run . -v -count=1 -timeout 20m ./agent/fleet/e2e/

clean: ## remove bin/ and the local state under .berth/
	rm -rf bin .berth
