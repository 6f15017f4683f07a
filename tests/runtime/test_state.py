"""The state store: canonical digests, a round trip through SQLite, idempotent opening, history kept
on delete, private files."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from jellybean.optimizer import plan as make_plan
from jellybean.runtime.state import (
    DamagedRecord, NewDocument, NewEvent, NewRevision, StateError, StateStore, bundle_bodies, bundle_digest, default_state_dir,
    digest_of, document_body, read_controller_info, read_token, remove_controller_info, write_controller_info,
    write_token,
)
from jellybean.spec.bundle import load_bundle
from jellybean.spec.loader import load_text

ROOT = Path(__file__).resolve().parents[2]
VQA = ROOT / "workflows" / "vqa-medium"


@pytest.fixture(scope="module")
def vqa():
    bundle = load_bundle([VQA])
    return bundle, make_plan(bundle, baselines=False)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_digest_is_of_content_not_formatting() -> None:
    text = (VQA / "workflow.yaml").read_text()
    [a] = load_text(text, "a.yaml")
    reformatted = "# another comment\n" + text.replace("  labels: {}\n", "").replace("rate_per_s: 40.0", "rate_per_s: 40")
    [b] = load_text(reformatted, "b.yaml")
    assert digest_of(document_body(a.model)) == digest_of(document_body(b.model))
    [c] = load_text(text.replace("accuracy: 56.0", "accuracy: 56.5"), "c.yaml")
    assert digest_of(document_body(a.model)) != digest_of(document_body(c.model))


def test_round_trip(tmp_path: Path, vqa) -> None:
    bundle, plan = vqa
    store = StateStore(tmp_path / "state")
    bodies = bundle_bodies(bundle)
    digest = bundle_digest(bodies)
    files = [("vqa/workflow.yaml", (VQA / "workflow.yaml").read_text())]
    docs = [NewDocument(kind, bodies[kind]["metadata"]["name"], digest_of(bodies[kind]), bodies[kind],
                        "vqa/workflow.yaml", 18) for kind in bodies]
    generations = store.commit_apply(
        files, docs, [NewRevision("vqa-medium", digest, bodies, plan.model_dump(mode="json", by_alias=True),
                                  "vqa-medium", "vqa-medium")], [NewEvent("vqa-medium", "applied", {"action": "created"})])
    assert generations == {"vqa-medium": 1}
    store.close()

    store = StateStore(tmp_path / "state")  # reopening is idempotent and loses nothing
    assert store.desired() == {"vqa-medium": digest}
    revision = store.revision("vqa-medium")
    assert revision.generation == 1 and revision.digest == digest
    rebuilt = revision.bundle()
    assert (rebuilt.workflow, rebuilt.zoo, rebuilt.topology) == (bundle.workflow, bundle.zoo, bundle.topology)
    assert revision.plan_model() == plan
    assert bundle_digest(bundle_bodies(rebuilt)) == digest
    stored = store.document("Workflow", "vqa-medium")
    assert stored.model() == bundle.workflow and stored.source().file == "vqa/workflow.yaml"
    assert [d.kind for d in store.documents()] == ["ModelZoo", "Topology", "Workflow"]
    assert [t.metadata.name for t in store.topologies()] == ["vqa-medium"]
    assert store.submissions()[0]["files"] == [{"name": files[0][0], "text": files[0][1]}]  # raw text, as sent
    [event] = store.events("vqa-medium")
    assert (event.event, event.detail["action"], event.detail["generation"]) == ("applied", "created", 1)
    record = store.workflow("vqa-medium")
    assert (record.zoo, record.topology, record.generation) == ("vqa-medium", "vqa-medium", 1)


def test_generations_and_delete_keep_history(tmp_path: Path, vqa) -> None:
    bundle, plan = vqa
    store = StateStore(tmp_path)
    bodies = bundle_bodies(bundle)
    data = plan.model_dump(mode="json", by_alias=True)
    for digest in ("d1", "d2"):
        store.commit_apply([], [], [NewRevision("w", digest, bodies, data, "z", "t")], [])
    assert store.workflow("w").generation == 2 and store.revision("w", 1).digest == "d1"
    assert store.delete_workflow("w") and not store.delete_workflow("w")
    assert store.desired() == {} and store.revision("w") is None
    assert [r["generation"] for r in store.revisions("w")] == [1, 2]
    assert store.revisions("w")[0]["cost_per_hour"] == pytest.approx(plan.cost.total_per_hour)
    store.commit_apply([], [], [NewRevision("w", "d3", bodies, data, "z", "t")], [])
    assert store.workflow("w").generation == 3
    assert [e.event for e in store.events("w")] == ["deleted"]


def test_files_are_private(tmp_path: Path) -> None:
    state = tmp_path / "home" / "state"
    store = StateStore(state)
    assert mode(state) == 0o700 and mode(state / "state.db") == 0o600
    store.close()
    token_path = write_token(state, "s3cret")
    assert mode(token_path) == 0o600 and read_token(state) == "s3cret"
    token_path.chmod(0o644)
    write_token(state, "other")  # rewriting restores the mode
    assert mode(token_path) == 0o600 and read_token(state) == "other"
    write_controller_info(state, {"url": "http://127.0.0.1:1", "pid": 1})
    assert read_controller_info(state) == {"url": "http://127.0.0.1:1", "pid": 1}
    remove_controller_info(state, pid=2)  # not ours: kept
    assert read_controller_info(state) is not None
    remove_controller_info(state, pid=1)
    assert read_controller_info(state) is None and read_token(tmp_path / "nowhere") is None


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    StateStore(tmp_path).close()
    with sqlite3.connect(tmp_path / "state.db") as conn:
        conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    with pytest.raises(StateError, match="newer jellybean"):
        StateStore(tmp_path)


def test_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StateError):
        StateStore(tmp_path / "file")


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JELLYBEAN_HOME", str(tmp_path / "jb"))
    assert default_state_dir() == tmp_path / "jb"
    monkeypatch.delenv("JELLYBEAN_HOME")
    assert default_state_dir() == Path.home() / ".jellybean"


def test_events_are_json(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.add_event(None, "ray-started", {"sites": ["a"], "at": Path("/x")})
    [event] = store.events()
    assert event.workflow is None and event.detail == {"sites": ["a"], "at": "/x"}
    assert json.loads(json.dumps(event.as_dict()))["event"] == "ray-started"


# --- a hardened state directory --------------------------------------------------------------


def test_an_existing_directory_writable_by_others_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(StateError, match=r"writable by others \(mode 0777\): `chmod 700 "):
        StateStore(state)
    state.chmod(0o1777)  # sticky, as /tmp: still others can plant files
    with pytest.raises(StateError, match="writable by others"):
        StateStore(state)
    state.chmod(0o755)  # readable is fine: the private files in it are 0600
    StateStore(state).close()


def test_a_directory_of_another_user_or_a_symlink_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)  # the tests run as root (CI does): give it to `nobody`
    with pytest.raises(StateError, match="belongs to another user"):
        StateStore(theirs)
    (tmp_path / "link").symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real").mkdir(mode=0o700)
    with pytest.raises(StateError, match="is a symbolic link"):
        StateStore(tmp_path / "link")


def test_private_files_are_never_written_through_a_planted_link(tmp_path: Path) -> None:
    state = tmp_path / "state"
    StateStore(state).close()
    victim = tmp_path / "victim"
    victim.write_text("untouched")
    # The old writer used `.token.<pid>.tmp`: plant links at every name it could have chosen nearby,
    # and at the target itself.
    for pid in range(os.getpid() - 2, os.getpid() + 3):
        (state / f".token.{pid}.tmp").symlink_to(victim)
    (state / "token").symlink_to(victim)
    write_token(state, "s3cret")
    assert victim.read_text() == "untouched"
    assert not (state / "token").is_symlink() and read_token(state) == "s3cret" and mode(state / "token") == 0o600
    leftovers = sorted(p.name for p in state.iterdir() if p.name.startswith(".token."))
    assert len(leftovers) == 5  # only the planted links: the writer's temp file is gone


def test_a_state_database_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (tmp_path / "elsewhere.db").write_bytes(b"")
    (state / "state.db").symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(StateError, match="symbolic link is refused"):
        StateStore(state)


# --- a damaged store is found at start --------------------------------------------------------


def _stored(tmp_path: Path, vqa) -> Path:
    bundle, plan = vqa
    state = tmp_path / "state"
    store = StateStore(state)
    bodies = bundle_bodies(bundle)
    digest = bundle_digest(bodies)
    docs = [NewDocument(kind, bodies[kind]["metadata"]["name"], digest_of(bodies[kind]), bodies[kind], "f.yaml", 1)
            for kind in bodies]
    plan_data = plan.model_dump(mode="json", by_alias=True)
    store.commit_apply([("f.yaml", "")], docs, [NewRevision(name, digest, bodies, plan_data, "vqa-medium", "vqa-medium")
                                               for name in ("one", "two")], [NewEvent("one", "applied")])
    store.close()
    return state


def test_a_corrupted_page_is_refused_at_start_in_one_line(tmp_path: Path, vqa) -> None:
    state = _stored(tmp_path, vqa)
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
    assert pages > 3
    with open(state / "state.db", "r+b") as handle:  # garbage over every page but the first
        for index in range(1, pages):
            handle.seek(index * page)
            handle.write(bytes([0x5A]) * page)
    with pytest.raises(StateError) as info:
        StateStore(state)
    message = str(info.value)
    assert "state.db is damaged (" in message and "move it aside" in message and "\n" not in message


def test_one_bad_row_is_named_and_the_others_still_read(tmp_path: Path, vqa) -> None:
    state = _stored(tmp_path, vqa)
    with sqlite3.connect(state / "state.db") as conn:
        conn.execute("UPDATE revisions SET plan='{not json' WHERE workflow='one'")
        body = json.loads(conn.execute("SELECT body FROM documents WHERE kind='Topology'").fetchone()[0])
        body["spec"]["sites"][0]["tier"] = "orbit"  # valid JSON, refused by the model
        conn.execute("UPDATE documents SET body=? WHERE kind='Topology'", (json.dumps(body),))
        conn.execute("UPDATE events SET detail='{' WHERE workflow='one'")
    store = StateStore(state)
    assert len(store.problems) == 3
    summary = store.damage_summary()
    assert "\n" not in summary and "revision of workflow one: generation 1: JSONDecodeError" in summary
    assert "Topology vqa-medium: spec.sites.0" in summary and "1 event with unreadable details" in summary
    assert summary.endswith("not served until applied again: one")
    assert store.desired().keys() == {"two"}  # the damaged one is not served; the other is
    assert store.revision("two").plan_model() is not None
    with pytest.raises(DamagedRecord, match="apply its documents again"):
        store.revision("one")
    assert store.topologies() == [] and {d.kind for d in store.documents()} == {"ModelZoo", "Workflow"}
    assert store.events("one")[0].detail == {"damaged": "the stored details are not valid JSON"}
    assert [r["generation"] for r in store.revisions("one")] == [1]
