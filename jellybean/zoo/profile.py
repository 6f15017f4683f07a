"""Profile the digits zoo on this machine and describe it as a ``ModelZoo`` document.

Everything in the document is measured here, on held-out data (the *test* split of
:mod:`jellybean.zoo.digits`, which no model was trained on), with the runners the workflow serves:

- ``latency_ms`` / ``latency_ms_p50`` / ``latency_ms_p90``: wall time of one call of the runner on a
  batch (mean, median, 90th percentile over ``repeats`` calls after a warm-up), per batch size, with
  ``torch.set_num_threads(threads)`` in this process. Inputs are realistic: test frames for the
  detectors, crops cut at the digits' true positions for the classifiers, a stream of one
  prediction per crop (frames completing one after another) for the aggregator. A detector's time
  includes its peak picking and cropping, a classifier's the stacking of crops: what a replica does.
- ``accuracy``, on each task's own metric, in percent: detection = frames whose digits are all
  found at their true start column +-1 and nothing else is; classification = held-out crops (cut
  at the true start) read right; aggregation = 100 (a join loses nothing).
- the end-to-end table ``digits-end-to-end`` over (digit-detection, digit-classification): frames
  whose whole reading (every digit, in order, nothing extra) is right, for every combination,
  through the real detector -> classifier -> aggregator runners.
- ``output_kb``: what one output message costs as the data plane carries it
  (:func:`jellybean.codec.travelling_bytes`: its fields and the runtime's identity fields, in the
  wire's columns), mean over the test outputs. :func:`output_sizes_kb` measures it alone.
- ``memory_mb`` (``memory="rss"``, the default): the peak resident set size of a fresh Python
  process that loads just this one runner and runs its largest profiled batch a few times: what
  one replica (one Ray actor) needs, interpreter, numpy and torch included (the aggregator does not
  load torch). ``memory="estimate"`` (fast, for tests): weights file bytes plus the bytes of every
  layer's output and of the input at the largest batch size.
- crops per frame of each detector (mean output messages per frame, the count-0 sentinel
  included), for the workflow's ``ratio_by_variant``: in ``metadata.annotations`` as
  ``crops-per-frame/<variant>`` (read them back with :func:`crops_per_frame`).
"""

from __future__ import annotations

import datetime as _dt
import gc
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from jellybean.codec import travelling_bytes
from jellybean.spec.common import Metadata
from jellybean.spec.zoo import AccuracyRow, AccuracyTable, LatencyProfile, ModelZoo, ModelZooSpec, Task, Variant
from jellybean.zoo import digits
from jellybean.zoo.registry import (AGGREGATION, CLASSIFICATION, DETECTION, LOADERS, load_runner,
                                    weights_path)
from jellybean.zoo.runner import AggregatorRunner, Runner

Progress = Callable[[str, float], None]

ZOO_NAME = "digits"
END_TO_END = "digits-end-to-end"
METRICS = {DETECTION: "frames-all-digits-located-pct", CLASSIFICATION: "crop-top1-pct",
           AGGREGATION: "frames-joined-pct"}
CROPS_PREFIX = "crops-per-frame/"
#: Batch size used to run the accuracy evaluations (does not affect results).
EVAL_BATCH = 64


def _flatten(outputs: Iterable[list[dict]]) -> list[dict]:
    return [message for messages in outputs for message in messages]


def _run(runner: Runner, payloads: list[dict], batch: int = EVAL_BATCH) -> list[list[dict]]:
    outputs: list[list[dict]] = []
    for start in range(0, len(payloads), batch):
        outputs.extend(runner(payloads[start:start + batch]))
    return outputs


def _located(found: list[int], truth: list[int]) -> bool:
    return len(found) == len(truth) and all(abs(f - t) <= 1 for f, t in zip(found, truth))


def _message_kb(messages: list[dict], sample: int = 512) -> float:
    return travelling_bytes(messages[:sample]) / 1024


def _cycle(pool: list[dict]) -> Callable[[int], list[dict]]:
    position = 0

    def take(size: int) -> list[dict]:
        nonlocal position
        batch = [pool[(position + i) % len(pool)] for i in range(size)]
        position = (position + size) % len(pool)
        return batch
    return take


