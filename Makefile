# rkllm-operator: operator, device plugin and inference server for Rockchip NPUs.
# `make help` lists the targets. Everything the tests need is built from the Go module
# proxy and Debian packages into bin/ by the targets below; nothing is downloaded elsewhere.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec
.DEFAULT_GOAL := help

# Where tools and built binaries go.
LOCALBIN ?= $(CURDIR)/bin
$(LOCALBIN):
	mkdir -p $(LOCALBIN)

GO ?= go
GOOS ?= $(shell $(GO) env GOOS)
GOARCH ?= $(shell $(GO) env GOARCH)
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

## Tool versions (pinned; built from the Go module proxy).
CONTROLLER_TOOLS_VERSION ?= v0.23.0
GOLANGCI_LINT_VERSION ?= v2.15.0
K8S_VERSION ?= 1.37.2

# kwok is pinned in hack/kwok/go.mod (built against the project's Kubernetes libraries).
KWOK_VERSION ?= $(shell grep -oE 'sigs.k8s.io/kwok v[^ ]+' hack/kwok/go.mod | cut -d' ' -f2)

CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
K8S_BIN_DIR ?= $(LOCALBIN)/k8s/$(K8S_VERSION)
KWOKCTL ?= $(LOCALBIN)/kwokctl-$(KWOK_VERSION)
KWOK ?= $(LOCALBIN)/kwok-$(KWOK_VERSION)
# helm is pinned in hack/helm/go.mod (built against the project's Kubernetes libraries).
HELM_VERSION ?= $(shell grep -oE 'helm.sh/helm/v3 v[^ ]+' hack/helm/go.mod | cut -d' ' -f2)
HELM ?= $(LOCALBIN)/helm-$(HELM_VERSION)

# envtest honours a KUBEBUILDER_ASSETS the user already has; otherwise it uses the
# binaries hack/k8s-binaries.sh builds.
ifeq ($(origin KUBEBUILDER_ASSETS), undefined)
KUBEBUILDER_ASSETS := $(K8S_BIN_DIR)
ENVTEST_DEPS := envtest
endif
export KUBEBUILDER_ASSETS

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "\nUsage:\n  make \033[36m<target>\033[0m\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) } ' $(MAKEFILE_LIST)

##@ Development

.PHONY: manifests
manifests: controller-gen ## Generate the CRD, RBAC and webhook manifests from the markers, and copy them into the chart.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./api/..." paths="./controllers/..." output:crd:artifacts:config=config/crd/bases
	$(CONTROLLER_GEN) rbac:roleName=gateway-role paths="./gateway/..." output:rbac:artifacts:config=config/gateway
	$(GO) run ./hack/chartsync

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods from the API types.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: verify-generated
verify-generated: manifests generate ## Fail when committed generated files are stale or go.mod is not tidy.
	@if [ -n "$$(git status --porcelain -- api config charts)" ]; then \
		echo "generated files are stale; run 'make manifests generate' and commit:"; \
		git status --porcelain -- api config charts; git --no-pager diff --stat -- api config charts; exit 1; \
	fi
	@$(GO) mod tidy -diff || { echo "go.mod or go.sum is not tidy; run 'go mod tidy' and commit"; exit 1; }

.PHONY: fmt
fmt: ## Run go fmt.
	$(GO) fmt ./...

.PHONY: vet
vet: ## Run go vet.
	$(GO) vet ./...

.PHONY: lint
lint: golangci-lint ## Run golangci-lint.
	$(GOLANGCI_LINT) run ./...

##@ Test

.PHONY: test
test: verify-generated vet lint unit test-runtime test-process-cri e2e-kubelet test-server test-openai-node test-ollama-node e2e ## Everything CI runs (.ci/run calls this).

# The server's packages and the runtime binding are tested once, under -race, by
# test-server and test-runtime; unit runs everything else.
UNIT_PKGS = $$($(GO) list ./... | grep -v -e '/server/' -e '/cmd/rkllm-server')

