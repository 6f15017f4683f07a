"""Whether documents name only what this installation can run: registered model loaders and datasets.

A document names a loader or a dataset, never code or a file (:mod:`jellybean.zoo.registry`). A name
that is not registered is a user mistake, found when the documents are checked (``jellybean
validate``, ``jellybean run`` before anything starts, the controller's apply: 409), each located at
the field that names it, with what is registered, instead of a failure at start-up.
"""

from __future__ import annotations

from jellybean.spec.errors import Issue
from jellybean.spec.loader import SourceMap
from jellybean.spec.workflow import Workflow
from jellybean.spec.zoo import ModelZoo


def _listed(names: list[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def zoo_issues(zoo: ModelZoo, where: SourceMap) -> list[Issue]:
    """Every variant whose ``loader`` is not a registered one."""
    from jellybean.zoo.registry import LOADERS

    issues = []
    for t, task in enumerate(zoo.spec.tasks):
        for v, variant in enumerate(task.variants):
            if variant.loader is not None and variant.loader not in LOADERS:
                loc = ("spec", "tasks", t, "variants", v, "loader")
                issues.append(Issue(where.file, where.line_for(loc), f"spec.tasks[{t}].variants[{v}].loader",
                                    f"unknown model loader {variant.loader!r} (registered: {_listed(list(LOADERS))})",
                                    "name a registered loader (`jellybean zoo list`), or leave `loader` out to plan "
                                    "without serving"))
    return issues


def workflow_issues(workflow: Workflow, where: SourceMap) -> list[Issue]:
    """Every source whose replayed dataset (``replay``, or its older name ``dataset``) is not registered."""
    from jellybean.zoo.datasets import DATASETS

    issues = []
    for s, source in enumerate(workflow.spec.sources):
        dataset = source.replay_dataset
        if dataset is not None and dataset not in DATASETS:
            field = "replay" if source.replay is not None else "dataset"
            loc = ("spec", "sources", s, field)
            issues.append(Issue(where.file, where.line_for(loc), f"spec.sources[{s}].{field}",
                                f"unknown dataset {dataset!r} (registered: {_listed(list(DATASETS))})",
                                "name a registered dataset for the source to replay"))
    return issues


def unservable(bundle) -> list[Issue]:  # noqa: ANN001 - a jellybean.spec.bundle.Bundle
    """What in a workflow's documents names a loader or a dataset that is not registered."""
    return (workflow_issues(bundle.workflow, bundle.sources["Workflow"])
            + zoo_issues(bundle.zoo, bundle.sources["ModelZoo"]))
