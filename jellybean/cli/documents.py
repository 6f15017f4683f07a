"""The commands that read or write documents and generated files, without planning or serving:
``validate``, ``schema``, ``generate``, ``import``, ``dashboards`` and ``crds``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from jellybean.cli.common import EXIT_OK, UsageError, add_files, add_model_store_argument, model_store_of


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    add_files(p)
    add_model_store_argument(p)


def cmd_validate(args: argparse.Namespace) -> int:
    from jellybean.artifacts import ModelStore
    from jellybean.plugins import workflow_issues, zoo_issues
    from jellybean.spec.bundle import resolve
    from jellybean.spec.errors import SpecError
    from jellybean.spec.loader import load_documents

    documents = load_documents(args.files)
    issues = []
    store = ModelStore(model_store_of(args))
    for doc in documents:
        if doc.model.kind == "ModelZoo":
            issues += zoo_issues(doc.model, doc.source, store)
        elif doc.model.kind == "Workflow":
            issues += workflow_issues(doc.model, doc.source)
    if issues:
        raise SpecError(issues)
    for doc in documents:
        spec = doc.model.spec
        detail = ""
        if doc.model.kind == "ModelZoo":
            detail = f"{len(spec.tasks)} tasks, {sum(len(t.variants) for t in spec.tasks)} variants"
        elif doc.model.kind == "Topology":
            detail = f"{len(spec.sites)} sites, {sum(len(s.instances) for s in spec.sites)} instance groups"
        else:
            detail = f"{len(spec.sources)} source groups, {len(spec.stages)} stages"
        print(f"ok  {doc.model.kind} {doc.model.metadata.name} ({detail})  {doc.source.file}:{doc.source.start_line}")
    for doc in documents:
        if doc.model.kind == "Workflow":
            resolve(documents, doc.model.metadata.name)
            print(f"ok  workflow {doc.model.metadata.name}: references resolve")
    return EXIT_OK


def add_schema_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["ModelZoo", "Topology", "Workflow"], help="one kind only")


def cmd_schema(args: argparse.Namespace) -> int:
    from jellybean.spec.schema import all_schemas, document_schema

    data = document_schema(args.kind) if args.kind else all_schemas()
    print(json.dumps(data, indent=2))
    return EXIT_OK


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    gen = p.add_subparsers(dest="what", metavar="WHAT")
    gen.required = True
    city = gen.add_parser("city", help="a city-scale vehicle-tracking deployment")
    city.add_argument("--cameras", type=int, required=True)
    city.add_argument("--out", required=True, type=Path)
    city.add_argument("--seed", type=int, default=0)


def cmd_generate(args: argparse.Namespace) -> int:
    from jellybean.generate.city import write_city

    if args.cameras < 1:
        raise UsageError("--cameras must be at least 1")
    paths = write_city(args.cameras, args.out, seed=args.seed)
    for path in paths or []:
        print(f"wrote {path}")
    print(f"next: jellybean plan -f {args.out}")
    return EXIT_OK


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    imp = p.add_subparsers(dest="source", metavar="SOURCE")
    imp.required = True
    jb = imp.add_parser("jellybean", help="a JellyBean optimizer-input folder (CSV + accuracy profiles)")
    jb.add_argument("folder", type=Path)
    jb.add_argument("--out", required=True, type=Path)
    jb.add_argument("--name", help="document names (default: the folder's name)")


def cmd_import(args: argparse.Namespace) -> int:
    from jellybean.importers import import_jellybean, write_documents

    warnings: list[str] = []
    documents = import_jellybean(args.folder, name=args.name, warnings=warnings)
    for path in write_documents(documents, args.out):
        print(f"wrote {path}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"next: jellybean plan -f {args.out} --exclusive-instances")
    return EXIT_OK


def add_dashboards_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the JSON files (created)")


def add_crds_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the YAML files (created)")


def _write_generated(what: str, write: Callable[[Path], Iterable[Path]], out: Path) -> int:
    """``dashboards`` and ``crds``: write generated files into a folder, say which."""
    try:
        paths = write(out)
    except OSError as exc:
        raise UsageError(f"cannot write {what} to {out}: {exc}") from None
    for path in paths:
        print(f"wrote {path}")
    return EXIT_OK


def cmd_dashboards(args: argparse.Namespace) -> int:
    from jellybean.runtime.dashboards import write_dashboards

    return _write_generated("the dashboards", write_dashboards, args.out)


def cmd_crds(args: argparse.Namespace) -> int:
    from jellybean.k8s.crds import write_crds

    return _write_generated("the CRDs", write_crds, args.out)