.PHONY: unit
unit: $(ENVTEST_DEPS) sim ## Unit and envtest tests (all but the server and the runtime binding).
	$(GO) test $(UNIT_PKGS) -count=1

.PHONY: envtest
envtest: ## Build kube-apiserver, etcd and kubectl for envtest into bin/k8s/ (from the Go module proxy).
	K8S_BIN_DIR=$(K8S_BIN_DIR) hack/k8s-binaries.sh kube-apiserver etcd kubectl

##@ Runtime binding and simulator

# The RKLLM simulator library, built twice (one per ABI) with plain gcc. Objects carry
# -MMD dependency files, so editing a source or header rebuilds what uses it.
SIM_CC ?= gcc
SIM_SRC_DIR := server/runtime/simulator/csrc
SIM_SRCS := $(wildcard $(SIM_SRC_DIR)/*.c)
SIM_BUILD := $(LOCALBIN)/.sim-build
SIM_CFLAGS ?= -std=gnu11 -O2 -g -Wall -Wextra -Werror -fPIC -fvisibility=hidden -pthread -D_GNU_SOURCE
SIM_LIBS := $(LOCALBIN)/librkllmrt-sim-1.2.so $(LOCALBIN)/librkllmrt-sim-1.3.so
# Builds without the simulator's own rkllm_sim_version symbol, so tests can check the ABI
# detection the binding applies to the vendor's library.
SIM_ANON_LIBS := $(SIM_BUILD)/librkllmrt-anon-1.2.so $(SIM_BUILD)/librkllmrt-anon-1.3.so
sim_objs = $(patsubst $(SIM_SRC_DIR)/%.c,$(SIM_BUILD)/$(1)/%.o,$(SIM_SRCS))
# Tests find the libraries here; with RKLLM_SIM_REQUIRED they fail instead of skipping.
export RKLLM_SIM_DIR := $(LOCALBIN)
export RKLLM_SIM_REQUIRED := 1

.PHONY: deps
deps: ## Install the Debian packages the build and tests need (hack/install-deps.sh; only what is missing).
	hack/install-deps.sh

.PHONY: sim
sim: $(SIM_LIBS) $(SIM_ANON_LIBS) ## Build the RKLLM simulator libraries bin/librkllmrt-sim-1.2.so and -1.3.so.

$(SIM_BUILD)/12/%.o: $(SIM_SRC_DIR)/%.c
	@mkdir -p $(@D)
	$(SIM_CC) $(SIM_CFLAGS) -Iserver/runtime -DRKLLM_SIM_ABI=12 -MMD -MP -c $< -o $@
$(SIM_BUILD)/13/%.o: $(SIM_SRC_DIR)/%.c
	@mkdir -p $(@D)
	$(SIM_CC) $(SIM_CFLAGS) -Iserver/runtime -DRKLLM_SIM_ABI=13 -MMD -MP -c $< -o $@
$(SIM_BUILD)/anon%/sim.o: $(SIM_SRC_DIR)/sim.c
	@mkdir -p $(@D)
	$(SIM_CC) $(SIM_CFLAGS) -Iserver/runtime -DRKLLM_SIM_ABI=$* -DRKLLM_SIM_ANONYMOUS -MMD -MP -c $< -o $@
$(SIM_BUILD)/librkllmrt-anon-1.%.so: $(SIM_BUILD)/anon1%/sim.o $(SIM_BUILD)/1%/json.o $(SIM_BUILD)/1%/model.o
	$(SIM_CC) -shared -pthread -o $@ $^
$(LOCALBIN)/librkllmrt-sim-1.2.so: $(call sim_objs,12)
	$(SIM_CC) -shared -pthread -o $@ $^
$(LOCALBIN)/librkllmrt-sim-1.3.so: $(call sim_objs,13)
	$(SIM_CC) -shared -pthread -o $@ $^
.SECONDARY: $(SIM_BUILD)/anon12/sim.o $(SIM_BUILD)/anon13/sim.o
-include $(wildcard $(SIM_BUILD)/*/*.d)

