"""The controller's HTTP API (FastAPI: the OpenAPI document is at ``/openapi.json``, browsable at
``/docs``), served by uvicorn.

Every route under ``/v1`` needs ``Authorization: Bearer <token>``, the token ``jellybean up`` wrote to
the state directory (0600); ``/healthz`` and the API's description are public. Errors are JSON
objects ``{"error": ..., "issues": [...], "rejections": [...]}``, never tracebacks:

- 422: invalid documents (or an invalid request body); ``issues`` are the same file:line:field issues
  the CLI prints, ``file`` being the name the client gave the file;
- 409: valid documents, but a workflow has no feasible (or servable) plan; ``rejections`` say why;
- 404: no such workflow; 401: no or a wrong token; 413: a request over the size limit.

Routes:

==========================================  ====================================================
``GET  /healthz``                           liveness (no token)
``GET  /v1/controller``                     the controller: state directory, Ray, counts
``POST /v1/apply?wait=SECONDS``             submit documents (``{"files": [{"name", "text"}]}``)
``GET  /v1/workflows``                      every workflow: phase, generation, cost, replicas
``GET  /v1/workflows/{name}``               plan vs actual per stage and site, frames, events
``GET  /v1/workflows/{name}/plan``          the current Plan (the ``plan --format json`` object)
``GET  /v1/workflows/{name}/history``       revisions (digest, cost, models) and events
``DELETE /v1/workflows/{name}?wait=SECONDS`` tear a workflow down
``GET  /v1/documents``                      stored documents (kind, name, digest, where from)
``GET  /v1/events?limit=N``                 the controller's history
==========================================  ====================================================
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
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
from jellybean.spec.errors import Issue, SpecError, format_path

log = logging.getLogger("jellybean.api")

API_TITLE = "Jellybean controller"
API_VERSION = "v1"
#: A request body may hold a few files of the loader's maximum size.
MAX_BODY_BYTES = 256 * 1024 * 1024
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


class ApplyResponse(BaseModel):
    documents: list[DocumentResult]
    workflows: list[WorkflowResult]
    changed: bool = Field(description="False when every document was already stored as sent: nothing changed.")
    settled: bool | None = Field(default=None, description="With `wait`: whether the changed workflows reached "
                                 "their new state (or failed) in time.")


class StageRow(BaseModel):
    stage: str | None
    site: str | None
    variant: str | None = Field(description="The planned variant.")
    variant_running: str | None = None
    replicas_planned: int
    replicas_alive: int
    rate_planned_per_s: float
    rate_measured_per_s: float | None = None


class PlanSummary(BaseModel):
    strategy: str | None = None
    sharing: str | None = None
    cost_per_hour: float | None = None
    accuracy: float | None = None
    accuracy_target: float | None = None
    latency_ms_p90: float | None = None
    models: dict[str, str] = Field(default_factory=dict)


class EventOut(BaseModel):
    id: int
    at: float
    workflow: str | None
    event: str
    detail: dict[str, Any]


Phase = Literal["Pending", "Starting", "Running", "Updating", "Failed", "Blocked", "Terminating"]


class WorkflowStatus(BaseModel):
    name: str
    phase: Phase
    message: str = ""
    generation: int | None
    digest: str | None
    running_generation: int | None
    running_digest: str | None
    zoo: str | None
    topology: str | None
    applied_at: float | None
    started_at: float | None
    plan: PlanSummary | None
    stages: list[StageRow]
    frames: dict[str, int] | None = Field(description="`sent`, `completed`, `failed`, `lost` (running only).")
    events: list[EventOut]


class WorkflowSummary(BaseModel):
    name: str
    phase: Phase
    message: str = ""
    generation: int | None
    running_generation: int | None
    cost_per_hour: float | None
    accuracy: float | None
    replicas_alive: int
    replicas_planned: int
    applied_at: float | None


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


def create_app(controller: Controller, token: str) -> FastAPI:
    """The API over ``controller``, guarded by ``token`` (compared in constant time)."""
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

    app = FastAPI(title=API_TITLE, version=API_VERSION, description=__doc__.split("\n\n")[0])

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # noqa: ANN001, ANN202 - starlette's signature
        # The token first, before the body is read or parsed: the route's own check (`authorize`,
        # which also documents the scheme) runs only after FastAPI has parsed the body, so without
        # this a client without the token could have up to MAX_BODY_BYTES of JSON parsed, and be
        # told what is wrong with it.
        path = request.url.path
        if (path == "/v1" or path.startswith("/v1/")) and not authorized(request.headers.get("authorization")):
            return _error(401, refusal, headers={"WWW-Authenticate": "Bearer"})
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return _error(413, f"request body over {MAX_BODY_BYTES} bytes: apply fewer files at once")
        return await call_next(request)

    @app.exception_handler(SpecError)
    async def spec_error(_request: Request, exc: SpecError) -> JSONResponse:
        count = len(exc.issues)
        return _error(422, f"{count} problem{'s' if count != 1 else ''} in the input", issues=exc.issues)

    @app.exception_handler(Rejected)
    async def rejected(_request: Request, exc: Rejected) -> JSONResponse:
        names = ", ".join(r.workflow for r in exc.rejections)
        return _error(409, f"no plan that can be served for {names}; nothing was changed", rejections=exc.rejections)

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
                                "the request's schema is at /openapi.json (browsable at /docs)"))
        count = len(issues)
        return _error(422, f"{count} problem{'s' if count != 1 else ''} in the request", issues=issues)

    @app.exception_handler(Exception)
    async def internal(_request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error: %s", type(exc).__name__, exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__} (the controller's log has the details)")

    @app.get("/healthz", tags=["health"], summary="Liveness (no token needed)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)], responses=_ERRORS)

    @v1.get("/controller", response_model=ControllerInfo, summary="The controller: state directory, Ray, counts")
    def controller_info() -> dict:
        return controller.describe()

    @v1.post("/apply", response_model=ApplyResponse, summary="Submit documents (declarative)",
             responses={422: {"model": ErrorOut, "description": "Invalid documents; `issues` locate each problem."},
                        409: {"model": ErrorOut, "description": "A workflow has no feasible or servable plan."},
                        413: {"model": ErrorOut, "description": f"A request body over {MAX_BODY_BYTES} bytes."}})
    def apply(request: ApplyRequest,
              wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S,
                                  description="Seconds to wait for the changed workflows to be running")) -> dict:
        """Documents equal (in canonical content) to the stored ones change nothing; a changed workflow,
        or one whose zoo or topology changed, is re-planned and rolled over (new pipeline started,
        then the old one stopped). Invalid documents or an infeasible plan change nothing."""
        result = controller.apply([(f.name, f.text) for f in request.files])
        settled = None
        changed = [w["name"] for w in result.workflows if w["action"] != "unchanged"]
        if wait > 0 and changed:
            settled = controller.wait_settled(changed, wait)
        return {"documents": result.documents, "workflows": result.workflows, "changed": result.changed,
                "settled": settled}

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
    def delete(name: str, wait: float = Query(0.0, ge=0.0, le=MAX_WAIT_S,
                                              description="Seconds to wait for its pipeline to stop")) -> dict:
        controller.delete(name)
        settled = controller.wait_settled([name], wait) if wait > 0 else None
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
