# Jellybean: `make demo` runs the main job, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo bench-plan lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: install
	$(BIN)/lint-imports

demo: install
	$(BIN)/jellybean plan -f workflows/vqa-medium
	$(BIN)/jellybean plan -f workflows/vehicle-tracking

bench-plan: install
	$(BIN)/python bench/plan.py

clean:
	rm -rf $(VENV) .pytest_cache
