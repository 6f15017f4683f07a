"""The in-memory API server of fakekube.py behind real HTTP on 127.0.0.1, speaking the Kubernetes REST
paths the operator's client uses, so that the operator runs its real client code (``ClientKubeApi`` on
the ``kubernetes`` package: list, watch streams, get, merge patches of the object and of its status
subresource, 404, 409, 410). Every request is recorded as the authorization attributes the API server
would check against RBAC: (API group, resource[/subresource], verb, namespace).

With ``linger_s`` a watch stays open (as a real one does, until its ``timeoutSeconds``), sending each
new event as it happens; without it a watch ends once the fake has nothing more (the synchronous tests'
pace). kopf's start-up reads the discovery documents (``/version``, ``/api``, ``/apis``, ...: public
on a real server, recorded as ``nonresource``) and it reports through Events (``POST
/api/v1/namespaces/{ns}/events``).

Paths served:

- ``/apis/jellybean.io/v1alpha1/namespaces/{ns}/{plural}``: ``list``, or ``watch`` with ``?watch=true``
- ``/apis/jellybean.io/v1alpha1/namespaces/{ns}/{plural}/{name}``: ``get``, ``patch`` (metadata)
- ``/apis/jellybean.io/v1alpha1/namespaces/{ns}/{plural}/{name}/status``: ``patch``
- ``/api/v1/nodes``: ``list``, or ``watch``
- ``/api/v1/namespaces/{ns}/events``: ``create``
- discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/jellybean.io/v1alpha1``
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from jellybean.k8s.names import GROUP, KINDS, VERSION
from tests.k8s.fakekube import Conflict, FakeKubeApi

_CUSTOM = re.compile(rf"^/apis/{re.escape(GROUP)}/{VERSION}/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                     r"(?:/(?P<name>[^/]+)(?P<status>/status)?)?$")
_PLURAL_KIND = {plural: kind for kind, (plural, _, _) in KINDS.items()}


@dataclass(frozen=True)
class Attributes:
    """What RBAC authorizes for one request."""

    group: str
    resource: str  # "inferenceworkflows" or "inferenceworkflows/status" (a path for nonresource requests)
    verb: str
    namespace: str | None
    nonresource: bool = False  # discovery documents: every authenticated client may read them


class _Since:
    """A watch's event iterator, remembering the resourceVersion it started from."""

    def __init__(self, events, since: str) -> None:
        self.events = events
        self.since = int(since or 0)

    def __iter__(self):
        return iter(self.events)


_EVENTS = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/events$")


