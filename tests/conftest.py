"""Shared fixtures. One local Ray instance serves every test that needs one (it takes seconds to start)."""

from __future__ import annotations

from pathlib import Path

import pytest

ALL_SITES = ["cloud", "hub", "cam-1", "cam-2", "edge", "device"]


@pytest.fixture(scope="session")
def _ray_session():
    ray = pytest.importorskip("ray")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray_local(_ray_session):
    """A local Ray with 2 CPUs and every site name the tests use as a custom resource; started once
    and kept for the session (a test that needs its own cluster shuts it down; the next use restarts it)."""
    ray = _ray_session
    if not ray.is_initialized():
        from jellybean.runtime.deployment import SITE_CAPACITY, site_resource

        ray.init(num_cpus=2, resources={site_resource(s): SITE_CAPACITY for s in ALL_SITES},
                 include_dashboard=False, log_to_driver=False)
    return ray


@pytest.fixture(scope="session")
def quick_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits zoo trained quickly (a fifth of the epochs and data): seconds, for contract tests."""
    pytest.importorskip("torch")
    from jellybean.zoo.build import build_zoo

    cache = tmp_path_factory.mktemp("zoo-cache")
    build_zoo(cache, quick=True)
    return cache


@pytest.fixture(scope="session")
def digits_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits zoo exactly as `jellybean zoo build` trains it (about 40 s on 2 cores), so that
    measured accuracy can be held against the profile in workflows/digits/zoo.yaml."""
    pytest.importorskip("torch")
    from jellybean.zoo.build import build_zoo

    cache = tmp_path_factory.mktemp("zoo-full")
    build_zoo(cache)
    return cache
