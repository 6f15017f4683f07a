"""``jellybean split``: a model cut at layer boundaries, so that its head can run near the camera and
its tail further up (Neurosurgeon's and Dyno's idea), chosen by the same MILP as everything else.

How a model is cut. The variant must be a ``torch-export`` artifact (a ``.pt2`` ExportedProgram);
its graph (``torch.export.load(...).module()``, aten operators in order) is cut after node ``i``
exactly when one tensor computed at or before ``i`` is used after it (nothing else crosses: the
parameters are copied to whichever side uses them). Head ``i`` is the graph up to ``i`` returning that
tensor; tail ``i`` takes it and computes the rest. Both are exported again (``torch.export.export``,
the batch dimension dynamic) into the model store, and checked: head then tail equals the whole
model on a random batch within float tolerance (``rtol 1e-4``, ``atol 1e-5``), or the cut is refused.
Cuts whose crossing tensor is no smaller than the model's input cannot save uplink and are skipped;
of the rest, the ``max_cuts`` with the smallest crossing tensors are kept.

How the planner sees it. The stage of task ``T`` becomes two stages, ``<stage>-head`` (task
``T-head``) and ``<stage>-tail`` (task ``T-tail``), in that order; their variants are

- ``cut-<i>`` / ``cut-<i>``: head and tail of cut ``i`` (the head's ``output_kb`` is the crossing
  tensor's size: what crosses the link);
- ``whole`` / ``pass``: the whole model in the head stage, nothing after (``all here``);
- ``pass`` / ``whole``: nothing first, the whole model in the tail stage (``all there``);

and an accuracy table allows exactly those pairs, each at the model's accuracy (so a head of one cut
never meets a tail of another). ``pass`` is the registered runner ``jellybean-pass`` (its message
handed on unchanged). The MILP then weighs compute at each site against the bytes each choice puts
on each link, as for any two stages.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jellybean.artifacts import ArtifactError, ModelStore, sha256_file
from jellybean.spec.zoo import Variant

PASS_RUNNER = "jellybean-pass"  # noqa: S105 - a runner's name


class SplitError(ValueError):
    """A model that cannot be split as asked, said in words."""


@dataclass
class Cut:
    index: int  # position of the last head node among the graph's compute nodes
    node: str  # its name
    crossing_shape: tuple[int, ...]  # per item (the batch dimension left out)
    crossing_bytes: int  # per item, float32


def _compute_nodes(graph: Any) -> list:
    return [n for n in graph.nodes if n.op in ("call_function", "call_method", "call_module")
            and not str(n.target).startswith("_guards")]


def find_cuts(module: Any) -> list[str]:
    """Names of the nodes after which exactly one tensor crosses (see the module docstring)."""
    nodes = list(module.graph.nodes)
    position = {n: k for k, n in enumerate(nodes)}
    compute = _compute_nodes(module.graph)
    cuts = []
    for node in compute[:-1]:
        at = position[node]
        live = {n for n in nodes[: at + 1] if n.op in ("placeholder", "call_function", "call_method", "call_module")
                and any(position[u] > at and u.op != "output" for u in n.users)}
        live = {n for n in live if not str(n.target).startswith("_guards")}
        if live == {node}:
            cuts.append(node.name)
    return cuts


def _subgraph(module: Any, kept: list, inputs: list, output: Any) -> Any:
    import torch.fx as fx

    graph = fx.Graph()
    env: dict = {}
    for name, node in inputs:
        env[node] = graph.placeholder(name)

    def arg(a: Any) -> Any:
        if a not in env and getattr(a, "op", None) == "get_attr":
            env[a] = graph.node_copy(a)
        return env[a]

    for node in kept:
        for a in node.all_input_nodes:
            if a.op == "get_attr" and a not in env:
                env[a] = graph.node_copy(a)
        env[node] = graph.node_copy(node, arg)
    graph.output(fx.node.map_arg(output, lambda a: env[a]))
    return fx.GraphModule(module, graph)


def split_module(module: Any, cut: str) -> tuple[Any, Any]:
    """Head and tail GraphModules of ``module`` at the node named ``cut``."""
    nodes = list(module.graph.nodes)
    compute = _compute_nodes(module.graph)
    (placeholder,) = [n for n in nodes if n.op == "placeholder"]
    (output,) = [n for n in nodes if n.op == "output"]
    at = next(k for k, n in enumerate(compute) if n.name == cut)
    head_nodes, tail_nodes = compute[: at + 1], compute[at + 1:]
    head = _subgraph(module, head_nodes, [("x", placeholder)], head_nodes[-1])
    tail = _subgraph(module, tail_nodes, [("h", head_nodes[-1])], output.args[0])
    return head, tail


def _export(module: Any, example: Any, path: Path) -> None:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


def split_variant(variant: Variant, store: ModelStore, folder: str, *, max_cuts: int = 4,
                  seed: int = 0) -> tuple[list[Cut], dict[str, dict]]:
    """Cut ``variant``'s artifact; write heads and tails into ``store`` under ``folder``. Returns the
    cuts kept and, per cut, the head's and tail's ``artifact`` and ``signature`` entries."""
    import torch

    if variant.artifact is None or variant.artifact.format != "torch-export" or variant.signature is None:
        raise SplitError(f"variant {variant.name!r} is not a torch-export artifact; export it with "
                         "torch.export.save to split it")
    fed = [t for t in variant.signature.inputs if t.fill is None]
    if len(fed) != 1 or len(variant.signature.inputs) != 1 or len(variant.signature.outputs) != 1:
        raise SplitError(f"variant {variant.name!r}: only a model of one input and one output can be split")
    data = store.read(variant.artifact)
    try:
        module = torch.export.load(io.BytesIO(data)).module()
    except Exception as exc:
        raise ArtifactError(f"not a valid torch.export (.pt2) file: {type(exc).__name__}: {exc}") from exc
    spec_in, spec_out = fed[0], variant.signature.outputs[0]
    per_item = tuple(int(d) for d in spec_in.shape if d not in (-1, "batch"))
    rng = np.random.default_rng(seed)
    example = torch.from_numpy(rng.standard_normal((3, *per_item)).astype(spec_in.dtype))
    with torch.inference_mode():
        whole = _first(module(example)).numpy()
    input_bytes = int(np.prod(per_item)) * np.dtype(spec_in.dtype).itemsize
    candidates = []
    for name in find_cuts(module):
        head, tail = split_module(module, name)
        with torch.inference_mode():
            crossing = head(example)
            again = _first(tail(crossing)).numpy()
        if not np.allclose(again, whole, rtol=1e-4, atol=1e-5):
            continue  # never: a cut that changes the answer is not a cut
        shape = tuple(crossing.shape[1:])
        size = int(np.prod(shape)) * crossing.element_size()
        if size < input_bytes:
            candidates.append((size, name, head, tail, shape))
    candidates.sort(key=lambda c: (c[0], c[1]))
    kept = candidates[:max_cuts]
    if not kept:
        raise SplitError(f"variant {variant.name!r} has no cut whose crossing tensor is smaller than its input")
    order = {n.name: k for k, n in enumerate(_compute_nodes(module.graph))}
    cuts, entries = [], {}
    for size, name, head, tail, shape in sorted(kept, key=lambda c: order[c[1]]):
        k = order[name]
        paths = {"head": Path(folder) / f"{variant.name}-cut{k}-head.pt2", "tail": Path(folder) / f"{variant.name}-cut{k}-tail.pt2"}
        with torch.no_grad():  # not inference mode: export traces with these as examples
            crossing = head(example)
        _export(copy.deepcopy(head), example, store.root / paths["head"])
        _export(copy.deepcopy(tail), crossing, store.root / paths["tail"])
        crossing_spec = {"name": "h", "dtype": spec_in.dtype, "shape": [-1, *shape], "field": f"{variant.name}_h"}
        entries[f"cut-{k}"] = {
            "head": {"artifact": {"format": "torch-export", "uri": str(paths["head"]),
                                  "sha256": sha256_file(store.root / paths["head"])},
                     "signature": {"inputs": [spec_in.model_dump(exclude_none=True)], "outputs": [crossing_spec]}},
            "tail": {"artifact": {"format": "torch-export", "uri": str(paths["tail"]),
                                  "sha256": sha256_file(store.root / paths["tail"])},
                     "signature": {"inputs": [{**crossing_spec, "name": "h"}],
                                   "outputs": [spec_out.model_dump(exclude_none=True)]}}}
        cuts.append(Cut(k, name, shape, size))
    return cuts, entries


def passthrough(*, cache_dir: Path, threads: int = 1):  # noqa: ANN201 - a runner (jellybean.plugins)
    """``jellybean-pass``: each message handed on unchanged (the empty half of "all here" / "all there")."""

    def run(messages: list[dict]) -> list[list[dict]]:
        return [[dict(m)] for m in messages]

    return run


passthrough.task = "split"  # type: ignore[attr-defined]
passthrough.description = "hands each message on unchanged (the empty side of a split model)"  # type: ignore[attr-defined]


def split_documents(zoo_doc: dict, task: str, variant: Variant, cuts: list[Cut], entries: dict[str, dict],
                    measured: dict[str, Any], input_kb: float) -> dict:
    """The zoo document with tasks ``<task>-head`` and ``<task>-tail`` and the table of their pairs
    (``measured``: variant name -> :class:`jellybean.profiling.Measured` of each head and tail)."""
    def profiles(name: str) -> list[dict]:
        m = measured[name]
        return [{"hardware": m.hardware, "latency_ms": dict(m.latency_ms), "latency_ms_p50": dict(m.latency_ms_p50),
                 "latency_ms_p90": dict(m.latency_ms_p90)}]

    whole = variant.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    base = {"accuracy": variant.accuracy, "precision": variant.precision}
    heads = [{**whole, "name": "whole"},
             {"name": "pass", **base, "output_kb": input_kb, "memory_mb": measured["pass"].memory_mb,
              "runner": PASS_RUNNER, "profiles": profiles("pass")}]
    tails = [{"name": "pass", **base, "output_kb": variant.output_kb, "memory_mb": measured["pass"].memory_mb,
              "runner": PASS_RUNNER, "profiles": profiles("pass")},
             {**whole, "name": "whole"}]
    for cut in cuts:
        name = f"cut-{cut.index}"
        # The whole network's pre steps run before the head, its post steps after the tail.
        heads.append({"name": name, **base, "output_kb": round(cut.crossing_bytes / 1024.0 * 1.02, 3),
                      "memory_mb": measured[f"{name}/head"].memory_mb, **entries[name]["head"],
                      **({"pre": whole["pre"]} if whole.get("pre") else {}), "profiles": profiles(f"{name}/head")})
        tails.append({"name": name, **base, "output_kb": variant.output_kb,
                      "memory_mb": measured[f"{name}/tail"].memory_mb, **entries[name]["tail"],
                      **({"post": whole["post"]} if whole.get("post") else {}), "profiles": profiles(f"{name}/tail")})
    doc = copy.deepcopy(zoo_doc)
    tasks = doc["spec"]["tasks"]
    tasks[:] = [t for t in tasks if t["name"] not in (f"{task}-head", f"{task}-tail")]
    tasks += [{"name": f"{task}-head", "variants": heads}, {"name": f"{task}-tail", "variants": tails}]
    rows = [{"variants": ["whole", "pass"], "accuracy": variant.accuracy},
            {"variants": ["pass", "whole"], "accuracy": variant.accuracy}]
    rows += [{"variants": [f"cut-{c.index}", f"cut-{c.index}"], "accuracy": variant.accuracy} for c in cuts]
    tables = doc["spec"].setdefault("accuracy_tables", [])
    tables[:] = [t for t in tables if t["name"] != f"{task}-split"]
    tables.append({"name": f"{task}-split", "tasks": [f"{task}-head", f"{task}-tail"], "rows": rows})
    return doc


def split_workflow(workflow_doc: dict, stage: str, task: str) -> dict:
    """The workflow with ``stage`` as ``<stage>-head`` then ``<stage>-tail`` (readers of ``stage`` read
    the tail), planned against the split's accuracy table."""
    doc = copy.deepcopy(workflow_doc)
    spec = doc["spec"]
    stages = spec["stages"]
    at = next((k for k, s in enumerate(stages) if s["name"] == stage), None)
    if at is None:
        raise SplitError(f"the workflow has no stage {stage!r}")
    original = stages[at]
    head = {**original, "name": f"{stage}-head", "task": f"{task}-head"}
    tail = {"name": f"{stage}-tail", "task": f"{task}-tail", "inputs": [f"{stage}-head"]}
    for key in ("placement",):
        head.pop(key, None)
    stages[at:at + 1] = [head, tail]
    for s in stages:
        if s is head or s is tail:
            continue
        s["inputs"] = [({**i, "from": f"{stage}-tail"} if isinstance(i, dict) and i.get("from") == stage
                        else f"{stage}-tail" if i == stage else i) for i in s["inputs"]]
    spec.setdefault("slo", {})["accuracy_table"] = f"{task}-split"
    return doc


