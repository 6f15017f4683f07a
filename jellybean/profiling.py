"""``jellybean profile -f zoo.yaml``: measure any variant of any format on this machine and merge the
measurements into its ModelZoo document.

Per variant, in a process of its own (so that its memory is its own: what its resident memory, or
its peak, grew by from just before the model was loaded to after it ran):

- **latency** per batch size: ``repeats`` timed calls of the variant's runner (steps included: what a
  replica runs) on batches drawn from the inputs, after ``warmup`` untimed ones; mean, p50 and p90
  (nearest rank). Throughput at batch size ``b`` is ``b * 1000 / mean_ms``.
- **accuracy**, when a labelled dataset is named (``--dataset``; messages with ``truth``) and the
  variant answers (it judges, or it drops messages): every message is run once (batches of 16). A message whose outputs say ``correct`` (a ``judge`` step, or
  a runner that sets it) counts as that; a message the variant dropped (no output: ``keep-if``)
  counts as a negative answer. With boolean truths (detection: is there speech?) the figure is F1 =
  2 TP / (2 TP + FP + FN), in percent; otherwise the share of messages answered right, in percent.
- **fan-out**: outputs per input message over the same run (0.3: the variant lets 30% through).

Inputs without a dataset: an artifact variant is fed zeros of its signature's shapes (latency and
memory only); a runner variant needs a dataset.

Merging: the variant's profile for the hardware name is replaced, or added beside the profiles of
other hardware (a second machine's measurements are a second entry, never a duplicate-name error);
``memory_mb`` is set, and ``accuracy`` when measured. Hardware naming: the default name is this
machine's kind, ``local-cpu-<threads>t``. A ``--hardware`` name that says another kind (gpu, tpu,
npu, ...) is refused for CPU measurements unless the user labels them so with ``--as NAME``.
"""

from __future__ import annotations

import multiprocessing
import re
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jellybean.artifacts import f1_percent
from jellybean.spec.zoo import ModelZoo, Task, Variant

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16)
#: Hardware names that say "not a CPU": CPU measurements are not labelled so without ``--as``.
NOT_CPU = re.compile(r"gpu|tpu|npu|cuda|jetson|accel|neuron|inferentia|fpga|vpu|dsp", re.IGNORECASE)


class ProfileError(ValueError):
    """A profiling request that cannot be met, said in words (a user error)."""


def local_hardware(threads: int = 1) -> str:
    return f"local-cpu-{threads}t"


def hardware_name(hardware: str | None, label_as: str | None, threads: int = 1) -> str:
    """The name the measurements are filed under (see the module docstring)."""
    if label_as is not None:
        return label_as
    name = hardware or local_hardware(threads)
    if NOT_CPU.search(name):
        raise ProfileError(f"--hardware {name!r} names another kind of hardware than this machine's CPU; these "
                           f"measurements are CPU ones (this machine: {local_hardware(threads)}). Say --as {name} "
                           "to label them so anyway")
    return name


@dataclass
class Measured:
    variant: str
    hardware: str
    latency_ms: dict[int, float]
    latency_ms_p50: dict[int, float]
    latency_ms_p90: dict[int, float]
    throughput_per_s: dict[int, float]
    memory_mb: float
    accuracy: float | None = None
    metric: str | None = None
    fan_out: float | None = None
    notes: list[str] = field(default_factory=list)


def _nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(np.ceil(q * len(ordered))) - 1))]


def synthetic_messages(variant: Variant, count: int = 64) -> list[dict]:
    """Zero inputs of an artifact variant's signature (no pre steps: their inputs are bytes)."""
    if variant.signature is None:
        raise ProfileError(f"variant {variant.name!r} is served by runner {variant.runner!r}: name a labelled "
                           "dataset to feed it (--dataset NAME; `jellybean zoo list` shows the registered ones)")
    if variant.pre:
        raise ProfileError(f"variant {variant.name!r} has pre steps (its inputs are payloads, not arrays): name a "
                           "dataset to feed it (--dataset NAME)")
    fed = [t for t in variant.signature.inputs if t.fill is None]
    one = {t.key: np.zeros(tuple(int(d) for d in t.shape if d not in (-1, "batch")), dtype=t.dtype) for t in fed}
    return [dict(one) for _ in range(count)]


