"""Runners and datasets that installed packages register: the only code a document can make a replica run.

A ModelZoo variant names its runner (``runner: NAME``; ``loader`` is its older name), or is served
from an artifact in the model store (:mod:`jellybean.artifacts`), and a Workflow source names the dataset it
replays (``replay: NAME``); both are *names*, looked up among the entry points that installed
packages declare, never import paths or files. The runtime finds every model through this module
and imports no model package itself (the import-linter contract says so): Jellybean's own digits
models are one such plugin (:mod:`jellybean.zoo.plugin`), registered the way any package registers
its own.

A plugin declares, in its package metadata (``pyproject.toml``)::

    [project.entry-points."jellybean.runners"]
    my-detector = "my_package.jellybean:detector"   # a runner factory

    [project.entry-points."jellybean.datasets"]
    my-frames = "my_package.jellybean:frames"       # (seed: int) -> list[dict], the messages to replay

    [project.entry-points."jellybean.prepare"]
    my-package = "my_package.jellybean:prepare"     # (cache_dir: Path) -> None, once before serving

A **runner factory** is a callable ``factory(*, cache_dir: Path, threads: int) -> runner``. It may
read what it needs from ``cache_dir`` (a directory the operator owns; ``prepare`` can fill it) and
sets its framework's threads to ``threads`` (the instance's CPU share). Optional attributes:
``stateful`` (True for a join: it keeps state across requests, so its messages are routed by frame
id and it is never fused with other stages), ``task`` and ``description`` (shown by ``jellybean zoo
list``).

A **runner** is ``runner(messages: list[dict]) -> list[list[dict]]``: one list of outputs per input
message, in order. A message is a dict of named values (numpy arrays, numbers, strings, lists) plus
the runtime's metadata (``frame_id``, ``source``, ``site``, ``received_at``, ...), which the runtime
copies onto every output the runner leaves it off. An empty list drops the message (nothing follows
from it); several outputs are fan-out (a detector's crops), each of which the next stage receives as
a message of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from jellybean.spec.errors import Issue, did_you_mean, listed
from jellybean.spec.loader import SourceMap
from jellybean.spec.workflow import Workflow
from jellybean.spec.zoo import ModelZoo, Variant

RUNNERS = "jellybean.runners"
DATASETS = "jellybean.datasets"
PREPARE = "jellybean.prepare"

Runner = Callable[[list[dict]], list[list[dict]]]


class UnknownPlugin(KeyError):
    """A runner or dataset name that no installed package registers."""

    def __init__(self, kind: str, name: Any, known: list[str]) -> None:
        super().__init__(name)
        self.kind, self.name, self.known = kind, name, sorted(known)

    def __str__(self) -> str:
        return f"unknown {self.kind} {self.name!r}{did_you_mean(self.name, self.known)} (registered: {listed(self.known)})"


@cache
def _group(group: str) -> dict[str, EntryPoint]:
    """The entry points of ``group``, by name (read once per process: the installed packages do not
    change under a running process)."""
    return {ep.name: ep for ep in entry_points(group=group)}


@cache
def _load(group: str, name: str) -> Any:
    return _group(group)[name].load()


def runner_names() -> list[str]:
    return sorted(_group(RUNNERS))


def dataset_names() -> list[str]:
    return sorted(_group(DATASETS))


def runner_factory(name: str) -> Callable[..., Runner]:
    """The registered factory of runner ``name`` (raises :class:`UnknownPlugin`)."""
    if not isinstance(name, str) or name not in _group(RUNNERS):
        raise UnknownPlugin("runner", name, runner_names())
    return _load(RUNNERS, name)


def load_runner(name: str, cache_dir: Path, *, threads: int = 1) -> Runner:
    """A ready runner for ``name``, built by its plugin's factory."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    return runner_factory(name)(cache_dir=Path(cache_dir), threads=threads)


#: The fields of a variant that say how an artifact serves it (what a replica needs to build its runner).
ARTIFACT_FIELDS = {"name", "artifact", "signature", "pre", "post", "keep", "accuracy", "output_kb", "profiles"}


def serving_ref(variant: Variant) -> dict:
    """What a replica needs to build the variant's runner: ``{"runner": NAME, "artifact": None}`` for
    a registered runner; for an artifact, ``runner`` is ``artifact:FORMAT:SHA256`` (two replicas serve
    the same model exactly when these are equal) and ``artifact`` the JSON of the variant's serving
    fields, which the replica validates again and builds its runner from."""
    if variant.artifact is not None:
        return {"runner": f"artifact:{variant.artifact.format}:{variant.artifact.sha256}",
                "artifact": variant.model_dump_json(include=ARTIFACT_FIELDS)}
    return {"runner": variant.runner, "artifact": None}


def build_runner(ref: dict, *, cache_dir: Path | str | None, model_store: Path | str | None,
                 threads: int = 1) -> Runner:
    """The runner a replica runs for one stage: ``{"runner": NAME, "artifact": None}`` builds the
    registered runner; ``{"runner": "artifact:...", "artifact": JSON}`` reads, verifies and loads the
    artifact from the model store (the JSON is validated again here: a replica trusts no caller)."""
    served = ref.get("artifact")
    if served is None:
        if cache_dir is None:
            cache_dir = default_cache_dir()
        return load_runner(ref["runner"], Path(cache_dir), threads=threads)
    from jellybean.artifacts import ModelStore, artifact_runner, default_model_store

    variant = Variant.model_validate_json(served)
    store = ModelStore(model_store if model_store is not None else default_model_store())
    return artifact_runner(variant, store, threads=threads)


