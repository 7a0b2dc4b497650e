# progress-relay: the two commands a new user needs are `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
EXTRAS ?= test,bench
HASH    = $(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# Installed with the test and bench extras (what `make test` needs).
STAMP   = $(VENV)/.installed-$(HASH)
# Installed with the service's own dependencies only (what `make run` needs).
RUN_STAMP = $(VENV)/.installed-run-$(HASH)

.PHONY: run test install bench clean check image

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*; touch $@ $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	@touch $@

install: $(STAMP)

## Start the service in dev mode (throwaway secrets, a ready token, the demo page).
run: $(RUN_STAMP)
	$(PY) -m service

## Install everything the tests need (venv, Redis, Node packages, Chromium) and run the whole suite.
test: $(STAMP)
	bash scripts/test-all.sh

## The quality gates: ruff (lint, format), mypy --strict, ESLint and tsc on clients/js.
check: $(STAMP)
	bash scripts/check.sh

# The container image: podman when installed, else docker (podman with --format docker,
# which keeps the HEALTHCHECK). BASE_IMAGE (default python:3.11-slim, see the
# Dockerfile) is only passed when set.
VERSION = $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE  ?= progress-relay:$(VERSION)
ENGINE ?= $(shell command -v podman >/dev/null 2>&1 && echo podman || echo docker)

## Build the container image (IMAGE=name:tag, ENGINE=podman|docker, BASE_IMAGE=..., IMAGE_BUILD_FLAGS=...).
image:
	$(ENGINE) build $(if $(filter podman,$(notdir $(ENGINE))),--format docker) \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) $(IMAGE_BUILD_FLAGS) --tag $(IMAGE) .

bench: $(STAMP)
	$(PY) bench/run.py

## The long chaos soak (5 minutes, 300 clients; options: $(PY) -m tests.chaos.soak --help).
soak: $(STAMP)
	$(PY) -m tests.chaos.soak

clean:
	rm -rf $(VENV) clients/js/node_modules .pytest_cache
