# Two entry points that work on a fresh machine with only python3 and this repository:
#   make demo   -- install and run the optimizer on the built-in digits model
#   make test   -- install with dev extras, run ruff, mypy and pytest
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# OpenMP threads spin-wait by default; with another busy process that slows CPU forward passes ~35x (FACTS).
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE ?= 1
# Test processes (pytest-xdist): each test runs torch on one thread, so 2 processes use a 2-core machine's
# cores; a file's tests stay in one process (its module fixtures are made once). 1 runs the plain way.
TEST_WORKERS ?= 2

.PHONY: demo test test-gpu install install-dev lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

install-dev: $(VENV)/.installed-dev

demo: install
	$(VENV)/bin/autoeff optimize --model digits --budget 10% --trials 24 --out demo-out

lint: install-dev
	$(VENV)/bin/ruff check autoeff tests examples benchmarks
	$(VENV)/bin/mypy

test: install-dev lint
	$(VENV)/bin/pytest -q -p no:cacheprovider $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)

# The CUDA checks (torchao kernels); needs a GPU and `pip install -e '.[tensorrt]'`. CI has no GPU.
test-gpu: install-dev
	$(VENV)/bin/pytest -q -p no:cacheprovider -m gpu

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
