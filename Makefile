# sampleforge — the commands a developer and CI run. `make help` lists them.
SHELL := /bin/bash
CACHE ?= $(or $(SAMPLEFORGE_CACHE),$(HOME)/.cache/sampleforge)
VENV := $(CACHE)/venv
BIN := $(VENV)/bin
export SAMPLEFORGE_CACHE := $(CACHE)
export PATH := $(BIN):$(CACHE)/bin:$(PATH)

.DEFAULT_GOAL := help

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## Install the Python environment and the testbed's components (idempotent, cached)
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
	@$(BIN)/pytest tests/unit

lint: ## ruff and the import-layer contracts
	@$(BIN)/ruff check .

.PHONY: help setup testbed demo keep up down test test-unit lint
