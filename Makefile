# make demo: install what is missing, then run the demo (writes demo_output/report.html).
# make test: install what is missing, then run the whole test suite.
# Both are idempotent: a second run skips the installs in seconds.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.atomscore-installed
# the conformance data sits beside the checkout (../shared), as in CI
export ATOMSCORE_CONFORMANCE_DIR ?= $(abspath ../shared/conformance)
PYTEST_ARGS ?= -n auto

.PHONY: demo test setup system venv bench clean

demo: setup
	$(VENV)/bin/atomscore demo --output demo_output

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

setup: system venv

system:
	@scripts/install-system

venv: $(STAMP)

# re-installed only when the package's dependencies change; torch pinned first to a CPU
# build, so CI tests backend='torch' on the CPU (an unpinned torch pulls the CUDA build);
# [mace] (mace-torch) keeps that torch. [nequip] conflicts with it (e3nn): its test builds its own env.
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[all,gpu,test,mace]'
	@echo "compiling the quests descriptor kernels once (numba; about 30 s the first time)"
	$(PY) -c "from atomscore.quests.descriptor import warm_up; warm_up()"
	@touch $@

bench: setup
	for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo_output atomscore_jobs .pytest_cache