def is_stateful(name: str) -> bool:
    """Whether runner ``name`` keeps state across requests (unknown names: False)."""
    try:
        return bool(getattr(runner_factory(name), "stateful", False))
    except UnknownPlugin:
        return False


def describe_runner(name: str) -> dict:
    factory = runner_factory(name)
    ep = _group(RUNNERS)[name]
    return {"name": name, "task": getattr(factory, "task", None), "description": getattr(factory, "description", ""),
            "stateful": bool(getattr(factory, "stateful", False)), "package": ep.dist.name if ep.dist else None}


def load_dataset(name: str, *, seed: int = 0) -> list[dict]:
    """The messages dataset ``name`` replays (raises :class:`UnknownPlugin`)."""
    if not isinstance(name, str) or name not in _group(DATASETS):
        raise UnknownPlugin("dataset", name, dataset_names())
    return list(_load(DATASETS, name)(seed))


def prepare(cache_dir: Path, runners: set[str] | None = None) -> None:
    """Run the installed plugins' ``prepare`` hooks on ``cache_dir`` (e.g. the digits plugin trains
    its weights there once); before the first pipeline of a process starts. A hook that says which
    runners it prepares (a ``runners`` attribute) runs only when one of ``runners`` (the runners a
    workflow may use; None: all) is among them."""
    for name in sorted(_group(PREPARE)):
        hook = _load(PREPARE, name)
        serves = getattr(hook, "runners", None)
        if runners is not None and serves is not None and not set(serves) & set(runners):
            continue
        hook(Path(cache_dir))


def runners_of(bundle) -> set[str]:  # noqa: ANN001 - a jellybean.spec.bundle.Bundle
    """The registered runners the workflow's stages may use (every variant of their tasks)."""
    tasks = {s.task for s in bundle.workflow.spec.stages}
    return {v.runner for t in bundle.zoo.spec.tasks if t.name in tasks for v in t.variants if v.runner}


def default_cache_dir() -> Path:
    """Where runners keep what they read: ``$JELLYBEAN_HOME/zoo``, else ``~/.cache/jellybean/zoo``."""
    home = os.environ.get("JELLYBEAN_HOME")
    return Path(home) / "zoo" if home else Path.home() / ".cache" / "jellybean" / "zoo"


# --- whether documents name only what is installed -------------------------------------------------------
# A name that no package registers is a user mistake, found when the documents are checked (`jellybean
# validate`, `jellybean run` before anything starts, the controller's apply: 409), each located at
# the field that names it, with what is registered, instead of a failure at start-up.


def zoo_issues(zoo: ModelZoo, where: SourceMap, store: Any = None, *, tasks: set[str] | None = None) -> list[Issue]:
    """Every variant that cannot be served: its ``runner`` (or ``loader``) is not registered, or, with
    a model ``store`` (:class:`jellybean.artifacts.ModelStore`), its artifact is not in the store with
    that SHA-256, is not the format it claims, or does not match its signature (only the ``tasks``
    given, when given). Proving artifacts loadable reads and loads each one (the trial run is a batch
    of one)."""
    known = runner_names()
    issues = []
    for t, task in enumerate(zoo.spec.tasks):
        for v, variant in enumerate(task.variants):
            if variant.runner is not None and variant.runner not in known:
                field = "loader" if variant.loader is not None else "runner"
                loc = ("spec", "tasks", t, "variants", v, field)
                issues.append(Issue(where.file, where.line_for(loc), f"spec.tasks[{t}].variants[{v}].{field}",
                                    f"variant {variant.name!r}: unknown runner {variant.runner!r}"
                                    f"{did_you_mean(variant.runner, known)} (registered: {listed(known)})",
                                    "name a runner an installed package registers (`jellybean zoo list`), or leave "
                                    f"`{field}` out to plan without serving"))
            if variant.artifact is not None and store is not None and (tasks is None or task.name in tasks):
                from jellybean.artifacts import ArtifactError, prove_loadable

                try:
                    prove_loadable(variant, store)
                except ArtifactError as exc:
                    loc = ("spec", "tasks", t, "variants", v, "artifact")
                    issues.append(Issue(where.file, where.line_for(loc), f"spec.tasks[{t}].variants[{v}].artifact",
                                        f"variant {variant.name!r} ({variant.artifact.format}, {variant.artifact.uri}): "
                                        f"{exc}", "fix the file, its sha256 or the signature, or name the model store "
                                        "that holds it (--model-store DIR)"))
    return issues


def workflow_issues(workflow: Workflow, where: SourceMap) -> list[Issue]:
    """Every source whose replayed dataset (``replay``, or its older name ``dataset``) is not registered."""
    known = dataset_names()
    issues = []
    for s, source in enumerate(workflow.spec.sources):
        dataset = source.replay_dataset
        if dataset is not None and dataset not in known:
            field = "replay" if source.replay is not None else "dataset"
            loc = ("spec", "sources", s, field)
            issues.append(Issue(where.file, where.line_for(loc), f"spec.sources[{s}].{field}",
                                f"unknown dataset {dataset!r}{did_you_mean(dataset, known)} (registered: {listed(known)})",
                                "name a dataset an installed package registers for the source to replay"))
    return issues


def unservable(bundle, store: Any = None) -> list[Issue]:  # noqa: ANN001 - a jellybean.spec.bundle.Bundle
    """What in a workflow's documents cannot be served: a runner or a dataset that is not registered,
    and (with a model ``store``) an artifact that is not loadable as declared. Only the variants the
    workflow's tasks use are checked for artifacts."""
    tasks = {s.task for s in bundle.workflow.spec.stages}
    return (workflow_issues(bundle.workflow, bundle.sources["Workflow"])
            + zoo_issues(bundle.zoo, bundle.sources["ModelZoo"], store, tasks=tasks))
