"""``jellybean plan`` with several workflows (workflows/store: vision and audio in one store): planned
together, each workflow's plan, what they use in all and the comparison with planning them one after
another, in the table and as JSON ``{"workflows", "total", "joint", ...}``; one workflow named with
``--workflow`` prints exactly its own plan; mistakes across the documents exit 2 located."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from jellybean.optimizer.plan import JointPlan, Plan
from tests.test_cli import line_of, plan_json, run

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "workflows" / "store"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    shutil.copytree(STORE, folder)
    return folder


def test_the_store_shares_the_digits_and_speech_zoos() -> None:
    assert (STORE / "digits-zoo.yaml").read_bytes() == (ROOT / "workflows" / "digits" / "zoo.yaml").read_bytes()
    assert (STORE / "speech-zoo.yaml").read_bytes() == (ROOT / "workflows" / "speech" / "zoo.yaml").read_bytes()


def test_a_folder_of_several_workflows_is_planned_together(capsys: pytest.CaptureFixture[str]) -> None:
    """The store's one back-room box goes to audio (its raw audio cannot cross the uplink), vision
    runs in the cloud; one after another (vision first, as the files are listed) finds no plan for
    audio, which the table says."""
    code, out, err = run(capsys, "plan", "-f", STORE, "--no-baselines")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == ("Workflows vision, audio planned together on topology store: strategy optimal, "
                        "shared instances")
    assert lines[1].startswith("Solver: HiGHS, status optimal")
    assert "=== Workflow vision ===" in lines and "=== Workflow audio ===" in lines and "=== All workflows ===" in lines
    assert lines.index("=== Workflow vision ===") < lines.index("=== Workflow audio ===")
    assert "Instances in use (every workflow's; an instance serves one workflow)" in lines
    (one_after,) = [line for line in lines if line.startswith("One after another")]
    assert one_after.startswith("One after another (vision, then audio, each on what the ones before leave): no plan: "
                                "audio has no plan on what vision leaves:")
    assert "uplink back-room -> cloud" in one_after
    total = lines[lines.index("=== All workflows ===") + 2:][:5]
    assert [row.split()[0] for row in total] == ["WORKFLOW", "--------", "vision", "audio", "total"]


def test_the_joint_plan_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, result = plan_json(capsys, "-f", STORE)
    assert code == 0
    assert list(result) == ["feasible", "workflows", "total", "joint", "explanation", "warnings"]
    JointPlan.model_validate(result)
    vision, audio = (Plan.model_validate(p) for p in result["workflows"])
    assert (vision.workflow, audio.workflow) == ("vision", "audio")
    # Each workflow's plan is a single workflow's, in its own names.
    assert set(vision.models) == {"detect", "classify", "readings"} and set(audio.models) == {"vad", "archive"}
    assert {a.site for a in vision.assignments} == {"cloud"}
    assert [(a.stage, a.site) for a in audio.assignments] == [("vad", "back-room"), ("archive", "cloud")]
    assert vision.accuracy >= 95 and audio.accuracy >= 75
    assert vision.baselines == [] and audio.baselines == []
    assert any("planned together with audio" in note for note in vision.solver.notes)
    # The total: the sum, every workflow's instances and traffic.
    total = result["total"]
    assert total["cost_by_workflow"] == {"vision": vision.cost.total_per_hour, "audio": audio.cost.total_per_hour}
    assert total["cost"]["total_per_hour"] == pytest.approx(vision.cost.total_per_hour + audio.cost.total_per_hour)
    (uplink,) = [link for link in total["links"] if link["from"] == "back-room"]
    assert uplink["carries"] == ["audio/vad->audio/archive", "vision/tills->vision/detect"]
    assert uplink["mbps"] == pytest.approx(sum(link.mbps for p in (vision, audio) for link in p.links
                                               if link.from_ == "back-room"))
    assert uplink["mbps"] <= 0.8 * uplink["capacity_mbps"]
    (box,) = [row for row in total["instances"] if row["site"] == "back-room"]
    assert (box["count"], box["available"], box["stages"]) == (1, 1, ["audio/vad"])
    (cloud,) = [row for row in total["instances"] if row["site"] == "cloud"]
    assert (cloud["count"], cloud["available"]) == (2, 2)  # one per workflow
    joint = result["joint"]
    assert joint["workflows"] == ["vision", "audio"] and joint["topology"] == "store"
    assert (joint["strategy"], joint["sharing"], joint["objective"]) == ("optimal", "shared", "cost")
    assert joint["solver"]["status"] == "optimal"
    assert [b["strategy"] for b in joint["baselines"]] == ["cloud-only", "edge-first", "two-stage", "jellybean"]
    sequential = joint["sequential"]
    assert sequential["order"] == ["vision", "audio"] and sequential["feasible"] is False
    assert sequential["by_workflow"]["audio"] is None and sequential["saving"] is None
    assert sequential["reason"].startswith("audio has no plan on what vision leaves")
    # YAML: the same document.
    code, out, _ = run(capsys, "plan", "-f", STORE, "--format", "yaml", "--no-baselines")
    assert code == 0 and list(yaml.safe_load(out)) == list(result)


def test_workflows_named_in_another_order(capsys: pytest.CaptureFixture[str]) -> None:
    """--workflow, repeated, picks the workflows and their order: audio first, one after another
    finds the joint plan (the same cost)."""
    code, out, err = run(capsys, "plan", "-f", STORE, "--workflow", "audio", "--workflow", "vision", "--no-baselines")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("Workflows audio, vision planned together")
    assert "Planned together: the same" in lines
    code, result = plan_json(capsys, "-f", STORE, "--workflow", "audio", "--workflow", "vision", "--no-baselines")
    sequential = result["joint"]["sequential"]
    assert sequential["feasible"] and sequential["saving"] == 0.0
    assert sequential["objective_value"] == pytest.approx(result["total"]["cost"]["total_per_hour"])


def test_one_workflow_named_prints_its_own_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--workflow vision: the single-workflow contract, unchanged: the same plan as a folder holding
    vision's documents alone."""
    code, out, err = run(capsys, "plan", "-f", STORE, "--workflow", "vision", "--no-baselines")
    assert code == 0, err
    assert out.startswith("Workflow vision: strategy optimal, shared instances\n")
    code, named = plan_json(capsys, "-f", STORE, "--workflow", "vision", "--no-baselines")
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("cameras.yaml", "topology.yaml", "digits-zoo.yaml"):
        shutil.copy(STORE / name, alone / name)
    code, own = plan_json(capsys, "-f", alone, "--no-baselines")
    assert code == 0 and named["workflow"] == own["workflow"] == "vision"
    for result in (named, own):
        result["solver"].pop("seconds")
        result["solver"]["notes"] = [n for n in result["solver"]["notes"] if not n.startswith("model built")]
    assert named == own
    # Alone, vision takes the back room's box.
    assert {a["site"] for a in own["assignments"]} == {"back-room"}


