# progress-relay: the two commands a new user needs are `make run` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
EXTRAS ?= test,bench
STAMP   = $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test install test-python test-js bench soak clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	@rm -f $(VENV)/.installed-*; touch $@

install: $(STAMP)

## Start the service in dev mode (throwaway secrets, a ready token, the demo page).
run: $(STAMP)
	$(PY) -m service

## Install everything the tests need (venv, Redis, Node packages, Chromium) and run the whole suite.
test: $(STAMP)
	bash scripts/test-all.sh

bench: $(STAMP)
	$(PY) bench/run.py

## The long chaos soak (5 minutes, 300 clients; options: $(PY) -m tests.chaos.soak --help).
soak: $(STAMP)
	$(PY) -m tests.chaos.soak

clean:
	rm -rf $(VENV) clients/js/node_modules .pytest_cache
