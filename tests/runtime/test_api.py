"""The controller's HTTP API (in-process, with fake pipelines) and the CLI's `apply`, `status`,
`delete` against a real server on a free localhost port; one real `jellybean up` process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from jellybean.cli import main
from jellybean.runtime.api import ApiServer, create_app
from jellybean.runtime.controller import Controller
from jellybean.runtime.state import StateStore, read_controller_info, write_controller_info, write_token
from tests.runtime.test_controller import VQA, Recorder, edited, files_of, sites_of

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def payload(files: list[tuple[str, str]]) -> dict:
    return {"files": [{"name": name, "text": text} for name, text in files]}


@pytest.fixture
def controller(tmp_path: Path) -> Controller:
    recorder = Recorder()
    controller = Controller(StateStore(tmp_path / "state"), pipeline_factory=recorder.factory,
                            site_resources=sites_of, interval_s=0.05)
    controller.recorder = recorder  # type: ignore[attr-defined]
    yield controller
    controller.stop()


@pytest.fixture
def client(controller: Controller):
    pytest.importorskip("httpx")
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*httpx2.*")  # starlette now prefers httpx2 to httpx
        from fastapi.testclient import TestClient

        with TestClient(create_app(controller, TOKEN), raise_server_exceptions=False) as test_client:
            yield test_client


# --------------------------------------------------------------------------------------------------
# the API


def test_token_is_required(client) -> None:
    assert client.get("/v1/workflows").status_code == 401
    wrong = client.get("/v1/workflows", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert "token" in wrong.json()["error"] and TOKEN not in wrong.text
    assert client.get("/v1/workflows", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.post("/v1/apply", json=payload(files_of(VQA))).status_code == 401
    assert client.get("/v1/workflows", headers=AUTH).json() == []
    assert client.get("/healthz").json() == {"status": "ok"}  # liveness needs no token


def test_openapi_lists_the_endpoints(client) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["info"]["title"] == "Jellybean controller"
    paths = doc["paths"]
    for path, method in [("/v1/apply", "post"), ("/v1/workflows", "get"), ("/v1/workflows/{name}", "get"),
                         ("/v1/workflows/{name}", "delete"), ("/v1/workflows/{name}/plan", "get"),
                         ("/v1/workflows/{name}/history", "get"), ("/v1/documents", "get"), ("/v1/events", "get"),
                         ("/v1/controller", "get"), ("/healthz", "get")]:
        assert method in paths[path], (path, method)
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert {"422", "409", "401"} <= set(paths["/v1/apply"]["post"]["responses"])
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404  # off by default


def test_docs_when_on_load_nothing_from_elsewhere(controller: Controller) -> None:
    """`jellybean up --docs`: Swagger UI's files come from the swagger-ui-bundle package, the page
    names no other origin, and its Content-Security-Policy forbids loading from one."""
    import re

    from fastapi.testclient import TestClient

    with TestClient(create_app(controller, TOKEN, docs=True)) as docs:
        page = docs.get("/docs")
        assert page.status_code == 200 and "swagger" in page.text.lower()
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: *'([^']+)'", page.text)
        assert urls and all(u.startswith("/") and not u.startswith("//") for u in urls), urls
        assert "https://" not in page.text and "http://" not in page.text
        policy = page.headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"):
            assert docs.get(asset).status_code == 200


def test_apply_status_plan_history_delete(client, controller: Controller) -> None:
    first = client.post("/v1/apply?wait=10", json=payload(files_of(VQA)), headers=AUTH)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["changed"] and body["settled"] is True
    assert [(w["name"], w["action"], w["generation"]) for w in body["workflows"]] == [("vqa-medium", "created", 1)]
    again = client.post("/v1/apply?wait=10", json=payload(files_of(VQA)), headers=AUTH).json()
    assert not again["changed"] and {d["action"] for d in again["documents"]} == {"unchanged"}

    status = client.get("/v1/workflows/vqa-medium", headers=AUTH).json()
    assert status["phase"] == "Running" and status["generation"] == status["running_generation"] == 1
    assert status["plan"]["cost_per_hour"] == pytest.approx(7.485, abs=1e-3)
    assert {(r["stage"], r["site"]) for r in status["stages"]} >= {("VQA", "cloud"), ("ExtractImageFeature", "edge")}
    assert all(r["replicas_alive"] == r["replicas_planned"] > 0 for r in status["stages"])
    assert status["frames"]["sent"] == 5
    [row] = client.get("/v1/workflows", headers=AUTH).json()
    assert row["name"] == "vqa-medium" and row["phase"] == "Running"

    plan = client.get("/v1/workflows/vqa-medium/plan", headers=AUTH).json()
    assert plan["workflow"] == "vqa-medium" and plan["feasible"] and "from" in plan["links"][0]
    changed = client.post("/v1/apply?wait=10", headers=AUTH,
                          json=payload(edited(files_of(VQA), "workflow.yaml", "accuracy: 56.0", "accuracy: 55.0")))
    assert changed.json()["workflows"][0]["generation"] == 2
    history = client.get("/v1/workflows/vqa-medium/history", headers=AUTH).json()
    assert [r["generation"] for r in history["revisions"]] == [1, 2]
    assert "replaced" in [e["event"] for e in history["events"]]
    docs = client.get("/v1/documents", headers=AUTH).json()
    assert {(d["kind"], d["file"]) for d in docs} == {
        ("ModelZoo", "vqa-medium/zoo.yaml"), ("Topology", "vqa-medium/topology.yaml"),
        ("Workflow", "vqa-medium/workflow.yaml")}
    assert client.get("/v1/controller", headers=AUTH).json()["workflows"] == 1

    deleted = client.delete("/v1/workflows/vqa-medium?wait=10", headers=AUTH)
    assert deleted.json() == {"name": "vqa-medium", "deleted": True, "settled": True}
    assert not controller.recorder.live  # type: ignore[attr-defined]
    missing = client.get("/v1/workflows/vqa-medium", headers=AUTH)
    assert missing.status_code == 404 and "vqa-medium" in missing.json()["error"]
    assert client.delete("/v1/workflows/vqa-medium", headers=AUTH).status_code == 404
    assert [e["event"] for e in client.get("/v1/events", headers=AUTH).json()][-2:] == ["deleted", "stopped"]


def test_bad_document_gives_422_with_located_issues(client, controller: Controller, tmp_path: Path) -> None:
    from jellybean.spec.errors import SpecError
    from jellybean.spec.loader import load_documents

    broken_dir = tmp_path / "broken"
    shutil.copytree(VQA, broken_dir)
    workflow = broken_dir / "workflow.yaml"
    workflow.write_text(workflow.read_text().replace("    rate_per_s: 40.0", "    rate_per_s: fast", 1)
                        .replace("  sources:\n", "  sauces: 1\n  sources:\n", 1))
    files = files_of(broken_dir, prefix="my/broken")
    response = client.post("/v1/apply", json=payload(files), headers=AUTH)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "2 problems in the input" and "Traceback" not in response.text
    lines = workflow.read_text().splitlines()
    located = {(i["file"], i["line"], i["path"]) for i in body["issues"]}
    assert located == {
        ("my/broken/workflow.yaml", next(n for n, t in enumerate(lines, 1) if "rate_per_s: fast" in t),
         "spec.sources[0].rate_per_s"),
        ("my/broken/workflow.yaml", next(n for n, t in enumerate(lines, 1) if "sauces" in t), "spec.sauces")}
    # The same issues the CLI prints for those files (only the file names differ).
    with pytest.raises(SpecError) as local:
        load_documents([broken_dir])
    assert sorted(i["text"].replace("my/broken", str(broken_dir)) for i in body["issues"]) == \
        sorted(str(i) for i in local.value.issues)
    assert controller.store.counts()["documents"] == 0  # nothing stored

    bad_yaml = client.post("/v1/apply", json=payload([("x.yaml", "a: [1, 2\n")]), headers=AUTH).json()
    assert bad_yaml["issues"][0]["file"] == "x.yaml" and "invalid YAML" in bad_yaml["issues"][0]["message"]
    surrogate = client.post("/v1/apply", headers={**AUTH, "Content-Type": "application/json"},
                            content=b'{"files": [{"name": "s.yaml", "text": "a: 1\\nb: \\"\\ud800\\"\\n"}]}')
    assert surrogate.status_code == 422 and surrogate.json()["issues"][0]["line"] == 2


def test_bad_requests_give_errors_not_tracebacks(client) -> None:
    no_files = client.post("/v1/apply", json={"documents": []}, headers=AUTH)
    assert no_files.status_code == 422 and no_files.json()["issues"][0]["path"] == "files"
    not_json = client.post("/v1/apply", content=b"{", headers={**AUTH, "Content-Type": "application/json"})
    assert not_json.status_code == 422 and "error" in not_json.json()
    bad_wait = client.post("/v1/apply?wait=-1", json=payload(files_of(VQA)), headers=AUTH)
    assert bad_wait.status_code == 422 and bad_wait.json()["issues"][0]["file"] == "<request query>"
    huge = client.post("/v1/apply", content=b"{}", headers={**AUTH, "Content-Type": "application/json",
                                                             "Content-Length": str(10**12)})
    assert huge.status_code == 413


def test_infeasible_apply_gives_409(client) -> None:
    response = client.post("/v1/apply", headers=AUTH,
                           json=payload(edited(files_of(VQA), "workflow.yaml", "accuracy: 56.0", "accuracy: 99.0")))
    assert response.status_code == 409
    [rejection] = response.json()["rejections"]
    assert rejection["workflow"] == "vqa-medium" and rejection["reason"] == "infeasible" and rejection["explanation"]


def test_internal_errors_are_one_line(client, controller: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("secret detail")

    monkeypatch.setattr(controller, "list_status", broken)
    response = client.get("/v1/workflows", headers=AUTH)
    assert response.status_code == 500
    assert response.json()["error"].startswith("internal error: RuntimeError") and "secret detail" not in response.text


# --------------------------------------------------------------------------------------------------
# the CLI against a real server on localhost


@pytest.fixture
def served(controller: Controller, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("JELLYBEAN_TOKEN", raising=False)
    state_dir = controller.store.state_dir
    server = ApiServer(create_app(controller, TOKEN), "127.0.0.1", 0).start()
    controller.start()
    write_token(state_dir, TOKEN)
    write_controller_info(state_dir, {"url": server.url, "pid": os.getpid()})
    yield state_dir, server
    server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_cli_apply_status_delete(served, capsys: pytest.CaptureFixture[str]) -> None:
    state_dir, server = served
    code, out, err = run(capsys, "apply", "-f", VQA, "--state-dir", state_dir, "--wait", 10)
    assert code == 0, err
    assert "Workflow vqa-medium: created" in out and "workflow vqa-medium: created, generation 1, plan $7.485/h" in out
    code, out, _ = run(capsys, "apply", "-f", VQA, "--state-dir", state_dir)
    assert code == 0 and "nothing changed" in out and "workflow vqa-medium: unchanged, generation 1" in out

    code, out, _ = run(capsys, "status", "--state-dir", state_dir)
    assert code == 0 and "vqa-medium" in out and "Running" in out and "NAME" in out
    code, out, _ = run(capsys, "status", "vqa-medium", "--state-dir", state_dir)
    assert code == 0
    assert "Workflow vqa-medium: Running (generation 1, running 1)" in out
    assert "ExtractImageFeature" in out and "REPLICAS ALIVE/PLANNED" in out and "Frames: sent 5" in out
    code, out, _ = run(capsys, "status", "vqa-medium", "--controller", server.url, "--state-dir", state_dir,
                       "--format", "json")
    assert code == 0 and json.loads(out)["phase"] == "Running"

    code, out, _ = run(capsys, "delete", "vqa-medium", "--state-dir", state_dir, "--wait", 10)
    assert code == 0 and "workflow vqa-medium: deleted, pipeline stopped" in out
    code, _, err = run(capsys, "delete", "vqa-medium", "--state-dir", state_dir)
    assert code == 1 and "no workflow named 'vqa-medium'" in err
    code, out, _ = run(capsys, "status", "--state-dir", state_dir)
    assert code == 0 and "no workflows" in out


def test_cli_apply_wait_exits_3_when_not_everything_runs(served, controller: Controller,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A start that fails: `apply --wait` says which workflow does not run and why, and exits 3; the
    JSON answer says so too (`running`, `not_running`); `status` shows the last failure, also after
    the workflow recovers, beside the measured figures."""
    state_dir, _ = served
    controller.recorder.fail["vqa-medium"] = 1
    code, out, _ = run(capsys, "apply", "-f", VQA, "--state-dir", state_dir, "--wait", 10)
    assert code == 3
    assert "not all running: see `jellybean status`" in out
    assert "  vqa-medium: Failed: RuntimeError: replica failed to load its model; attempt 1, retrying in" in out
    code, out, _ = run(capsys, "status", "--state-dir", state_dir, "--format", "json")
    [row] = json.loads(out)
    assert row["phase"] == "Failed" and row["last_failure"]["reason"] == "DeployFailed"
    controller.executor.failures.clear()  # the retry is due now
    assert controller.wait_settled(["vqa-medium"], 10) and controller.running("vqa-medium")
    code, out, _ = run(capsys, "status", "--state-dir", state_dir)
    assert "MEASURED" in out and "FRAMES/S" in out and "LOST" in out
    assert "last failure (" in out and "replica failed to load its model" in out
    code, out, _ = run(capsys, "status", "vqa-medium", "--state-dir", state_dir)
    assert "Last failure (DeployFailed, " in out and "attempt 1): RuntimeError: replica failed" in out

    edited_dir = state_dir.parent / "edited"
    shutil.copytree(VQA, edited_dir)
    (edited_dir / "workflow.yaml").write_text((edited_dir / "workflow.yaml").read_text().replace(
        "accuracy: 56.0", "accuracy: 55.0"))
    controller.recorder.fail["vqa-medium"] = 1
    code, out, _ = run(capsys, "apply", "-f", edited_dir, "--state-dir", state_dir, "--wait", 10, "--format", "json")
    answer = json.loads(out)
    assert code == 3 and answer["running"] is False and answer["settled"] is True
    assert [w["name"] for w in answer["not_running"]] == ["vqa-medium"]
    assert answer["not_running"][0]["phase"] == "Failed"
    assert "stop-first" in answer["not_running"][0]["message"]