def test_workflows_on_two_topologies_exit_2(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    topology = (store / "topology.yaml").read_text().replace("name: store\n", "name: store-2\n", 1)
    (store / "topology-2.yaml").write_text(topology)
    audio = store / "microphones.yaml"
    audio.write_text(audio.read_text().replace("topology: store\n", "topology: store-2\n"))
    code, out, err = run(capsys, "plan", "-f", store)
    assert code == 2 and out == ""
    line = line_of(audio, "topology: store-2")
    assert f"{audio}:{line}: spec.topology: workflow 'audio' uses Topology 'store-2', but workflow 'vision' uses " \
        "'store': workflows planned together share one Topology" in err
    # One of them named: planned alone, on its own topology.
    code, out, err = run(capsys, "plan", "-f", store, "--workflow", "audio", "--no-baselines")
    assert code == 0, err


def test_two_workflows_with_one_name_exit_2(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    audio = store / "microphones.yaml"
    audio.write_text(audio.read_text().replace("  name: audio\n", "  name: vision\n"))
    code, _out, err = run(capsys, "plan", "-f", store)
    assert code == 2
    assert f"{audio}:{line_of(audio, 'name: vision')}: metadata.name: a second Workflow named 'vision'" in err


def test_a_workflow_named_twice_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "plan", "-f", STORE, "--workflow", "audio", "--workflow", "audio")
    assert code == 2 and "--workflow: workflow audio named twice" in err


def test_no_joint_plan_exits_1(capsys: pytest.CaptureFixture[str], store: Path) -> None:
    """A thinner uplink (0.5 Mbps) carries neither raw audio nor the speech beside vision's frames:
    no joint plan; the reasons are said, and each workflow's plan is infeasible."""
    topology = store / "topology.yaml"
    topology.write_text(topology.read_text().replace("bandwidth_mbps: 1.0,", "bandwidth_mbps: 0.5,"))
    code, out, err = run(capsys, "plan", "-f", store, "--no-baselines")
    assert code == 1, err
    assert "No feasible joint plan:" in out
    code, result = plan_json(capsys, "-f", store, "--no-baselines")
    assert code == 1 and result["feasible"] is False and result["explanation"]
    assert all(p["feasible"] is False and p["explanation"] == result["explanation"] for p in result["workflows"])
    assert result["total"]["cost"] is None


def test_the_joint_plan_picture(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    picture = tmp_path / "store.svg"
    code, _out, err = run(capsys, "plan", "-f", STORE, "--no-baselines", "--render", picture)
    assert code == 0, err
    assert f"plan picture written to {picture}" in err
    assert "audio/vad" in picture.read_text()