def _prediction_stream(predictions: list[dict]) -> Callable[[int], list[dict]]:
    """Batches from an endless stream of predictions; each pass renumbers the frames so the
    aggregator always sees new frames that complete one after another."""
    def stream() -> Iterator[dict]:
        lap = 0
        while True:
            offset = lap * (1 + max(p["frame_id"] for p in predictions))
            for message in predictions:
                yield {**message, "frame_id": message["frame_id"] + offset}
            lap += 1
    source = stream()
    return lambda size: [next(source) for _ in range(size)]


def measure_latency(runner: Runner, take: Callable[[int], list[dict]], batch_sizes: Iterable[int],
                    repeats: int) -> dict[str, dict[int, float]]:
    """Mean, p50 and p90 wall time in ms of ``runner`` on batches from ``take(size)``."""
    mean, p50, p90 = {}, {}, {}
    for size in batch_sizes:
        for _ in range(max(3, repeats // 5)):  # warm-up: lazy initialisation, caches, allocator
            runner(take(size))
        gc.collect()
        samples = []
        for _ in range(repeats):
            batch = take(size)
            started = time.perf_counter()
            runner(batch)
            samples.append((time.perf_counter() - started) * 1000)
        mean[size] = float(np.mean(samples))
        p50[size] = float(np.percentile(samples, 50))
        p90[size] = float(np.percentile(samples, 90))
    return {"latency_ms": mean, "latency_ms_p50": p50, "latency_ms_p90": p90}


_REPLICA = r"""
import json, resource, sys
from pathlib import Path
import numpy as np
from jellybean.zoo.registry import load_runner
name, cache, threads, folder, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5])
payloads = json.loads((folder / "payloads.json").read_text())
images = np.load(folder / "images.npy", allow_pickle=False)
for i, payload in enumerate(payloads):
    if payload.pop("has_image"):
        payload["image"] = images[i]
runner = load_runner(name, Path(cache), threads=threads)
for _ in range(repeats):
    runner(payloads)
try:  # VmHWM: this process's own peak (ru_maxrss would include the parent's RSS at fork on Linux)
    status = Path("/proc/self/status").read_text()
    peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
except (OSError, IndexError, ValueError):
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
print(json.dumps({"peak_rss_mb": peak_mb}))
"""


def replica_peak_rss_mb(name: str, cache_dir: Path, payloads: list[dict], *, threads: int = 1,
                        repeats: int = 5) -> float:
    """Peak RSS in MB of a fresh process that loads runner ``name`` and runs ``payloads`` through it."""
    with tempfile.TemporaryDirectory(prefix="jellybean-replica-") as folder:
        shapes = [np.asarray(p["image"]).shape for p in payloads if p.get("image") is not None]
        shape = shapes[0] if shapes else (0,)
        images = np.zeros((len(payloads), *shape), dtype=np.float32)
        meta = []
        for i, payload in enumerate(payloads):
            has_image = payload.get("image") is not None
            if has_image:
                images[i] = payload["image"]
            meta.append({**{k: v for k, v in payload.items() if k != "image"}, "has_image": has_image})
        np.save(Path(folder) / "images.npy", images)
        (Path(folder) / "payloads.json").write_text(json.dumps(meta))
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads),
               "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run([sys.executable, "-c", _REPLICA, name, str(cache_dir), str(threads), folder,
                               str(repeats)], capture_output=True, text=True, env=env, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"measuring the memory of {name} failed: {proc.stderr.strip()[-2000:]}")
        return float(json.loads(proc.stdout.strip().splitlines()[-1])["peak_rss_mb"])


def estimate_memory_mb(name: str, cache_dir: Path, runner: Runner, payloads: list[dict]) -> float:
    """Weights file bytes plus input and per-layer output bytes at this batch, in MB."""
    total = weights_path(cache_dir, name).stat().st_size if LOADERS[name].architecture else 0
    total += sum(np.asarray(p["image"]).nbytes for p in payloads if p.get("image") is not None)
    model = getattr(runner, "model", None)
    if model is not None:
        sizes: list[int] = []
        hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() * out.element_size()))
                 for m in model.modules() if not list(m.children())]
        try:
            runner(payloads)
        finally:
            for hook in hooks:
                hook.remove()
        total += sum(sizes)
    else:
        total += sum(len(pickle.dumps(p, protocol=5)) for p in payloads)
    return total / (1024 * 1024)


def machine_description() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}"


