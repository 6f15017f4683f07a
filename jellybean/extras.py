"""Which install brings which third-party package, and the user's error when one is missing.

``pip install jellybean`` installs what planning needs (documents, the optimizer, the CLI); each
*extra* adds the packages of one part, declared in pyproject.toml:

- ``runtime``: serving on Ray (torch, ONNX Runtime, FastAPI, uvicorn, aiohttp, Prometheus, ...);
- ``k8s``: the in-cluster operator (kopf and the Kubernetes client; it serves, so it brings ``runtime``);
- ``viz``: pictures of plans and benchmarks (matplotlib).

The code of a part imports its packages lazily, when the part runs, so that a command of another
part works without them. When one is missing, :func:`require` (or :func:`missing_extra`, for an
``ImportError`` raised anywhere) says which extra to install instead of a traceback.
:data:`PACKAGES` is the one table of import names: tests/test_packaging.py checks that every
third-party import in jellybean/ is in it and that pyproject.toml declares each where it says.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

#: Top-level import name -> (distribution on PyPI, the extra that installs it; None: every install).
PACKAGES: dict[str, tuple[str, str | None]] = {
    "pydantic": ("pydantic", None),
    "yaml": ("PyYAML", None),
    "pulp": ("pulp", None),
    "highspy": ("highspy", None),
    "numpy": ("numpy", None),  # the optimizer hands HiGHS its warm start as arrays
    "rich": ("rich", None),  # the CLI's tables and progress on a terminal (jellybean.cli.console)
    "torch": ("torch", "runtime"),
    "sklearn": ("scikit-learn", "runtime"),
    "scipy": ("scipy", "runtime"),
    "ray": ("ray", "runtime"),
    "fastapi": ("fastapi", "runtime"),
    "starlette": ("starlette", "runtime"),
    "uvicorn": ("uvicorn", "runtime"),
    "aiohttp": ("aiohttp", "runtime"),
    "PIL": ("pillow", "runtime"),
    "prometheus_client": ("prometheus-client", "runtime"),
    "swagger_ui_bundle": ("swagger-ui-bundle", "runtime"),
    "onnxruntime": ("onnxruntime", "runtime"),
    "onnx": ("onnx", "runtime"),
    "silero_vad": ("silero-vad", "runtime"),
    "kubernetes": ("kubernetes", "k8s"),
    "kopf": ("kopf", "k8s"),  # the operator's framework: watching, finalizers, Events, peering
    "matplotlib": ("matplotlib", "viz"),
}


class MissingExtra(ImportError):
    """A package of an extra that is not installed: a user's install, not a bug. The message names
    the package, what needed it and the command that installs it."""

    def __init__(self, module: str, purpose: str | None = None) -> None:
        top = module.split(".")[0]
        distribution, extra = PACKAGES[top]
        self.module, self.distribution, self.extra = top, distribution, extra
        needs = f"{purpose} needs {distribution}" if purpose else f"{distribution} is needed"
        if extra is None:
            how = "which every Jellybean install brings: reinstall it with pip install jellybean"
        else:
            how = f"which Jellybean's '{extra}' extra installs: pip install 'jellybean[{extra}]'"
        super().__init__(f"{needs}, {how}", name=top)


def missing_extra(exc: ImportError, purpose: str | None = None) -> MissingExtra | None:
    """``exc`` as a :class:`MissingExtra` when it says that a package of :data:`PACKAGES` is not
    installed; None for any other import error (a bug, a module missing from a package that is
    installed, or a broken install of another package)."""
    if isinstance(exc, MissingExtra):
        return exc
    name = getattr(exc, "name", None)
    if not isinstance(exc, ModuleNotFoundError) or not name:
        return None
    top = name.split(".")[0]
    if top not in PACKAGES or not _absent(top):
        return None
    return MissingExtra(top, purpose)


def _absent(top: str) -> bool:
    """Whether the top-level package ``top`` cannot be imported at all (``None`` in sys.modules is
    Python's way to block an import)."""
    if top in sys.modules:
        return sys.modules[top] is None
    return importlib.util.find_spec(top) is None


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (a package of :data:`PACKAGES` or one of its modules); :class:`MissingExtra`
    saying what ``purpose`` needs and how to install it when it is not installed."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = missing_extra(exc, purpose)
        if missing is None:
            raise
        raise missing from None
