"""Train the digits zoo here, deterministically, and cache the weights.

``build_zoo(cache_dir)`` trains every weighted loader of :mod:`jellybean.zoo.registry` on frames
and crops of the *train* split (see :mod:`jellybean.zoo.digits`) and writes
``<cache_dir>/digits/<loader>.pt`` (a ``state_dict``) plus ``manifest.json``, which records for
each loader the hash of everything its weights depend on (architecture, training settings, seed,
data, torch version) and the SHA-256 of the file. A rerun skips a loader whose config hash still
matches and whose file is intact; ``force=True`` retrains everything.

Determinism: fixed seeds per loader, ``torch.use_deterministic_algorithms(True)`` and a fixed
thread count (:data:`BUILD_THREADS`) during the build (the caller's settings are restored after),
so the same build on the same machine and torch version gives byte-identical weights.

Training data: detectors learn per-column "a digit box starts here" (binary cross-entropy) on
train frames; classifiers learn on 8 x 8 crops of train frames cut the way detectors cut them,
at the true start column moved by -1, 0 or +1 (jitter), so neighbouring digits' ink shows at the
edges exactly as it does behind a detector. The int8 classifier is the trained large CNN,
fused and statically quantised, calibrated on train crops.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from pathlib import Path
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn

from jellybean.zoo import digits
from jellybean.zoo.registry import LOADERS, MANIFEST, ZOO_DIR, file_sha256, read_manifest, weights_path

FORMAT = 1
BUILD_THREADS = 2
Progress = Callable[[str, float], None]

#: Training settings per architecture. ``frames``: train frames generated for it. ``quick``: what a
#: quick build (tests) changes: only the two expensive models train shorter, on less data.
TRAINING: dict[str, dict] = {
    "detector-tiny": {"kind": "detector", "frames": 3000, "epochs": 12, "lr": 1e-2, "batch": 64},
    "detector-small": {"kind": "detector", "frames": 3000, "epochs": 12, "lr": 3e-3, "batch": 64},
    "detector-large": {"kind": "detector", "frames": 3000, "epochs": 10, "lr": 2e-3, "batch": 64,
                       "quick": {"frames": 1000, "epochs": 3}},
    "classifier-mlp": {"kind": "classifier", "frames": 2500, "epochs": 20, "lr": 3e-3, "batch": 64},
    "classifier-cnn": {"kind": "classifier", "frames": 2500, "epochs": 10, "lr": 3e-3, "batch": 64},
    "classifier-cnn-large": {"kind": "classifier", "frames": 2500, "epochs": 10, "lr": 2e-3, "batch": 64,
                             "quick": {"frames": 800, "epochs": 3}},
    "classifier-cnn-large-int8": {"kind": "int8", "from": "digits-classifier-cnn-large", "calibration": 1024},
}
#: Start-column jitter of classifier training crops and its probabilities.
JITTER = (-1, 0, 1)
JITTER_P = (0.25, 0.5, 0.25)


def _settings(architecture: str, quick: bool) -> dict:
    settings = dict(TRAINING[architecture])
    override = settings.pop("quick", {})
    if quick:
        settings.update(override)
    return settings


def config_hash(name: str, *, seed: int, quick: bool, upstream: str | None = None) -> str:
    """Hash of everything the weights of ``name`` depend on."""
    spec = LOADERS[name]
    config = {"format": FORMAT, "loader": name, "architecture": spec.architecture, "seed": seed,
              "settings": _settings(spec.architecture, quick), "jitter": [JITTER, JITTER_P],
              "threads": BUILD_THREADS, "torch": torch.__version__, "digits": [digits.WIDTH, digits.NOISE,
              digits.TRAIN_SHARE, digits.MIN_GAP], "upstream": upstream}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _loader_seed(name: str, seed: int) -> int:
    return (zlib.crc32(name.encode()) + 7919 * seed) % (2**31)


def detector_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(frames (n, 8, 48), targets (n, 48) with 1 at each digit's start column) of the train split."""
    payloads, starts = digits.frames_with_starts("train", n, seed=seed)
    x = np.stack([p["image"] for p in payloads])
    y = np.zeros((n, digits.WIDTH), dtype=np.float32)
    for i, columns in enumerate(starts):
        y[i, columns] = 1.0
    return torch.from_numpy(x), torch.from_numpy(y)


