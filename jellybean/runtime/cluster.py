"""Ray for the controller and the operator: embedded (a local single-node Ray started here) or joined
(``address``: an existing cluster whose nodes advertise their ``site:<name>`` resources).

Site resources without a restart. Ray fixes a node's resources when the node starts; Ray's own
autoscaler changes a running node's resources in place through the GCS (``resize_raylet_resource_
instances``, what it uses for in-place pod resizes), and that call also adds custom resources the node
did not have. :meth:`RayCluster.grow` adds the ``site:<name>`` resources of newly applied topologies
that way, so the actors of running workflows are never touched. Where the call is missing (another Ray
version), it says so and the new workflow waits, blocked with that message; nothing running is stopped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


class GrowError(Exception):
    """The running Ray cannot gain resources in place."""


class RayCluster:
    """Ray, embedded (``address=None``) or joined (``address``)."""

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None,
                 namespace: str | None = "jellybean") -> None:
        self.address = address
        self.embedded = address is None
        self.num_cpus = num_cpus or os.cpu_count() or 1
        self.namespace = namespace
        self._resources: dict[str, float] | None = None
        self._connected = False

    def offered(self) -> dict[str, float] | None:
        if not self._connected:
            return None
        if self.embedded:
            return dict(self._resources or {})
        import ray

        return {k: v for k, v in ray.cluster_resources().items() if k.startswith("site:")}

    def start(self, resources: Mapping[str, float]) -> None:
        import ray

        if self.embedded:
            # address="local" starts a new local Ray even where RAY_ADDRESS is set. Token
            # authentication stays on (Ray's default for new local clusters), with a token file only
            # its owner can read (jellybean.runtime.localray).
            from jellybean.runtime.localray import private_ray_token

            private_ray_token()
            ray.init(address="local", num_cpus=self.num_cpus, resources=dict(resources), include_dashboard=False,
                     log_to_driver=False, namespace=self.namespace)
            self._resources = dict(resources)
        else:
            ray.init(address=self.address, log_to_driver=False, namespace=self.namespace)
        self._connected = True

    def grow(self, resources: Mapping[str, float]) -> None:
        """Add ``resources`` (custom resources such as ``site:hub-3``) to the embedded node, in place:
        running actors keep running."""
        if not self.embedded:
            raise GrowError("a joined cluster's nodes advertise their own sites")
        import ray

        try:
            from ray._private.worker import global_worker

            gcs = global_worker.gcs_client
            resize = gcs.resize_raylet_resource_instances
        except (ImportError, AttributeError) as exc:
            raise GrowError(f"this Ray ({ray.__version__}) cannot add resources to a running node ({exc}); "
                            "restart `jellybean up` to serve the new sites") from None
        node = next(n for n in ray.nodes() if n.get("Alive"))
        total = resize(node["NodeID"], {k: float(v) for k, v in resources.items()})
        added = {k: float(v) for k, v in resources.items()}
        if isinstance(total, Mapping):
            short = sorted(k for k, v in added.items() if float(total.get(k, 0.0)) + 1e-9 < v)
            if short:
                raise GrowError(f"Ray did not add {', '.join(short)} to the running node")
        self._resources = {**(self._resources or {}), **added}

    def shutdown(self) -> None:
        if self._connected:
            import ray

            ray.shutdown()
            self._connected = False

    def describe(self) -> dict:
        return {"mode": "embedded" if self.embedded else "external", "address": self.address,
                "connected": self._connected, "num_cpus": self.num_cpus if self.embedded else None,
                "resources": self.offered() if self._connected else None}