# The simulator built with AddressSanitizer, for the end-to-end fuzz target: a server
# built with -asan loads it, so a read or write past a buffer the server handed the
# runtime is reported (and fails the target) instead of passing unnoticed.
SIM_ASAN_LIBS := $(LOCALBIN)/librkllmrt-sim-asan-1.2.so $(LOCALBIN)/librkllmrt-sim-asan-1.3.so
SIM_ASAN_CFLAGS := $(filter-out -O2,$(SIM_CFLAGS)) -O1 -fsanitize=address -fno-omit-frame-pointer

.PHONY: sim-asan
sim-asan: $(SIM_ASAN_LIBS) ## Build the simulator libraries with AddressSanitizer (bin/librkllmrt-sim-asan-1.2.so and -1.3.so).

$(SIM_BUILD)/asan12/%.o: $(SIM_SRC_DIR)/%.c
	@mkdir -p $(@D)
	$(SIM_CC) $(SIM_ASAN_CFLAGS) -Iserver/runtime -DRKLLM_SIM_ABI=12 -MMD -MP -c $< -o $@
$(SIM_BUILD)/asan13/%.o: $(SIM_SRC_DIR)/%.c
	@mkdir -p $(@D)
	$(SIM_CC) $(SIM_ASAN_CFLAGS) -Iserver/runtime -DRKLLM_SIM_ABI=13 -MMD -MP -c $< -o $@
$(LOCALBIN)/librkllmrt-sim-asan-1.2.so: $(call sim_objs,asan12)
	$(SIM_CC) -shared -pthread -fsanitize=address -o $@ $^
$(LOCALBIN)/librkllmrt-sim-asan-1.3.so: $(call sim_objs,asan13)
	$(SIM_CC) -shared -pthread -fsanitize=address -o $@ $^

.PHONY: sim-models
sim-models: ## Write sample simulator model and LoRA files into bin/sim-models/.
	$(GO) run ./cmd/rkllm-sim-model -samples $(LOCALBIN)/sim-models

SIM_LEAKCHECK := $(SIM_BUILD)/leakcheck
$(SIM_BUILD)/leakcheck-%: server/runtime/simulator/leakcheck/leakcheck.c server/runtime/rkllm_abi.h
	@mkdir -p $(@D)
	$(SIM_CC) $(SIM_CFLAGS) -Iserver/runtime -DRKLLM_SIM_ABI=$* -o $@ $< -ldl

.PHONY: sim-leakcheck
sim-leakcheck: deps sim $(SIM_BUILD)/leakcheck-12 $(SIM_BUILD)/leakcheck-13 ## Run every simulator function under valgrind; fails on leaks or memory errors.
	@command -v valgrind >/dev/null || { echo "valgrind is missing: run make deps"; exit 1; }
	$(GO) run ./cmd/rkllm-sim-model -decode-tps 0 -prefill-tps 0 $(SIM_BUILD)/leakcheck.rkllm
	$(GO) run ./cmd/rkllm-sim-model -lora leak $(SIM_BUILD)/leakcheck.rkllm-lora
	for abi in 12 13; do \
		valgrind -q --leak-check=full --show-leak-kinds=all --errors-for-leak-kinds=all --error-exitcode=1 \
			$(SIM_BUILD)/leakcheck-$$abi $(LOCALBIN)/librkllmrt-sim-1.$${abi#1}.so \
			$(SIM_BUILD)/leakcheck.rkllm $(SIM_BUILD)/leakcheck.rkllm-lora $(SIM_BUILD) || exit 1; \
	done

.PHONY: test-runtime
test-runtime: deps sim sim-leakcheck binding-leakcheck build-arm64 ## Runtime binding tests against both simulators (-race), leak checks, arm64 build.
	$(GO) test -race -count=1 ./server/runtime/...

# The binding's tests built with AddressSanitizer: its C code (shim.c, the worker's frame
# sink framesink.c, and every C allocation they make through cgo) and the simulator it
# drives run with ASan's error checks, and LeakSanitizer fails the run if any C memory is
# left unfreed at exit. handle_segv=0 leaves the simulator's deliberate SIGSEGV (crash
# injection) to the test.
.PHONY: binding-leakcheck
binding-leakcheck: sim ## Runtime binding and frame-sink tests under AddressSanitizer and LeakSanitizer (the C code of the server).
	ASAN_OPTIONS=handle_segv=0 CGO_ENABLED=1 $(GO) test -asan -count=1 ./server/runtime/ ./server/workerproto/

# The cross compiler for build-arm64 (Debian's gcc-aarch64-linux-gnu).
ARM64_CC ?= aarch64-linux-gnu-gcc

# What the images under images/ hold; hack/build-binary.sh builds each the way its
# Dockerfile does.
IMAGE_BINARIES := manager rknpu-device-plugin rkllm-gateway rkllm-server

.PHONY: build-arm64
build-arm64: deps ## Cross-compile for linux/arm64 the image binaries (exactly as the Dockerfiles do) and the runtime binding's tests.
	@command -v $(ARM64_CC) >/dev/null || { echo "$(ARM64_CC) is missing: run make deps"; exit 1; }
	mkdir -p $(LOCALBIN)/linux-arm64
	CGO_ENABLED=1 GOOS=linux GOARCH=arm64 CC=$(ARM64_CC) $(GO) test -c -o $(LOCALBIN)/linux-arm64/runtime.test ./server/runtime
	for b in $(IMAGE_BINARIES); do CC=$(ARM64_CC) VERSION=$(VERSION) hack/build-binary.sh $$b linux arm64 $(LOCALBIN)/linux-arm64; done

##@ Inference server

# The server's packages besides the runtime binding (tested by test-runtime).
SERVER_PKGS := $$($(GO) list ./server/... | grep -v /server/runtime) ./cmd/rkllm-server/...

.PHONY: test-server
test-server: sim sim-asan fuzz-ci ## Server tests under -race: unit tests with a fake runtime, end to end against both simulators, a brief fuzz run.
	$(GO) test -race -count=1 -timeout 20m $(SERVER_PKGS)

.PHONY: test-openai-node
test-openai-node: deps sim ## The official OpenAI Node.js client against the server's /v1/ API and through the gateway (npm installs it into a temporary folder).
	RKLLM_OPENAI_NODE_TEST=1 $(GO) test -count=1 -run '^TestOpenAINodeClient$$' -v ./cmd/rkllm-server/
	RKLLM_OPENAI_NODE_TEST=1 $(GO) test -count=1 -run '^TestOpenAINodeClientThroughGateway$$' -v ./gateway/httpapi/

.PHONY: test-ollama-node
test-ollama-node: deps sim ## The official ollama JavaScript client against the server's /api/ (npm installs it into a temporary folder).
	RKLLM_OLLAMA_NODE_TEST=1 $(GO) test -count=1 -run '^TestOllamaNodeClient$$' -v ./cmd/rkllm-server/

# Fuzz targets (package:target); each has a seed corpus in its testdata/fuzz/.
FUZZ_TARGETS := server/jsonrpc:FuzzDecode server/jsonrpc:FuzzAppendString server/workerproto:FuzzDirectJSONString server/rkllmrpc:FuzzRunParams server/rkllmrpc:FuzzInitParams server/generation:FuzzScanMatchesDecoder
FUZZTIME ?= 2m
# The end-to-end target: each input is a request to a server whose worker runs the
# AddressSanitizer builds (sim-asan), so it takes far fewer inputs in the same time. Its
# seeds are cmd/rkllm-server/testdata/e2e-seeds/ (a file each).
E2E_FUZZ_TARGET := cmd/rkllm-server:FuzzServe
E2E_FUZZTIME ?= $(FUZZTIME)

.PHONY: fuzz
fuzz: sim-asan ## Fuzz the message decoder, parameter validation and /v1/'s body walker, FUZZTIME (2m) per target, then the server end to end for E2E_FUZZTIME.
	for t in $(FUZZ_TARGETS); do \
		$(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(FUZZTIME) ./$${t%%:*}/ || exit 1; \
	done
	t=$(E2E_FUZZ_TARGET); $(GO) test -run '^$$' -fuzz "^$${t#*:}$$" -fuzztime $(E2E_FUZZTIME) ./$${t%%:*}/

.PHONY: fuzz-ci
# A count, not a duration: Go 1.26's fuzz coordinator can fail a run that ends on a
# -fuzztime deadline with "context deadline exceeded" (golang/go#75804, fixed in 1.27).
# 100,000 inputs take about 4 s a target on an idle 2-core machine. The end-to-end
# target's count includes its seeds (about 520): 1,000 take about a minute.
fuzz-ci: ## A brief fuzz run of each target (CI): 100,000 inputs each, 1,000 end to end.
	$(MAKE) --no-print-directory fuzz FUZZTIME=100000x E2E_FUZZTIME=1000x

.PHONY: soak
soak: sim build-server ## Soak rkllm-server (minutes, not in CI): thousands of requests, RSS and goroutines over time. SOAK_DURATION=10m.
	$(GO) run ./bench/soak -server $(LOCALBIN)/rkllm-server -sim-dir $(LOCALBIN) -duration $(or $(SOAK_DURATION),10m)

.PHONY: bench-server
bench-server: sim build-server ## Benchmarks of rkllm-server against the unpaced simulator (docs/benchmarks.md).
	$(GO) run ./bench/server -server $(LOCALBIN)/rkllm-server -sim-dir $(LOCALBIN)

.PHONY: bench-hops
bench-hops: ## The floor under the server's per-token latency on this machine: one hop, and two through a C and a Go relay (docs/benchmarks.md).
	$(GO) run ./bench/hops -cc $(SIM_CC)

.PHONY: bench-prefix-reuse
bench-prefix-reuse: sim build-server ## Time to first token of a 10-turn chat with and without conversation-prefix reuse, simulator paced like an RK3588 (docs/benchmarks.md).
	$(GO) run ./bench/prefix-reuse -server $(LOCALBIN)/rkllm-server -sim $(LOCALBIN)/librkllmrt-sim-1.3.so

.PHONY: bench-gateway
bench-gateway: sim build-server ## The gateway's cost per request and per token, and a 10-turn chat over 3 replicas with and without conversation affinity (docs/benchmarks.md).
	$(GO) run ./bench/gateway -server $(LOCALBIN)/rkllm-server -sim-dir $(LOCALBIN)

.PHONY: build-server
build-server: | $(LOCALBIN) ## Build rkllm-server into bin/.
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(LOCALBIN)/rkllm-server ./cmd/rkllm-server

##@ Simulated node's container runtime

# The CNI reference plugins, pinned in hack/cni-plugins/go.mod and built from the Go
# module proxy like the Kubernetes binaries.
CNI_PLUGINS_VERSION ?= $(shell grep -oE 'containernetworking/plugins v[^ ]+' hack/cni-plugins/go.mod | cut -d' ' -f2)
CNI_BIN_DIR ?= $(LOCALBIN)/cni-plugins-$(CNI_PLUGINS_VERSION)
CNI_PLUGINS := bridge host-local loopback
PROCESS_CRI ?= $(LOCALBIN)/process-cri
PODSERVER ?= $(LOCALBIN)/podserver

.PHONY: cni-plugins
cni-plugins: $(CNI_BIN_DIR)/.stamp ## Build the CNI plugins bridge, host-local and loopback into bin/cni-plugins-<version>/.
$(CNI_BIN_DIR)/.stamp: hack/cni-plugins/go.mod hack/cni-plugins/go.sum | $(LOCALBIN)
	@echo "building github.com/containernetworking/plugins@$(CNI_PLUGINS_VERSION) ($(CNI_PLUGINS)) into $(CNI_BIN_DIR)"
	rm -rf $(CNI_BIN_DIR).tmp && mkdir -p $(CNI_BIN_DIR).tmp
	cd hack/cni-plugins && for p in $(CNI_PLUGINS); do \
		pkg=main; [ $$p = host-local ] && pkg=ipam; \
		CGO_ENABLED=0 $(GO) build -mod=readonly -trimpath -o $(CNI_BIN_DIR).tmp/$$p github.com/containernetworking/plugins/plugins/$$pkg/$$p || exit 1; \
	done
	rm -rf $(CNI_BIN_DIR) && mv $(CNI_BIN_DIR).tmp $(CNI_BIN_DIR) && touch $@

.PHONY: process-cri
process-cri: | $(LOCALBIN) ## Build bin/process-cri (the simulated node's container runtime, hack/processcri) and its test workload bin/podserver.
	$(GO) build -o $(PROCESS_CRI) ./hack/process-cri
	$(GO) build -o $(PODSERVER) ./hack/processcri/testdata/podserver

.PHONY: test-process-cri
test-process-cri: deps cni-plugins process-cri ## The process runtime over its CRI socket: images, pod networks, containers, lifecycle, cleanup (root).
	E2E_PROCESS_CRI=$(PROCESS_CRI) E2E_CNI_BIN_DIR=$(CNI_BIN_DIR) E2E_PODSERVER=$(PODSERVER) \
		$(GO) test -tags e2e -count=1 -timeout 10m -v ./hack/processcri/

##@ Device plugin

DEVICE_PLUGIN ?= $(LOCALBIN)/rknpu-device-plugin

.PHONY: device-plugin
device-plugin: | $(LOCALBIN) ## Build rknpu-device-plugin into bin/.
	$(GO) build -o $(DEVICE_PLUGIN) ./cmd/rknpu-device-plugin

# What a real-kubelet node and its control plane run (hack/k8s-binaries.sh components).
KUBELET_NODE_COMPONENTS := kube-apiserver etcd kube-controller-manager kube-scheduler kubelet kubectl

.PHONY: kubelet-node
kubelet-node: deps kwokctl cni-plugins process-cri | $(LOCALBIN) ## Build bin/kubelet-node: a control plane plus a real kubelet on the process runtime (root), for manual runs.
	K8S_BIN_DIR=$(K8S_BIN_DIR) hack/k8s-binaries.sh $(KUBELET_NODE_COMPONENTS)
	$(GO) build -o $(LOCALBIN)/kubelet-node ./hack/kubelet-node

.PHONY: e2e-kubelet
e2e-kubelet: deps kwokctl device-plugin cni-plugins process-cri ## Device plugin against a real kubelet on the process runtime and a control plane (root; builds them from the module proxy).
	K8S_BIN_DIR=$(K8S_BIN_DIR) hack/k8s-binaries.sh $(KUBELET_NODE_COMPONENTS)
	E2E_K8S_BIN_DIR=$(K8S_BIN_DIR) E2E_KWOKCTL=$(KWOKCTL) E2E_DEVICE_PLUGIN=$(DEVICE_PLUGIN) \
		E2E_PROCESS_CRI=$(PROCESS_CRI) E2E_CNI_BIN_DIR=$(CNI_BIN_DIR) \
		$(GO) test -tags e2e -count=1 -timeout 10m -v ./test/e2e/kubelet/

##@ Build

.PHONY: build
build: ## Build every binary into bin/.
	$(GO) build -o $(LOCALBIN)/ ./cmd/...

.PHONY: clean
clean: ## Remove everything built into bin/.
	rm -rf $(LOCALBIN)

##@ Operator

.PHONY: manager
manager: ## Build the operator's manager into bin/manager.
	$(GO) build -o $(LOCALBIN)/manager ./cmd/manager

.PHONY: gateway
gateway: ## Build the model gateway into bin/rkllm-gateway.
	$(GO) build -o $(LOCALBIN)/rkllm-gateway ./cmd/rkllm-gateway

.PHONY: bench-operator
bench-operator: manager $(ENVTEST_DEPS) ## Benchmark the operator: reconcile 500 RKLLMModels (docs/benchmarks.md).
	$(GO) run ./bench/operator --manager $(LOCALBIN)/manager --models 500

##@ Packaging and the simulated edge cluster

CHART := charts/rkllm-operator
KUBECTL := $(K8S_BIN_DIR)/kubectl

.PHONY: test-chart
test-chart: helm servicemonitor-crd ## Chart checks without a cluster: lint, CRD and RBAC equal config/, schema, determinism, names for any release, a stock helm, monitors (current ServiceMonitor fields), the same objects as kustomize.
	K8S_BIN_DIR=$(K8S_BIN_DIR) hack/k8s-binaries.sh kubectl
	E2E_HELM=$(HELM) E2E_KUBECTL=$(KUBECTL) E2E_SERVICEMONITOR_CRD=$(SERVICEMONITOR_CRD) $(GO) test -tags e2e -count=1 ./test/e2e/chart/

# What the edge cluster runs besides the control plane (hack/k8s-binaries.sh builds those).
EDGE_DEPS := deps kwokctl kwok helm device-plugin manager gateway build-server sim cni-plugins process-cri

DEMO_FLAGS = --state $(LOCALBIN)/demo --k8s-bin-dir $(K8S_BIN_DIR) --kwokctl $(KWOKCTL) --kwok $(KWOK) --helm $(HELM) \
	--device-plugin $(DEVICE_PLUGIN) --manager $(LOCALBIN)/manager --gateway $(LOCALBIN)/rkllm-gateway --server $(LOCALBIN)/rkllm-server \
	--sim-lib $(LOCALBIN)/librkllmrt-sim-1.3.so --chart $(CHART) --process-cri $(PROCESS_CRI) --cni-bin-dir $(CNI_BIN_DIR)

.PHONY: demo
demo: $(EDGE_DEPS) rkllm-demo ## The simulated RK3588 edge cluster with the chart installed and a model walked through: its pod on the real-kubelet node downloads the model, runs rkllm-server and streams tokens; then the gateway swaps two models on that node's one NPU, with times (root; keeps running).
	K8S_BIN_DIR=$(K8S_BIN_DIR) hack/k8s-binaries.sh $(KUBELET_NODE_COMPONENTS)
	@$(LOCALBIN)/rkllm-demo up $(DEMO_FLAGS)

.PHONY: rkllm-demo
rkllm-demo: | $(LOCALBIN) ## Build the demo's driver (hack/demo) into bin/rkllm-demo.
	$(GO) build -o $(LOCALBIN)/rkllm-demo ./hack/demo

.PHONY: demo-down
demo-down: ## Stop everything `make demo` started.
	@if [ -x $(LOCALBIN)/rkllm-demo ]; then $(LOCALBIN)/rkllm-demo down $(DEMO_FLAGS); else echo "no demo has been built here"; fi

# The two packages run one after the other (-p 1): each starts a cluster.
.PHONY: e2e
e2e: test-chart $(EDGE_DEPS) servicemonitor-crd rkllm-demo ## The chart on the simulated edge cluster (dry-runs, install, models, metrics, the gateway's activation and NPU swap between two models, scale, suspend, rollout, upgrade, GC, uninstall, kustomize to Helm); demo-down after a crash (root).
	K8S_BIN_DIR=$(K8S_BIN_DIR) hack/k8s-binaries.sh $(KUBELET_NODE_COMPONENTS)
	E2E_K8S_BIN_DIR=$(K8S_BIN_DIR) E2E_KWOKCTL=$(KWOKCTL) E2E_KWOK=$(KWOK) E2E_HELM=$(HELM) \
		E2E_DEVICE_PLUGIN=$(DEVICE_PLUGIN) E2E_MANAGER=$(LOCALBIN)/manager E2E_SERVER=$(LOCALBIN)/rkllm-server \
		E2E_SIM_LIB=$(LOCALBIN)/librkllmrt-sim-1.3.so E2E_SERVICEMONITOR_CRD=$(SERVICEMONITOR_CRD) E2E_DEMO=$(LOCALBIN)/rkllm-demo \
		E2E_PROCESS_CRI=$(PROCESS_CRI) E2E_CNI_BIN_DIR=$(CNI_BIN_DIR) E2E_GATEWAY=$(LOCALBIN)/rkllm-gateway \
		$(GO) test -tags e2e -count=1 -timeout 20m -p 1 -v ./test/e2e/edge/ ./test/e2e/demo/

# The Prometheus Operator's ServiceMonitor CRD, generated by controller-gen from its API
# types (pinned in hack/monitoring-crd/go.mod), so the chart test checks the fields of the
# chart's ServiceMonitors against it and the e2e test's API server validates them.
MONITORING_VERSION ?= $(shell grep -oE 'pkg/apis/monitoring v[^ ]+' hack/monitoring-crd/go.mod | cut -d' ' -f2)
SERVICEMONITOR_CRD ?= $(LOCALBIN)/monitoring-crd-$(MONITORING_VERSION)/monitoring.coreos.com_servicemonitors.yaml

.PHONY: servicemonitor-crd
servicemonitor-crd: $(SERVICEMONITOR_CRD) ## Generate the Prometheus Operator's ServiceMonitor CRD into bin/ (for make test-chart and e2e).
$(SERVICEMONITOR_CRD): hack/monitoring-crd/go.mod hack/monitoring-crd/go.sum | $(CONTROLLER_GEN)
	rm -rf $(@D).tmp
	cd hack/monitoring-crd && GOFLAGS=-mod=readonly $(CONTROLLER_GEN) crd:crdVersions=v1 \
		paths=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1 output:crd:dir=$(@D).tmp
	mkdir -p $(@D)
	mv -f $(@D).tmp/$(@F) $@
	rm -rf $(@D).tmp

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Build controller-gen into bin/.
$(CONTROLLER_GEN): | $(LOCALBIN)
	$(call go-install-tool,$(CONTROLLER_GEN),sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_TOOLS_VERSION))

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## Build golangci-lint into bin/.
$(GOLANGCI_LINT): | $(LOCALBIN)
	$(call go-install-tool,$(GOLANGCI_LINT),github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))

