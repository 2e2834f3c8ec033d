# The two commands: `make up` and `make test`. Each installs what it needs itself.
SHELL := /bin/bash
# Debian's Python: world-readable, so sessions running as users' own accounts can use the venv.
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
# The sessions' packages beyond the workbench (the tutorials' PyTorch, matplotlib...): the CPU
# image's pins, so that `make up` sessions, the tests and images/base run the same versions.
USERENV := images/base/requirements.txt
USERENV_STAMP := $(VENV)/.installed-userenv
# The JupyterLab extension (its own pip package): a wheel build, so that its shared-data (the
# prebuilt labextension, the server-extension enable JSON) lands in the venv.
LAB := extensions/shangzhuang-lab
LAB_STAMP := $(VENV)/.installed-lab
LAB_SOURCES := $(shell find $(LAB) \( -name node_modules -o -name lib -o -name labextension -o -name coverage \) -prune -o -type f \( -name '*.ts' -o -name '*.css' -o -name '*.js' -o -name '*.json' -o -name '*.py' -o -name '*.toml' -o -name yarn.lock -o -name .yarnrc.yml \) ! -name _version.py -print 2>/dev/null)
APT := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600
MYHOSTNAME := /usr/share/doc/libnss-myhostname
# Chinese glyphs for the sessions' plots (src/shangzhuang/matplotlibrc) and the zh-CN tutorials.
CJK_FONT := /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc

.PHONY: up test check lint clean install install-test i18n i18n-check

up: install
	$(BIN)/shangzhuang up

check: install
	$(BIN)/shangzhuang check

test: install-test
	bash tests/run.sh

lint: install-test
	$(BIN)/ruff check src tests bench notebooks

install: $(STAMP) $(USERENV_STAMP) $(LAB_STAMP) node_modules/.bin/configurable-http-proxy $(CJK_FONT)

install-test: install $(TEST_STAMP) /usr/bin/chromium $(MYHOSTNAME) /usr/sbin/iptables

$(VENV)/bin/python:
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { $(APT) update && $(APT) install -y --no-install-recommends python3-venv; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(VENV)/bin/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(USERENV_STAMP): $(USERENV) | $(STAMP)
	$(BIN)/pip install -q -r $(USERENV)
	touch $@

$(TEST_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Built with node + jlpm (JupyterLab's yarn) inside pip's build; the bundle is rebuilt on each change.
$(LAB_STAMP): $(LAB_SOURCES) | $(STAMP)
	$(BIN)/pip install -q --no-deps --force-reinstall ./$(LAB)
	touch $@

# The e2e tests drive Debian's Chromium through Playwright (never `playwright install`).
/usr/bin/chromium:
	$(APT) update && $(APT) install -y --no-install-recommends chromium

# The Lab extension's zh_CN catalog, with JupyterLab's tooling (jupyterlab-translate): extract
# the messages of its TypeScript, Python and settings schema into the .pot and the .po; after
# translating, compile the JSON (and .mo) the wheel ships. tests/lab/test_catalog.py checks both.
lab-catalog: $(TEST_STAMP)
	cd $(LAB) && PATH=$(abspath $(BIN)):$$PATH jupyterlab-translate update . shangzhuang_lab -l zh_CN
	cd $(LAB) && PATH=$(abspath $(BIN)):$$PATH jupyterlab-translate compile . shangzhuang_lab -l zh_CN

# A root hub keeps each session's Dask dashboard ports to its own account with an iptables
# rule (hub/containment.py); tests/security/test_dask.py attacks them.
/usr/sbin/iptables:
	$(APT) update && $(APT) install -y --no-install-recommends iptables

$(CJK_FONT):
	$(APT) update && $(APT) install -y --no-install-recommends fonts-noto-cjk

# Users' servers live on NAME.hub.localhost (their own origins). Chromium resolves *.localhost
# by itself; the tests' Python clients ask glibc, which needs Debian's myhostname NSS module.
$(MYHOSTNAME):
	$(APT) update && $(APT) install -y --no-install-recommends libnss-myhostname
	getent hosts test.hub.localhost >/dev/null

node_modules/.bin/configurable-http-proxy: package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $@

# The gettext catalog of pages and messages (shangzhuang/i18n.py): extract every msgid of the
# Python code and the templates, merge them into the zh_CN catalog (new ones empty, for a
# translator), compile the .mo the wheel carries. i18n-check fails on a missing or stale one.
POT := $(VENV)/shangzhuang.pot
i18n: $(STAMP)
	$(BIN)/pybabel extract -F babel.cfg -k Message -k Plural:1,2 -k N_ --add-comments=TRANSLATORS: \
	  --no-location --sort-output --project shangzhuang -o $(POT) src
	$(BIN)/pybabel update -D shangzhuang -i $(POT) -d src/shangzhuang/locale -l zh_CN \
	  --no-fuzzy-matching --ignore-obsolete -w 100
	$(BIN)/pybabel compile -D shangzhuang -d src/shangzhuang/locale -l zh_CN --statistics

i18n-check: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests/unit/test_i18n.py tests/lab/test_catalog.py

clean:
	rm -rf $(VENV) node_modules state $(LAB)/node_modules $(LAB)/lib $(LAB)/shangzhuang_lab/labextension