def _test_inputs(eval_frames: int, seed: int) -> tuple[list[dict], list[list[int]], list[dict], list[dict]]:
    """Held-out frames (and their digits' true starts), the crops cut at those starts, and one
    prediction per crop (the right digit): the inputs of detectors, classifiers and the aggregator."""
    test_frames, test_starts = digits.frames_with_starts("test", eval_frames, seed=seed)
    crops = [{"frame_id": f["frame_id"], "index": k, "count": len(starts), "image": digits.crop(f["image"], s),
              "truth": f["truth"], "sent_at": f["sent_at"]}
             for f, starts in zip(test_frames, test_starts) for k, s in enumerate(starts)]
    predictions = [{**{k: c[k] for k in ("frame_id", "index", "count", "truth", "sent_at")},
                    "digit": c["truth"][c["index"]]} for c in crops]
    return test_frames, test_starts, crops, predictions


def output_sizes_kb(cache_dir: Path, *, eval_frames: int = 1000, seed: int = 0) -> dict[str, float]:
    """Each registered loader's ``output_kb`` (see the module docstring), and ``frame`` (a replayed
    frame as a source sends it: a source's ``payload_kb``), without timing anything: seconds."""
    test_frames, _starts, crops, predictions = _test_inputs(eval_frames, seed)
    out = {"frame": _message_kb(test_frames)}
    for name, spec in LOADERS.items():
        runner = load_runner(name, Path(cache_dir), threads=1)
        inputs = {DETECTION: test_frames, CLASSIFICATION: crops, AGGREGATION: predictions}[spec.task]
        outputs = _flatten(AggregatorRunner()(predictions)) if spec.task == AGGREGATION else _flatten(_run(runner, inputs))
        out[name] = _message_kb(outputs)
    return out


def profile_zoo(cache_dir: Path, *, hardware: str = "local-cpu-1t", threads: int = 1,
                batch_sizes: Iterable[int] = (1, 4, 8, 16), repeats: int = 50, eval_frames: int = 1000,
                progress: Progress | None = None, memory: str = "rss", seed: int = 0) -> ModelZoo:
    """Measure every registered loader (weights must be built) and return the ``digits`` ModelZoo."""
    import torch

    cache_dir = Path(cache_dir)
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError("batch sizes must be >= 1")
    if repeats < 1 or eval_frames < 1 or threads < 1:
        raise ValueError("repeats, eval_frames and threads must be >= 1")
    if memory not in ("rss", "estimate"):
        raise ValueError(f"memory must be 'rss' or 'estimate', not {memory!r}")
    by_task = {task: [n for n, s in LOADERS.items() if s.task == task]
               for task in (DETECTION, CLASSIFICATION, AGGREGATION)}
    steps = len(LOADERS) * (2 if memory == "rss" else 1)
    done = 0

    def step(message: str) -> None:
        nonlocal done
        if progress:
            progress(message, min(done / steps, 1.0))
        done += 1

    test_frames, test_starts, crops, predictions = _test_inputs(eval_frames, seed)
    largest = sizes[-1]
    memory_inputs = {DETECTION: test_frames[:largest], CLASSIFICATION: crops[:largest],
                     AGGREGATION: predictions[:largest]}

    previous_threads = torch.get_num_threads()
    measured: dict[str, dict] = {}
    detections: dict[str, list[dict]] = {}
    end_to_end: list[AccuracyRow] = []
    crops_per_frame: dict[str, float] = {}
    try:
        for name in by_task[DETECTION]:
            step(f"profiling {name}")
            runner = load_runner(name, cache_dir, threads=threads)
            outputs = _run(runner, test_frames)
            found = [s for start in range(0, eval_frames, EVAL_BATCH)
                     for s in runner.starts(test_frames[start:start + EVAL_BATCH])]
            detections[name] = _flatten(outputs)
            crops_per_frame[name] = len(detections[name]) / eval_frames
            measured[name] = {
                "accuracy": 100 * float(np.mean([_located(f, t) for f, t in zip(found, test_starts)])),
                "output_kb": _message_kb(detections[name]),
                "latency": measure_latency(runner, _cycle(test_frames), sizes, repeats), "runner": runner}
        for name in by_task[CLASSIFICATION]:
            step(f"profiling {name}")
            runner = load_runner(name, cache_dir, threads=threads)
            read = _flatten(_run(runner, crops))
            measured[name] = {
                "accuracy": 100 * float(np.mean([r["digit"] == r["truth"][r["index"]] for r in read])),
                "output_kb": _message_kb(read),
                "latency": measure_latency(runner, _cycle(crops), sizes, repeats), "runner": runner}
            for detector in by_task[DETECTION]:
                readings = _flatten(AggregatorRunner()(_flatten(_run(runner, detections[detector]))))
                if len(readings) != eval_frames:
                    raise RuntimeError(f"{detector} + {name}: {len(readings)} readings for {eval_frames} frames")
                accuracy = 100 * float(np.mean([r["correct"] for r in readings]))
                end_to_end.append(AccuracyRow(variants=[detector, name], accuracy=round(accuracy, 2)))
        for name in by_task[AGGREGATION]:
            step(f"profiling {name}")
            runner = load_runner(name, cache_dir, threads=threads)
            joined = _flatten(AggregatorRunner()(predictions))
            measured[name] = {"accuracy": 100.0 * len(joined) / eval_frames, "output_kb": _message_kb(joined),
                              "latency": measure_latency(runner, _prediction_stream(predictions), sizes, repeats),
                              "runner": runner}
        for name, spec in LOADERS.items():
            if memory == "rss":
                step(f"measuring the memory of one {name} replica")
                measured[name]["memory_mb"] = replica_peak_rss_mb(name, cache_dir, memory_inputs[spec.task],
                                                                  threads=threads)
            else:
                measured[name]["memory_mb"] = estimate_memory_mb(name, cache_dir, measured[name]["runner"],
                                                                 memory_inputs[spec.task])
    finally:
        torch.set_num_threads(previous_threads)
    if progress:
        progress("profiled", 1.0)

    def variant(name: str) -> Variant:
        m = measured[name]
        latency = {key: {b: round(v, 4) for b, v in values.items()} for key, values in m["latency"].items()}
        return Variant(name=name, accuracy=round(m["accuracy"], 2), output_kb=round(m["output_kb"], 4),
                       memory_mb=round(m["memory_mb"], 1), precision=LOADERS[name].precision, loader=name,
                       profiles=[LatencyProfile(hardware=hardware, **latency)])

    annotations = {
        "profile/hardware": hardware, "profile/threads": str(threads), "profile/machine": machine_description(),
        "profile/date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "profile/torch": torch.__version__, "profile/repeats": str(repeats),
        "profile/eval-frames": f"{eval_frames} test frames, seed {seed}",
        "profile/memory": ("peak RSS of a fresh process running one replica" if memory == "rss"
                           else "estimate: weights + input + per-layer outputs at the largest batch"),
        "digits-per-frame": f"{len(crops) / eval_frames:.3f}",
        **{f"{CROPS_PREFIX}{name}": f"{value:.3f}" for name, value in crops_per_frame.items()},
    }
    tasks = [Task(name=task, metric=METRICS[task], variants=[variant(n) for n in names])
             for task, names in by_task.items()]
    table = AccuracyTable(name=END_TO_END, tasks=[DETECTION, CLASSIFICATION], rows=end_to_end)
    return ModelZoo(metadata=Metadata(name=ZOO_NAME, annotations=annotations),
                    spec=ModelZooSpec(tasks=tasks, accuracy_tables=[table]))


