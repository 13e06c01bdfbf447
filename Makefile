# Every target bootstraps .venv itself; nothing needs to be installed by hand.
PYTHON ?= python3
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 5001

.PHONY: serve test test-slow bench models clean

# The first install takes a minute or more: each step says what it does, and pip names each package
# it fetches (--progress-bar off keeps that to a line a package).
$(STAMP): pyproject.toml
	@echo "== creating the virtual environment $(VENV) (with $(PYTHON))"
	$(PYTHON) -m venv $(VENV)
	@echo "== installing mlscore and its dependencies into $(VENV) (about a minute the first time)"
	$(PY) -m pip install --progress-bar off --upgrade pip
	set -o pipefail; $(PY) -m pip install --progress-bar off -e '.[dev]' \
		| awk '/^(Collecting|Successfully installed)/ { print; fflush() }'
	touch $@
	@echo "== $(VENV) is ready: '. $(VENV)/bin/activate' puts mlscore, locust and pytest on your PATH"

models: $(STAMP)
	$(PY) examples/build_models.py

serve: models
	$(VENV)/bin/mlscore serve --entry-script examples/diabetes/score.py --model-dir examples/diabetes/models --port $(PORT) \
		--access-log on

test: models
	$(PY) -m pytest

test-slow: models
	$(PY) -m pytest -m slow

bench: models
	$(PY) benchmarks/compare.py --write-results

clean:
	rm -rf $(VENV) examples/*/models benchmarks/.work .pytest_cache
