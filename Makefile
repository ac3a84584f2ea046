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

CONTROLLER_GEN ?= $(LOCALBIN)/controller-gen-$(CONTROLLER_TOOLS_VERSION)
GOLANGCI_LINT ?= $(LOCALBIN)/golangci-lint-$(GOLANGCI_LINT_VERSION)
K8S_BIN_DIR ?= $(LOCALBIN)/k8s/$(K8S_VERSION)

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
manifests: controller-gen ## Generate the CRD, RBAC and webhook manifests from the markers.
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./api/..." paths="./controllers/..." output:crd:artifacts:config=config/crd/bases

.PHONY: generate
generate: controller-gen ## Generate DeepCopy methods from the API types.
	$(CONTROLLER_GEN) object:headerFile="hack/boilerplate.go.txt" paths="./api/..."

.PHONY: verify-generated
verify-generated: manifests generate ## Fail when committed generated files are stale.
	@if [ -n "$$(git status --porcelain -- api config)" ]; then \
		echo "generated files are stale; run 'make manifests generate' and commit:"; \
		git status --porcelain -- api config; git --no-pager diff --stat -- api config; exit 1; \
	fi

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
test: verify-generated vet lint unit ## Everything CI runs (.ci/run calls this).

.PHONY: unit
unit: $(ENVTEST_DEPS) ## Unit and envtest tests.
	$(GO) test ./... -count=1

.PHONY: envtest
envtest: ## Build kube-apiserver and etcd for envtest into bin/k8s/ (from the Go module proxy).
	K8S_BIN_DIR=$(K8S_BIN_DIR) hack/k8s-binaries.sh kube-apiserver etcd

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

.PHONY: demo
demo: manager $(ENVTEST_DEPS) ## Run the demo: a local control plane, the operator and a sample model (Ctrl-C stops it).
	@$(GO) run ./hack/demo --manager $(LOCALBIN)/manager --samples config/samples

.PHONY: bench-operator
bench-operator: manager $(ENVTEST_DEPS) ## Benchmark the operator: reconcile 500 RKLLMModels (docs/benchmarks.md).
	$(GO) run ./bench/operator --manager $(LOCALBIN)/manager --models 500

##@ Tools

.PHONY: controller-gen
controller-gen: $(CONTROLLER_GEN) ## Build controller-gen into bin/.
$(CONTROLLER_GEN): | $(LOCALBIN)
	$(call go-install-tool,$(CONTROLLER_GEN),sigs.k8s.io/controller-tools/cmd/controller-gen,$(CONTROLLER_TOOLS_VERSION))

.PHONY: golangci-lint
golangci-lint: $(GOLANGCI_LINT) ## Build golangci-lint into bin/.
$(GOLANGCI_LINT): | $(LOCALBIN)
	$(call go-install-tool,$(GOLANGCI_LINT),github.com/golangci/golangci-lint/v2/cmd/golangci-lint,$(GOLANGCI_LINT_VERSION))

# go-install-tool builds package $(2) at version $(3) into binary $(1) (versioned name,
# so a version bump rebuilds it).
define go-install-tool
@set -e; \
echo "building $(2)@$(3) into $(1)"; \
GOBIN=$(LOCALBIN) $(GO) install $(2)@$(3); \
mv -f $(LOCALBIN)/$$(basename $(2)) $(1)
endef
