# The README's two commands live here so README, CI and users run the same thing.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: setup repro test bench clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

repro: setup
	dvc repro

# Tests run under the fast BLAS too (python -m toolsel.blas preloads it on Linux).
test: setup
	$(PY) -m toolsel.blas $(PY) -m pytest $(PYTEST_ARGS)

bench: setup
	$(PY) -m toolsel.blas $(PY) bench/data_stages.py
	@for b in bench/train_step.py bench/eval_throughput.py; do \
	  if [ -f $$b ]; then $(PY) -m toolsel.blas $(PY) $$b || exit 1; fi; done

clean-venv:
	rm -rf $(VENV)
