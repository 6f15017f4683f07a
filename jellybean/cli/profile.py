"""``jellybean profile``: with ``-f zoo.yaml``, any variant of any format measured here and merged
into its ModelZoo document (:mod:`jellybean.profiling` says what is measured and how); without
``-f``, the built-in digits zoo. ``jellybean store add`` and ``jellybean split`` share its helpers
for zoo files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from jellybean.cli.common import EXIT_OK, UsageError, add_model_store_argument, model_store_of
from jellybean.cli.console import ProgressBar
from jellybean.cli.zoo import add_cache_argument, build_zoo, zoo_cache

if TYPE_CHECKING:
    from jellybean.spec.zoo import Variant


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", dest="files", action="append", type=Path, metavar="ZOO",
                   help="the zoo file whose variants are profiled and which the measurements are merged into")
    p.add_argument("--variant", action="append", metavar="NAME", help="only this variant (repeatable)")
    p.add_argument("--batch-sizes", default="1,2,4,8,16", metavar="LIST", help="batch sizes (default 1,2,4,8,16)")
    p.add_argument("--dataset", metavar="NAME", help="a registered dataset to feed the variants and, when "
                   "labelled, measure accuracy and fan-out on (default: zero inputs of the signature)")
    p.add_argument("--as", dest="label_as", metavar="NAME", help="file the measurements under this hardware "
                   "name, whatever kind it says")
    p.add_argument("--fan-out-into", type=Path, metavar="WORKFLOW",
                   help="write the measured fan-out ratios into this Workflow file (ratio_by_variant)")
    add_model_store_argument(p)
    add_cache_argument(p, "weights cache, built first if needed")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the YAML here (default: standard output)")
    p.add_argument("--hardware", help="hardware name of the profiles (default: this machine's, local-cpu-1t "
                   "with one thread)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="torch threads (default 1)")
    p.add_argument("--repeats", type=int, default=100, metavar="N", help="timed calls per batch size (default 100)")
    p.add_argument("--frames", type=int, default=1000, metavar="N",
                   help="held-out frames for the accuracy measurements (default 1000)")


def cmd_profile(args: argparse.Namespace) -> int:
    for flag, value in (("--threads", args.threads), ("--repeats", args.repeats)):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1")
    if args.files:
        return cmd_profile_zoo(args)
    return _profile_digits(args)


def _profile_digits(args: argparse.Namespace) -> int:
    """``jellybean profile`` without ``-f``: the built-in digits zoo (built first if needed), as YAML."""
    from jellybean.spec.common import NAME_RE
    from jellybean.zoo.build import is_built
    from jellybean.zoo.profile import dump_zoo, profile_zoo

    args.hardware = args.label_as or args.hardware or "local-cpu-1t"
    if not NAME_RE.match(args.hardware):
        raise UsageError(f"--hardware {args.hardware!r} is not a valid name (letters, digits, '.', '-', '_')")
    if args.frames < 1:
        raise UsageError("--frames must be at least 1")
    cache = zoo_cache(args)
    if not is_built(cache):
        build_zoo(cache, False)
    command = (f"jellybean profile --hardware {args.hardware} --threads {args.threads} --repeats {args.repeats} "
               f"--frames {args.frames}" + (f" --out {args.out}" if args.out else ""))
    bar = ProgressBar()
    try:
        doc = profile_zoo(cache, hardware=args.hardware, threads=args.threads, repeats=args.repeats,
                          eval_frames=args.frames, progress=bar)
    finally:
        bar.close()
    text = dump_zoo(doc, command=command)
    if args.out is None:
        print(text, end="")
    else:
        try:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc}") from None
        print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UsageError(f"--batch-sizes {text!r}: give sizes separated by commas, e.g. 1,2,4,8,16") from None
    if not sizes or sizes[0] < 1 or sizes[-1] > 4096:
        raise UsageError(f"--batch-sizes {text!r}: each size must be between 1 and 4096")
    return sizes


def _zoo_document(path: Path) -> tuple[list[dict], int]:
    """The YAML documents of ``path`` and the index of its ModelZoo."""
    docs = list(yaml.safe_load_all(path.read_text()))
    for i, doc in enumerate(docs):
        if isinstance(doc, dict) and doc.get("kind") == "ModelZoo":
            return docs, i
    raise UsageError(f"{path} holds no ModelZoo document")


def dump_all(docs: list) -> str:
    from jellybean.spec.writer import dump_documents

    return dump_documents(docs)


def _leading_comment(text: str) -> list[str]:
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("#"):
            break
        lines.append(line)
    return lines


def cmd_profile_zoo(args: argparse.Namespace) -> int:
    """``jellybean profile -f ZOO``: the chosen variants measured, merged into the zoo file (and the
    fan-outs into ``--fan-out-into``)."""
    from jellybean.plugins import default_cache_dir
    from jellybean.profiling import ProfileError, hardware_name, merge_into, profile_variant, write_fan_out
    from jellybean.spec.common import NAME_RE
    from jellybean.spec.loader import load_documents

    if len(args.files) != 1:
        raise UsageError("profile -f takes one zoo file (the one the measurements are merged into)")
    path = args.files[0]
    documents = [d for d in load_documents([path]) if d.model.kind == "ModelZoo"]
    if not documents:
        raise UsageError(f"{path} holds no ModelZoo document")
    zoo = documents[0].model
    try:
        hardware = hardware_name(args.hardware, args.label_as, args.threads)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    if not NAME_RE.match(hardware):
        raise UsageError(f"hardware name {hardware!r} is not a valid name (letters, digits, '.', '-', '_')")
    batch_sizes = parse_batch_sizes(args.batch_sizes)
    chosen = [(t, v) for t in zoo.spec.tasks for v in t.variants
              if (args.variant is None or v.name in args.variant) and v.servable]
    if args.variant:
        known = {v.name for t in zoo.spec.tasks for v in t.variants}
        missing = [name for name in args.variant if name not in known]
        if missing:
            from jellybean.spec.errors import did_you_mean, listed

            raise UsageError(f"--variant {missing[0]!r} is not in {path}{did_you_mean(missing[0], sorted(known))} "
                             f"(its variants: {listed(sorted(known))})")
    if not chosen:
        raise UsageError(f"{path} has no variant that says how to serve it (`runner` or `artifact`) to profile")
    from jellybean.artifacts import ModelStore
    from jellybean.plugins import prepare

    store = model_store_of(args)
    cache = args.cache or default_cache_dir()
    if any(v.runner for _, v in chosen):
        prepare(cache, {v.runner for _, v in chosen if v.runner})
    from jellybean.plugins import zoo_issues

    problems = zoo_issues(zoo, documents[0].source, ModelStore(store), tasks={t.name for t, _ in chosen})
    if problems:
        from jellybean.spec.errors import SpecError

        raise SpecError(problems)
    docs, index = _zoo_document(path)
    measured_by_task: dict[str, list] = {}
    bar = ProgressBar()
    try:
        for k, (task, variant) in enumerate(chosen):
            bar(f"{variant.name}", k / len(chosen))
            try:
                m = profile_variant(variant, hardware=hardware, store=store, cache_dir=cache, dataset=args.dataset,
                                    batch_sizes=batch_sizes, repeats=args.repeats, threads=args.threads)
            except ProfileError as exc:
                raise UsageError(str(exc)) from None
            merge_into(docs[index], task.name, m)
            measured_by_task.setdefault(task.name, []).append(m)
            line = ", ".join(f"b{b} {m.latency_ms_p50[b]:.2f}/{m.latency_ms_p90[b]:.2f} ms" for b in batch_sizes)
            extra = "" if m.accuracy is None else f"; {m.metric} {m.accuracy:.2f}%"
            extra += "" if m.fan_out is None else f"; fan-out {m.fan_out:g}"
            bar.close()
            print(f"{task.name}/{variant.name} on {hardware}: p50/p90 {line}; {m.memory_mb:.0f} MB{extra}",
                  file=sys.stderr)
        bar("done", 1.0)
    finally:
        bar.close()
    # The file's opening comment (what the zoo is, where its models come from) is kept; YAML's own
    # comments inside the documents are not (PyYAML drops them).
    header = "".join(_leading_comment(path.read_text()))
    text = header + dump_all(docs)
    out = args.out
    if out is None:
        print(text, end="")
    else:
        try:
            out.write_text(text)
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc}") from None
        print(f"wrote {out}", file=sys.stderr)
    if args.fan_out_into is not None:
        wf_docs = list(yaml.safe_load_all(args.fan_out_into.read_text()))
        changed = []
        for doc in wf_docs:
            if isinstance(doc, dict) and doc.get("kind") in ("Workflow", "InferenceWorkflow"):
                for task_name, measured in measured_by_task.items():
                    try:
                        changed += write_fan_out(doc, zoo, zoo.spec.task(task_name), measured)
                    except ProfileError as exc:
                        raise UsageError(str(exc)) from None
        header = "".join(_leading_comment(args.fan_out_into.read_text()))
        args.fan_out_into.write_text(header + dump_all(wf_docs))
        for line in changed:
            print(f"fan-out: {line}", file=sys.stderr)
        print(f"wrote {args.fan_out_into}" if changed else f"{args.fan_out_into}: no stage reads from the profiled "
              "stages", file=sys.stderr)
    return EXIT_OK


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="store_command", metavar="ACTION")
    actions.required = True
    add = actions.add_parser("add", help="copy files into the model store (their sha256 printed)")
    add.add_argument("paths", nargs="+", type=Path, metavar="FILE")
    add.add_argument("--to", default="", metavar="FOLDER", help="folder inside the store (e.g. silero-vad)")
    add_model_store_argument(add)


def cmd_store(args: argparse.Namespace) -> int:
    """``jellybean store add FILE... [--to FOLDER]``: copy (never link: the store must hold what it
    serves) and print each file's ``artifact:`` entry, format guessed from the suffix."""
    import shutil

    from jellybean.artifacts import ArtifactError, ModelStore, sha256_file
    from jellybean.spec.zoo import Artifact

    root = model_store_of(args)
    folder = args.to.strip("/")
    formats = {".onnx": "onnx", ".pt2": "torch-export", ".pt": "torchscript", ".jit": "torchscript",
               ".torchscript": "torchscript"}
    for path in args.paths:
        if not path.is_file():
            raise UsageError(f"{path} is not a file")
        uri = f"{folder}/{path.name}" if folder else path.name
        try:
            Artifact(format="onnx", uri=uri, sha256="0" * 64)
        except ValueError:
            raise UsageError(f"{uri!r} is not a model-store path (letters, digits, '.', '_', '-', folders with '/')") \
                from None
        target = root / uri
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".partial")
        shutil.copyfile(path, tmp)
        tmp.replace(target)
        digest = sha256_file(target)
        try:
            ModelStore(root).locate(uri)
        except ArtifactError as exc:
            raise UsageError(str(exc)) from None
        fmt = formats.get(path.suffix.lower(), "onnx | torchscript | torch-export")
        print(f"artifact: {{format: {fmt}, uri: {uri}, sha256: {digest}}}")
    print(f"stored in {root}", file=sys.stderr)
    return EXIT_OK


