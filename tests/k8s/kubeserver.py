"""The in-memory API server of fakekube.py behind real HTTP on 127.0.0.1, speaking the Kubernetes REST
paths the operator's client uses, so that the operator runs its real client code (``ClientKubeApi`` on
the ``kubernetes`` package: list, watch streams, get, merge patches of the object and of its status
subresource, 404, 409, 410). Every request is recorded as the authorization attributes the API server
would check against RBAC: (API group, resource[/subresource], verb, namespace).

Paths served:

- ``/apis/jellybean.io/v1alpha1/namespaces/{ns}/{plural}``: ``list``, or ``watch`` with ``?watch=true``
- ``/apis/jellybean.io/v1alpha1/namespaces/{ns}/{plural}/{name}``: ``get``, ``patch`` (metadata)
- ``/apis/jellybean.io/v1alpha1/namespaces/{ns}/{plural}/{name}/status``: ``patch``
- ``/api/v1/nodes``: ``list``, or ``watch``
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from jellybean.k8s.names import GROUP, KINDS, VERSION
from tests.k8s.fakekube import FakeKubeApi

_CUSTOM = re.compile(rf"^/apis/{re.escape(GROUP)}/{VERSION}/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                     r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?$")
_PLURAL_KIND = {plural: kind for kind, (plural, _, _) in KINDS.items()}


@dataclass(frozen=True)
class Attributes:
    """What RBAC authorizes for one request."""

    group: str
    resource: str  # "inferenceworkflows" or "inferenceworkflows/status"
    verb: str
    namespace: str | None


class KubeServer:
    """``with KubeServer(fake) as server:`` serves ``fake`` at ``server.url``; ``server.requests``
    holds the :class:`Attributes` of every request, in order."""

    def __init__(self, fake: FakeKubeApi) -> None:
        self.fake = fake
        self.requests: list[Attributes] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer._serve(self, "GET")

            def do_PATCH(self) -> None:  # noqa: N802
                outer._serve(self, "PATCH")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> KubeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _record(self, attributes: Attributes) -> None:
        with self._lock:
            self.requests.append(attributes)

    # --- HTTP -----------------------------------------------------------------------------------------
    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _status(code: int, reason: str, message: str) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                "reason": reason, "code": code}

    def _stream(self, handler: BaseHTTPRequestHandler, events) -> None:  # noqa: ANN001
        """A watch response: one JSON event per line, chunked, ended when the fake has nothing more."""
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for event in events:
            line = json.dumps(event).encode() + b"\n"
            handler.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        from jellybean.k8s.operator import Conflict

        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        watching = query.get("watch") in ("true", "1", "True")
        body = None
        if method == "PATCH":
            length = int(handler.headers.get("Content-Length") or 0)
            body = json.loads(handler.rfile.read(length) or b"{}")
        if parts.path == "/api/v1/nodes":
            self._record(Attributes("", "nodes", "watch" if watching else "list", None))
            if watching:
                self._stream(handler, self.fake.watch("Node", "", query.get("resourceVersion", ""),
                                                      float(query.get("timeoutSeconds", 1))))
            else:
                self._send(handler, 200, self.fake.list_nodes())
            return
        match = _CUSTOM.match(parts.path)
        if match is None or match["plural"] not in _PLURAL_KIND:
            self._send(handler, 404, self._status(404, "NotFound", f"no route {parts.path}"))
            return
        ns, plural, name = match["ns"], match["plural"], match["name"]
        kind = _PLURAL_KIND[plural]
        resource = plural + ("/status" if match["status"] else "")
        if name is None:
            self._record(Attributes(GROUP, resource, "watch" if watching else "list", ns))
            if watching:
                self._stream(handler, self.fake.watch(kind, ns, query.get("resourceVersion", ""),
                                                      float(query.get("timeoutSeconds", 1))))
            else:
                self._send(handler, 200, self.fake.list(kind, ns))
            return
        if method == "GET":
            self._record(Attributes(GROUP, resource, "get", ns))
            found = self.fake.get(kind, ns, name)
            self._send(handler, 200, found) if found is not None else self._send(
                handler, 404, self._status(404, "NotFound", f'{plural} "{name}" not found'))
            return
        self._record(Attributes(GROUP, resource, "patch", ns))
        if handler.headers.get("Content-Type") != "application/merge-patch+json":
            self._send(handler, 415, self._status(415, "UnsupportedMediaType", "merge patches only"))
            return
        if match["status"]:
            self._send(handler, 200, self.fake.patch_status(kind, ns, name, body.get("status") or {}))
            return
        before = self.fake.objects[kind].get(name)
        if before is None:
            self._send(handler, 404, self._status(404, "NotFound", f'{plural} "{name}" not found'))
            return
        before = json.loads(json.dumps(before))
        try:
            updated = self.fake.patch_metadata(kind, ns, name, body.get("metadata") or {})
        except Conflict as exc:
            self._send(handler, 409, self._status(409, "Conflict", str(exc)))
            return
        if updated is None:  # the last finalizer went: the server answers with the object's last state
            before["metadata"]["finalizers"] = []
            updated = before
        self._send(handler, 200, updated)
