# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and
# installs through requirements/lock.txt, the exact versions CI last passed with.
# The lock is made on Python 3.11 for CPU machines (CI's kind): python3.11 is preferred.
PYTHON ?= $(shell command -v python3.11 >/dev/null 2>&1 && echo python3.11 || echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
LOCK   := requirements/lock.txt
TORCH_VERSION := $(shell sed -n 's/^torch==\([^ ]*\).*/\1/p' $(LOCK))
# A CPU-only machine takes the CPU build of torch (this workplace keeps one on disk); with
# nvidia-smi, the CUDA build of the same release. A range would pull GBs of CUDA wheels.
TORCH  := torch==$(TORCH_VERSION)
# Extra wheel index for torch, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu where
# PyPI's torch is the CUDA build (any build of the locked release satisfies the lock).
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX),)
# Python 3.12 for the newest megatron-core (0.17+ needs it): pyenv's newest 3.12, else PATH's.
PY312  ?= $(or $(shell pyenv prefix $$(pyenv latest 3.12 2>/dev/null) 2>/dev/null | sed 's|$$|/bin/python3.12|'),python3.12)
MCORE_NEWEST ?= megatron-core==0.19.2
# torch for test-latest: the locked release (CPU build here); LATEST_TORCH=torch takes the newest.
LATEST_TORCH ?= $(TORCH)

.PHONY: demo test test-random mutation install install-dev lock lock-upgrade test-latest test-py312 bench clean

$(VENV)/bin/python:
	@$(PYTHON) -c 'import sys; sys.version_info[:2] == (3, 11) or print("warning: $(PYTHON) is Python %d.%d; the lock was made on 3.11, so some pins (megatron-core) do not apply" % sys.version_info[:2])'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c $(LOCK) --upgrade pip

$(VENV)/.base-installed: pyproject.toml $(LOCK) | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -c $(LOCK) $(TORCH_PIP_ARGS) "$(TORCH)"
	$(VENV)/bin/pip install -q -c $(LOCK) -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(LOCK) $(VENV)/.base-installed
	$(VENV)/bin/pip install -q -c $(LOCK) -e '.[dev]'
	touch $@

install: $(VENV)/.base-installed
install-dev: $(VENV)/.dev-installed

demo: $(VENV)/.base-installed
	$(PY) scripts/demo.py $(DEMO_ARGS)

test: $(VENV)/.dev-installed
	$(PY) -m pytest $(PYTEST_ARGS)

# `make test` shuffles the tests with a fixed seed (pyproject.toml); this draws a new one and prints it:
# a failure that depends on the order repeats with `make test-random SEED=<seed>`.
SEED ?= $(shell python3 -c 'import random; print(random.randrange(1, 2**31))')
test-random: $(VENV)/.dev-installed
	@echo "random test order, seed $(SEED) (repeat: make test-random SEED=$(SEED))"
	$(PY) -m pytest --randomly-seed=$(SEED) $(PYTEST_ARGS)

# Mutation score per module (mutmut, one mutant at a time; hours on 2 cores): a measure of how much the
# tests notice, not a gate and not part of CI. MUTATION_ARGS: module names (filters dedup layout ...).
mutation: $(VENV)/.dev-installed
	nice -n 10 $(PY) scripts/mutation.py --survivors $(MUTATION_ARGS)

# Regenerate the lock after changing a dependency in pyproject.toml (pins that still fit are
# kept); lock-upgrade moves every pin to the newest release in range. Commit the lock with the
# change. Made on Python 3.11 with the CPU build of torch (give TORCH_INDEX where PyPI serves the
# CUDA build); the pin is written without the local label (+cpu) so any build of it satisfies it.
LOCK_PYTHON ?= python3.11
define pip_compile
	$(LOCK_PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "the lock is made on Python 3.11: set LOCK_PYTHON"'
	rm -rf .venv-lock && $(LOCK_PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip==26.3 pip-tools==7.7.0
	.venv-lock/bin/pip-compile --quiet $(1) --extra dev --strip-extras --allow-unsafe \
	    $(if $(TORCH_INDEX),--pip-args "--extra-index-url $(TORCH_INDEX)",) \
	    --no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml requirements/lock.in
	.venv-lock/bin/python -c 'import re, sys; p = sys.argv[1]; t = open(p).read(); open(p, "w").write(re.sub(r"(?m)^(torch==[^+\s]+)\+\S+", r"\1", t))' $(LOCK)
	rm -rf .venv-lock
endef
lock:
	$(call pip_compile,)
lock-upgrade:
	$(call pip_compile,--upgrade)

# The suite on the newest release of every dependency, without the lock (drift shows here first).
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/pip install -q --upgrade pip
	.venv-latest/bin/pip install -q $(TORCH_PIP_ARGS) "$(LATEST_TORCH)"
	.venv-latest/bin/pip install -q -e '.[dev]'
	.venv-latest/bin/pip freeze --exclude-editable > .venv-latest/versions.txt
	.venv-latest/bin/python -m pytest $(PYTEST_ARGS)

# The suite on Python 3.12 with the newest megatron-core and the newest releases of the rest.
# Without TORCH_INDEX, PyPI's torch for 3.12 is the CUDA build (about 3 GB); it runs on the CPU.
test-py312:
	@$(PY312) -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null || \
	    { echo "error: no Python 3.12 found (tried $(PY312)); set PY312=/path/to/python3.12"; exit 2; }
	rm -rf .venv-py312 && $(PY312) -m venv .venv-py312
	.venv-py312/bin/pip install -q --upgrade pip
	.venv-py312/bin/pip install -q $(TORCH_PIP_ARGS) "$(TORCH)"
	.venv-py312/bin/pip install -q "$(MCORE_NEWEST)" -e '.[dev]'
	.venv-py312/bin/pip freeze --exclude-editable > .venv-py312/versions.txt
	.venv-py312/bin/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev-installed
	@echo "benchmarks need ../shared/corpus; run them one by one, e.g. $(PY) bench/bench_filters.py"

clean:
	rm -rf $(VENV) .venv-latest .venv-py312 .venv-lock demo_out .mutation