def add_split_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--filename", dest="files", action="append", type=Path, required=True, metavar="ZOO")
    p.add_argument("--variant", required=True, metavar="NAME", help="the torch-export variant to cut")
    p.add_argument("--max-cuts", type=int, default=4, metavar="N",
                   help="keep the N cuts with the smallest crossing tensors (default 4)")
    p.add_argument("--batch-sizes", default="1,2,4,8", metavar="LIST", help="batch sizes profiled (default 1,2,4,8)")
    p.add_argument("--repeats", type=int, default=30, metavar="N", help="timed calls per batch size (default 30)")
    p.add_argument("--hardware", help="hardware name of the profiles (default: this machine's)")
    p.add_argument("--as", dest="label_as", metavar="NAME", help="file the measurements under this hardware name")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="the zoo with the split tasks")
    p.add_argument("--workflow", type=Path, metavar="FILE", help="a workflow whose --stage runs the variant's task")
    p.add_argument("--stage", metavar="NAME", help="the stage to split into <stage>-head and <stage>-tail")
    p.add_argument("--out-workflow", type=Path, metavar="FILE", help="where the split workflow goes")
    add_model_store_argument(p)


def cmd_split(args: argparse.Namespace) -> int:
    from jellybean.artifacts import ArtifactError, ModelStore
    from jellybean.profiling import ProfileError, hardware_name, profile_variant
    from jellybean.spec.loader import load_documents
    from jellybean.spec.zoo import Variant
    from jellybean.split import PASS_RUNNER, SplitError, split_documents, split_variant, split_workflow

    if (args.workflow is None) != (args.stage is None) or (args.workflow is None) != (args.out_workflow is None):
        raise UsageError("--workflow, --stage and --out-workflow go together")
    if args.max_cuts < 1:
        raise UsageError("--max-cuts must be at least 1")
    path = args.files[0]
    zoo = next((d.model for d in load_documents([path]) if d.model.kind == "ModelZoo"), None)
    if zoo is None:
        raise UsageError(f"{path} holds no ModelZoo document")
    found = [(t, v) for t in zoo.spec.tasks for v in t.variants if v.name == args.variant]
    if not found:
        from jellybean.spec.errors import did_you_mean, listed

        known = sorted({v.name for t in zoo.spec.tasks for v in t.variants})
        raise UsageError(f"{path} has no variant {args.variant!r}{did_you_mean(args.variant, known)} "
                         f"(its variants: {listed(known)})")
    task, variant = found[0]
    try:
        hardware = hardware_name(args.hardware, args.label_as)
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    store_dir = model_store_of(args)
    store = ModelStore(store_dir)
    try:
        cuts, entries = split_variant(variant, store, f"split/{variant.name}", max_cuts=args.max_cuts)
    except (SplitError, ArtifactError) as exc:
        raise UsageError(str(exc)) from None
    sizes = parse_batch_sizes(args.batch_sizes)
    base = {"accuracy": variant.accuracy, "output_kb": variant.output_kb,
            "profiles": [{"hardware": hardware, "latency_ms": {1: 1.0}}]}
    to_profile = {"pass": Variant.model_validate({"name": "pass", **base, "runner": PASS_RUNNER})}
    for name, entry in entries.items():
        for side in ("head", "tail"):
            to_profile[f"{name}/{side}"] = Variant.model_validate({"name": f"{name}-{side}", **base, **entry[side]})
    measured = {}
    for key, v in to_profile.items():
        # The pass-through loads nothing (measured here) and reads whatever the message holds: it is
        # fed the whole variant's zero inputs.
        measured[key] = profile_variant(v, hardware=hardware, store=store_dir, cache_dir=None, batch_sizes=sizes,
                                        repeats=args.repeats, isolate=key != "pass",
                                        inputs_of=variant if key == "pass" else None)
        print(f"{key}: p50 b1 {measured[key].latency_ms_p50[sizes[0]]:.3f} ms, {measured[key].memory_mb:.0f} MB",
              file=sys.stderr)
    docs, index = _zoo_document(path)
    input_kb = _input_kb(variant)
    docs[index] = split_documents(docs[index], task.name, variant, cuts, entries, measured, input_kb)
    for cut in cuts:
        print(f"cut-{cut.index} after {cut.node}: {cut.crossing_bytes} bytes cross per item "
              f"(shape {list(cut.crossing_shape)})", file=sys.stderr)
    header = "".join(_leading_comment(path.read_text()))
    args.out.write_text(header + dump_all(docs))
    print(f"wrote {args.out}", file=sys.stderr)
    if args.workflow is not None:
        wf_docs = list(yaml.safe_load_all(args.workflow.read_text()))
        for k, doc in enumerate(wf_docs):
            if isinstance(doc, dict) and doc.get("kind") in ("Workflow", "InferenceWorkflow"):
                try:
                    wf_docs[k] = split_workflow(doc, args.stage, task.name)
                except SplitError as exc:
                    raise UsageError(str(exc)) from None
        header = "".join(_leading_comment(args.workflow.read_text()))
        args.out_workflow.write_text(header + dump_all(wf_docs))
        print(f"wrote {args.out_workflow}", file=sys.stderr)
    return EXIT_OK


def _input_kb(variant: Variant) -> float:
    import numpy as np

    assert variant.signature is not None  # split_variant cut it: a torch-export variant has one
    (spec,) = [t for t in variant.signature.inputs if t.fill is None]
    items = int(np.prod([int(d) for d in spec.shape if d not in (-1, "batch")]))
    return round(items * np.dtype(spec.dtype).itemsize / 1024.0 * 1.02, 3)
