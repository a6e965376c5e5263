# Two commands set everything up on a fresh machine:
#   make demo   – create .venv if missing, install, train the seed example and show it working
#   make test   – create .venv if missing, install with test dependencies, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# re-install whenever pyproject.toml changes
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev,plot]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/tinydancer demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest

# peers for benchmarks/: PyTorch (exact pin: a looser one pulls a multi-GB CUDA build), scikit-learn
$(VENV)/.bench: $(VENV)/.installed
	$(PIP) -e '.[bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/training_speed.py
	$(BIN)/python benchmarks/inference.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis
