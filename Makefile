# Jellybean: `make demo` runs the main job, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo plan-demo bench-plan bench-runtime lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,runtime]'
	@touch $(STAMP)

test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: install
	$(BIN)/lint-imports

# Trains the digits zoo on first use (about 40 s), plans the digits workflow and serves it on an
# embedded local Ray for 20 s, then prints predicted against measured.
demo: install
	$(BIN)/jellybean run -f workflows/digits --duration 20

# The planner alone, on JellyBean's VQA instance and on vehicle tracking.
plan-demo: install
	$(BIN)/jellybean plan -f workflows/vqa-medium
	$(BIN)/jellybean plan -f workflows/vehicle-tracking

bench-plan: install
	$(BIN)/python bench/plan.py

bench-runtime: install
	$(BIN)/python bench/runtime.py

clean:
	rm -rf $(VENV) .pytest_cache
