"""How jellybean/cli is put together: no module in it imports the package back (its ``__init__``
builds nothing and only re-exports, but a module importing ``jellybean.cli`` would make the import
order matter again), every command is registered once in one table, and nothing patches that table
after the fact. The layering among the modules is an import-linter contract (pyproject.toml)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from jellybean.cli import COMMANDS, build_parser

CLI = Path(__file__).resolve().parents[1] / "jellybean" / "cli"
PACKAGE = Path(__file__).resolve().parents[1] / "jellybean"


def _imports_of_the_package(tree: ast.AST) -> list[str]:
    """Each import of the package ``jellybean.cli`` itself (not of a submodule) in ``tree``, as written."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0 and not node.module:  # from . import x: the package
                found.append(f"line {node.lineno}: from {'.' * node.level} import ...")
            elif node.level == 0 and node.module == "jellybean.cli":
                found.append(f"line {node.lineno}: from jellybean.cli import "
                             + ", ".join(a.name for a in node.names))
            elif node.level == 0 and node.module == "jellybean":
                found += [f"line {node.lineno}: from jellybean import cli" for a in node.names if a.name == "cli"]
        elif isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name == "jellybean.cli"]
    return found


@pytest.mark.parametrize("path", sorted(p for p in CLI.glob("*.py") if p.name != "__init__.py"), ids=lambda p: p.name)
def test_no_module_of_the_cli_imports_the_package_back(path: Path) -> None:
    found = _imports_of_the_package(ast.parse(path.read_text(), filename=str(path)))
    assert not found, f"{path.name} imports jellybean.cli (import the submodule it needs instead): {found}"


def test_the_check_sees_each_way_of_importing_the_package() -> None:
    text = ("from jellybean.cli import main\nimport jellybean.cli\nfrom jellybean import cli\nfrom . import common\n"
            "from jellybean.cli.common import EXIT_OK\nimport jellybean.cli.common as common\nfrom .common import X\n")
    assert len(_imports_of_the_package(ast.parse(text))) == 4


def test_every_command_is_registered_once_and_nothing_patches_the_table() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert list(sub.choices) == list(COMMANDS)
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            target = None
            if isinstance(node, (ast.Assign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                target = next((t for t in targets if isinstance(t, ast.Subscript)
                               and isinstance(t.value, ast.Name) and t.value.id == "COMMANDS"), None)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == "COMMANDS"
                  and node.func.attr in ("update", "setdefault", "pop", "__setitem__")):
                target = node
            assert target is None, f"{path}:{node.lineno}: COMMANDS changed after the table"


def test_the_console_script_and_python_m_run_the_same_main() -> None:
    import tomllib

    from jellybean.cli import main
    from jellybean.cli.commands import main as dispatch

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["jellybean"] == "jellybean.cli:main"
    assert main is dispatch
    assert "from jellybean.cli.commands import main" in (CLI / "__main__.py").read_text()
