"""The controller's HTTP API fuzzed from its own OpenAPI document (schemathesis): every operation, with
the token and without, valid and invalid requests (schemathesis' positive and negative modes), and
apply bodies with huge, hostile and broken YAML. No response is a 5xx, every response is one the
document describes (status code, content type, headers, body schema), and none takes long.

The app is built as tests/runtime/test_api.py builds it: fake pipelines, no Ray. It is seeded with
the vqa-medium workflow, so that the fuzzed reads meet a running workflow's state, not only empty lists.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from jellybean.runtime.api import create_app
from jellybean.runtime.controller import Controller
from jellybean.runtime.state import StateStore
from tests.fuzz.test_documents_hostile import (
    BOMB,
    LOCATED,
    SYNTAX,
    characters,
    dump,
    envelopes,
    folder_texts,
    mutations,
    structures,
)
from tests.runtime.test_api import AUTH, TOKEN, payload
from tests.runtime.test_controller import VQA, Recorder, files_of, sites_of

#: A request that takes longer is a hang (the fake pipelines answer at once; nothing here plans for long).
REQUEST_TIMEOUT_S = 20.0
WORKFLOW = "vqa-medium"
FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def excluded(case: schemathesis.Case) -> list:
    """Every built-in check applies, except that an apply valid by the schema may still be refused: the
    schema says a file's text is a string, the loader says which strings are documents (422), and the
    planner which documents can be served (409)."""
    return [positive_data_acceptance] if case.operation.label == "POST /v1/apply" else []


# Schemathesis parametrizes from a schema it has at import (its fixture-based loader does not run on
# this pytest), so the app exists from import; the module's fixture seeds it and stops it.
STATE_DIR = Path(tempfile.mkdtemp(prefix="jellybean-api-fuzz-"))
atexit.register(shutil.rmtree, STATE_DIR, ignore_errors=True)
CONTROLLER = Controller(StateStore(STATE_DIR), pipeline_factory=Recorder().factory, site_resources=sites_of,
                        interval_s=0.05)
APP = create_app(CONTROLLER, TOKEN)
#: Requests with the token: schemathesis leaves the Authorization header to us (it would otherwise send
#: cases without it, or with a wrong one, as negative data, which the token we add makes valid again).
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)
schema.config.generation.update(max_examples=FUZZ.max_examples, deterministic=True, with_security_parameters=False)
#: Requests without the token, or with one schemathesis makes up.
anonymous = schemathesis.openapi.from_asgi("/openapi.json", APP)
anonymous.config.generation.update(max_examples=FUZZ.max_examples, deterministic=True)


@pytest.fixture(scope="module", autouse=True)
def seeded() -> Controller:
    CONTROLLER.apply(files_of(VQA))
    assert CONTROLLER.wait_settled([WORKFLOW], 10)
    yield CONTROLLER
    CONTROLLER.stop()
    CONTROLLER.store.close()


def call(case: schemathesis.Case, headers: dict[str, str] | None) -> schemathesis.Response:
    """The case's request, bounded: a response within REQUEST_TIMEOUT_S or the test fails; never a 5xx,
    and every error the API's one shape (``{"error", "issues", "rejections"}``), never a traceback."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["response"] = case.call(headers=headers, timeout=REQUEST_TIMEOUT_S)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="fuzz-request", daemon=True)
    thread.start()
    thread.join(REQUEST_TIMEOUT_S + 5)
    assert not thread.is_alive(), f"no response within {REQUEST_TIMEOUT_S} s: {case.method} {case.formatted_path}"
    if "error" in outcome:
        raise outcome["error"]
    response = outcome["response"]
    assert response.status_code < 500, response.text[:500]
    assert "Traceback" not in response.text
    if response.status_code >= 400:
        assert set(response.json()) == {"error", "issues", "rejections"}, response.text[:500]
    return response


@schema.parametrize()
@FUZZ
def test_every_operation_with_the_token(case: schemathesis.Case) -> None:
    response = call(case, AUTH)
    case.validate_response(response, excluded_checks=excluded(case), headers=AUTH)


@anonymous.parametrize()
@FUZZ
def test_every_operation_without_the_token(case: schemathesis.Case) -> None:
    response = call(case, None)
    if case.path.startswith("/v1/") and case.method.upper() == case.operation.method.upper():
        # (A method the path does not serve is refused by routing first: 405, checked by schemathesis.)
        assert response.status_code == 401, response.text[:500]
        assert "token" in response.json()["error"] and TOKEN not in response.text
    case.validate_response(response, excluded_checks=excluded(case))


