"""Runner overhead per artifact format: the runner a replica runs (read from the store, sha256 checked,
inputs stacked from messages, outputs split back, post steps) against the same artifact called
directly at the same batch size, on a batch stacked from the same items (what a caller holding one
array per item does; the constant inputs are built per call there, as a caller would).

Models, both real:
- ``cnn``: a small image CNN built here (3 x 64 x 64 input, four conv layers, 10 classes; random
  weights from a fixed seed), exported to each format: TorchScript (``torch.jit.trace``), ONNX (the
  TorchScript-based exporter), torch.export (``.pt2``);
- ``silero-vad``: Silero VAD's own ONNX build from the silero-vad wheel (MIT), 576-sample chunks.

Why paired and interleaved: the two vCPUs of this machine drift by 15-30% between seconds, so each
repetition times the direct call and the runner back to back on the same batch (alternating which
goes first), and the overhead is the median over repetitions of (runner / direct - 1). One thread
(``threads=1``), as a replica of one CPU runs.

    python bench/artifacts.py [--repeats 300] [--out bench/results]

Results: ``bench/results/artifacts.json`` and ``artifacts.md``, with the machine noted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from plan import machine  # noqa: E402

from jellybean.artifacts import ModelStore, artifact_runner, calling, sha256_file  # noqa: E402
from jellybean.spec.zoo import Variant  # noqa: E402

BATCH_SIZES = (1, 8)


def cnn():
    import torch

    torch.manual_seed(0)
    layers = []
    channels = 3
    for width in (16, 32, 64, 64):
        layers += [torch.nn.Conv2d(channels, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        channels = width
    layers += [torch.nn.Flatten(), torch.nn.Linear(64 * 4 * 4, 10)]
    return torch.nn.Sequential(*layers).eval()


def build_store(root: Path) -> dict[str, Variant]:
    """The store's files and a variant for each (format, model)."""
    import torch

    model = cnn()
    example = torch.zeros(2, 3, 64, 64)
    (root / "cnn").mkdir(parents=True)
    torch.jit.save(torch.jit.trace(model, example), root / "cnn" / "cnn.ts")
    torch.onnx.export(model, (example,), str(root / "cnn" / "cnn.onnx"), input_names=["image"],
                      output_names=["scores"], dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}},
                      dynamo=False)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), root / "cnn" / "cnn.pt2")
    signature = {"inputs": [{"name": "image", "shape": [-1, 3, 64, 64]}],
                 "outputs": [{"name": "scores", "shape": [-1, 10]}]}
    post = [{"op": "argmax", "field": "scores", "to": "label"}]
    variants = {}
    for fmt, name in (("torchscript", "cnn.ts"), ("onnx", "cnn.onnx"), ("torch-export", "cnn.pt2")):
        variants[f"cnn/{fmt}"] = Variant.model_validate({
            "name": f"cnn-{fmt}", "accuracy": 1, "output_kb": 0.1,
            "profiles": [{"hardware": "local-cpu-1t", "latency_ms": {1: 1.0}}],
            "artifact": {"format": fmt, "uri": f"cnn/{name}", "sha256": sha256_file(root / "cnn" / name)},
            "signature": signature, "post": post})
    try:
        import silero_vad
    except ImportError:
        return variants
    source = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
    (root / "silero-vad").mkdir()
    (root / "silero-vad" / "silero_vad.onnx").write_bytes(source.read_bytes())
    variants["silero-vad/onnx"] = Variant.model_validate({
        "name": "silero-vad-onnx", "accuracy": 1, "output_kb": 0.1,
        "profiles": [{"hardware": "local-cpu-1t", "latency_ms": {1: 1.0}}],
        "artifact": {"format": "onnx", "uri": "silero-vad/silero_vad.onnx",
                     "sha256": sha256_file(root / "silero-vad" / "silero_vad.onnx")},
        "signature": {"inputs": [{"name": "input", "shape": [-1, 576], "field": "audio"},
                                 {"name": "state", "shape": [2, -1, 128], "fill": 0},
                                 {"name": "sr", "dtype": "int64", "shape": [], "fill": 16000}],
                      "outputs": [{"name": "output", "shape": [-1, 1], "field": "speech_prob"}]},
        "post": [{"op": "threshold", "field": "speech_prob", "above": 0.5, "to": "speech"}]})
    return variants


