# One place that installs everything. `make setup` is idempotent: it re-installs only when the stamp is older
# than pyproject.toml, requirements.txt or this Makefile.
PYTHON ?= python3
VENV ?= .venv
# The CPU wheel of torch 2.13.0 by default. On a GPU machine any CUDA build >= 2.7 works, e.g. TORCH=torch==2.7.1
# (PyPI's Linux wheels of torch are CUDA builds).
TORCH ?= torch==2.13.0
# No wheel cache: a fresh machine installs once, and a cache would only add to the ~2.5 GB the environment takes.
PIP := $(VENV)/bin/python -m pip --no-cache-dir
STAMP := $(VENV)/.softarm-installed

.PHONY: setup test lint demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.txt Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)" transformers-openpi==4.53.3
	# openpi's metadata pins torch==2.7.1 and jax[cuda12]; its code runs on any torch >= 2.7.
	$(PIP) install -q --no-deps rlinf-openpi==0.1.1
	$(PIP) install -q -r requirements.txt
	# peft's metadata asks for stock transformers, which must not replace the patched one; its other deps are above.
	$(PIP) install -q --no-deps peft==0.21.2
	$(PIP) install -q --no-deps -e .
	$(VENV)/bin/python -c "import openpi.models_pytorch.pi0_pytorch, softarm"
	touch $(STAMP)

test: setup
	$(VENV)/bin/python -m pytest -q

demo: setup
	$(VENV)/bin/softarm demo --out demo_out

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
