"""Parsing what an apply submits: one budget per request, and, for the API, in a process of its own.

:func:`parse_files` turns the request's ``(name, text)`` files into validated documents under one
:class:`~jellybean.spec.loader.Budget` (values after alias expansion and bytes of text, for the whole
request however many files it carries), and refuses NUL bytes, lone surrogates and empty requests.

Why a process. libyaml's composer and pydantic's validator are C and Rust code that hold the GIL for
as long as a call lasts: a 3 MB topology held it for 1.15 s in one stretch here, so parsing in a
thread of the API's process would stall every route, ``/healthz`` included, however the threads are
scheduled. :class:`IsolatedParser` runs each request's parse in a child forked from a small
forkserver (started once, with the loader imported), one at a time, under a wall-clock limit (the
child is killed past it) and an address-space limit; the API's process only waits on a pipe.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

from jellybean.spec.errors import Issue, SpecError
from jellybean.spec.loader import MAX_FILE_BYTES, Budget, LoadedDocument, load_texts

#: Wall-clock seconds one request's parse may take (a 10,000-camera city takes about 5 s here).
PARSE_TIMEOUT_S = 60.0
#: Address space of the parsing child (the value budget keeps a request's documents far below it).
PARSE_MEMORY_BYTES = 4 * 1024 ** 3


def parse_files(files: list[tuple[str, str]], budget: Budget | None = None) -> list[LoadedDocument]:
    """Every document of one request, validated and located; raises :class:`SpecError` with every
    issue. Two documents of one kind and name in one request are an error."""
    if not files:
        raise SpecError([Issue("<request>", None, "files", "no files given", "send at least one YAML document")])
    issues: list[Issue] = []
    texts: list[tuple[str, str]] = []
    for name, text in files:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:  # a lone surrogate, as JSON's \ud800 can carry
            issues.append(Issue(name, text[: exc.start].count("\n") + 1, "", "not valid Unicode text",
                                "save the file as UTF-8"))
            continue
        if size > MAX_FILE_BYTES:
            issues.append(Issue(name, None, "", f"file is more than {MAX_FILE_BYTES} bytes", "split it into several files"))
            continue
        if "\x00" in text:
            issues.append(Issue(name, None, "", "binary content (NUL bytes)", "give a YAML text file"))
            continue
        texts.append((name, text))
    documents: list[LoadedDocument] = []
    try:
        documents = load_texts(texts, budget=budget)
    except SpecError as exc:
        issues.extend(exc.issues)
    seen: set[tuple[str, str]] = set()
    for doc in documents:
        key = (doc.model.kind, doc.model.metadata.name)
        if key in seen:
            issues.append(Issue(doc.source.file, doc.source.lines.get(("metadata", "name"), doc.source.start_line),
                                "metadata.name", f"a second {key[0]} named {key[1]!r}", "rename one of them"))
        seen.add(key)
    if not documents and not issues:
        issues.append(Issue(files[0][0] if len(files) == 1 else "<request>", 1, "", "no documents given",
                            "send Workflow, ModelZoo and Topology documents"))
    if issues:
        raise SpecError(issues)
    return documents


def _child(conn: Any, files: list[tuple[str, str]], memory_bytes: int) -> None:
    """The parsing child: the documents, or the issues, back through ``conn``."""
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    except (ValueError, OSError):
        pass  # a lower hard limit is already in place
    try:
        conn.send(("ok", parse_files(files)))
    except SpecError as exc:
        conn.send(("issues", exc.issues))
    except MemoryError:
        conn.send(("issues", [Issue("<request>", None, "", f"parsing needed more than {memory_bytes} bytes of memory",
                                    "apply fewer or smaller documents at once")]))
    finally:
        conn.close()


class IsolatedParser:
    """:func:`parse_files` in a child process, one request at a time (blocking; call it from a
    worker thread). Raises :class:`SpecError` for invalid documents and for a parse that runs out of
    time or memory, in words."""

    def __init__(self, *, timeout_s: float = PARSE_TIMEOUT_S, memory_bytes: int = PARSE_MEMORY_BYTES) -> None:
        self.timeout_s = timeout_s
        self.memory_bytes = memory_bytes
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["jellybean.runtime.parsing"])
        self._one = threading.Lock()

    def warm(self) -> None:
        """Start the forkserver now (about a second) instead of on the first apply."""
        try:
            self.parse([("<warm-up>", "# nothing\n")])
        except SpecError:
            pass  # "no documents given": the child ran

    def parse(self, files: list[tuple[str, str]]) -> list[LoadedDocument]:
        with self._one:
            receiver, sender = self._context.Pipe(duplex=False)
            child = self._context.Process(target=_child, args=(sender, files, self.memory_bytes),
                                          name="jellybean-parse", daemon=True)
            try:
                child.start()
                sender.close()
                if not receiver.poll(self.timeout_s):
                    raise SpecError([Issue("<request>", None, "", f"the documents took more than {self.timeout_s:g} s "
                                           "to parse", "apply fewer or smaller documents at once")])
                try:
                    outcome, payload = receiver.recv()
                except EOFError:
                    child.join(5)
                    raise SpecError([Issue("<request>", None, "", f"the parser stopped (exit code {child.exitcode})",
                                           "apply fewer or smaller documents at once")]) from None
            finally:
                receiver.close()
                if child.is_alive():
                    child.kill()
                child.join(5)
        if outcome == "issues":
            raise SpecError(payload)
        return payload
