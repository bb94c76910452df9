# cptcore: the two commands that matter on a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install demo test test-fast docs clean

$(BIN)/cpt: pyproject.toml contrib/cptcore-example-template/pyproject.toml contrib/cptcore-zloss/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]" -e contrib/cptcore-example-template -e contrib/cptcore-zloss
	touch $(BIN)/cpt

install: $(BIN)/cpt  ## create .venv and install cptcore (+ dev tools, + the contrib example plugins)

demo: install  ## the main job: SmolLM2-135M continual pretraining on bundled Chinese text, on CPU
	$(BIN)/cpt quickstart

test: install  ## the whole test suite (slow multi-process tests included)
	$(BIN)/python -m pytest -q --durations=15

test-fast: install  ## skip the slow multi-process and real-model tests
	$(BIN)/python -m pytest -q -m "not slow"

docs: install  ## regenerate the CLI reference
	$(BIN)/python -m cptcore.cli.docgen > docs/cli.md

clean:
	rm -rf $(VENV) build *.egg-info
