"""The controller's state: submitted documents, each workflow's revisions (documents + plan) and what
happened to it, in an embedded SQLite database under the state directory.

Why SQLite: it is in the standard library, one file, transactional (an apply is all or nothing, so a
crash mid-apply leaves the previous state), and it survives restarts, which is the point: a new
controller on the same state directory finds every workflow and redeploys it.

What is stored:

- ``submissions``: every accepted apply, the files' raw text exactly as the client sent them (with the
  names it gave them), so nothing submitted is lost;
- ``documents``: the current version of each document, by (kind, name), as canonical JSON (the
  validated pydantic model, values equal to their defaults left out, keys sorted) with its SHA-256
  digest: two submissions whose documents mean the same thing have the same digest, whatever their
  formatting, comments, key order or spelt-out defaults;
- ``revisions``: one row per (workflow, generation): the workflow's three documents as planned and
  the Plan; the digest of the three is the workflow's desired state;
- ``workflows``: the current generation of each live workflow (deleting removes the row, not the
  revisions);
- ``events``: the history (applied, started, replaced, stopped, failed, deleted, Ray restarted).

Layout of the state directory (created 0700): ``state.db`` (0600), ``token`` (0600, written by
``jellybean up``), ``data-token`` (0600: the ingest and stream endpoints' token), ``outputs/`` (file
outputs) and ``controller.json`` (the URL of the running controller).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jellybean.spec.loader import KINDS, SourceMap

if TYPE_CHECKING:  # the client side of the CLI reads the token without importing the planner
    from pydantic import BaseModel

    from jellybean.optimizer.plan import Plan
    from jellybean.spec.bundle import Bundle

SCHEMA_VERSION = 1
DB_NAME = "state.db"
TOKEN_NAME = "token"  # noqa: S105 - a file name, not a secret
#: The data token: what cameras and readers of results present to the ingest and stream endpoints
#: (never the API token, which administers the controller).
DATA_TOKEN_NAME = "data-token"  # noqa: S105 - a file name
CONTROLLER_NAME = "controller.json"
#: The kinds, in the order their digests enter a workflow's digest.
BUNDLE_KINDS = ("Workflow", "ModelZoo", "Topology")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, files TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL, name TEXT NOT NULL, digest TEXT NOT NULL, body TEXT NOT NULL,
    file TEXT NOT NULL, line INTEGER NOT NULL, submission INTEGER, updated_at REAL NOT NULL,
    PRIMARY KEY (kind, name));
CREATE TABLE IF NOT EXISTS revisions (
    workflow TEXT NOT NULL, generation INTEGER NOT NULL, digest TEXT NOT NULL, documents TEXT NOT NULL,
    plan TEXT NOT NULL, submission INTEGER, created_at REAL NOT NULL, PRIMARY KEY (workflow, generation));
CREATE TABLE IF NOT EXISTS workflows (
    name TEXT PRIMARY KEY, generation INTEGER NOT NULL, digest TEXT NOT NULL, zoo TEXT NOT NULL,
    topology TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, workflow TEXT, event TEXT NOT NULL,
    detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_workflow ON events (workflow, id);
"""


class StateError(Exception):
    """The state directory or database cannot be used (said in words; no traceback for users)."""


class DamagedRecord(Exception):
    """A stored row that no longer reads (bad JSON, or a document the current models refuse): said in
    words; the other rows read as usual."""


# --------------------------------------------------------------------------------------------------
# canonical content


def canonical_json(value: Any) -> str:
    """One text per meaning: keys sorted, no whitespace, UTF-8 kept."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def digest_of(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def document_body(model: BaseModel) -> dict:
    """A document as plain JSON without the values that equal their defaults: the form digests are
    taken of. Writing a default explicitly or leaving it out is the same document, and a field added
    to the schema later (with a default) leaves every stored digest as it was."""
    return model.model_dump(mode="json", by_alias=True, exclude_defaults=True)


def bundle_bodies(bundle: Bundle, *, metadata: bool = True) -> dict[str, dict]:
    """The three documents' bodies; with ``metadata=False`` each keeps only its name (the operator:
    labels and annotations that tools add to a custom resource do not re-plan)."""
    bodies = {"Workflow": document_body(bundle.workflow), "ModelZoo": document_body(bundle.zoo),
              "Topology": document_body(bundle.topology)}
    if not metadata:
        for body in bodies.values():
            body["metadata"] = {"name": body.get("metadata", {}).get("name")}
    return bodies


def bundle_digest(bodies: Mapping[str, dict]) -> str:
    """A workflow's desired state: the digests of its workflow, zoo and topology documents."""
    return digest_of({kind: digest_of(bodies[kind]) for kind in BUNDLE_KINDS})


