"""User-facing errors for bad documents: file, line, field path, what is wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

Loc = tuple[Hashable, ...]
"""Where a value is in a document, outermost first: mapping keys as written (strings, numbers) and list
indexes, as pydantic's ``loc`` and the YAML source maps spell it."""


def listed(names: Iterable[object], at_most: int = 8, *, ordered: bool = False, sep: str = ", ") -> str:
    """Names for a message: at most ``at_most``, then "... and N more" (never cut silently). Sorted
    (numbers first, by value), unless ``ordered``: then in the given order, most telling first.
    ``sep`` joins them (``"; "`` for sentences)."""
    if not ordered:
        names = sorted(names, key=lambda n: (0, n, "") if isinstance(n, (int, float)) else (1, 0, str(n)))
    texts = [str(n) for n in names]
    if not texts:
        return "none"
    if len(texts) <= at_most:
        return sep.join(texts)
    return sep.join(texts[:at_most]) + f"{sep}... and {len(texts) - at_most} more"


def closest(name: object, known: Iterable[object]) -> str | None:
    """The one of ``known`` closest to a misspelt ``name`` (difflib, cutoff 0.6), else None."""
    close = difflib.get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.6) if isinstance(name, str) else []
    return close[0] if close else None


def did_you_mean(name: object, known: Iterable[object]) -> str:
    """``; did you mean 'x'?`` for the closest of ``known`` to a misspelt ``name``, else ""."""
    match = closest(name, known)
    return f"; did you mean {match!r}?" if match else ""


@dataclass(frozen=True)
class Issue:
    """One problem in one document, located as precisely as the input allows."""

    file: str
    line: int | None
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field_path = f" {self.path}:" if self.path else ""
        text = f"{where}:{field_path} {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        return text


@dataclass
class SpecError(Exception):
    """Raised for any invalid input; carries every issue found, not just the first."""

    issues: list[Issue] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(str(i) for i in self.issues)


def format_path(loc: Loc) -> str:
    """Render a location tuple as ``spec.stages[1].inputs[0].from``. A key with characters that do not
    print (a line break, a terminal escape) is quoted with them escaped: issues are printed as one line
    each, on terminals."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            out += ("." if out else "") + (text if text.isprintable() else repr(text))
    return out


class LocatedValueError(ValueError):
    """Raised by a validator that checks a whole section (a DAG, a site tree) to say *which* entry is
    wrong: ``loc`` is relative to the model being validated, e.g. ``("stages", 2, "inputs", 0)``.
    The loader appends it to pydantic's location so the error points at the user's line, and reports
    ``hint`` (how to fix it) beside the message."""

    def __init__(self, loc: Loc, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.loc = loc
        self.hint = hint
