# `make test` and `make demo` are the whole set-up on a fresh clone: each creates .venv when missing and installs
# what it needs. constraints.txt pins the CPU build of torch; on a GPU machine install your CUDA torch into .venv
# first (or set CONSTRAINTS=) and the pin is not needed.
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
PY := $(VENV)/bin/python
PIP_FLAGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: test test-slow check-copies demo bench screenshots clean

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(PIP_FLAGS) -e ".[dev]"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m ""

check-copies: $(VENV)/.installed
	$(PY) -m headhunter.pipelines._copies

screenshots: $(VENV)/.installed
	$(PY) docs/screenshots.py

demo: $(VENV)/.installed
	$(VENV)/bin/headhunter demo --out demo-output

bench: $(VENV)/.installed
	$(PY) benchmarks/guidance.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
