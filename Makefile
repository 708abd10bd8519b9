# sampleforge — the commands a developer and CI run. `make help` lists them.
SHELL := /bin/bash
REPO := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
CACHE ?= $(or $(SAMPLEFORGE_CACHE),$(HOME)/.cache/sampleforge)
# This checkout's own Python environment, in the cache and keyed by the checkout's path
# (hack/checkout_env.py); the testbed's binaries in $(CACHE)/bin are shared by every checkout.
ifeq ($(origin VENV),undefined)
VENV := $(or $(SAMPLEFORGE_VENV),$(shell python3 '$(REPO)/hack/checkout_env.py' venv --checkout '$(REPO)' --cache '$(CACHE)'))
endif
BIN := $(VENV)/bin
export SAMPLEFORGE_CACHE := $(CACHE)
export SAMPLEFORGE_VENV := $(VENV)
export PATH := $(BIN):$(CACHE)/bin:$(PATH)
# Targets that run the environment's tools say how to make it when it is missing.
need-venv = @test -x '$(BIN)/python' || { echo "this checkout has no Python environment yet ($(VENV)); run \`make setup\`" >&2; exit 1; }

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "This checkout's Python environment: $(VENV)"

venv-path: ## Print where this checkout's Python environment is (made by `make setup`)
	@echo '$(VENV)'

setup: ## Install this checkout's Python environment and the shared testbed components (idempotent, cached)
	@hack/bootstrap.sh

testbed: ## Build/install only the testbed's components (etcd, Kubernetes, MinIO, helm, kwok, Prometheus)
	@python3 hack/install_testbed.py

demo: setup ## Set everything up, then run the end-to-end demo (the README's first command)
	@$(BIN)/sampleforge-testbed demo

keep: setup ## Like demo, but leave the local cluster, operator and MinIO running
	@$(BIN)/sampleforge-testbed demo --keep

up: setup ## Only start the local control plane and MinIO and show that they serve
	@$(BIN)/sampleforge-testbed up

down: ## Stop a cluster left running by `make keep`
	@$(BIN)/sampleforge-testbed down

test: setup ## Run every test: unit, then integration against the real testbed (the README's second command)
	@$(BIN)/pytest tests

test-unit: ## Unit tests only: no servers, seconds
	$(need-venv)
	@$(BIN)/pytest tests/unit

generate: ## Regenerate what is generated: CRDs, docs/reference.md, the chart's CRD copies, values table and version
	$(need-venv)
	@cd /tmp && '$(BIN)/python' -m sampleforge.api.crdgen
	@python3 hack/chartgen.py

lint: ## ruff, the import-layer contracts (.importlinter) and mypy --strict (hack/lint.py)
	$(need-venv)
	@$(BIN)/python hack/lint.py

.PHONY: help venv-path setup testbed demo keep up down test test-unit generate lint
