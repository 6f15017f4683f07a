"""The operator's HTTP endpoints (FastAPI; served by :class:`jellybean.runtime.api.ApiServer`):

=================  ====================================================================
``GET /healthz``   liveness: 200 while the reconcile loop turns, 503 once it has stalled
``GET /readyz``    readiness: 200 once kopf watches (its ready flag), else 503
``GET /v1/operator`` what the operator sees (watches, workflows, phases); needs
                   ``Authorization: Bearer $JELLYBEAN_TOKEN`` and exists only when a token is set
=================  ====================================================================
"""

from __future__ import annotations

import secrets

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jellybean.k8s.operator import Operator

#: The loop is declared stalled after this long without a turn: longer than a plan (the solver's
#: time limit) plus a pipeline's start, so a slow reconcile is not mistaken for a hung one.
LIVENESS_S = 600.0


def create_app(operator: Operator, token: str | None = None, *, liveness_s: float = LIVENESS_S) -> FastAPI:
    app = FastAPI(title="Jellybean operator", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        stalled = operator.clock() - operator.heartbeat
        if stalled > liveness_s:
            return JSONResponse({"status": "stalled", "seconds": round(stalled)}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        if not operator.synced():
            return JSONResponse({"status": "syncing"}, status_code=503)
        return JSONResponse({"status": "ready"})

    if token:
        bearer = HTTPBearer(auto_error=False)

        @app.get("/v1/operator")
        def describe(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> JSONResponse:
            if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
                return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return JSONResponse(operator.describe())

    return app
