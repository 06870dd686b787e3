# Two commands do everything on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DATA   ?= data
RUN    ?= runs/shakespeare
STAMP  := $(VENV)/.installed

.PHONY: setup test test-fast train lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The CPU build of torch first: a bare `torch` requirement could pull a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	# Triton runs its kernels on the CPU under TRITON_INTERPRET=1 (the interpreter tests).
	$(PIP) install -q triton || echo "triton not installed: its interpreter tests will be skipped"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

train: $(STAMP)
	$(VENV)/bin/sparse-transformer prepare shakespeare --data-dir $(DATA)
	$(VENV)/bin/sparse-transformer train --preset shakespeare --data-dir $(DATA) --out $(RUN)
	$(VENV)/bin/sparse-transformer eval --checkpoint $(RUN) --data-dir $(DATA)
	$(VENV)/bin/sparse-transformer sample --checkpoint $(RUN) --length 400 --prompt "ROMEO:"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/attention.py

clean:
	rm -rf $(VENV) build *.egg-info
