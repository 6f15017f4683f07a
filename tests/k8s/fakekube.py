"""A small API server in memory for the operator's tests: it holds recorded objects (tests/k8s/recorded/,
shaped exactly as a real API server sends them), assigns resourceVersions, uids and generations as the
server does (a spec change bumps the generation; status and metadata patches do not; deleting an
object with finalizers sets deletionTimestamp and bumps the generation), answers merge patches with
the resourceVersion precondition (409), keeps a watch event history per kind and, once compacted,
answers a watch from an older resourceVersion with the recorded 410 Gone event. Every call is
appended to ``log``, which the tests share with the fake pipelines to check the order of effects."""

from __future__ import annotations

import copy
import functools
import json
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

RECORDED = Path(__file__).resolve().parent / "recorded"
NAMESPACE = "edge-ai"
API_VERSION = "jellybean.io/v1alpha1"


def recorded(name: str):
    return json.loads((RECORDED / name).read_text())


def apply_merge(target: dict, patch: dict) -> None:
    """RFC 7386 JSON merge patch, in place."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            apply_merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class Conflict(Exception):
    """409 Conflict: the object changed since it was read (a stale ``metadata.resourceVersion``)."""


def locked(method):
    """One call at a time: the HTTP server's threads, the test's and the operator's share the fake."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return call


