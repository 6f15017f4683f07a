"""The ``jellybean`` command (``jellybean.cli:main``, the console script).

The package is laid out by what each module does, and no module in it imports this one back
(tests/test_cli_structure.py checks it):

- :mod:`~jellybean.cli.commands`: the one table of commands, the parser built from it, the dispatch;
- :mod:`~jellybean.cli.common`: exit codes, :class:`UsageError`, options several commands share;
- :mod:`~jellybean.cli.client`: the HTTP client of the controller's API;
- :mod:`~jellybean.cli.serve`: the server start-up ``up``, ``operator`` and ``run`` share;
- :mod:`~jellybean.cli.console` and :mod:`~jellybean.cli.render`: tables and progress, rich on a
  terminal and plain text otherwise;
- one module per group of commands: documents, plan, up, workflows (apply, status, delete), data
  (send, results), run, operator, zoo, profile (profile, store, split).
"""

from __future__ import annotations

from jellybean.cli.commands import COMMANDS, Command, build_parser, main, parse
from jellybean.cli.common import (
    EXIT_INFEASIBLE, EXIT_INTERNAL, EXIT_INVALID, EXIT_NOT_RUNNING, EXIT_OK, UsageError,
)

__all__ = ["COMMANDS", "EXIT_INFEASIBLE", "EXIT_INTERNAL", "EXIT_INVALID", "EXIT_NOT_RUNNING", "EXIT_OK", "Command",
           "UsageError", "build_parser", "main", "parse"]
