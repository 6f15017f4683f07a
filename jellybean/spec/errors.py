"""User-facing errors for bad documents: file, line, field path, what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import dataclass, field


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


def format_path(loc: tuple) -> str:
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

    def __init__(self, loc: tuple, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.loc = loc
        self.hint = hint