#: The split demo's frame: AlexNet at 112 x 112 (a quarter of its usual pixels, so that two cores
#: serve it at 30 frames/s); its adaptive pooling makes the classifier's input 256 x 6 x 6 whatever the size.
ALEXNET_INPUT = (3, 112, 112)


def alexnet(seed: int = 0, classes: int = 1000):  # noqa: ANN201 - a torch.nn.Module
    """AlexNet as torchvision defines it (the one-tower variant of Krizhevsky's "One weird trick",
    2014: five convolutions 64-192-384-256-256, three max-pools, adaptive average pooling to 6 x 6,
    then 9216 -> 4096 -> 4096 -> ``classes``; 61 M parameters), written out here because torchvision's
    wheel does not load beside this CPU build of torch. Weights from ``seed``, untrained: no download.

    Why this network for splitting: it is the one Neurosurgeon (Kang et al., ASPLOS 2017) cut. Its
    features are 4 % of its weights and shrink a frame (147 KB at 112 x 112) to 4 KB; its classifier
    is the other 96 % (233 MB) and reads those 4 KB. Dropout is left out (identity at inference)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, stride=2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),
        nn.AdaptiveAvgPool2d((6, 6)), nn.Flatten(),
        nn.Linear(256 * 6 * 6, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes)).eval()


def export_alexnet(path: Path, seed: int = 0) -> None:
    """``alexnet`` as a torch-export ``.pt2`` at ``path`` (input ``ALEXNET_INPUT``, batch dynamic)."""
    import torch

    _export(alexnet(seed), torch.zeros(2, *ALEXNET_INPUT), path)


def noise_images(seed: int) -> list[dict]:
    """``noise-images``: 64 seeded random ``ALEXNET_INPUT`` float32 frames (no truth), for replaying
    the split demo's camera."""
    rng = np.random.default_rng(seed)
    return [{"image": rng.standard_normal(ALEXNET_INPUT).astype(np.float32)} for _ in range(64)]