def model_of(kind: str, body: dict) -> BaseModel:
    return KINDS[kind].model_validate(body)


# --------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class StoredDocument:
    kind: str
    name: str
    digest: str
    body: dict
    file: str
    line: int
    updated_at: float

    def model(self) -> Any:
        return model_of(self.kind, self.body)

    def source(self) -> SourceMap:
        return SourceMap(self.file, start_line=self.line)


@dataclass(frozen=True)
class WorkflowRecord:
    name: str
    generation: int
    digest: str
    zoo: str
    topology: str
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class Revision:
    workflow: str
    generation: int
    digest: str
    documents: dict[str, dict]  # kind -> body
    plan: dict
    created_at: float

    def bundle(self) -> Bundle:
        from jellybean.spec.bundle import Bundle

        wf, zoo, topo = (model_of(kind, self.documents[kind]) for kind in BUNDLE_KINDS)
        where = {kind: SourceMap(f"<stored {kind} {self.documents[kind]['metadata']['name']}>")
                 for kind in BUNDLE_KINDS}
        return Bundle(wf, zoo, topo, where)

    def plan_model(self) -> Plan:
        from jellybean.optimizer.plan import Plan

        return Plan.model_validate(self.plan)

    def validate(self) -> None:
        """Raise when the stored documents or plan no longer read with the current models."""
        self.bundle()
        self.plan_model()


def _detail(text: str) -> dict:
    try:
        detail = json.loads(text)
    except ValueError:
        return {"damaged": "the stored details are not valid JSON"}
    return detail if isinstance(detail, dict) else {"value": detail}


@dataclass(frozen=True)
class Event:
    id: int
    at: float
    workflow: str | None
    event: str
    detail: dict

    def as_dict(self) -> dict:
        return {"id": self.id, "at": self.at, "workflow": self.workflow, "event": self.event, "detail": self.detail}


@dataclass
class NewRevision:
    """A revision to write with an apply."""

    workflow: str
    digest: str
    documents: dict[str, dict]
    plan: dict
    zoo: str
    topology: str


@dataclass
class NewDocument:
    kind: str
    name: str
    digest: str
    body: dict
    file: str
    line: int


@dataclass
class NewEvent:
    workflow: str | None
    event: str
    detail: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# the store


def default_state_dir() -> Path:
    home = os.environ.get("JELLYBEAN_HOME")
    return Path(home).expanduser() if home else Path.home() / ".jellybean"