def _resources() -> list[dict]:
    out = []
    for kind, (plural, singular, short) in KINDS.items():
        out.append({"name": plural, "singularName": singular, "namespaced": True, "kind": kind,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": short})
        out.append({"name": f"{plural}/status", "singularName": "", "namespaced": True, "kind": kind,
                    "verbs": ["get", "patch", "update"]})
    return out


#: What a real API server answers on its discovery paths (abridged to what the operator uses).
DISCOVERY = {
    "/version": {"major": "1", "minor": "30", "gitVersion": "v1.30.0", "platform": "linux/amd64"},
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "10.0.0.1:6443"}]},
    "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["no"]},
        {"name": "events", "singularName": "event", "namespaced": True, "kind": "Event",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ev"]},
        {"name": "namespaces", "singularName": "namespace", "namespaced": False, "kind": "Namespace",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["ns"]}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": GROUP, "versions": [{"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}],
         "preferredVersion": {"groupVersion": f"{GROUP}/{VERSION}", "version": VERSION}},
        {"name": "apiextensions.k8s.io", "versions": [{"groupVersion": "apiextensions.k8s.io/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "apiextensions.k8s.io/v1", "version": "v1"}}]},
    "/apis/apiextensions.k8s.io/v1": {
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apiextensions.k8s.io/v1", "resources": [
            {"name": "customresourcedefinitions", "singularName": "customresourcedefinition", "namespaced": False,
             "kind": "CustomResourceDefinition", "verbs": ["create", "delete", "get", "list", "patch", "update",
                                                          "watch"], "shortNames": ["crd", "crds"]}]},
    f"/apis/{GROUP}/{VERSION}": {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{GROUP}/{VERSION}",
                                 "resources": _resources()},
}


class KubeServer:
    """``with KubeServer(fake) as server:`` serves ``fake`` at ``server.url``; ``server.requests``
    holds the :class:`Attributes` of every request, in order."""

    def __init__(self, fake: FakeKubeApi, *, linger_s: float = 0.0) -> None:
        self.fake = fake
        self.linger_s = linger_s
        self.closing = threading.Event()
        self.requests: list[Attributes] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                outer._serve(self, "GET")

            def do_PATCH(self) -> None:
                outer._serve(self, "PATCH")

            def do_POST(self) -> None:
                outer._serve(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> KubeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        with self.fake.changed:
            self.fake.changed.notify_all()
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

    def _stream(self, handler: BaseHTTPRequestHandler, events, kind: str = "",
                timeout_s: float = 0.0) -> None:
        """A watch response: one JSON event per line, chunked; ended when the fake has nothing more,
        or (``linger_s``) kept open, sending new events, until the watch's timeout."""
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()

        def send(event: dict) -> None:
            line = json.dumps(event).encode() + b"\n"
            handler.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            handler.wfile.flush()

        last = 0
        errored = False
        try:
            for event in events:
                send(event)
                errored = errored or event.get("type") == "ERROR"
                last = max(last, int(((event.get("object") or {}).get("metadata") or {}).get("resourceVersion") or 0))
            if self.linger_s > 0 and kind and not errored:
                deadline = time.monotonic() + min(timeout_s or self.linger_s, self.linger_s)
                last = max(last, int(events.since) if hasattr(events, "since") else last)
                compacted = self.fake.compacted[kind]
                # A compaction ends open watches (as an API server restart would): the client watches
                # again from its last resourceVersion and meets 410 Gone.
                while not self.closing.is_set() and time.monotonic() < deadline \
                        and self.fake.compacted[kind] == compacted:
                    with self.fake.changed:
                        fresh = self.fake.events_history(kind, last)
                        if not fresh:
                            self.fake.changed.wait(min(0.5, max(0.0, deadline - time.monotonic())))
                            fresh = self.fake.events_history(kind, last)
                    for event in fresh:
                        send(event)
                        last = max(last, int(event["object"]["metadata"]["resourceVersion"]))
            handler.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):  # the client went away
            pass

    def _serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        watching = query.get("watch") in ("true", "1", "True")
        body = None
        if method in ("PATCH", "POST"):
            length = int(handler.headers.get("Content-Length") or 0)
            body = json.loads(handler.rfile.read(length) or b"{}")
        if parts.path in DISCOVERY:
            self._record(Attributes("", parts.path, "get", None, nonresource=True))
            self._send(handler, 200, DISCOVERY[parts.path])
            return
        posted = _EVENTS.match(parts.path)
        if posted is not None and method == "POST":
            self._record(Attributes("", "events", "create", posted["ns"]))
            self._send(handler, 201, self.fake.post_event(posted["ns"], body or {}))
            return
        if parts.path == "/api/v1/nodes":
            self._record(Attributes("", "nodes", "watch" if watching else "list", None))
            if watching:
                since = query.get("resourceVersion", "")
                self._stream(handler, _Since(self.fake.watch("Node", "", since, 0.0), since), "Node",
                             float(query.get("timeoutSeconds", 0) or 0))
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
                since = query.get("resourceVersion", "")
                self._stream(handler, _Since(self.fake.watch(kind, ns, since, 0.0 if self.linger_s else 1.0), since),
                             kind, float(query.get("timeoutSeconds", 0) or 0))
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
        if handler.headers.get("Content-Type") == "application/json-patch+json":
            import jsonpatch

            try:
                updated = self.fake.json_patch(kind, name, body, status=bool(match["status"]))
            except jsonpatch.JsonPatchTestFailed as exc:
                self._send(handler, 422, self._status(422, "Invalid", f"the test of a JSON patch failed: {exc}"))
                return
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                self._send(handler, 422, self._status(422, "Invalid", str(exc)))
                return
            if updated is None:
                self._send(handler, 404, self._status(404, "NotFound", f'{plural} "{name}" not found'))
            else:
                self._send(handler, 200, updated)
            return
        if handler.headers.get("Content-Type") != "application/merge-patch+json":
            self._send(handler, 415, self._status(415, "UnsupportedMediaType", "merge or JSON patches only"))
            return
        if match["status"]:
            if self.fake.objects[kind].get(name) is None:
                self._send(handler, 404, self._status(404, "NotFound", f'{plural} "{name}" not found'))
                return
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
