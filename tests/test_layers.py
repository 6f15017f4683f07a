"""The layering (spec -> optimizer -> runtime -> k8s/cli) is checked by import-linter's contracts in
pyproject.toml; this test runs them so a wrong-way import fails the suite."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_pure_layers_import_nothing_effectful() -> None:
    """A second, independent check: no module of spec/ or optimizer/ imports a higher layer or an
    effectful library, even inside a function (import-linter sees those too; this guards the config)."""
    forbidden = ("ray", "torch", "kubernetes", "prometheus_client", "jellybean.runtime", "jellybean.k8s",
                 "jellybean.cli", "jellybean.importers", "jellybean.generate")
    for package in ("spec", "optimizer"):
        for path in (ROOT / "jellybean" / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path}: imports {name}"
            if package == "spec":
                assert "jellybean.optimizer" not in path.read_text(), f"{path} imports the optimizer"
