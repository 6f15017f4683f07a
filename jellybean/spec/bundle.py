"""A Bundle: one workflow with the zoo and topology it names, cross-checked against each other; and
several workflows' bundles, for planning them together on one topology (:func:`resolve_all`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from jellybean.spec.errors import Issue, Loc, SpecError, did_you_mean, listed
from jellybean.spec.loader import LoadedDocument, SourceMap, load_documents
from jellybean.spec.topology import Topology
from jellybean.spec.workflow import Workflow
from jellybean.spec.zoo import ModelZoo


@dataclass
class Bundle:
    workflow: Workflow
    zoo: ModelZoo
    topology: Topology
    sources: dict[str, SourceMap]  # kind -> where that document was written

    @property
    def name(self) -> str:
        return self.workflow.metadata.name


#: The Workflow's field that names a document of each kind.
_FIELD = {"ModelZoo": "zoo", "Topology": "topology"}


def _pick(documents: list[LoadedDocument], kind: str, wanted: str | None, for_what: str,
          workflow: LoadedDocument | None = None) -> LoadedDocument:
    """The document of ``kind`` named ``wanted`` (or the only one); problems are located in the
    ``workflow`` that asks for it (at its `spec.zoo` / `spec.topology`) where there is one."""
    candidates = [d for d in documents if d.model.kind == kind]
    given = [d.model.metadata.name for d in candidates]
    names = listed(given)

    def issue(message: str, hint: str) -> Issue:
        if workflow is None:
            return Issue("<documents>", None, "", message, hint)
        loc = ("spec", _FIELD[kind]) if wanted is not None else ("spec",)
        return Issue(workflow.source.file, workflow.source.line_for(loc), ".".join(loc), message, hint)

    if wanted is not None:
        chosen = [d for d in candidates if d.model.metadata.name == wanted]
        if not chosen:
            raise SpecError([issue(f"{for_what} names {kind} {wanted!r}, which was not given"
                                   f"{did_you_mean(wanted, given)}", f"{kind} documents given: {names}")])
        return chosen[0]
    if len(candidates) != 1:
        hint = ("choose one with --workflow NAME" if kind == "Workflow"
                else f"pass the {kind} with -f, or name it in the Workflow's spec.{_FIELD[kind]}")
        raise SpecError([issue(f"expected exactly one {kind} document, found {len(candidates)} ({names})", hint)])
    return candidates[0]


def _unique_names(documents: list[LoadedDocument]) -> None:
    """Two documents of one kind never share a name (the second is located)."""
    seen: set[tuple[str, str]] = set()
    for doc in documents:
        key = (doc.model.kind, doc.model.metadata.name)
        if key in seen:
            raise SpecError([Issue(doc.source.file, doc.source.lines.get(("metadata", "name"), doc.source.start_line),
                                   "metadata.name", f"a second {key[0]} named {key[1]!r}", "rename one of them")])
        seen.add(key)


def resolve(documents: list[LoadedDocument], workflow: str | None = None) -> Bundle:
    """Pick the workflow (by name, or the only one) and the zoo and topology it uses; cross-check."""
    _unique_names(documents)
    wf_doc = _pick(documents, "Workflow", workflow, "the command")
    wf: Workflow = wf_doc.model
    zoo_doc = _pick(documents, "ModelZoo", wf.spec.zoo, f"workflow {wf.metadata.name!r}", wf_doc)
    topo_doc = _pick(documents, "Topology", wf.spec.topology, f"workflow {wf.metadata.name!r}", wf_doc)
    bundle = Bundle(wf, zoo_doc.model, topo_doc.model,
                    {"Workflow": wf_doc.source, "ModelZoo": zoo_doc.source, "Topology": topo_doc.source})
    issues = cross_check(bundle)
    if issues:
        raise SpecError(issues)
    return _with_replicas_named(bundle)


def _with_replicas_named(bundle: Bundle) -> Bundle:
    """The bundle with every replicated site a Workflow names (``sites: [store]``) replaced by its
    copies (``store-01`` .. ``store-40``), in sources and placements."""
    sets = bundle.topology.spec.replica_sets()
    if not sets:
        return bundle

    def expand(names: list[str]) -> list[str]:
        out: list[str] = []
        for name in names:
            out.extend(n for n in sets.get(name, [name]) if n not in out)
        return out

    wf = bundle.workflow.model_copy(deep=True)
    for source in wf.spec.sources:
        source.sites = expand(source.sites)
    for stage in wf.spec.stages:
        if stage.placement and stage.placement.sites:
            stage.placement.sites = expand(stage.placement.sites)
    return Bundle(wf, bundle.zoo, bundle.topology, bundle.sources)


def cross_check(bundle: Bundle) -> list[Issue]:
    """References between documents: tasks, variants, sites, tables. Every problem is reported."""
    wf, zoo, topo = bundle.workflow.spec, bundle.zoo.spec, bundle.topology.spec
    src = bundle.sources["Workflow"]
    issues: list[Issue] = []
    replicated = topo.replica_sets()
    site_names = {s.name for s in topo.sites} | set(replicated)
    tasks = {t.name: t for t in zoo.tasks}

    def add(loc: Loc, message: str, hint: str) -> None:
        path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in loc).replace(".[", "[")
        issues.append(Issue(src.file, src.line_for(loc), path, message, hint))

    for i, source in enumerate(wf.sources):
        for j, site in enumerate(source.sites):
            if site not in site_names:
                add(("spec", "sources", i, "sites", j), f"unknown site {site!r}{did_you_mean(site, site_names)}",
                    f"sites of topology {bundle.topology.metadata.name!r}: {listed(site_names)}")
    stage_task = {s.name: s.task for s in wf.stages}
    for i, stage in enumerate(wf.stages):
        task = tasks.get(stage.task)
        if task is None:
            add(("spec", "stages", i, "task"), f"unknown task {stage.task!r}{did_you_mean(stage.task, tasks)}",
                f"tasks of zoo {bundle.zoo.metadata.name!r}: {listed(tasks)}")
            continue
        for j, variant in enumerate(stage.variants or []):
            if task.variant(variant) is None:
                names = [v.name for v in task.variants]
                add(("spec", "stages", i, "variants", j),
                    f"task {task.name!r} has no variant {variant!r}{did_you_mean(variant, names)}",
                    f"variants: {listed(names)}")
        for j, inp in enumerate(stage.input_specs()):
            upstream_task = tasks.get(stage_task.get(inp.from_, ""))
            for variant in inp.ratio_by_variant:
                if upstream_task is not None and upstream_task.variant(variant) is None:
                    names = [v.name for v in upstream_task.variants]
                    add(("spec", "stages", i, "inputs", j, "ratio_by_variant", variant),
                        f"input {inp.from_!r} (task {upstream_task.name!r}) has no variant {variant!r}"
                        f"{did_you_mean(variant, names)}", f"variants: {listed(names)}")
        if stage.placement and stage.placement.sites:
            for j, site in enumerate(stage.placement.sites):
                if site not in site_names:
                    add(("spec", "stages", i, "placement", "sites", j), f"unknown site {site!r}{did_you_mean(site, site_names)}",
                        f"sites of topology {bundle.topology.metadata.name!r}: {listed(site_names)}")
    for i, output in enumerate(wf.outputs):
        if output.site in replicated:
            add(("spec", "outputs", i, "site"), f"site {output.site!r} is {len(replicated[output.site])} replicated "
                "sites; an output lives at one", f"name one of them: {listed(replicated[output.site])}")
        elif output.site is not None and output.site not in site_names:
            add(("spec", "outputs", i, "site"), f"unknown site {output.site!r}{did_you_mean(output.site, site_names)}",
                f"sites of topology {bundle.topology.metadata.name!r}: {listed(site_names)}")
    tables = [t.name for t in zoo.accuracy_tables]
    named: list[tuple[Loc, str | None]] = [(("spec", "slo", "accuracy_table"), wf.slo.accuracy_table)]
    named += [(("spec", "slo", "sinks", i, "accuracy_table"), o.accuracy_table) for i, o in enumerate(wf.slo.sinks)]
    for loc, table in named:
        if table is not None and table not in tables:
            add(loc, f"zoo has no accuracy table {table!r}{did_you_mean(table, tables)}", f"tables: {listed(tables)}")
    return issues


def resolve_all(documents: list[LoadedDocument], workflows: list[str] | None = None) -> list[Bundle]:
    """Every Workflow of ``documents`` (or those named in ``workflows``, in that order), each with the
    zoo and topology it uses, cross-checked, for planning together: in the documents' order (files
    sorted as given, documents as written). Names are unique per kind; every workflow must use the
    same Topology (a workflow that names another is located at its ``spec.topology``); each may use
    its own ModelZoo; workflows whose SLOs bound latency check it on one ``latency_percentile``.
    Every problem found is reported at once."""
    _unique_names(documents)
    given = [d for d in documents if d.model.kind == "Workflow"]
    if workflows:
        twice = sorted({name for k, name in enumerate(workflows) if name in workflows[:k]})
        if twice:
            raise SpecError([Issue("<command line>", None, "--workflow", f"workflow {listed(twice)} named twice",
                                   "name each workflow once")])
    elif not given:
        raise SpecError([Issue("<documents>", None, "", "no Workflow document given",
                               "pass the Workflow's YAML with -f (with its ModelZoo and Topology)")])
    names = workflows or [d.model.metadata.name for d in given]
    bundles: list[Bundle] = []
    issues: list[Issue] = []
    for name in names:
        try:
            bundles.append(resolve(documents, name))
        except SpecError as exc:
            issues.extend(exc.issues)
    if issues:
        raise SpecError(issues)
    first = bundles[0]
    for bundle in bundles[1:]:
        topology = bundle.topology.metadata.name
        if topology != first.topology.metadata.name:
            src = bundle.sources["Workflow"]
            loc: tuple[str, ...] = ("spec", "topology") if bundle.workflow.spec.topology is not None else ("spec",)
            issues.append(Issue(src.file, src.line_for(loc), ".".join(loc),
                                f"workflow {bundle.name!r} uses Topology {topology!r}, but workflow {first.name!r} "
                                f"uses {first.topology.metadata.name!r}: workflows planned together share one Topology",
                                "name the same Topology in every Workflow's spec.topology, or plan one workflow "
                                "with --workflow NAME"))
    bounded = [b for b in bundles if b.workflow.spec.slo.latency_ms is not None]
    for bundle in bounded[1:]:
        mine, theirs = bundle.workflow.spec.slo.latency_percentile, bounded[0].workflow.spec.slo.latency_percentile
        if mine != theirs:
            src = bundle.sources["Workflow"]
            loc = ("spec", "slo", "latency_percentile")
            issues.append(Issue(src.file, src.line_for(loc), ".".join(loc),
                                f"workflow {bundle.name!r} checks its latency bound on the {mine} latencies, workflow "
                                f"{bounded[0].name!r} on the {theirs}: workflows planned together check their bounds "
                                "on one percentile", f"give both `latency_percentile: {theirs}` (or plan one workflow "
                                "with --workflow NAME)"))
    if issues:
        raise SpecError(issues)
    return bundles


def load_bundle(paths: Sequence[str | os.PathLike[str]], workflow: str | None = None) -> Bundle:
    return resolve(load_documents(paths), workflow)


def load_bundles(paths: Sequence[str | os.PathLike[str]], workflows: list[str] | None = None) -> list[Bundle]:
    """Every Workflow in the files (or those named), each resolved, for planning together (:func:`resolve_all`)."""
    return resolve_all(load_documents(paths), workflows)
