# tgipool: the verbs. `make demo` runs the operator on a local simulated cluster; `make test` proves it.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
KUBECONFIG_LOCAL := $(CURDIR)/.cluster/kubeconfig
export PATH := $(shell tools/build.sh --print-bin):$(PATH)

.PHONY: help install tools core core-test print-bin manifests check-manifests lint unit e2e test demo demo-down \
        cluster-up cluster-down kind-up bench bench-deps helm-lint clean

help: ## list the verbs
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q uv==0.13.8
	$(UV) pip install -q --python $(PY) -e . --group dev
	touch $@

install: $(VENV)/.installed ## create .venv with the package and dev tools (pinned)

tools: ## build the control-plane binaries into a cache outside the repo (first build: minutes)
	tools/build.sh

CORE_BIN := $(shell tools/build.sh --print-bin)/tgipool-gateway-core

core: ## build the gateway's compiled data plane (gatewaycore/) next to the other binaries
	cd gatewaycore && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o $(CORE_BIN) .

core-test: ## the core's own tests, gofmt and go vet
	@cd gatewaycore && test -z "$$(gofmt -l .)" || { gofmt -l .; echo "gatewaycore: run gofmt -w"; exit 1; }
	cd gatewaycore && GOTOOLCHAIN=local go vet ./... && GOTOOLCHAIN=local go test -count=1 ./...

print-bin: ## print the directory holding the built binaries
	@tools/build.sh --print-bin

manifests: install ## regenerate crds/ from the pydantic models, the chart's copy, and the chart's monitoring files
	$(PY) -m tgipool.cli crds --dir crds
	$(PY) tools/chart_crds.py
	$(PY) -m tgipool.cli monitoring render --dir charts/tgi-pool/files

check-manifests: install ## fail when crds/ differs from the models
	@rm -rf .manifests-check
	@$(PY) tools/chart_crds.py --check && $(PY) -m tgipool.cli crds --dir .manifests-check
	@diff -ru crds .manifests-check || { echo "crds/ is stale: run 'make manifests' and commit"; exit 1; }
	@rm -rf .manifests-check
	@$(PY) tools/chart_crds.py --check
	@$(PY) -m tgipool.cli monitoring render --dir .manifests-check >/dev/null
	@for f in .manifests-check/*; do diff -u charts/tgi-pool/files/$$(basename $$f) $$f \
	  || { echo "charts/tgi-pool/files/ is stale: run 'make manifests' and commit"; exit 1; }; done
	@rm -rf .manifests-check

lint: install ## ruff (lint + format check), mypy strict, and the import contracts between layers
	$(VENV)/bin/ruff check operator tests bench tools
	$(VENV)/bin/ruff format --check operator tests bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: install core ## unit tests (pure parts; the gateway's through its core too)
	$(VENV)/bin/pytest -q tests/unit

cluster-up: tools install ## start the local simulated cluster (.cluster/kubeconfig)
	tools/cluster.sh up

cluster-down: ## stop the local cluster; leaves no process behind
	tools/cluster.sh down

kind-up: install ## a kind cluster with fake GPUs (needs a Docker engine)
	tools/cluster.sh kind-up

e2e: tools install core ## e2e tests on KUBECONFIG, else on the local cluster (brought up and down)
	tools/e2e.sh

helm-lint: tools install ## helm lint + helm template of charts/tgi-pool, defaults and every ci/ option
	tools/chart.sh

test: lint check-manifests helm-lint core-test unit e2e ## everything CI runs

demo: tools install core ## local cluster + operator + example pools, Ready on simulated GPUs
	tools/demo.sh

demo-down: ## stop the demo operator and the cluster
	tools/demo.sh down

bench-deps: install ## nginx and vllm-router (the proxies the gateway bench compares against), the bench group
	@command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx-light; }
	$(UV) pip install -q --python $(PY) --group bench

bench: bench-deps core cluster-up ## every benchmark, side by side with its peers; tables and plots in bench/results/
	@mkdir -p bench/results
	@set -o pipefail; for b in bench/*_bench.py bench/gateway_api_requests.py; do echo "== $$b"; \
	  $(PY) $$b 2>&1 | tee bench/results/$$(basename $$b .py).txt || exit 1; done

clean: cluster-down ## remove the venv and caches (not the binary cache)
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
