"""One quick build of the digits zoo per test session (a fifth of the epochs and data: seconds)."""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("torch") is None or importlib.util.find_spec("sklearn") is None:
    collect_ignore_glob = ["test_*.py"]  # the zoo needs the `runtime` extra

# `quick_zoo` lives in tests/conftest.py: the runtime tests share the same build.