class FakeKubeApi:
    def __init__(self, log: list | None = None, namespace: str = NAMESPACE) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)  # notified on every event (long watches wait on it)
        self.events: list[dict] = []  # Kubernetes Events the operator posted
        self.namespace = namespace
        self.objects: dict[str, dict[str, dict]] = defaultdict(dict)
        self.history: dict[str, list[tuple[int, dict]]] = defaultdict(list)
        self.compacted: dict[str, int] = defaultdict(int)
        self.version = 60000
        self.log = log if log is not None else []
        self.conflicts = 0  # metadata patches still to answer with 409

    # --- the server's side ------------------------------------------------------------------------------
    def _bump(self) -> str:
        self.version += 1
        return str(self.version)

    def _emit(self, kind: str, event_type: str, obj: dict) -> None:
        event = {"type": event_type, "object": copy.deepcopy(obj)}
        self.history[kind].append((int(obj["metadata"]["resourceVersion"]), event))
        self.changed.notify_all()

    @locked
    def load(self, kind: str, obj: dict) -> dict:
        """Store a recorded object as it is (it existed before the operator started: no event)."""
        obj = copy.deepcopy(obj)
        self.objects[kind][obj["metadata"]["name"]] = obj
        return obj

    @locked
    def create(self, kind: str, obj: dict) -> dict:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.update({"uid": str(uuid.uuid4()), "resourceVersion": self._bump(), "generation": 1,
                     "creationTimestamp": "2024-05-21T09:00:00Z"})
        if kind != "Node":
            meta["namespace"] = self.namespace
        meta.pop("deletionTimestamp", None)
        obj.pop("status", None)
        self.objects[kind][meta["name"]] = obj
        self._emit(kind, "ADDED", obj)
        return obj

    @locked
    def update_spec(self, kind: str, name: str, change) -> dict:
        obj = self.objects[kind][name]
        before = copy.deepcopy(obj["spec"])
        change(obj["spec"])
        if obj["spec"] != before:
            obj["metadata"]["generation"] += 1
            obj["metadata"]["resourceVersion"] = self._bump()
            self._emit(kind, "MODIFIED", obj)
        return obj

    @locked
    def update_metadata(self, kind: str, name: str, patch: dict) -> dict:
        """A change of labels or annotations (``kubectl label``): no new generation."""
        obj = self.objects[kind][name]
        apply_merge(obj["metadata"], patch)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit(kind, "MODIFIED", obj)
        return obj

    @locked
    def delete(self, kind: str, name: str) -> None:
        obj = self.objects[kind][name]
        meta = obj["metadata"]
        if meta.get("finalizers"):
            meta["deletionTimestamp"] = "2024-05-21T09:30:00Z"
            meta["deletionGracePeriodSeconds"] = 0
            meta["generation"] += 1
            meta["resourceVersion"] = self._bump()
            self._emit(kind, "MODIFIED", obj)
        else:
            del self.objects[kind][name]
            meta["resourceVersion"] = self._bump()
            self._emit(kind, "DELETED", obj)

    @locked
    def replay(self, kind: str, events: list[dict]) -> None:
        """Recorded watch events happen now: stored, and queued for the watch (with new resourceVersions)."""
        for event in events:
            obj = copy.deepcopy(event["object"])
            obj["metadata"]["resourceVersion"] = self._bump()
            if event["type"] == "DELETED":
                self.objects[kind].pop(obj["metadata"]["name"], None)
            else:
                self.objects[kind][obj["metadata"]["name"]] = obj
            self._emit(kind, event["type"], obj)

    @locked
    def compact(self, kind: str) -> None:
        """etcd compaction: a watch from any resourceVersion seen so far gets 410 Gone (and open
        watches of the kind end)."""
        self.compacted[kind] = self.version + 1
        self.changed.notify_all()

    # --- KubeApi ---------------------------------------------------------------------------------------
    @locked
    def list(self, kind: str, namespace: str) -> dict:
        self.log.append(("list", kind))
        return {"apiVersion": API_VERSION, "kind": f"{kind}List",
                "metadata": {"continue": "", "resourceVersion": str(self.version)},
                "items": [copy.deepcopy(o) for _, o in sorted(self.objects[kind].items())]}

    @locked
    def list_nodes(self) -> dict:
        self.log.append(("list", "Node"))
        return {"kind": "NodeList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.version)},
                "items": [copy.deepcopy(o) for _, o in sorted(self.objects["Node"].items())]}

    def watch(self, kind: str, namespace: str, resource_version: str, timeout_s: float):
        self.log.append(("watch", kind, resource_version))
        if int(resource_version or 0) < self.compacted[kind]:
            yield copy.deepcopy(recorded("node-events.json")["gone"][0])
            return
        sent = 0
        for version, event in list(self.history[kind]):
            if version > int(resource_version or 0):
                sent += 1
                yield copy.deepcopy(event)
        if not sent:  # a real watch blocks until something happens or it times out
            time.sleep(min(timeout_s, 0.02))

    @locked
    def get(self, kind: str, namespace: str, name: str) -> dict | None:
        self.log.append(("get", kind, name))
        obj = self.objects[kind].get(name)
        return copy.deepcopy(obj) if obj is not None else None

    @locked
    def patch_status(self, kind: str, namespace: str, name: str, status: dict) -> dict:
        self.log.append(("patch_status", name, copy.deepcopy(status)))
        obj = self.objects[kind][name]
        before = copy.deepcopy(obj.get("status") or {})
        after = copy.deepcopy(before)
        apply_merge(after, status)
        if after != before:
            obj["status"] = after
            obj["metadata"]["resourceVersion"] = self._bump()
            self._emit(kind, "MODIFIED", obj)
        return copy.deepcopy(obj)

    @locked
    def patch_metadata(self, kind: str, namespace: str, name: str, metadata: dict) -> dict | None:
        self.log.append(("patch_metadata", name, copy.deepcopy(metadata)))
        obj = self.objects[kind].get(name)
        if obj is None:
            return None
        expected = metadata.get("resourceVersion")
        if self.conflicts > 0 or (expected is not None and expected != obj["metadata"]["resourceVersion"]):
            self.conflicts = max(0, self.conflicts - 1)
            raise Conflict("the object has been modified; please apply your changes to the latest version")
        apply_merge(obj["metadata"], {k: v for k, v in metadata.items() if k != "resourceVersion"})
        obj["metadata"]["resourceVersion"] = self._bump()
        if obj["metadata"].get("deletionTimestamp") and not obj["metadata"].get("finalizers"):
            del self.objects[kind][name]
            self._emit(kind, "DELETED", obj)
        else:
            self._emit(kind, "MODIFIED", obj)
        return copy.deepcopy(obj)

    @locked
    def json_patch(self, kind: str, name: str, ops: list[dict], *, status: bool = False) -> dict | None:
        """A JSON patch (RFC 6902; kopf guards its finalizer changes with a ``test`` of the
        resourceVersion): applied to the object (to its status only, through the subresource).
        Raises ``jsonpatch.JsonPatchTestFailed`` when a test fails (the server's 422)."""
        import jsonpatch

        obj = self.objects[kind].get(name)
        if obj is None:
            return None
        self.log.append(("json_patch", name, copy.deepcopy(ops)))
        patched = jsonpatch.apply_patch(obj, ops)
        if status:
            patched = {**copy.deepcopy(obj), "status": patched.get("status") or {}}
        else:  # the object's patch changes neither its spec nor its status (the subresource's)
            for key in ("spec", "status"):
                if key in obj:
                    patched[key] = copy.deepcopy(obj[key])
                else:
                    patched.pop(key, None)
        if patched == obj:
            return copy.deepcopy(obj)
        patched["metadata"]["resourceVersion"] = self._bump()
        self.objects[kind][name] = patched
        if patched["metadata"].get("deletionTimestamp") and not patched["metadata"].get("finalizers"):
            del self.objects[kind][name]
            self._emit(kind, "DELETED", patched)
        else:
            self._emit(kind, "MODIFIED", patched)
        return copy.deepcopy(patched)

    def post_event(self, namespace: str, event: dict) -> dict:
        """POST /api/v1/namespaces/{ns}/events (kopf reports through Kubernetes Events)."""
        event = copy.deepcopy(event)
        event.setdefault("metadata", {})["resourceVersion"] = self._bump()
        self.events.append(event)
        self.log.append(("event", (event.get("involvedObject") or {}).get("name"), event.get("reason"),
                         event.get("message")))
        return event

    def events_history(self, kind: str, after: int) -> list[dict]:
        with self.lock:
            return [copy.deepcopy(e) for v, e in self.history[kind] if v > after]

    # --- for the assertions ----------------------------------------------------------------------------
    def calls(self, *kinds: str) -> list[tuple]:
        return [c for c in self.log if c[0] in kinds]

    def status(self, name: str, kind: str = "InferenceWorkflow") -> dict:
        return self.objects[kind][name].get("status") or {}
