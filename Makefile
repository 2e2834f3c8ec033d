# The two commands: `make up` and `make test`. Each installs what it needs itself.
SHELL := /bin/bash
# Debian's Python: world-readable, so sessions running as users' own accounts can use the venv.
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
APT := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600

.PHONY: up test check lint clean install install-test

up: install
	$(BIN)/shangzhuang up

check: install
	$(BIN)/shangzhuang check

test: install-test
	bash tests/run.sh

lint: install-test
	$(BIN)/ruff check src tests bench

install: $(STAMP) node_modules/.bin/configurable-http-proxy

install-test: install $(TEST_STAMP)

$(VENV)/bin/python:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { $(APT) update && $(APT) install -y --no-install-recommends python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

node_modules/.bin/configurable-http-proxy: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

clean:
	rm -rf $(VENV) node_modules state
