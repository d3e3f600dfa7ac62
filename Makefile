# One entry point for people and CI. The README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EXTRAS ?= runtime,operator,dev,signing
# Upstream binaries (etcd, kube-*, kwok, helm) are built once from Go modules into this cache.
export PADDLE_SLA_CACHE ?= $(HOME)/.cache/paddle-sla

.PHONY: setup binaries system-deps lint test test-unit test-e2e demo cluster-up cluster-down bench ci

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

setup: $(PY)  ## Python environment with the project installed (editable)
	$(PIP) install -q -e '.[$(EXTRAS)]'

system-deps:  ## Debian packages the tests run for real (Prometheus; the CJK font the OCR tests render with)
	@command -v prometheus >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@test -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-wqy-microhei >/dev/null; }

binaries: setup  ## build (or reuse) the pinned upstream Kubernetes binaries
	$(PY) -m e2e.cluster build

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test-unit: setup
	$(PY) -m pytest -m "not e2e" tests

test-e2e: binaries system-deps
	$(PY) -m pytest -m e2e e2e

test: setup binaries system-deps lint  ## the README's test command
	$(PY) -m pytest tests e2e

demo: binaries  ## the README's main command: cluster, operator, minimal example, a served PP-OCR model
	$(PY) -m e2e.demo

cluster-up: binaries
	$(PY) -m e2e.cluster up

cluster-down: setup
	$(PY) -m e2e.cluster down

bench: setup
	$(PY) benchmarks/serving.py --quick
