"""The controller's HTTP API (FastAPI: the OpenAPI document is at ``/openapi.json``, browsable at
``/docs`` with ``jellybean up --docs``), served by uvicorn.

Every route under ``/v1`` needs ``Authorization: Bearer <token>``, the token ``jellybean up`` wrote to
the state directory (0600); ``/healthz`` and the API's description are public. Errors are JSON
objects ``{"error": ..., "issues": [...], "rejections": [...]}``, never tracebacks:

- 422: invalid documents (or an invalid request body); ``issues`` are the same file:line:field issues
  the CLI prints, ``file`` being the name the client gave the file;
- 409: valid documents, but a workflow has no feasible (or servable) plan; ``rejections`` say why;
- 404: no such workflow; 401: no or a wrong token; 413: a request body over ``MAX_BODY_BYTES``
  (counted as it streams in, chunked or not, and refused at the limit); 429: more than
  ``MAX_PENDING_APPLIES`` applies already waiting (``Retry-After`` says when to try again).

Responsiveness. An apply's documents are parsed in a process of its own, one request at a time
(:class:`jellybean.runtime.parsing.IsolatedParser`: YAML composition and validation hold the GIL in
long stretches) under one value and byte budget for the whole request; planning and storing run in
one worker thread of their own; waiting (``?wait=``) is asynchronous. So ``/healthz`` (answered on
the event loop) and the read routes (in their own thread pool) answer while applies are parsed,
queued or refused. ``/docs`` (Swagger UI) is off unless ``docs=True`` (``jellybean up --docs``), and
then served from the ``swagger-ui-bundle`` package's files, never from a CDN: a token pasted into it
meets no third-party script.

Routes:

==========================================  ====================================================
``GET  /healthz``                           liveness (no token)
``GET  /v1/controller``                     the controller: state directory, Ray, counts
``POST /v1/apply?wait=SECONDS``             submit documents (``{"files": [{"name", "text"}]}``)
``GET  /v1/workflows``                      every workflow: phase, generation, cost, replicas
``GET  /v1/workflows/{name}``               plan vs actual per stage and site, frames, endpoints, events
``GET  /v1/workflows/{name}/plan``          the current Plan (the ``plan --format json`` object)
``GET  /v1/workflows/{name}/history``       revisions (digest, cost, models) and events
``DELETE /v1/workflows/{name}?wait=SECONDS`` tear a workflow down
``GET  /v1/documents``                      stored documents (kind, name, digest, where from)
``GET  /v1/events?limit=N``                 the controller's history
==========================================  ====================================================
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.routing import Match

from jellybean.optimizer.plan import Plan
from jellybean.runtime.controller import Controller, NotFound, Rejected
from jellybean.runtime.parsing import IsolatedParser
from jellybean.runtime.state import DamagedRecord
from jellybean.runtime.reconcile import Phase
from jellybean.runtime.status import EventOut, WorkflowStatus, WorkflowSummary
from jellybean.spec.errors import Issue, SpecError, format_path
from jellybean.spec.loader import MAX_LOAD_BYTES

log = logging.getLogger("jellybean.api")

API_TITLE = "Jellybean controller"
API_VERSION = "v1"
#: A request carries at most the loader's per-request budget of YAML text (64 MiB), JSON-encoded:
#: twice that leaves room for the framing and escapes.
MAX_BODY_BYTES = 2 * MAX_LOAD_BYTES
#: Applies parsed, planned or waiting for their turn at once; more are answered 429.
MAX_PENDING_APPLIES = 16
MAX_WAIT_S = 600.0


# --------------------------------------------------------------------------------------------------
# the API's models (its OpenAPI document is generated from them)


class FileIn(BaseModel):
    name: str = Field(min_length=1, max_length=4096, description="The file's name as the client knows it; "
                      "issues name it.")
    text: str = Field(description="The YAML text, one or several documents.")


class ApplyRequest(BaseModel):
    files: list[FileIn] = Field(min_length=1, max_length=10_000)


class IssueOut(BaseModel):
    file: str
    line: int | None
    path: str = Field(description="The field, e.g. `spec.stages[1].inputs[0].from`.")
    message: str
    hint: str = ""
    text: str = Field(description="The issue as the CLI prints it: `file:line: path: message (hint)`.")


class RejectionOut(BaseModel):
    workflow: str
    reason: Literal["infeasible", "not-servable"]
    explanation: list[str]


class ErrorOut(BaseModel):
    error: str
    issues: list[IssueOut] = Field(default_factory=list)
    rejections: list[RejectionOut] = Field(default_factory=list)


class DocumentResult(BaseModel):
    kind: str
    name: str
    action: Literal["created", "configured", "unchanged"]
    digest: str
    file: str
    line: int


class WorkflowResult(BaseModel):
    name: str
    action: Literal["created", "configured", "unchanged"]
    generation: int | None = None
    digest: str
    cost_per_hour: float | None = None
    accuracy: float | None = None
    models: dict[str, str] = Field(default_factory=dict)
    reason: str = ""


class NotRunning(BaseModel):
    name: str
    phase: Phase
    message: str = ""


class ApplyResponse(BaseModel):
    documents: list[DocumentResult]
    workflows: list[WorkflowResult]
    changed: bool = Field(description="False when every document was already stored as sent: nothing changed.")
    settled: bool | None = Field(default=None, description="With `wait`: whether the changed workflows reached "
                                 "their new state (or failed) in time.")
    running: bool | None = Field(default=None, description="With `wait`: whether every changed workflow runs its "
                                 "new version (False when one failed, is blocked or was still starting).")
    not_running: list[NotRunning] = Field(default_factory=list, description="With `wait`: the changed workflows "
                                          "that do not run their new version, with their phase and why.")


class DeleteResponse(BaseModel):
    name: str
    deleted: bool
    settled: bool | None = None


class DocumentOut(BaseModel):
    kind: str
    name: str
    digest: str
    file: str
    line: int
    updated_at: float


class RevisionOut(BaseModel):
    generation: int
    digest: str
    created_at: float
    cost_per_hour: float | None
    models: dict[str, str]


class HistoryOut(BaseModel):
    workflow: str
    revisions: list[RevisionOut]
    events: list[EventOut]


class ControllerInfo(BaseModel):
    api: str = API_VERSION
    state_dir: str
    workflows: int
    running: int
    ray: dict[str, Any] | None


def issue_out(issue: Issue) -> dict:
    return {"file": issue.file, "line": issue.line, "path": issue.path, "message": issue.message,
            "hint": issue.hint, "text": str(issue)}


def _error(status: int, error: str, *, issues: list[Issue] = (), rejections: list = (),
           headers: dict | None = None) -> JSONResponse:
    body = {"error": error, "issues": [issue_out(i) for i in issues],
            "rejections": [{"workflow": r.workflow, "reason": r.reason, "explanation": r.explanation}
                           for r in rejections]}
    return JSONResponse(body, status_code=status, headers=headers)


_ERRORS = {401: {"model": ErrorOut, "description": "No token, or a wrong one."}}
#: FastAPI documents a 422 of its own shape (``detail``) for every route with parameters; the handler
#: below answers with an ErrorOut, so the document must say so.
_INVALID = {422: {"model": ErrorOut, "description": "An invalid parameter; `issues` say which."}}
_NAMED = {**_INVALID, 404: {"model": ErrorOut, "description": "No workflow of that name."}}


def _allowed_methods(routes: list, request: Request) -> str:
    """Every method one of ``routes`` serves at the request's path (for a 405's ``Allow``)."""
    methods: set[str] = set()
    for route in routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


# --------------------------------------------------------------------------------------------------
# the application


def create_app(controller: Controller, token: str, *, docs: bool = False, max_body_bytes: int = MAX_BODY_BYTES,
               parse: Callable[[list[tuple[str, str]]], list] | None = None) -> FastAPI:
    """The API over ``controller``, guarded by ``token`` (compared in constant time). ``parse`` turns
    an apply's files into documents (default: in a child process, :class:`IsolatedParser`)."""
    if not token:
        raise ValueError("the API needs a token")
    expected = token.encode("utf-8")
    bearer = HTTPBearer(auto_error=False, description="The token `jellybean up` wrote to the state directory.")

    refusal = "missing or wrong bearer token (see the `token` file in the controller's state directory)"

    def authorize(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        given = credentials.credentials.encode("utf-8") if credentials is not None else b""
        if credentials is None or not secrets.compare_digest(given, expected):
            raise HTTPException(401, refusal, headers={"WWW-Authenticate": "Bearer"})

    def authorized(header: str | None) -> bool:
        scheme, credentials = get_authorization_scheme_param(header)
        return scheme.lower() == "bearer" and secrets.compare_digest(credentials.encode("utf-8"), expected)

    app = FastAPI(title=API_TITLE, version=API_VERSION, description=__doc__.split("\n\n")[0],
                  docs_url=None, redoc_url=None)
    # The token first, before the body is read or parsed (the route's own check, which documents the
    # scheme, runs only after FastAPI has parsed the body); then the body, bounded as it streams.
    app.add_middleware(BodyGuard, authorized=authorized, refusal=refusal, max_body_bytes=max_body_bytes)
    if docs:
        _add_docs(app)
    parse = parse or IsolatedParser().parse
    parsing = ThreadPoolExecutor(max_workers=MAX_PENDING_APPLIES, thread_name_prefix="jellybean-parse")
    applying = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jellybean-apply")
    pending = {"applies": 0}

    @app.exception_handler(SpecError)
    async def spec_error(_request: Request, exc: SpecError) -> JSONResponse:
        count = len(exc.issues)
        return _error(422, f"{count} problem{'s' if count != 1 else ''} in the input", issues=exc.issues)

    @app.exception_handler(Rejected)
    async def rejected(_request: Request, exc: Rejected) -> JSONResponse:
        names = ", ".join(r.workflow for r in exc.rejections)
        return _error(409, f"no plan that can be served for {names}; nothing was changed", rejections=exc.rejections)

    @app.exception_handler(DamagedRecord)
    async def damaged(_request: Request, exc: DamagedRecord) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound) -> JSONResponse:
        return _error(404, f"no workflow named {exc.args[0]!r}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if exc.status_code == 400:
            # FastAPI's answer to a body it cannot read at all (not UTF-8): an invalid request body,
            # answered as broken JSON is, with a 422.
            return _error(422, "1 problem in the request", issues=[
                Issue("<request body>", None, "", str(exc.detail), "send a JSON object, encoded as UTF-8")])
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route on the path only
            # (/v1/workflows/{name} has a GET route and a DELETE route): name every route's. The
            # v1 routes are asked directly (the app holds the included router as one opaque route).
            headers = {**(headers or {}), "Allow": _allowed_methods([*app.router.routes, *v1.routes], request)}
        return _error(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        issues = []
        for error in exc.errors():
            loc = tuple(error.get("loc", ()))
            where = loc[0] if loc else "body"
            path = format_path(loc[1:]) if len(loc) > 1 else ""
            issues.append(Issue(f"<request {where}>", None, path, str(error.get("msg", "invalid")),
                                "the request's schema is at /openapi.json"))
        count = len(issues)
        return _error(422, f"{count} problem{'s' if count != 1 else ''} in the request", issues=issues)

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s", type(exc).__name__, exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__} (the controller's log has the details)")

    @app.get("/healthz", tags=["health"], summary="Liveness (no token needed)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=_ERRORS)

    @v1.get("/controller", response_model=ControllerInfo, summary="The controller: state directory, Ray, counts")
    def controller_info() -> dict:
        return controller.describe()

    @v1.post("/apply", response_model=ApplyResponse, summary="Submit documents (declarative)",
             responses={422: {"model": ErrorOut, "description": "Invalid documents; `issues` locate each problem."},
                        409: {"model": ErrorOut, "description": "A workflow has no feasible or servable plan."},
                        413: {"model": ErrorOut, "description": f"A request body over {MAX_BODY_BYTES} bytes."},
                        429: {"model": ErrorOut, "description": "Too many applies in progress; see Retry-After."}})
    async def apply(request: ApplyRequest,
                    wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S,
                                        description="Seconds to wait for the changed workflows to be running")) -> Any:
        """Documents equal (in canonical content) to the stored ones change nothing; a changed workflow,
        or one whose zoo or topology changed, is re-planned and rolled over (new pipeline started,
        then the old one stopped). Invalid documents or an infeasible plan change nothing."""
        if pending["applies"] >= MAX_PENDING_APPLIES:
            return _error(429, f"{MAX_PENDING_APPLIES} applies are already in progress: try again shortly",
                          headers={"Retry-After": "2"})
        pending["applies"] += 1
        loop = asyncio.get_running_loop()
        files = [(f.name, f.text) for f in request.files]
        try:
            documents = await loop.run_in_executor(parsing, parse, files)
            result = await loop.run_in_executor(applying, controller.apply_documents, files, documents)
        finally:
            pending["applies"] -= 1
        settled = running = None
        not_running: list[dict] = []
        changed = [w["name"] for w in result.workflows if w["action"] != "unchanged"]
        if wait > 0 and changed:
            settled = await _settled(controller, changed, wait)
            for name in changed:
                if not controller.running(name):
                    status = await loop.run_in_executor(None, partial(controller.workflow_status, name, events=0))
                    not_running.append({"name": name, "phase": status["phase"], "message": status["message"]})
            running = not not_running
        return {"documents": result.documents, "workflows": result.workflows, "changed": result.changed,
                "settled": settled, "running": running, "not_running": not_running}

    @v1.get("/workflows", response_model=list[WorkflowSummary], summary="Every workflow")
    def workflows() -> list[dict]:
        return controller.list_status()

    @v1.get("/workflows/{name}", response_model=WorkflowStatus, summary="Plan vs actual, per stage and site",
            responses=_NAMED)
    def workflow(name: str) -> dict:
        return controller.workflow_status(name)

    @v1.get("/workflows/{name}/plan", response_model=Plan, summary="The current plan",
            responses=_NAMED)
    def workflow_plan(name: str) -> Any:
        revision = controller.store.revision(name)
        if revision is None:
            raise NotFound(name)
        return revision.plan_model()

    @v1.get("/workflows/{name}/history", response_model=HistoryOut, summary="Revisions and events",
            responses=_NAMED)
    def workflow_history(name: str, limit: int = Query(100, ge=1, le=10_000)) -> dict:
        revisions = controller.store.revisions(name)
        if not revisions:
            raise NotFound(name)
        return {"workflow": name, "revisions": revisions,
                "events": [e.as_dict() for e in controller.store.events(name, limit=limit)]}

    @v1.delete("/workflows/{name}", response_model=DeleteResponse, summary="Tear a workflow down",
               responses=_NAMED)
    async def delete(name: str, wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S,
                                                    description="Seconds to wait for its pipeline to stop")) -> dict:
        await asyncio.get_running_loop().run_in_executor(None, controller.delete, name)
        settled = await _settled(controller, [name], wait) if wait > 0 else None
        return {"name": name, "deleted": True, "settled": settled}

    @v1.get("/documents", response_model=list[DocumentOut], summary="Stored documents")
    def documents() -> list[dict]:
        return [{"kind": d.kind, "name": d.name, "digest": d.digest, "file": d.file, "line": d.line,
                 "updated_at": d.updated_at} for d in controller.store.documents()]

    @v1.get("/events", response_model=list[EventOut], summary="The controller's history", responses=_INVALID)
    def events(limit: int = Query(100, ge=1, le=10_000)) -> list[dict]:
        return [e.as_dict() for e in controller.store.events(limit=limit)]

    app.include_router(v1)
    return app


