from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from jellybean.plugins import default_cache_dir
from jellybean.zoo import build
from jellybean.zoo.registry import LOADERS, read_manifest, weights_path

WEIGHTED = [n for n, s in LOADERS.items() if s.architecture]


def _hashes(cache: Path) -> dict[str, str]:
    return {name: entry["sha256"] for name, entry in read_manifest(cache)["loaders"].items()}


def test_quick_build_wrote_every_weighted_loader(quick_zoo: Path) -> None:
    manifest = json.loads((quick_zoo / "digits" / "manifest.json").read_text())
    assert sorted(manifest["loaders"]) == sorted(WEIGHTED)
    for name in WEIGHTED:
        assert weights_path(quick_zoo, name).is_file()
        assert manifest["loaders"][name]["quick"] is True
    assert build.is_built(quick_zoo, quick=True)
    assert not build.is_built(quick_zoo)  # a full build would retrain (different config hash)


def test_build_is_deterministic(quick_zoo: Path, tmp_path: Path) -> None:
    built = build.build_zoo(tmp_path, quick=True, only=["digits-detector-small", "digits-classifier-cnn-large-int8"])
    assert set(built) == {"digits-detector-small", "digits-classifier-cnn-large", "digits-classifier-cnn-large-int8"}
    again, first = _hashes(tmp_path), _hashes(quick_zoo)
    for name in built:
        assert again[name] == first[name], f"{name}: weights differ between two identical builds"
    with pytest.raises(ValueError, match="no weighted loader"):
        build.build_zoo(tmp_path, only=["digits-aggregator"])


def test_rebuild_skips_cached_and_retrains_damaged(quick_zoo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "copy"
    shutil.copytree(quick_zoo, cache)
    stamps = {n: weights_path(cache, n).stat().st_mtime_ns for n in WEIGHTED}
    messages: list[str] = []
    build.build_zoo(cache, quick=True, progress=lambda m, f: messages.append(m))
    assert messages == [f"cached {n}" for n in WEIGHTED]
    assert stamps == {n: weights_path(cache, n).stat().st_mtime_ns for n in WEIGHTED}

    weights_path(cache, "digits-classifier-mlp").write_bytes(b"damaged")
    messages.clear()
    build.build_zoo(cache, quick=True, progress=lambda m, f: messages.append(m))
    assert [m for m in messages if not m.startswith("cached")] == ["training digits-classifier-mlp",
                                                                   "trained digits-classifier-mlp"]
    assert _hashes(cache) == _hashes(quick_zoo)


def test_full_build_caches_and_skips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The full build's bookkeeping, with training stubbed out (the real one takes ~35 s)."""
    import torch

    from jellybean.zoo.models import make

    trained: list[str] = []

    def fake_train(name: str, *, seed: int = 0, quick: bool = False, cache_dir: Path | None = None):
        trained.append(name)
        torch.manual_seed(0)
        return make(LOADERS[name].architecture)

    monkeypatch.setattr(build, "train_loader", fake_train)
    threads = torch.get_num_threads()
    build.build_zoo(tmp_path)
    assert trained == WEIGHTED and build.is_built(tmp_path) and not build.is_built(tmp_path, quick=True)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    trained.clear()
    build.build_zoo(tmp_path)
    assert trained == []
    build.build_zoo(tmp_path, force=True)
    assert trained == WEIGHTED
    trained.clear()
    build.build_zoo(tmp_path, seed=1)  # another seed is another config
    assert trained == WEIGHTED


def test_config_hash_tracks_what_weights_depend_on() -> None:
    name = "digits-classifier-cnn"
    base = build.config_hash(name, seed=0, quick=False)
    assert base == build.config_hash(name, seed=0, quick=False)
    assert base != build.config_hash(name, seed=1, quick=False)
    large = "digits-classifier-cnn-large"
    assert build.config_hash(large, seed=0, quick=False) != build.config_hash(large, seed=0, quick=True)


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JELLYBEAN_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "zoo"
    monkeypatch.delenv("JELLYBEAN_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "jellybean" / "zoo"
