# One entry point for people and CI. The README's two commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EXTRAS ?= runtime,operator,dev,signing
# Upstream binaries (etcd, kube-*, kwok, helm, prometheus; the real node's and prometheus-adapter) are built
# once from Go modules into this cache.
export PADDLE_SLA_CACHE ?= $(HOME)/.cache/paddle-sla

.PHONY: setup binaries images system-deps lint test test-unit test-e2e demo cluster-up cluster-down bench ci

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

setup: $(PY)  ## Python environment with the project installed (editable)
	$(PIP) install -q -e '.[$(EXTRAS)]'

# Prometheus; buildah, podman, mmdebstrap and gcc for the images (e2e/images.py); the real node's
# runc, CNI plugins, iptables/nftables and conntrack (e2e/cluster/node.py); the CJK font the OCR
# tests render with (tests/ocr); redis and git for Argo CD's controller and repo server (e2e/cluster/argocd.py).
SYSTEM_PACKAGES := prometheus fonts-wqy-microhei buildah podman mmdebstrap gcc libc6-dev runc containernetworking-plugins \
	iptables nftables conntrack redis-server git
system-deps:  ## Debian packages the tests run for real
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing Debian packages: $$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; fi

binaries: setup  ## build (or reuse) the pinned upstream Kubernetes binaries
	$(PY) -m e2e.cluster build

images: setup system-deps  ## build (or reuse) the runtime, operator and pause images without Docker (buildah)
	$(PY) -m e2e.images build

lint: setup  ## ruff (with docstring rules), import-linter layer contracts, mypy on both packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy operator/paddle_operator runtime/paddle_runtime

test-unit: setup
	$(PY) -m pytest -m "not e2e" tests

test-e2e: binaries system-deps
	$(PY) -m pytest -m e2e e2e

test: setup binaries system-deps lint  ## the README's test command
	$(PY) -m pytest tests e2e

demo: binaries system-deps  ## the README's main command: cluster, operator, minimal example, a served PP-OCR model
	$(PY) -m e2e.demo

cluster-up: binaries system-deps
	$(PY) -m e2e.cluster up

cluster-down: setup
	$(PY) -m e2e.cluster down

bench: setup
	$(PY) benchmarks/serving.py --quick