.PHONY: kwokctl
kwokctl: $(KWOKCTL) ## Build kwokctl (starts local control planes from binaries) into bin/.
$(KWOKCTL): hack/kwok/go.mod hack/kwok/go.sum | $(LOCALBIN)
	$(call kwok-build,$@,kwokctl)

.PHONY: kwok
kwok: $(KWOK) ## Build kwok (the fake-node controller kwokctl can run) into bin/.
$(KWOK): hack/kwok/go.mod hack/kwok/go.sum | $(LOCALBIN)
	$(call kwok-build,$@,kwok)

.PHONY: helm
helm: $(HELM) ## Build helm (installs the chart in the demo and the e2e test) into bin/.
$(HELM): hack/helm/go.mod hack/helm/go.sum | $(LOCALBIN)
	@echo "building helm.sh/helm/v3/cmd/helm@$(HELM_VERSION) into $@"
	cd hack/helm && CGO_ENABLED=0 $(GO) build -mod=readonly -trimpath -o $@.tmp \
		-ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$(HELM_VERSION) \
		-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$(word 2,$(subst ., ,$(K8S_VERSION))) \
		-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$(word 2,$(subst ., ,$(K8S_VERSION)))" \
		helm.sh/helm/v3/cmd/helm
	mv -f $@.tmp $@

# kwok-build builds sigs.k8s.io/kwok/cmd/$(2) from hack/kwok into $(1), with the flags
# hack/k8s-binaries.sh uses, so the Kubernetes packages compiled there are reused.
define kwok-build
@echo "building sigs.k8s.io/kwok/cmd/$(2)@$(KWOK_VERSION) into $(1)"
cd hack/kwok && CGO_ENABLED=0 $(GO) build -mod=readonly -trimpath -o $(1).tmp sigs.k8s.io/kwok/cmd/$(2)
mv -f $(1).tmp $(1)
endef

# go-install-tool builds package $(2) at version $(3) into binary $(1) (versioned name,
# so a version bump rebuilds it).
define go-install-tool
@set -e; \
echo "building $(2)@$(3) into $(1)"; \
GOBIN=$(LOCALBIN) $(GO) install $(2)@$(3); \
mv -f $(LOCALBIN)/$$(basename $(2)) $(1)
endef