def crops_per_frame(doc: ModelZoo) -> dict[str, float]:
    """Detector variant -> mean output messages per frame, from the profile's annotations."""
    return {key[len(CROPS_PREFIX):]: float(value) for key, value in doc.metadata.annotations.items()
            if key.startswith(CROPS_PREFIX)}


def dump_zoo(doc: ModelZoo, *, command: str | None = None) -> str:
    """The document as YAML (the one writer, :mod:`jellybean.spec.writer`) with a header comment saying
    how and where it was measured."""
    from jellybean.spec.writer import dump_document

    notes = doc.metadata.annotations
    header = [
        "# The digits zoo: real PyTorch models trained on scikit-learn's bundled handwritten digits",
        "# (jellybean/zoo), every number measured by jellybean.zoo.profile (see its docstring for methods).",
        f"# Command: {command or 'profile_zoo(...)'}",
        f"# Machine: {notes.get('profile/machine', '?')}; hardware name {notes.get('profile/hardware', '?')}, "
        f"{notes.get('profile/threads', '?')} torch thread(s), torch {notes.get('profile/torch', '?')}",
        f"# Date: {notes.get('profile/date', '?')}; latency over {notes.get('profile/repeats', '?')} calls per "
        f"batch size; accuracy on {notes.get('profile/eval-frames', '?')} (held out)",
    ]
    return dump_document(doc, header="\n".join(header) + "\n")


def write_zoo(doc: ModelZoo, path: Path, *, command: str | None = None) -> Path:
    """Write :func:`dump_zoo` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_zoo(doc, command=command))
    return path