async def _settled(controller: Controller, names: list[str], timeout_s: float) -> bool:
    """Whether ``names`` settle within ``timeout_s``, waited for without holding a thread (a
    controller without a loop thread reconciles once, synchronously, as :meth:`Controller.wait_settled`)."""
    loop = asyncio.get_running_loop()
    if not controller.looping:
        return await loop.run_in_executor(None, controller.wait_settled, names, timeout_s)
    controller.trigger()
    deadline = loop.time() + timeout_s
    while not await loop.run_in_executor(None, controller.all_settled, names):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))
    return True


class BodyGuard:
    """ASGI middleware: the bearer token of ``/v1`` routes checked before any byte of the body is read,
    then the body read whole into memory, at most ``max_body_bytes`` of it, whether the request
    declares a ``Content-Length`` or streams chunks; past the limit the request is answered 413 at
    once, the rest of the body is read and dropped for up to a second (so that the client, still
    sending, reads the answer instead of a reset), and the application never sees it."""

    def __init__(self, app: Any, *, authorized: Callable[[str | None], bool], refusal: str,
                 max_body_bytes: int) -> None:
        self.app = app
        self.authorized = authorized
        self.refusal = refusal
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        path = scope.get("path", "")
        if (path == "/v1" or path.startswith("/v1/")) and not self.authorized(
                headers.get(b"authorization", b"").decode("latin-1") or None):
            await _respond(send, 401, self.refusal, {"WWW-Authenticate": "Bearer"})
            return
        limit = self.max_body_bytes
        too_big = f"request body over {limit} bytes: apply fewer files at once"
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _respond(send, 413, too_big)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > limit:
                await _respond(send, 413, too_big)
                await _drain(receive, message)
                return
            if not message.get("more_body", False):
                break
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _drain(receive: Callable, message: dict, seconds: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while message.get("more_body", False) and loop.time() < deadline:
        try:
            message = await asyncio.wait_for(receive(), max(0.01, deadline - loop.time()))
        except TimeoutError:
            return
        if message["type"] == "http.disconnect":
            return


async def _respond(send: Callable, status: int, error: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": error, "issues": [], "rejections": []}).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _add_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs``, its files from the ``swagger-ui-bundle`` package (pinned with the
    package; no CDN), behind a Content-Security-Policy that lets the page load nothing from elsewhere."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        raise RuntimeError("--docs needs the swagger-ui-bundle package (pip install swagger-ui-bundle)") from None
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    policy = ("default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
              "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> Any:
        page = get_swagger_ui_html(openapi_url="/openapi.json", title=f"{API_TITLE} (OpenAPI)",
                                   swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs/assets/swagger-ui.css",
                                   swagger_favicon_url="/docs/assets/favicon-32x32.png")
        page.headers["Content-Security-Policy"] = policy
        return page


# --------------------------------------------------------------------------------------------------
# serving


def url_for(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ApiServer:
    """uvicorn in a background thread, on a socket bound before it starts (``port=0`` picks a free
    port, known at once)."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8470, *, log_level: str = "warning") -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.create_server((host, port), family=family, backlog=128)
        self.host = host
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=log_level in ("info", "debug"),
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return url_for(self.host, self.port)

    def start(self, timeout_s: float = 10.0) -> ApiServer:
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="jellybean-api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start on {self.url}")
            time.sleep(0.01)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout_s)
        self.socket.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
