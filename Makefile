# trireme: make build | test | bench | demo | fuzz | controlplane
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := bin/trireme
# Packages with goroutines and shared state run under the race detector.
RACE_PKGS := ./tokens/... ./flow/... ./dataplane/... ./policy/... ./resolver/... ./netsetup/... ./monitor ./monitor/process
FUZZTIME ?= 30s

# The test control plane (etcd + kube-apiserver, testenv/controlplane): built
# from its own module tools/controlplane into a cache keyed by that module
# (minutes the first time, then reused; see docs/kubernetes.md).
CONTROLPLANE_DIR = $(shell tools/controlplane/build.sh --print-dir)

.PHONY: all build test vet deps bench demo fuzz perf clean controlplane webui-vendor

all: build

# Static, so the same binary runs in FROM-scratch test images.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/trireme

# deps installs what the tests need on a fresh Debian machine (as root).
deps:
	@./scripts/install-deps.sh

vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt: files above need formatting"; exit 1; }

controlplane:
	@tools/controlplane/build.sh >/dev/null

# Tests that run the binary (daemon, Docker images) use this one build; the
# Kubernetes tests use the control plane make controlplane built.
test: export TRIREME_TEST_BINARY = $(abspath $(BIN))
test: export TRIREME_CONTROLPLANE_DIR = $(CONTROLPLANE_DIR)
test: deps vet build controlplane
	$(GO) test -count=1 -timeout 20m ./...
	$(GO) test -count=1 -race -timeout 20m $(RACE_PKGS)

bench:
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./... | tee bench.txt

fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 2s $$pkg || exit 1; \
	  done; \
	done

# The side-by-side comparison of the kernel path, PSK and PKI (docs/perf.md).
perf: build
	./$(BIN) perf --rounds 5 --duration 3s --topology one-node
	./$(BIN) perf --rounds 5 --duration 3s --topology two-nodes

demo: build
	./$(BIN) demo --examples examples

clean:
	rm -rf bin bench.txt

# The web page's cytoscape.js (node/webui/assets/vendor), fetched again from
# npm at the pinned version; npm checks the package's integrity.
CYTOSCAPE_VERSION = 3.35.0
webui-vendor:
	d=$$(mktemp -d) && cd $$d && npm pack --silent cytoscape@$(CYTOSCAPE_VERSION) >/dev/null && \
	  tar xzf cytoscape-$(CYTOSCAPE_VERSION).tgz && \
	  cp package/dist/cytoscape.min.js $(CURDIR)/node/webui/assets/vendor/cytoscape.min.js && \
	  cp package/LICENSE $(CURDIR)/node/webui/assets/vendor/cytoscape.LICENSE && rm -rf $$d
