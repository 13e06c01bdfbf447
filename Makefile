# Every target bootstraps .venv itself; nothing needs to be installed by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PORT ?= 5001

.PHONY: serve test test-slow bench models clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

models: $(STAMP)
	$(PY) examples/build_models.py

serve: models
	$(VENV)/bin/mlscore serve --entry-script examples/diabetes/score.py --model-dir examples/diabetes/models --port $(PORT)

test: models
	$(PY) -m pytest

test-slow: models
	$(PY) -m pytest -m slow

bench: models
	$(PY) benchmarks/compare.py --write-results

clean:
	rm -rf $(VENV) examples/*/models benchmarks/.work .pytest_cache
