"""The registered loaders: the only models a ModelZoo document can name for serving.

A document's ``loader`` is a *name* looked up here, never an import path or a file: a document
cannot make a replica import code or read weights from anywhere but ``<cache_dir>/digits/``, and
weights are read with ``torch.load(weights_only=True)`` after their SHA-256 is checked against the
cache's manifest (written by :func:`jellybean.zoo.build.build_zoo`).
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import warnings
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable

from jellybean.zoo.runner import AggregatorRunner, ClassifierRunner, DetectorRunner, Runner

DETECTION = "digit-detection"
CLASSIFICATION = "digit-classification"
AGGREGATION = "reading-aggregation"
#: Weights live in <cache_dir>/<ZOO_DIR>/<loader>.pt beside manifest.json.
ZOO_DIR = "digits"
MANIFEST = "manifest.json"


class UnknownLoader(KeyError):
    """A loader name that is not registered."""

    def __str__(self) -> str:  # KeyError's str() would quote the whole message
        return str(self.args[0]) if self.args else "unknown loader"


class MissingWeights(FileNotFoundError):
    """The cache has no (or no intact) weights for a registered loader."""


@dataclass(frozen=True)
class LoaderSpec:
    name: str
    task: str
    variant: str
    precision: str
    description: str
    builder: Callable[[Path], Runner] = field(repr=False)
    architecture: str | None = None  # None: no weights
    stateful: bool = False  # keeps state across requests (a join): route by key, never fuse



def weights_path(cache_dir: Path, name: str) -> Path:
    return Path(cache_dir) / ZOO_DIR / f"{name}.pt"


def read_manifest(cache_dir: Path) -> dict:
    path = Path(cache_dir) / ZOO_DIR / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # absent or damaged: as if nothing were built
        return {"loaders": {}}
    return manifest if isinstance(manifest, dict) and isinstance(manifest.get("loaders"), dict) else {"loaders": {}}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_model(cache_dir: Path, name: str, architecture: str) -> Any:
    """The model of ``name`` with its cached weights, checked against the manifest, in eval mode."""
    import torch

    from jellybean.zoo.models import make

    path = weights_path(cache_dir, name)
    entry = read_manifest(cache_dir).get("loaders", {}).get(name)
    if entry is None or not path.is_file():
        raise MissingWeights(f"no weights for loader {name!r} in {Path(cache_dir) / ZOO_DIR}; "
                             "build them with `jellybean zoo build`")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise MissingWeights(f"weights {path} do not match the manifest's SHA-256; rebuild them with "
                             "`jellybean zoo build --force`")
    with warnings.catch_warnings():  # quantised tensors warn about deprecated storage classes
        warnings.simplefilter("ignore")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        model = make(architecture)
        model.load_state_dict(state)
    return model.eval()


def _weighted(name: str, runner_cls: type) -> Callable[[Path], Runner]:
    def build(cache_dir: Path) -> Runner:
        return runner_cls(load_model(cache_dir, name, LOADERS[name].architecture))
    return build


def _spec(name: str, task: str, variant: str, precision: str, description: str, architecture: str | None,
          runner_cls: type | None = None) -> LoaderSpec:
    builder = _weighted(name, runner_cls) if architecture else (lambda cache_dir: AggregatorRunner())
    return LoaderSpec(name, task, variant, precision, description, builder, architecture,
                      stateful=runner_cls is None)


LOADERS: dict[str, LoaderSpec] = {spec.name: spec for spec in [
    _spec("digits-detector-tiny", DETECTION, "tiny", "fp32",
          "1-D conv over column features (8 -> 4 -> 1, kernel 3); cheapest, misses and merges digits",
          "detector-tiny", DetectorRunner),
    _spec("digits-detector-small", DETECTION, "small", "fp32",
          "1-D conv over column features (8 -> 16 -> 16 -> 1, kernel 5)", "detector-small", DetectorRunner),
    _spec("digits-detector-large", DETECTION, "large", "fp32",
          "2-D conv (1 -> 16 -> 32) then 1-D conv (256 -> 64 -> 64 dilated -> 1); best, slowest",
          "detector-large", DetectorRunner),
    _spec("digits-classifier-mlp", CLASSIFICATION, "mlp", "fp32",
          "MLP 64 -> 32 -> 10 on the 8 x 8 crop", "classifier-mlp", ClassifierRunner),
    _spec("digits-classifier-cnn", CLASSIFICATION, "cnn", "fp32",
          "CNN conv 8, conv 16, max-pool, 256 -> 32 -> 10", "classifier-cnn", ClassifierRunner),
    _spec("digits-classifier-cnn-large", CLASSIFICATION, "cnn-large", "fp32",
          "CNN conv 32, conv 64, max-pool, conv 128, 2048 -> 256 -> 10", "classifier-cnn-large",
          ClassifierRunner),
    _spec("digits-classifier-cnn-large-int8", CLASSIFICATION, "cnn-large-int8", "int8",
          "digits-classifier-cnn-large, static post-training int8 quantisation of every conv and linear "
          "layer (eager mode, x86 engine, calibrated on train crops)", "classifier-cnn-large-int8",
          ClassifierRunner),
    _spec("digits-aggregator", AGGREGATION, "aggregator", "fp32",
          "joins the predictions of a frame by frame_id and emits its reading (no weights)", None),
]}


def loader_names() -> list[str]:
    return list(LOADERS)


def load_runner(name: str, cache_dir: Path, *, threads: int = 1) -> Runner:
    """A ready runner for the registered loader ``name``, weights from ``cache_dir`` only.

    Sets ``torch.set_num_threads(threads)`` for this process (for the aggregator only when torch is
    already loaded: it needs none). Raises :class:`UnknownLoader` for a
    name that is not registered and :class:`MissingWeights` when the cache lacks its weights.
    """
    spec = LOADERS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UnknownLoader(f"unknown model loader {name!r}: only registered loaders can be served "
                            f"({', '.join(LOADERS)}); see `jellybean zoo list`")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    if spec.architecture or "torch" in sys.modules:  # the aggregator's replica need not load torch
        import torch

        torch.set_num_threads(threads)
    return spec.builder(Path(cache_dir))