def score(messages: list[dict], outputs: list[list[dict]]) -> tuple[float | None, str | None, float]:
    """(accuracy in percent or None, its metric, fan-out) of a run over labelled messages."""
    fan_out = sum(len(o) for o in outputs) / max(1, len(messages))
    labelled = [(m["truth"], o) for m, o in zip(messages, outputs) if m.get("truth") is not None]
    judged = any("correct" in out for _, outs in labelled for out in outs[:1])
    dropped = any(not outs for _, outs in labelled)
    if not labelled or not (judged or dropped):
        return None, None, fan_out  # the variant gives no answer to hold against the truth
    boolean = all(isinstance(t, (bool, np.bool_)) for t, _ in labelled)
    if boolean:
        tp = fp = fn = 0
        for truth, outs in labelled:
            if not outs:
                predicted = False
            elif "correct" in outs[0]:
                predicted = bool(truth) if outs[0]["correct"] else not bool(truth)
            else:
                predicted = True  # kept, with no verdict: the variant said "yes"
            tp += predicted and truth
            fp += predicted and not truth
            fn += (not predicted) and truth
        return round(f1_percent(tp, fp, fn), 2), "f1", fan_out
    right = sum(1 for _, outs in labelled if outs and bool(outs[0].get("correct", False)))
    return round(100.0 * right / len(labelled), 2), "accuracy", fan_out


def _rss_kb() -> int:
    """This process's resident memory now, in KB (Linux: /proc/self/statm; elsewhere the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * (resource.getpagesize() // 1024)
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _measure(variant_json: str, store: str | None, cache_dir: str | None, dataset: str | None,
             batch_sizes: list[int], repeats: int, warmup: int, threads: int, seed: int,
             inputs_json: str | None = None) -> dict:
    """In the child process: build the runner, time it, score it. Returns plain values."""
    from jellybean.plugins import build_runner, load_dataset, serving_ref

    variant = Variant.model_validate_json(variant_json)
    shaped = Variant.model_validate_json(inputs_json) if inputs_json else variant
    messages = load_dataset(dataset, seed=seed) if dataset else synthetic_messages(shaped)
    if not messages:
        raise ProfileError(f"dataset {dataset!r} has no messages")
    # The framework is imported first: what the model takes is measured, not the library (a runner
    # plugin's own imports do count: they are its).
    if variant.artifact is not None:
        if variant.artifact.format == "onnx":
            import onnxruntime  # noqa: F401
        else:
            import torch  # noqa: F401
    before_kb, before_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, _rss_kb()
    runner = build_runner(serving_ref(variant), cache_dir=cache_dir, model_store=store, threads=threads)
    latency: dict[int, list[float]] = {}
    cursor = 0
    for b in batch_sizes:
        samples = []
        for k in range(warmup + repeats):
            batch = [messages[(cursor + i) % len(messages)] for i in range(b)]
            cursor += b
            began = time.perf_counter()
            runner([dict(m) for m in batch])
            if k >= warmup:
                samples.append((time.perf_counter() - began) * 1000.0)
        latency[b] = samples
    outputs: list[list[dict]] = []
    if dataset:
        for start in range(0, len(messages), 16):
            outputs.extend(runner([dict(m) for m in messages[start:start + 16]]))
    grown_kb = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb, _rss_kb() - before_rss_kb)
    accuracy, metric, fan_out = score(messages, outputs) if dataset else (None, None, None)
    return {"latency": latency, "memory_mb": max(0.0, grown_kb / 1024.0), "accuracy": accuracy,
            "metric": metric, "fan_out": fan_out}


def _child(queue: Any, args: tuple) -> None:
    try:
        queue.put(("ok", _measure(*args)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, in words
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def profile_variant(variant: Variant, *, hardware: str, store: Path | None, cache_dir: Path | None,
                    dataset: str | None = None, batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES,
                    repeats: int = 50, warmup: int = 5, threads: int = 1, seed: int = 0,
                    isolate: bool = True, timeout_s: float = 900.0, inputs_of: Variant | None = None) -> Measured:
    """Measure one variant (see the module docstring); ``isolate`` runs it in a spawned process.
    ``inputs_of``: without a dataset, feed the zero inputs of this variant's signature instead of the
    measured one's (a runner that reads another model's inputs, as a split's pass-through does)."""
    args = (variant.model_dump_json(), str(store) if store else None, str(cache_dir) if cache_dir else None,
            dataset, list(batch_sizes), repeats, warmup, threads, seed,
            inputs_of.model_dump_json() if inputs_of is not None else None)
    if isolate:
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        process = context.Process(target=_child, args=(queue, args), daemon=True)
        process.start()
        try:
            status, value = queue.get(timeout=timeout_s)
        except Exception as exc:
            process.kill()
            raise ProfileError(f"profiling {variant.name!r} gave no result within {timeout_s:g} s "
                               f"(exit code {process.exitcode})") from exc
        process.join(10)
        if status != "ok":
            raise ProfileError(f"variant {variant.name!r}: {value}")
    else:
        value = _measure(*args)
    latency = value["latency"]
    means = {b: round(float(np.mean(v)), 4) for b, v in latency.items()}
    return Measured(
        variant=variant.name, hardware=hardware, latency_ms=means,
        latency_ms_p50={b: round(_nearest_rank(v, 0.5), 4) for b, v in latency.items()},
        latency_ms_p90={b: round(_nearest_rank(v, 0.9), 4) for b, v in latency.items()},
        throughput_per_s={b: round(b * 1000.0 / means[b], 2) for b in means},
        memory_mb=round(value["memory_mb"], 1), accuracy=value["accuracy"], metric=value["metric"],
        fan_out=None if value["fan_out"] is None else round(value["fan_out"], 4))