def crop_data(split: str, n_frames: int, seed: int, *, jitter: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(crops (N, 8, 8), labels (N,)) cut from ``n_frames`` frames of ``split`` at each digit's
    start column, moved by a random -1/0/+1 when ``jitter``."""
    payloads, starts = digits.frames_with_starts(split, n_frames, seed=seed)
    rng = np.random.default_rng([seed, 99])
    crops, labels = [], []
    for payload, columns in zip(payloads, starts):
        for column, label in zip(columns, payload["truth"]):
            shift = int(rng.choice(JITTER, p=JITTER_P)) if jitter else 0
            crops.append(digits.crop(payload["image"], column + shift))
            labels.append(label)
    return torch.from_numpy(np.stack(crops)), torch.tensor(labels, dtype=torch.int64)


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: nn.Module, settings: dict,
           seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings["lr"])
    epochs = settings["epochs"]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings["lr"], total_steps=epochs *
                                                    ((len(x) + settings["batch"] - 1) // settings["batch"]))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), settings["batch"]):
            index = order[start:start + settings["batch"]]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[index]), y[index])
            loss.backward()
            optimizer.step()
            scheduler.step()
    return model.eval()


def train_loader(name: str, *, seed: int = 0, quick: bool = False, cache_dir: Path | None = None) -> nn.Module:
    """Train (or, for int8, quantise) the model of ``name``; returns it in eval mode."""
    from jellybean.zoo.models import convert_int8, make, prepare_int8
    from jellybean.zoo.registry import load_model

    spec = LOADERS[name]
    settings = _settings(spec.architecture, quick)
    loader_seed = _loader_seed(name, seed)
    torch.manual_seed(loader_seed)
    if settings["kind"] == "int8":
        upstream = settings["from"]
        base = load_model(cache_dir, upstream, LOADERS[upstream].architecture)
        prepared = prepare_int8(base)
        x, _ = crop_data("train", settings["calibration"], seed=1000 + seed)
        with torch.inference_mode():
            for start in range(0, min(len(x), settings["calibration"]), 128):
                prepared(x[start:start + 128])
        return convert_int8(prepared)
    model = make(spec.architecture)
    if settings["kind"] == "detector":
        x, y = detector_data(settings["frames"], seed=100 + seed)
        loss_fn: nn.Module = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(4.0))
    else:
        x, y = crop_data("train", settings["frames"], seed=200 + seed)
        loss_fn = nn.CrossEntropyLoss()
    return _train(model, x, y, loss_fn, settings, loader_seed)


def _save(model: nn.Module, path: Path) -> str:
    import warnings

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)
    return file_sha256(path)


def _write_manifest(cache_dir: Path, manifest: dict) -> None:
    path = Path(cache_dir) / ZOO_DIR / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def build_zoo(cache_dir: Path, *, seed: int = 0, progress: Progress | None = None, force: bool = False,
              quick: bool = False, only: Iterable[str] | None = None) -> dict[str, Path]:
    """Train every weighted loader not yet cached (or all with ``force``); returns loader -> weights file.

    ``quick`` trains the two large models shorter on less data (for tests: seconds, not half a
    minute; the config hash differs, so a later full build retrains them). ``only`` builds just
    these loaders and what they are made from (the int8 build needs its fp32 model)."""
    cache_dir = Path(cache_dir)
    names = [n for n, spec in LOADERS.items() if spec.architecture]
    if only is not None:
        wanted = set(only)
        unknown = wanted - set(names)
        if unknown:
            raise ValueError(f"no weighted loader named {', '.join(sorted(unknown))}")
        for name in list(wanted):
            upstream = TRAINING[LOADERS[name].architecture].get("from")
            if upstream:
                wanted.add(upstream)
        names = [n for n in names if n in wanted]
    manifest = read_manifest(cache_dir)
    entries = manifest.setdefault("loaders", {})
    manifest["format"] = FORMAT
    hashes: dict[str, str] = {}
    previous = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    torch.set_num_threads(BUILD_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
            for done, name in enumerate(names):
                settings = TRAINING[LOADERS[name].architecture]
                upstream = hashes.get(settings.get("from", ""))
                wanted = config_hash(name, seed=seed, quick=quick, upstream=upstream)
                hashes[name] = wanted
                path = weights_path(cache_dir, name)
                entry = entries.get(name, {})
                if (not force and entry.get("config_hash") == wanted and path.is_file()
                        and file_sha256(path) == entry.get("sha256")):
                    if progress:
                        progress(f"cached {name}", (done + 1) / len(names))
                    continue
                if progress:
                    progress(f"training {name}", done / len(names))
                started = time.perf_counter()
                model = train_loader(name, seed=seed, quick=quick, cache_dir=cache_dir)
                entries[name] = {"file": path.name, "config_hash": wanted, "sha256": _save(model, path),
                                 "seed": seed, "quick": quick, "train_seconds": round(time.perf_counter() - started, 2)}
                _write_manifest(cache_dir, manifest)  # after each: the next (int8) loads its upstream
                if progress:
                    progress(f"trained {name}", (done + 1) / len(names))
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])
    _write_manifest(cache_dir, manifest)
    return {name: weights_path(cache_dir, name) for name in names}


def is_built(cache_dir: Path, *, seed: int = 0, quick: bool = False) -> bool:
    """Whether every weighted loader is cached with the config hash a build would give it."""
    entries = read_manifest(cache_dir).get("loaders", {})
    hashes: dict[str, str] = {}
    for name, spec in LOADERS.items():
        if not spec.architecture:
            continue
        upstream = hashes.get(TRAINING[spec.architecture].get("from", ""))
        hashes[name] = config_hash(name, seed=seed, quick=quick, upstream=upstream)
        if entries.get(name, {}).get("config_hash") != hashes[name] or not weights_path(cache_dir, name).is_file():
            return False
    return True
