# make demo: install what the demo needs, then run it (writes demo_output/report.html).
# make test: install everything (every extra, CPU torch, the test tools), then run the test suite.
# Both are idempotent: a second run checks the installs and skips them in seconds. Debian
# packages go to the system (scripts/install-system, apt-get); Python packages into $(VENV).
# `make test` after `make demo` completes the install; `make demo` after `make test` installs nothing.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# everything (make test); its name is kept: other checkouts wait for this file
STAMP := $(VENV)/.atomscore-installed
# the demo's part only (make demo): atomscore with its kim and fim extras
DEMO_STAMP := $(VENV)/.atomscore-demo-installed
# the conformance data sits beside the checkout (../shared), as in CI
export ATOMSCORE_CONFORMANCE_DIR ?= $(abspath ../shared/conformance)
PYTEST_ARGS ?= -n auto

.PHONY: demo test setup setup-demo system system-demo venv bench clean

demo: setup-demo
	$(VENV)/bin/atomscore demo --output demo_output

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

setup: system venv

setup-demo: system-demo $(DEMO_STAMP)

system:
	@scripts/install-system all

system-demo:
	@scripts/install-system demo

venv: $(STAMP)

define make_venv
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
endef

define warm_up
	@echo "compiling the quests descriptor kernels once (numba; about 30 s the first time)"
	$(PY) -c "from atomscore.quests.descriptor import warm_up; warm_up()"
endef

# the demo's packages: no torch, no schedulers, no test tools. Satisfied by a complete install.
$(DEMO_STAMP): pyproject.toml
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then touch $@; exit 0; fi; \
	  $(MAKE) --no-print-directory _demo-install

.PHONY: _demo-install
_demo-install:
	$(make_venv)
	$(PY) -m pip install -q -e '.[kim,fim]'
	$(warm_up)
	@touch $(DEMO_STAMP)

# everything, re-installed only when the package's dependencies change; torch pinned first to
# a CPU build, so CI tests backend='torch' on the CPU (an unpinned torch pulls the CUDA build);
# [mace] (mace-torch) keeps that torch. [nequip] conflicts with it (e3nn): its test builds its own env.
$(STAMP): pyproject.toml
	$(make_venv)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,gpu,test,mace]'
	$(warm_up)
	@touch $@ $(DEMO_STAMP)

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo_output atomscore_jobs .pytest_cache