def ensure_state_dir(path: Path) -> Path:
    """The state directory, created 0700 (it holds the API token and every submitted document).

    An existing one is used only when it is a real directory (not a symlink), owned by this user and
    writable by nobody else: anyone who can write there could swap ``state.db`` or plant the token
    file the CLI reads. Such a directory is refused, with the command that fixes it."""
    path = Path(path).expanduser()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        info = os.lstat(path)
    except OSError as exc:
        raise StateError(f"cannot create the state directory {path}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise StateError(f"the state directory {path} is a symbolic link: give the real directory as --state-dir")
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(f"the state directory {path} is not a directory")
    if info.st_uid != os.geteuid():
        raise StateError(f"the state directory {path} belongs to another user (uid {info.st_uid}): use a directory "
                         "of your own as --state-dir")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StateError(f"the state directory {path} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                         f"`chmod 700 {path}`, or use another --state-dir")
    return path


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by the owner only (0600), atomically: a temporary file at
    an unpredictable name, opened exclusively and without following symlinks (``O_EXCL |
    O_NOFOLLOW``: a link planted there is never written through), then renamed over ``path`` (a
    rename replaces a symlink at ``path`` itself, never its target)."""
    import secrets

    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            fd = -1
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)


def new_token() -> str:
    import secrets

    return secrets.token_urlsafe(32)


def write_token(state_dir: Path, token: str) -> Path:
    path = Path(state_dir) / TOKEN_NAME
    write_private(path, token + "\n")
    return path


def data_token(state_dir: Path) -> str:
    """The data token of the state directory, created (0600) on first use."""
    token = read_token(state_dir, DATA_TOKEN_NAME)
    if token is None:
        token = new_token()
        write_private(Path(state_dir) / DATA_TOKEN_NAME, token + "\n")
    return token


def read_token(state_dir: Path, name: str = TOKEN_NAME) -> str | None:
    """The API token ``jellybean up`` wrote, or None when there is none."""
    try:
        return (Path(state_dir) / name).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def write_controller_info(state_dir: Path, info: Mapping[str, Any]) -> Path:
    path = Path(state_dir) / CONTROLLER_NAME
    write_private(path, json.dumps(dict(info), indent=2) + "\n")
    return path


def read_controller_info(state_dir: Path) -> dict | None:
    try:
        data = json.loads((Path(state_dir) / CONTROLLER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def remove_controller_info(state_dir: Path, pid: int | None = None) -> None:
    """Remove controller.json (only if it is ours, when ``pid`` is given)."""
    info = read_controller_info(state_dir)
    if info is None or (pid is not None and info.get("pid") != pid):
        return
    try:
        (Path(state_dir) / CONTROLLER_NAME).unlink()
    except OSError:
        pass


class StateStore:
    """Thread-safe access to ``state.db``; every write is one transaction."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = ensure_state_dir(Path(state_dir))
        self.path = self.state_dir / DB_NAME
        self._lock = threading.RLock()
        try:
            # Created 0600 here, never through a symlink; an existing one must be our regular file.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
        except OSError as exc:
            raise StateError(f"cannot open the state database {self.path}: {exc.strerror} (a symbolic link is "
                             "refused; the database must be a regular file)") from None
        info = os.lstat(self.path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise StateError(f"the state database {self.path} is not a regular file of this user's")
        if info.st_mode & 0o077:
            os.chmod(self.path, 0o600)
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            with self._conn:
                self._conn.executescript(_SCHEMA)
                row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
                if row is None:
                    self._conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                                       (str(SCHEMA_VERSION),))
                elif int(row[0]) > SCHEMA_VERSION:
                    raise StateError(f"{self.path} was written by a newer jellybean (schema {row[0]}, this one "
                                     f"reads {SCHEMA_VERSION}); upgrade, or use another --state-dir")
            verdict = [r[0] for r in self._conn.execute("PRAGMA integrity_check(5)").fetchall()]
        except sqlite3.DatabaseError as exc:
            raise StateError(self._damaged_file(str(exc))) from None
        if verdict != ["ok"]:
            raise StateError(self._damaged_file("; ".join(verdict)))
        #: Rows that do not read: ("document", kind, name) or ("revision", workflow) -> why. Filled by
        #: :meth:`check` at start and by any read that meets one; cleared when the row is written anew.
        self.damaged: dict[tuple, str] = {}
        self.problems = self.check()

    def _damaged_file(self, why: str) -> str:
        return (f"the state database {self.path} is damaged ({why[:300]}): move it aside (`mv {self.path} "
                f"{self.path}.damaged`) and start again, then apply your documents; `sqlite3 {self.path} .recover` "
                "may save its rows")

    def check(self) -> list[str]:
        """Every stored document and every workflow's current revision re-read and re-validated with
        the current models; one line per damaged row (the rows stay: re-applying replaces them)."""
        from pydantic import ValidationError

        def why(exc: Exception) -> str:
            if isinstance(exc, ValidationError):
                error = exc.errors(include_url=False)[0]
                where = ".".join(str(p) for p in error["loc"])
                return f"{where}: {error['msg']}" if where else str(error["msg"])
            return f"{type(exc).__name__}: {exc}"[:200]

        for kind, name, body in self._all("SELECT kind, name, body FROM documents ORDER BY kind, name"):
            try:
                model_of(kind, json.loads(body))
            except (ValueError, KeyError, TypeError) as exc:
                self.damaged[("document", kind, name)] = why(exc)
        for name, generation, documents, plan in self._all(
                "SELECT r.workflow, r.generation, r.documents, r.plan FROM revisions r JOIN workflows w "
                "ON w.name = r.workflow AND w.generation = r.generation ORDER BY r.workflow"):
            try:
                Revision(name, generation, "", json.loads(documents), json.loads(plan), 0.0).validate()
            except (ValueError, KeyError, TypeError) as exc:
                self.damaged[("revision", name)] = f"generation {generation}: {why(exc)}"
        for (name,) in self._all("SELECT name FROM workflows w WHERE NOT EXISTS (SELECT 1 FROM revisions r "
                                 "WHERE r.workflow = w.name AND r.generation = w.generation)"):
            self.damaged[("revision", name)] = "its current revision is missing"
        (bad_events,) = self._all("SELECT COUNT(*) FROM events WHERE json_valid(detail) = 0")[0]
        lines = [f"{'revision of workflow' if key[0] == 'revision' else key[1]} {key[-1]}: {reason}"
                 for key, reason in sorted(self.damaged.items())]
        if bad_events:
            lines.append(f"{bad_events} event{'s' if bad_events != 1 else ''} with unreadable details")
        return lines

    def damage_summary(self) -> str | None:
        """What is damaged, in one line (None when nothing is)."""
        if not self.problems:
            return None
        unserved = sorted(key[1] for key in self.damaged if key[0] == "revision")
        tail = (f"; not served until applied again: {', '.join(unserved)}" if unserved else
                "; apply those documents again")
        return f"{self.path}: {len(self.problems)} damaged record{'s' if len(self.problems) != 1 else ''}: " + \
            "; ".join(self.problems) + tail

    def workflow_damage(self, name: str) -> str | None:
        """Why ``name``'s current revision cannot be read, or None."""
        return self.damaged.get(("revision", name))

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- reading -----------------------------------------------------------------------------
    def _all(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def _document(self, row: tuple) -> StoredDocument | None:
        kind, name, digest, body, file, line, updated_at = row
        if ("document", kind, name) in self.damaged:
            return None
        try:
            return StoredDocument(kind, name, digest, json.loads(body), file, line, updated_at)
        except ValueError as exc:
            self.damaged[("document", kind, name)] = f"ValueError: {exc}"
            return None

    def documents(self, kind: str | None = None) -> list[StoredDocument]:
        """The stored documents that read (a damaged one is left out: see :attr:`damaged`)."""
        sql = "SELECT kind, name, digest, body, file, line, updated_at FROM documents"
        rows = self._all(sql + (" WHERE kind=? ORDER BY name" if kind else " ORDER BY kind, name"),
                         (kind,) if kind else ())
        return [doc for doc in map(self._document, rows) if doc is not None]

    def document(self, kind: str, name: str) -> StoredDocument | None:
        rows = self._all("SELECT kind, name, digest, body, file, line, updated_at FROM documents "
                         "WHERE kind=? AND name=?", (kind, name))
        return self._document(rows[0]) if rows else None

    def document_damage(self, kind: str, name: str) -> str | None:
        """Why the stored document (kind, name) cannot be read, or None."""
        return self.damaged.get(("document", kind, name))

    def workflows(self) -> list[WorkflowRecord]:
        rows = self._all("SELECT name, generation, digest, zoo, topology, created_at, updated_at FROM workflows "
                         "ORDER BY name")
        return [WorkflowRecord(*row) for row in rows]

    def workflow(self, name: str) -> WorkflowRecord | None:
        rows = self._all("SELECT name, generation, digest, zoo, topology, created_at, updated_at FROM workflows "
                         "WHERE name=?", (name,))
        return WorkflowRecord(*rows[0]) if rows else None

    def desired(self) -> dict[str, str]:
        """The desired state: live workflow -> digest of its current revision (one whose revision is
        damaged is left out: nothing can be served from it)."""
        return {name: digest for name, digest in self._all("SELECT name, digest FROM workflows")
                if ("revision", name) not in self.damaged}

    def revision(self, workflow: str, generation: int | None = None) -> Revision | None:
        if generation is None:
            rows = self._all("SELECT workflow, generation, digest, documents, plan, created_at FROM revisions "
                             "WHERE workflow=? AND generation=(SELECT generation FROM workflows WHERE name=?)",
                             (workflow, workflow))
        else:
            rows = self._all("SELECT workflow, generation, digest, documents, plan, created_at FROM revisions "
                             "WHERE workflow=? AND generation=?", (workflow, generation))
        if not rows:
            return None
        w, g, d, docs, plan, at = rows[0]
        current = generation is None
        if current and ("revision", w) in self.damaged:
            raise DamagedRecord(f"the stored revision of workflow {w} is damaged ({self.damaged[('revision', w)]}): "
                                "apply its documents again")
        try:
            return Revision(w, g, d, json.loads(docs), json.loads(plan), at)
        except ValueError as exc:
            if current:
                self.damaged[("revision", w)] = f"generation {g}: ValueError: {exc}"
            raise DamagedRecord(f"the stored revision {g} of workflow {w} is damaged (ValueError: {exc}): "
                                "apply its documents again") from None

    def revisions(self, workflow: str) -> list[dict]:
        """Every revision of a workflow, oldest first, without the documents (digest, cost, time)."""
        rows = self._all("SELECT generation, digest, plan, created_at FROM revisions WHERE workflow=? "
                         "ORDER BY generation", (workflow,))
        out = []
        for generation, digest, plan, at in rows:
            try:
                plan_data = json.loads(plan)
            except ValueError:
                plan_data = {}
            cost = (plan_data.get("cost") or {}).get("total_per_hour")
            out.append({"generation": generation, "digest": digest, "created_at": at, "cost_per_hour": cost,
                        "models": plan_data.get("models", {})})
        return out

    def events(self, workflow: str | None = None, limit: int = 100) -> list[Event]:
        """The latest ``limit`` events (of one workflow, or all), oldest first."""
        if workflow is None:
            rows = self._all("SELECT id, at, workflow, event, detail FROM events ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._all("SELECT id, at, workflow, event, detail FROM events WHERE workflow=? "
                             "ORDER BY id DESC LIMIT ?", (workflow, limit))
        return [Event(i, at, w, e, _detail(d)) for i, at, w, e, d in reversed(rows)]

    def submissions(self) -> list[dict]:
        rows = self._all("SELECT id, at, files FROM submissions ORDER BY id")
        return [{"id": i, "at": at, "files": json.loads(files)} for i, at, files in rows]

    def topologies(self) -> list[Any]:
        """The stored Topologies that validate (a damaged one is left out: see :attr:`damaged`)."""
        return [doc.model() for doc in self.documents("Topology")
                if ("document", "Topology", doc.name) not in self.damaged]

    # --- writing -----------------------------------------------------------------------------
    def commit_apply(self, files: list[tuple[str, str]], documents: list[NewDocument],
                     revisions: list[NewRevision], events: list[NewEvent]) -> dict[str, int]:
        """Record an accepted submission in one transaction; returns workflow -> new generation."""
        now = time.time()
        generations: dict[str, int] = {}
        with self._lock, self._conn:
            cur = self._conn.execute("INSERT INTO submissions (at, files) VALUES (?, ?)",
                                     (now, json.dumps([{"name": n, "text": t} for n, t in files])))
            submission = cur.lastrowid
            for doc in documents:
                self._conn.execute(
                    "INSERT INTO documents (kind, name, digest, body, file, line, submission, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET digest=excluded.digest, "
                    "body=excluded.body, file=excluded.file, line=excluded.line, submission=excluded.submission, "
                    "updated_at=excluded.updated_at",
                    (doc.kind, doc.name, doc.digest, canonical_json(doc.body), doc.file, doc.line, submission, now))
            for rev in revisions:
                (last,) = self._conn.execute("SELECT COALESCE(MAX(generation), 0) FROM revisions WHERE workflow=?",
                                             (rev.workflow,)).fetchone()
                generation = last + 1
                generations[rev.workflow] = generation
                self._conn.execute(
                    "INSERT INTO revisions (workflow, generation, digest, documents, plan, submission, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (rev.workflow, generation, rev.digest, canonical_json(rev.documents), canonical_json(rev.plan),
                     submission, now))
                self._conn.execute(
                    "INSERT INTO workflows (name, generation, digest, zoo, topology, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET generation=excluded.generation, "
                    "digest=excluded.digest, zoo=excluded.zoo, topology=excluded.topology, "
                    "updated_at=excluded.updated_at",
                    (rev.workflow, generation, rev.digest, rev.zoo, rev.topology, now, now))
            for doc in documents:
                self.damaged.pop(("document", doc.kind, doc.name), None)
            for rev in revisions:
                self.damaged.pop(("revision", rev.workflow), None)
            for event in events:
                detail = dict(event.detail)
                if event.workflow in generations:
                    detail.setdefault("generation", generations[event.workflow])
                detail.setdefault("submission", submission)
                self._insert_event(now, event.workflow, event.event, detail)
        return generations

    def delete_workflow(self, name: str) -> bool:
        """Remove a workflow from the desired state (its revisions and events stay, as history)."""
        with self._lock, self._conn:
            cur = self._conn.execute("DELETE FROM workflows WHERE name=?", (name,))
            if cur.rowcount == 0:
                return False
            self.damaged.pop(("revision", name), None)
            self._conn.execute("DELETE FROM documents WHERE kind='Workflow' AND name=?", (name,))
            self._insert_event(time.time(), name, "deleted", {})
        return True

    def add_event(self, workflow: str | None, event: str, detail: Mapping[str, Any] | None = None) -> None:
        with self._lock, self._conn:
            self._insert_event(time.time(), workflow, event, dict(detail or {}))

    def _insert_event(self, at: float, workflow: str | None, event: str, detail: dict) -> None:
        self._conn.execute("INSERT INTO events (at, workflow, event, detail) VALUES (?, ?, ?, ?)",
                           (at, workflow, event, json.dumps(detail, default=str)))

    def counts(self) -> dict[str, int]:
        """Rows per table (tests use it to check that an unchanged apply writes nothing)."""
        return {table: self._all(f"SELECT COUNT(*) FROM {table}")[0][0]  # noqa: S608 - fixed names
                for table in ("submissions", "documents", "revisions", "workflows", "events")}
