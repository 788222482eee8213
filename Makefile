# The README's two commands: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# A CPU-only machine takes the local CPU build of torch; a range would pull GBs of CUDA wheels.
TORCH  := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
# Optional wheel index for torch, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
TORCH_PIP_ARGS := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)

.PHONY: demo test install install-dev bench clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

$(VENV)/.base-installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -q $(TORCH_PIP_ARGS) "$(TORCH)"
	$(VENV)/bin/pip install -q -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.base-installed
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.base-installed
install-dev: $(VENV)/.dev-installed

demo: $(VENV)/.base-installed
	$(PY) scripts/demo.py $(DEMO_ARGS)

test: $(VENV)/.dev-installed
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev-installed
	@echo "benchmarks need ../shared/corpus; run them one by one, e.g. $(PY) bench/bench_filters.py"

clean:
	rm -rf $(VENV) demo_out