def merge_into(document: dict, task: str, measured: Measured, *, set_accuracy: bool = True) -> dict:
    """Merge ``measured`` into a ModelZoo document (a dict, as read from YAML), in place."""
    for t in document["spec"]["tasks"]:
        if t["name"] != task:
            continue
        for v in t["variants"]:
            if v["name"] != measured.variant:
                continue
            entry = {"hardware": measured.hardware, "latency_ms": dict(measured.latency_ms),
                     "latency_ms_p50": dict(measured.latency_ms_p50), "latency_ms_p90": dict(measured.latency_ms_p90)}
            profiles = [p for p in v.get("profiles", []) if p.get("hardware") != measured.hardware]
            at = next((i for i, p in enumerate(v.get("profiles", [])) if p.get("hardware") == measured.hardware),
                      len(profiles))
            profiles.insert(at, entry)
            v["profiles"] = profiles
            v["memory_mb"] = measured.memory_mb
            if set_accuracy and measured.accuracy is not None:
                v["accuracy"] = measured.accuracy
            return document
    raise ProfileError(f"the zoo has no variant {measured.variant!r} of task {task!r}")


def write_fan_out(workflow: dict, zoo: ModelZoo, task: Task, measured: list[Measured]) -> list[str]:
    """Write measured fan-out ratios into a Workflow document (a dict): for each stage input that
    reads from a stage of ``task``, ``ratio_by_variant[variant] = fan-out``. Returns what changed."""
    changed = []
    stages = workflow["spec"]["stages"]
    of_task = {s["name"] for s in stages if s.get("task") == task.name}
    for stage in stages:
        for inp in stage.get("inputs", []):
            source = inp if isinstance(inp, str) else inp.get("from")
            if source not in of_task:
                continue
            if isinstance(inp, str):
                raise ProfileError(f"stage {stage['name']!r} lists its input {inp!r} by name only; write it as "
                                   f"`{{from: {inp}}}` to give it ratios")
            ratios = inp.setdefault("ratio_by_variant", {})
            for m in measured:
                if m.fan_out is not None and m.fan_out > 0:
                    ratios[m.variant] = m.fan_out
                    changed.append(f"{stage['name']} <- {source} ({m.variant}): {m.fan_out:g}")
    return changed