# --------------------------------------------------------------------------------------------------
# the seeded workflow's state, read back: real bodies against the documented schemas

@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/workflows/{name}"), ("GET", "/v1/workflows/{name}/plan"), ("GET", "/v1/workflows/{name}/history"),
    ("GET", "/v1/workflows"), ("GET", "/v1/documents"), ("GET", "/v1/events"), ("GET", "/v1/controller"),
])
def test_a_running_workflow_reads_back_as_documented(method: str, path: str) -> None:
    case = schema[path][method].Case(path_parameters={"name": WORKFLOW} if "{name}" in path else None)
    response = call(case, AUTH)
    assert response.status_code == 200, response.text[:500]
    case.validate_response(response, excluded_checks=excluded(case), headers=AUTH)
    assert WORKFLOW in response.text or path == "/v1/controller"


# --------------------------------------------------------------------------------------------------
# apply with hostile YAML


def edited_files(data: st.DataObject) -> list[tuple[str, str]]:
    """A committed folder's files with one of them broken (or not) the way the document fuzzing breaks them."""
    folder, kind, doc, _path, _how, _value = data.draw(mutations())
    return list(folder_texts(folder, kind, dump(doc)).items())


texts = st.one_of(
    st.text(characters, max_size=300), st.sampled_from(LOCATED + SYNTAX), st.just(""),
    st.builds(lambda value: dump(value), st.one_of(envelopes, structures)),
)
names = st.one_of(st.sampled_from(["a.yaml", "dir/b.yml", "../../etc/passwd", "C:\\x.yaml", " ", "\u00e9.yaml"]),
                  st.text(characters, min_size=1, max_size=40))


@FUZZ
@given(st.lists(st.tuples(names, texts), min_size=1, max_size=3), st.data())
@example([("huge.yaml", "a: " + "x" * 4_000_000 + "\n")], None).via("a 4 MB scalar")
@example([("many.yaml", "- 1\n" * 300_000)], None).via("300,000 values")
@example([("deep.yaml", "[" * 200_000)], None).via("nesting 200,000 deep")
@example([("bomb.yaml", "a: " + BOMB + "\n")], None).via("an alias bomb")
@example([("s.yaml", "a: \ud800\n")], None).via("a lone surrogate")
@example([(name, text) for name, text in files_of(VQA)], None).via("the seeded documents again: unchanged")
def test_apply_with_hostile_yaml(files: list[tuple[str, str]], data: st.DataObject | None) -> None:
    if data is not None and data.draw(st.booleans()):
        files = edited_files(data)
    case = schema["/v1/apply"]["POST"].Case(body=payload(files), media_type="application/json")
    response = call(case, AUTH)
    event(f"status {response.status_code}")
    assert response.status_code in (200, 409, 422), response.text[:500]
    case.validate_response(response, excluded_checks=excluded(case), headers=AUTH)
    if response.status_code == 422:
        body = response.json()
        assert body["issues"] and "Traceback" not in response.text
        sent = {name for name, _ in files}
        for issue in body["issues"]:
            assert issue["message"] and issue["hint"], issue
            if issue["file"].startswith("<request") or issue["message"] == "no documents given":
                continue  # the request itself, or nothing to locate (only empty texts)
            assert issue["file"] in sent, issue
            assert isinstance(issue["line"], int) and issue["line"] >= 1, issue


# --------------------------------------------------------------------------------------------------
# what the fuzzing found, pinned


def test_without_the_token_a_body_is_not_even_parsed() -> None:
    """It was: broken JSON without a token got a 422 saying what was wrong with it (FastAPI parses
    the body before the routes' dependencies run), and any client could have 256 MB parsed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx2.*")  # starlette now prefers httpx2 to httpx
        from fastapi.testclient import TestClient

    client = TestClient(APP, raise_server_exceptions=False)
    response = client.post("/v1/apply", content=b"{", headers={"Content-Type": "application/json"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/apply", content=b"{", headers={**AUTH, "Content-Type": "application/json"}).status_code == 422


def test_a_405_allows_every_method_of_the_path() -> None:
    """It was `Allow: GET` for /v1/workflows/{name}, which DELETE serves too (one route per method)."""
    case = schema["/v1/workflows/{name}"]["GET"].Case(method="OPTIONS", path_parameters={"name": WORKFLOW})
    response = call(case, AUTH)
    assert response.status_code == 405 and response.headers["allow"] == ["DELETE, GET"]