def measure(variant: Variant, store: ModelStore, batch_size: int, repeats: int) -> dict:
    runner = artifact_runner(variant, store, threads=1)
    model = calling(variant, store, threads=1)
    rng = np.random.default_rng(1)
    fed = [t for t in variant.signature.inputs if t.fill is None]
    constants = [t for t in variant.signature.inputs if t.fill is not None]
    messages = [{t.key: rng.standard_normal([int(d) for d in t.shape if d not in (-1, "batch")]).astype(t.dtype)
                 for t in fed} | {"frame_id": k} for k in range(batch_size)]

    def feeds() -> dict:
        out = {t.name: np.stack([m[t.key] for m in messages], axis=t.batch_axis or 0) for t in fed}
        for t in constants:
            shape = tuple(batch_size if d in (-1, "batch") else int(d) for d in t.shape)
            out[t.name] = np.full(shape, t.fill, dtype=t.dtype)
        return out

    for _ in range(20):  # warm both
        model(feeds())
        runner([dict(m) for m in messages])
    direct_ms, runner_ms, ratios = [], [], []
    for k in range(repeats):
        batch = [dict(m) for m in messages]
        order = (0, 1) if k % 2 == 0 else (1, 0)
        times = [0.0, 0.0]
        for which in order:
            began = time.perf_counter()
            if which == 0:
                model(feeds())  # a caller with one array per item stacks them, as the runner does
            else:
                runner(batch)
            times[which] = (time.perf_counter() - began) * 1000.0
        direct_ms.append(times[0])
        runner_ms.append(times[1])
        ratios.append(times[1] / times[0] - 1.0)
    return {"batch_size": batch_size, "direct_ms_p50": round(statistics.median(direct_ms), 4),
            "runner_ms_p50": round(statistics.median(runner_ms), 4),
            "overhead_pct_median": round(100.0 * statistics.median(ratios), 2),
            "overhead_pct_of_medians": round(100.0 * (statistics.median(runner_ms) / statistics.median(direct_ms) - 1), 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        variants = build_store(root)
        store = ModelStore(root)
        for label, variant in variants.items():
            for b in BATCH_SIZES:
                row = {"model": label.split("/")[0], "format": variant.artifact.format, **measure(variant, store, b, args.repeats)}
                rows.append(row)
                print(f"{label:20s} b{b:<3d} direct {row['direct_ms_p50']:8.3f} ms  runner {row['runner_ms_p50']:8.3f} ms  "
                      f"overhead {row['overhead_pct_median']:+6.2f}%", flush=True)
    result = {"machine": machine(), "repeats": args.repeats, "threads": 1, "rows": rows,
              "command": "python bench/artifacts.py" + (f" --repeats {args.repeats}" if args.repeats != 300 else "")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "artifacts.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["# Artifact runners against the artifact called directly", "",
             f"Machine: {result['machine']}. One thread. `{result['command']}`; {args.repeats} paired repetitions per row "
             "(direct call and runner back to back, alternating order); overhead = median of (runner / direct - 1).", "",
             "| model | format | batch | direct p50 (ms) | runner p50 (ms) | overhead (median) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['format']} | {r['batch_size']} | {r['direct_ms_p50']:.3f} | "
                     f"{r['runner_ms_p50']:.3f} | {r['overhead_pct_median']:+.2f}% |")
    lines += ["", "The runner's part: stacking the messages' inputs, the constant inputs (`fill`), splitting each "
              "output back per message, and the post steps (argmax / threshold). The sha256 check happens at "
              "load, not per batch."]
    (args.out / "artifacts.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
