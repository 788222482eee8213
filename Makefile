# The README's two commands: `make demo` and `make test`. Each creates .venv when missing and
# installs through requirements/lock.txt, the exact versions CI last passed with.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
LOCK   := requirements/lock.txt
# A CPU-only machine takes the local CPU build of torch; a range would pull GBs of CUDA wheels.
# The lock pins torch's version either way.
TORCH  := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
# Optional wheel index for torch, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
# Python 3.12 for the newest megatron-core (0.17+ needs it): pyenv's, else the one on PATH.
PY312  ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) python3.12)
MCORE_NEWEST ?= megatron-core==0.19.2
# torch for test-latest: the CPU build by default (the newest release is a multi-GB CUDA build);
# LATEST_TORCH=torch takes the newest.
LATEST_TORCH ?= $(TORCH)

.PHONY: demo test install install-dev lock lock-upgrade test-latest test-py312 bench clean

$(VENV)/bin/python:
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

# Regenerate the lock after changing a dependency in pyproject.toml (existing pins are kept
# where they still fit); lock-upgrade moves every pin to the newest release in range. Commit
# the lock with the change. pip-compile records the local CPU build of torch as 2.13.0+cpu;
# the pin is written without the local label so that any build of that release satisfies it.
define pip_compile
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip pip-tools
	.venv-lock/bin/pip-compile --quiet $(1) --extra dev --strip-extras --allow-unsafe \
	    --no-emit-index-url --no-emit-find-links -o $(LOCK) pyproject.toml requirements/lock.in
	sed -i 's/^torch==\([^+ ]*\)+cpu/torch==\1/' $(LOCK)
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

# The suite on Python 3.12 with the newest megatron-core. PyPI's torch for 3.12 is the CUDA
# build (about 3 GB); it runs on the CPU all the same.
test-py312:
	test -x .venv-py312/bin/python || $(PY312) -m venv .venv-py312
	.venv-py312/bin/pip install -q --upgrade pip
	.venv-py312/bin/pip install -q "torch==2.13.0" "$(MCORE_NEWEST)" -e '.[dev]'
	.venv-py312/bin/pip freeze --exclude-editable > .venv-py312/versions.txt
	.venv-py312/bin/python -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev-installed
	@echo "benchmarks need ../shared/corpus; run them one by one, e.g. $(PY) bench/bench_filters.py"

clean:
	rm -rf $(VENV) .venv-latest .venv-py312 .venv-lock demo_out
