"""Jellybean's digits models as a plugin: registered under the ``jellybean.runners``,
``jellybean.datasets`` and ``jellybean.prepare`` entry points in ``pyproject.toml``, exactly as a
package of the user's would register its own (:mod:`jellybean.plugins`)."""

from __future__ import annotations

from pathlib import Path

from jellybean.zoo.registry import LOADERS, Runner, load_runner


def _factory(name: str):  # noqa: ANN202 - a runner factory (jellybean.plugins)
    spec = LOADERS[name]

    def factory(*, cache_dir: Path, threads: int = 1) -> Runner:
        return load_runner(name, cache_dir, threads=threads)

    factory.__name__ = name.replace("-", "_")
    factory.stateful = spec.stateful  # type: ignore[attr-defined]
    factory.task = spec.task  # type: ignore[attr-defined]
    factory.description = spec.description  # type: ignore[attr-defined]
    return factory


digits_detector_tiny = _factory("digits-detector-tiny")
digits_detector_small = _factory("digits-detector-small")
digits_detector_large = _factory("digits-detector-large")
digits_classifier_mlp = _factory("digits-classifier-mlp")
digits_classifier_cnn = _factory("digits-classifier-cnn")
digits_classifier_cnn_large = _factory("digits-classifier-cnn-large")
digits_classifier_cnn_large_int8 = _factory("digits-classifier-cnn-large-int8")
digits_aggregator = _factory("digits-aggregator")


def digits_frames(seed: int) -> list[dict]:
    from jellybean.zoo.datasets import load_dataset

    return load_dataset("digits-frames", seed=seed)


def prepare(cache_dir: Path) -> None:
    """Train the digits models into ``cache_dir`` once (nothing is downloaded)."""
    from jellybean.zoo.build import build_zoo

    build_zoo(Path(cache_dir))


prepare.runners = frozenset(LOADERS)  # type: ignore[attr-defined] - only workflows that use them need it
