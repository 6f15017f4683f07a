# Jellybean: `make demo` runs the main job, `make test` runs the tests. Both install what they need.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test image demo demo-audio demo-split espeak model-store bench-artifacts plan-demo bench-plan bench-runtime bench-sites bench-resilience lint import-contracts typecheck style clean prometheus dashboards crds

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,runtime,viz]'
	@touch $(STAMP)

test: install lint prometheus espeak
	$(BIN)/python -m pytest

# The dashboard tests run every panel's query against a real Prometheus (Debian's package; CI runs
# as root on a fresh Debian machine).
prometheus:
	@command -v prometheus >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y prometheus; }

# The speech workflow's labelled audio is synthesised with Debian's espeak-ng (GPL-3, a tool run, not linked).
espeak:
	@command -v espeak-ng >/dev/null || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y espeak-ng; }

# The speech workflow's artifacts: Silero VAD's ONNX builds, copied out of the silero-vad wheel into the
# model store ($(MODEL_STORE)), exactly as a user puts their own files there.
MODEL_STORE ?= $(or $(JELLYBEAN_MODEL_STORE),$(HOME)/.cache/jellybean/models)
SILERO = $(shell $(BIN)/python -c 'import pathlib, silero_vad; print(pathlib.Path(silero_vad.__file__).parent / "data")' 2>/dev/null)
model-store: install
	$(BIN)/jellybean store add --model-store $(MODEL_STORE) --to silero-vad $(SILERO)/silero_vad.onnx \
	  $(SILERO)/silero_vad_16k_op15.onnx $(SILERO)/silero_vad_half.onnx $(SILERO)/silero_vad_op18_ifless.onnx

# Voice activity on two microphones with Silero VAD's pretrained builds served from the model store,
# only speech on to the cloud: validated (every artifact loaded and checked), planned, served 20 s.
demo-audio: install espeak model-store
	$(BIN)/jellybean validate -f workflows/speech --model-store $(MODEL_STORE)
	$(BIN)/jellybean run -f workflows/speech --model-store $(MODEL_STORE) --duration 20

# A network cut across tiers (`jellybean split`): built here into the model store, profiled, split,
# planned against the unsplit plans, and the split plan served 15 s; figures in bench/results/split.md.
demo-split: install
	$(BIN)/python bench/split.py --model-store $(MODEL_STORE)

# The image the Helm chart's defaults name (Dockerfile; needs a Docker engine): jellybean:<appVersion>.
IMAGE ?= jellybean:$(shell sed -n 's/^appVersion: "\(.*\)"$$/\1/p' helm/jellybean/Chart.yaml)
image:
	docker build -t $(IMAGE) .

# Regenerates the Grafana dashboards the Helm chart ships (a test fails when they are stale).
dashboards: install
	$(BIN)/jellybean dashboards --out helm/jellybean/dashboards

# Regenerates the chart's CustomResourceDefinitions from the document models (a test fails when they are stale).
crds: install
	$(BIN)/jellybean crds --out helm/jellybean/crds

# The static checks, each a target of its own;
# `make test` runs them before pytest.
lint: import-contracts typecheck style

# The layers' import contracts (import-linter, [tool.importlinter] in pyproject.toml).
import-contracts: install
	$(BIN)/lint-imports

# ruff's rules ([tool.ruff] in pyproject.toml) on the whole tree.
style: install
	$(BIN)/ruff check .

# mypy on the packages and with the strictness [tool.mypy] in pyproject.toml names.
typecheck: install
	$(BIN)/mypy

# Trains the digits zoo on first use (about 40 s), plans the digits workflow and serves it on an
# embedded local Ray for 20 s, then prints predicted against measured.
demo: install
	$(BIN)/jellybean run -f workflows/digits --duration 20

# The planner alone, on JellyBean's VQA instance and on vehicle tracking.
plan-demo: install
	$(BIN)/jellybean plan -f workflows/vqa-medium
	$(BIN)/jellybean plan -f workflows/vehicle-tracking
	$(BIN)/jellybean plan -f workflows/store

# JELLYBEAN=DIR (a checkout of libertyeagle/JellyBean) and JELLYBEAN_PYTHON=PY (with its dependencies)
# also time JellyBean's own optimizer on the scaled instances.
bench-plan: install
	$(BIN)/python bench/plan.py $(if $(JELLYBEAN),--jellybean $(JELLYBEAN) --jellybean-python $(or $(JELLYBEAN_PYTHON),python3))

bench-runtime: install
	$(BIN)/python bench/runtime.py

# The digits workflow across emulated sites (network namespaces, tc-shaped uplinks; needs root):
# link bytes against the plan, a degraded and an under-shaped link, scaling over 1, 2 and 4 hubs
# (QUICK=1: the link measurement only, about a minute, written nowhere unless OUT=DIR).
bench-sites: install
	$(BIN)/python bench/sites.py $(if $(QUICK),--quick) $(if $(OUT),--out $(OUT))

# Site failure, load spike and controller restart drills on a local multi-node Ray (QUICK=1: < 5 min,
# written nowhere unless OUT=DIR: a quick run never overwrites the committed full results).
bench-resilience: install
	$(BIN)/python bench/resilience.py $(if $(QUICK),--quick) $(if $(OUT),--out $(OUT))

# Each artifact format's runner against the artifact called directly at the same batch size.
bench-artifacts: install
	$(BIN)/python bench/artifacts.py

clean:
	rm -rf $(VENV) .pytest_cache
