"""How the CLI writes for people: tables, headings and progress, through ``rich`` on a terminal and
as plain text otherwise.

A command's human output is a list of *blocks* (:data:`Block`): lines of text, :class:`Heading` s
and :class:`Table` s. :func:`emit` writes them: on a terminal with ``rich`` (tables sized to the
window, headings in bold), elsewhere (a pipe, a file, a test capturing the output) as the plain
text :func:`plain` makes, the same characters whatever the terminal, so that scripts and logs can
read them. ``--format json`` never comes here: its bytes are the API's.

Whether a stream is a terminal is asked of the stream itself (:func:`is_terminal`), never of the
environment: ``FORCE_COLOR`` set in a CI job must not turn a captured ``plan`` into box drawing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Sequence
from typing import IO, TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:  # rich is imported only when a terminal is written to: plain output never pays for it
    from rich.console import Console
    from rich.progress import Progress, TaskID
    from rich.table import Table as RichTable


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cell(value: object) -> str:
    """A table cell as text: '-' for nothing, yes/no, floats to 3 significant-looking places."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.1f}"
        if abs(value) >= 1:
            return f"{value:.3f}"
        return f"{value:.4f}"
    return str(value)


class Table:
    """A table of cells under headers. Columns in ``right`` are right-aligned (default: the columns
    whose every value is a number). ``rule``: a line of dashes under the headers in plain text.
    The cells are formatted once (:func:`cell`), so both renderings show the same characters."""

    def __init__(self, headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: set[int] | None = None,
                 rule: bool = True) -> None:
        self.headers = [str(h) for h in headers]
        self.cells = [[cell(v) for v in row] for row in rows]
        self.right = right if right is not None else {
            i for i in range(len(headers)) if rows and all(_is_number(row[i]) for row in rows)}
        self.rule = rule

    def __str__(self) -> str:
        """The plain text: columns padded to their widest cell, two spaces apart, no trailing blanks."""
        cells = [self.headers, *self.cells]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.headers))]
        lines = []
        for k, row in enumerate(cells):
            parts = [c.rjust(widths[i]) if i in self.right else c.ljust(widths[i]) for i, c in enumerate(row)]
            lines.append("  ".join(parts).rstrip())
            if k == 0 and self.rule:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __rich__(self) -> RichTable:
        from rich import box
        from rich.table import Table as RichTable
        from rich.text import Text

        table = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for i, header in enumerate(self.headers):
            table.add_column(Text(header), justify="right" if i in self.right else "left")
        for row in self.cells:
            table.add_row(*(Text(c) for c in row))  # Text: a cell is never read as rich markup
        return table


class Heading(str):
    """A section's title: plain text as it is, bold on a terminal."""

    __slots__ = ()


#: What a command's human output is made of.
Block: TypeAlias = str | Heading | Table


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: set[int] | None = None) -> str:
    """A :class:`Table` as plain text."""
    return str(Table(headers, rows, right=right))


def plain(blocks: Iterable[Block]) -> str:
    """The blocks as plain text, one after another on their own lines."""
    return "\n".join(str(b) for b in blocks)


def is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is a terminal (a person reads it) rather than a pipe, a file or a capture."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def terminal_console(stream: IO[str]) -> Console:
    """A rich Console writing to ``stream``, a terminal (:func:`is_terminal` decided it). It honours
    NO_COLOR and a dumb TERM by itself; long lines of text are left to the terminal to wrap."""
    from rich.console import Console

    return Console(file=stream, force_terminal=True, highlight=False, soft_wrap=True)


def emit(blocks: Iterable[Block], stream: IO[str] | None = None) -> None:
    """Write ``blocks`` to ``stream`` (standard output): with rich on a terminal, else :func:`plain`."""
    stream = sys.stdout if stream is None else stream
    blocks = list(blocks)
    if not blocks:  # nothing to say: not even an empty line
        return
    if not is_terminal(stream):
        print(plain(blocks), file=stream)
        return
    from rich.text import Text

    console = terminal_console(stream)
    for block in blocks:
        if isinstance(block, Table):
            console.print(block, soft_wrap=False)
        elif isinstance(block, Heading):
            console.print(Text(block, style="bold"))
        else:
            console.print(Text(block))


class ProgressBar:
    """Progress of a long step on standard error, called as ``bar(message, fraction)``: a rich
    progress bar on a terminal, else one plain line (``[####....]  40% message``) each time the
    message changes, at most one every ``plain_every_s`` seconds (a log is not a terminal: a live
    view that changes four times a second would fill it). ``close()`` ends it (a later call starts
    a new one)."""

    WIDTH = 30

    def __init__(self, stream: IO[str] | None = None, *, plain_every_s: float = 0.0) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = is_terminal(self.stream)
        self.plain_every_s = plain_every_s
        self.last = ""
        self._last_printed_s = float("-inf")
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def __call__(self, message: str, fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.tty:
            self._rich(message, fraction)
            return
        now = time.monotonic()
        if message != self.last and (now - self._last_printed_s >= self.plain_every_s or fraction >= 1.0):
            filled = int(round(fraction * self.WIDTH))
            line = f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction * 100:3.0f}% {message}"[:119]
            print(line, file=self.stream, flush=True)
            self.last, self._last_printed_s = message, now

    def _rich(self, message: str, fraction: float) -> None:
        if self._progress is None:
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                                      TextColumn("{task.description}"), console=terminal_console(self.stream))
            self._progress.start()
            self._task = self._progress.add_task(message, total=1.0)
        assert self._task is not None
        self._progress.update(self._task, description=message, completed=fraction)

    def close(self) -> None:
        """Stop the bar (a rich one stays on the screen as it last was)."""
        if self._progress is not None:
            self._progress.stop()
        self._progress = self._task = None
        self.last = ""
        self._last_printed_s = float("-inf")