def test_cli_invalid_input_exits_2_with_the_issues(served, capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path) -> None:
    state_dir, _ = served
    broken = tmp_path / "broken"
    shutil.copytree(VQA, broken)
    (broken / "workflow.yaml").write_text((broken / "workflow.yaml").read_text().replace(
        "    rate_per_s: 40.0", "    rate_per_s: fast", 1))
    code, _, local = run(capsys, "validate", "-f", broken)
    assert code == 2
    code, out, err = run(capsys, "apply", "-f", broken, "--state-dir", state_dir)
    assert code == 2 and out == ""
    assert err == local  # the same file:line: field: message lines as `jellybean validate`
    assert f"{broken / 'workflow.yaml'}:" in err and "spec.sources[0].rate_per_s" in err
    code, _, err = run(capsys, "apply", "-f", tmp_path / "missing", "--state-dir", state_dir)
    assert code == 2 and "no such file or folder" in err

    code, _, err = run(capsys, "apply", "-f", VQA.parent / "vqa-medium", "--state-dir", state_dir, "--format", "json")
    assert code == 0
    infeasible = tmp_path / "infeasible"
    shutil.copytree(VQA, infeasible)
    (infeasible / "workflow.yaml").write_text((infeasible / "workflow.yaml").read_text().replace(
        "accuracy: 56.0", "accuracy: 99.0"))
    code, _, err = run(capsys, "apply", "-f", infeasible, "--state-dir", state_dir)
    assert code == 1 and "no plan that can be served for vqa-medium" in err and "infeasible" in err


def test_cli_without_a_controller(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    monkeypatch.delenv("JELLYBEAN_TOKEN", raising=False)
    code, _, err = run(capsys, "status", "--state-dir", tmp_path)
    assert code == 1 and "start one with `jellybean up`" in err
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    write_token(tmp_path, "x")
    code, _, err = run(capsys, "apply", "-f", VQA, "--controller", f"http://127.0.0.1:{port}", "--state-dir", tmp_path)
    assert code == 1 and f"no controller at http://127.0.0.1:{port}: start one with `jellybean up`" in err
    code, _, err = run(capsys, "status", "--controller", "ftp://x", "--state-dir", tmp_path)
    assert code == 2


def test_cli_wrong_token(served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    state_dir, _ = served
    monkeypatch.setenv("JELLYBEAN_TOKEN", "not-the-token-xyz")
    code, _, err = run(capsys, "status", "--state-dir", state_dir)
    assert code == 1 and "refused the token" in err and "not-the-token-xyz" not in err


# --------------------------------------------------------------------------------------------------
# a real `jellybean up`


def test_up_serves_until_sigterm(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JELLYBEAN_TOKEN", raising=False)
    state_dir = tmp_path / "state"
    exe = Path(sys.executable).parent / "jellybean"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "jellybean"]
    proc = subprocess.Popen([*command, "up", "--state-dir", str(state_dir), "--port", "0", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "RAY_ADDRESS": ""})
    try:
        deadline = time.monotonic() + 30
        while read_controller_info(state_dir) is None:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "jellybean up did not start"
            time.sleep(0.05)
        info = read_controller_info(state_dir)
        assert info["url"].startswith("http://127.0.0.1:") and info["pid"] == proc.pid
        token_file = state_dir / "token"
        assert (token_file.stat().st_mode & 0o777) == 0o600 and len(token_file.read_text().strip()) >= 32

        code, out, _ = run(capsys, "status", "--state-dir", state_dir)
        assert code == 0 and "no workflows" in out
        # The real data plane is asked whether vqa-medium can be served: its zoo names no loaders.
        code, _, err = run(capsys, "apply", "-f", VQA, "--state-dir", state_dir)
        assert code == 1 and "not-servable" in err
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and token_file.read_text().strip() not in out + err
    assert read_controller_info(state_dir) is None  # it cleaned up after itself
