"""The `jellybean` command, run in-process through ``jellybean.cli.main`` (plus one real process):
exit codes 0 ok, 1 infeasible, 2 invalid input, 3 internal error; no tracebacks for users."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from jellybean import cli
from jellybean.optimizer.framing import SEND_FRAMING_BYTES
from jellybean.cli import main

ROOT = Path(__file__).resolve().parents[1]
VQA = ROOT / "workflows" / "vqa-medium"
VQA_DATA = ROOT / "tests" / "data" / "jellybean-vqa-medium"
PUBLISHED_TOTAL = 7.509  # JellyBean's published $/h for vqa-medium (their heuristic, exclusive workers)
BASELINE_STRATEGIES = {"cloud-only", "edge-first", "two-stage", "jellybean"}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code, out, err = run(capsys, "plan", *argv, "--format", "json")
    return code, json.loads(out)


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), start=1) if needle in line)


@pytest.fixture
def vqa_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "vqa"
    shutil.copytree(VQA, folder)
    return folder


# --- validate -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n"], ids=["empty", "comment"])
def test_validate_an_empty_file_exits_2(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    assert main(["validate", "-f", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"{empty}:1: no documents in {empty}" in err and "Traceback" not in err


def test_validate_vqa_medium(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "validate", "-f", VQA)
    assert code == 0
    assert "ok  ModelZoo vqa-medium (3 tasks, 8 variants)" in out
    assert "ok  Topology vqa-medium (2 sites, 9 instance groups)" in out
    assert "ok  Workflow vqa-medium (2 source groups, 3 stages)" in out
    assert "ok  workflow vqa-medium: references resolve" in out
    assert f"{VQA / 'workflow.yaml'}:{line_of(VQA / 'workflow.yaml', 'apiVersion:')}" in out  # where it starts
    assert err == ""


# --- plan: JSON -----------------------------------------------------------------------------


def test_plan_json_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, plan = plan_json(capsys, "-f", VQA, "--no-baselines")
    assert code == 0
    assert {"models", "assignments", "links", "cost", "accuracy", "latency_ms", "solver", "baselines"} <= set(plan)
    assert plan["feasible"] is True
    assert plan["models"] == {"ExtractImageFeature": "resnet18", "SpeechRecognition": "wav2vec2-large-960h-lv60-self",
                              "VQA": "default"}
    assert plan["assignments"]
    for a in plan["assignments"]:
        assert {"stage", "variant", "site", "instance", "rate_per_s", "utilization"} <= set(a)
        assert a["stage"] in plan["models"] and a["variant"] == plan["models"][a["stage"]]
        assert a["rate_per_s"] > 0 and 0 < a["utilization"] <= 1 + 1e-9
    # Every stage's traffic is served in full.
    for stage in plan["models"]:
        served = sum(a["rate_per_s"] for a in plan["assignments"] if a["stage"] == stage)
        assert served == pytest.approx(40.0)
    assert plan["links"]
    for link in plan["links"]:
        assert {"from", "to", "gb_per_hour", "mbps", "cost_per_hour"} <= set(link)
        assert link["gb_per_hour"] >= 0 and link["mbps"] >= 0 and link["cost_per_hour"] >= 0
    cost = plan["cost"]
    assert {"compute_per_hour", "network_per_hour", "total_per_hour"} <= set(cost)
    assert cost["total_per_hour"] == pytest.approx(cost["compute_per_hour"] + cost["network_per_hour"])
    assert cost["network_per_hour"] == pytest.approx(sum(link["cost_per_hour"] for link in plan["links"]))
    assert plan["accuracy"] >= 56.0
    assert plan["latency_ms"] > 0
    assert {"name", "status", "gap", "seconds"} <= set(plan["solver"])
    assert plan["baselines"] == []


def test_plan_exclusive_instances_beats_the_published_plan(capsys: pytest.CaptureFixture[str]) -> None:
    code, plan = plan_json(capsys, "-f", VQA, "--exclusive-instances", "--no-baselines")
    assert code == 0
    assert plan["sharing"] == "exclusive"
    assert plan["cost"]["total_per_hour"] < PUBLISHED_TOTAL
    assert plan["solver"]["status"] == "optimal"
    assert plan["solver"]["gap"] == 0
    # Exclusive: no instance serves two stages.
    used = [(a["site"], a["instance"]) for a in plan["assignments"]]
    assert len(used) == len(set(used))


def test_plan_shared_instances_is_no_dearer(capsys: pytest.CaptureFixture[str]) -> None:
    _, exclusive = plan_json(capsys, "-f", VQA, "--exclusive-instances", "--no-baselines")
    code, shared = plan_json(capsys, "-f", VQA, "--shared-instances", "--no-baselines")
    assert code == 0 and shared["sharing"] == "shared"
    assert shared["cost"]["total_per_hour"] <= exclusive["cost"]["total_per_hour"] + 1e-6


def test_plan_json_with_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    # Needs every baseline strategy, jellybean.optimizer.jellybean_heuristic included.
    code, out, err = run(capsys, "plan", "-f", VQA, "--format", "json")
    assert code == 0, err
    plan = json.loads(out)
    baselines = plan["baselines"]
    assert {b["strategy"] for b in baselines} == BASELINE_STRATEGIES
    for b in baselines:
        assert {"strategy", "feasible", "cost", "accuracy"} <= set(b)
        if b["feasible"]:
            assert b["cost"]["total_per_hour"] >= plan["cost"]["total_per_hour"] - 1e-6  # optimal is optimal
            assert b["accuracy"] >= 56.0
        else:
            assert b["cost"] is None and b["reason"]


def test_plan_yaml_parses(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "-f", VQA, "--format", "yaml", "--no-baselines")
    assert code == 0
    plan = yaml.safe_load(out)
    assert plan["models"]["VQA"] == "default"
    assert plan["cost"]["total_per_hour"] > 0
    assert plan["links"][0]["from"] == "edge"


# --- plan: table ----------------------------------------------------------------------------


def test_plan_table_without_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "-f", VQA, "--no-baselines")
    assert code == 0
    for heading in ["Workflow vqa-medium", "Models", "Placement", "Instances in use", "Egress plan", "Cost ($/hour)",
                    "Accuracy: 56.59", "Latency (worst path)"]:
        assert heading in out
    assert "edge -> cloud" in out
    assert "Baselines" not in out


def test_plan_table_with_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "-f", VQA)
    assert code == 0, err
    assert "Egress plan" in out
    assert "Baselines" in out
    for strategy in BASELINE_STRATEGIES:
        assert strategy in out


TWO_SINKS = ROOT / "workflows" / "two-sinks"


def test_two_sinks_shares_the_digits_zoo_and_topology() -> None:
    for name in ("zoo.yaml", "topology.yaml"):
        assert (TWO_SINKS / name).read_bytes() == (ROOT / "workflows" / "digits" / name).read_bytes(), name


def test_plan_of_two_sinks_shows_each_sink_and_the_minimum(capsys: pytest.CaptureFixture[str]) -> None:
    """workflows/two-sinks: two chains in one store, each sink with its own target, and a detector
    with a minimum on its task's own metric; the table shows every sink and the minimum."""
    code, out, err = run(capsys, "plan", "-f", TWO_SINKS, "--no-baselines")
    assert code == 0, err
    lines = out.splitlines()
    sinks = lines[lines.index("Accuracy by sink") + 3:][:2]
    (readings,) = [line.split() for line in sinks if line.startswith("readings ")]
    (meters,) = [line.split() for line in sinks if line.startswith("meter-readings ")]
    assert float(readings[1]) >= 95 and readings[2] == "95.000"
    assert float(meters[1]) >= 98 and meters[2] == "98.000"
    assert "Stage minimums (on the task's own metric)" in lines
    minimum = lines[lines.index("Stage minimums (on the task's own metric)") + 3].split()
    assert minimum[1:4] == ["frames-all-digits-located-pct", "99.000", "digits-detector-large"]
    code, plan = plan_json(capsys, "-f", TWO_SINKS, "--no-baselines")
    assert code == 0
    assert [(s["stage"], s["accuracy_target"]) for s in plan["sinks"]] == [("readings", 95.0), ("meter-readings", 98.0)]
    assert all(s["accuracy"] >= s["accuracy_target"] for s in plan["sinks"])
    assert plan["accuracy"] == plan["sinks"][0]["accuracy"] and plan["accuracy_target"] == 95.0
    assert plan["latency_ms"] == max(s["latency_ms"] for s in plan["sinks"])
    assert plan["stage_minimums"] == [{"stage": "meter-detect", "metric": "frames-all-digits-located-pct",
                                       "min_accuracy": 99.0, "variant": "digits-detector-large", "accuracy": 99.7}]
    assert plan["models"]["meter-detect"] == "digits-detector-large"


def test_a_sink_target_out_of_reach_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "two"
    shutil.copytree(TWO_SINKS, folder)
    workflow = folder / "workflow.yaml"
    workflow.write_text(workflow.read_text().replace("        accuracy: 98.0\n", "        accuracy: 99.0\n"))
    code, out, err = run(capsys, "plan", "-f", folder, "--no-baselines")
    assert code == 1
    assert "accuracy target 99 at sink meter-readings unreachable: the best combination with every stage at its " \
        "min_accuracy reaches 98.45" in out


# --- plan: infeasible -----------------------------------------------------------------------


def test_accuracy_target_out_of_reach(capsys: pytest.CaptureFixture[str], vqa_copy: Path) -> None:
    workflow = vqa_copy / "workflow.yaml"
    text = workflow.read_text()
    assert text.count("    accuracy: 56.0\n") == 1
    workflow.write_text(text.replace("    accuracy: 56.0\n", "    accuracy: 60\n"))
    code, out, err = run(capsys, "plan", "-f", vqa_copy, "--no-baselines")
    assert code == 1
    assert "No feasible plan" in out
    assert "accuracy target 60" in out
    assert "58.33" in out  # the best the end-to-end table offers
    # The same in JSON.
    code, plan = plan_json(capsys, "-f", vqa_copy, "--no-baselines")
    assert code == 1 and plan["feasible"] is False and plan["cost"] is None
    assert any("accuracy target 60" in r and "58.33" in r for r in plan["explanation"])


BANDWIDTH = """\
apiVersion: jellybean.io/v1alpha1
kind: ModelZoo
metadata:
  name: detectors
spec:
  tasks:
  - name: detect
    variants:
    - name: yolo
      accuracy: 80
      output_kb: 1
      profiles:
      - hardware: gpu
        latency_ms: {1: 5}
---
apiVersion: jellybean.io/v1alpha1
kind: Topology
metadata:
  name: thin-uplink
spec:
  sites:
  - name: cloud
    tier: cloud
    instances:
    - name: gpu-vm
      hardware: gpu
      price_per_hour: 3.0
      max_count: 100
  - name: hub
    tier: hub
    parent: cloud
    uplink:
      up: {bandwidth_mbps: 100, cost_per_gb: 0.01}
---
apiVersion: jellybean.io/v1alpha1
kind: Workflow
metadata:
  name: raw-frames
spec:
  sources:
  - name: cameras
    rate_per_s: 25
    payload_kb: 122.0703125  # 125,000 bytes: 10 cameras x 25 frames/s = 250 Mbit/s of payload, 261.4 as framed
    sites: [hub]
    count_per_site: 10
  stages:
  - name: det
    task: detect
    inputs: [cameras]
  slo:
    accuracy: 50
"""


def test_uplink_too_thin_for_raw_frames(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "thin.yaml"
    path.write_text(BANDWIDTH)
    code, out, _ = run(capsys, "plan", "-f", path, "--no-baselines")
    assert code == 1
    assert "No feasible plan" in out
    reason = next(line for line in out.splitlines() if "uplink" in line)
    assert "hub -> cloud" in reason
    # 250 Mbit/s of payload, as it travels: TCP/IP's 66 B per 1,448 and each send's framing (framing.py;
    # a frame of 122 KB fills segments alone: it waits for no company)
    framed = 250.0 * (1 + 66 / 1448) + 250 * SEND_FRAMING_BYTES * 8 / 1e6  # 250 frames/s, each its own send
    assert f"{framed:.2f}" in reason and "at most 100 Mbps" in reason
    # Tripling the capacity makes it feasible.
    path.write_text(BANDWIDTH.replace("bandwidth_mbps: 100", "bandwidth_mbps: 300"))
    code, plan = plan_json(capsys, "-f", path, "--no-baselines")
    assert code == 0
    assert plan["links"][0]["mbps"] == pytest.approx(framed)


# --- invalid input --------------------------------------------------------------------------


def test_invalid_document_exits_2_with_file_and_line(capsys: pytest.CaptureFixture[str], vqa_copy: Path) -> None:
    workflow = vqa_copy / "workflow.yaml"
    lines = workflow.read_text().splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines, start=1) if "rate_per_s:" in line)
    lines[number - 1] = lines[number - 1].replace("rate_per_s:", "rate_per_sec:")
    workflow.write_text("".join(lines))
    for command in ("validate", "plan"):
        code, out, err = run(capsys, command, "-f", vqa_copy)
        assert code == 2
        assert out == ""
        assert err.startswith("error: 2 problems in the input:")
        assert f"{workflow}:{number}: spec.sources[0].rate_per_sec: Extra inputs are not permitted" in err


@pytest.mark.parametrize("text", [
    "x: !!python/object/apply:os.system [echo pwned]\n",
    "a: &a [*a]\n",
    "a: [\n",
    "a: " + "[" * 10_000 + "\n",
    "- just a list\n",
    "apiVersion: v2\nkind: Workflow\n",
    "x: !!int abc\n",
], ids=["python-tag", "recursive-alias", "syntax", "deep", "list", "api-version", "bad-int"])
def test_hostile_input_exits_2_without_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, out, err = run(capsys, "plan", "-f", path)
    assert code == 2
    assert f"{path}:" in err
    assert err.count("\n") >= 2 and "internal error" not in err


def test_binary_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    code, _, err = run(capsys, "validate", "-f", path)
    assert code == 2 and str(path) in err


def test_missing_file_and_empty_folder_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "plan", "-f", tmp_path / "nope")
    assert code == 2 and "no such file or folder" in err
    code, _, err = run(capsys, "validate", "-f", tmp_path)
    assert code == 2 and "holds no .yaml or .yml files" in err


def test_cross_document_problem_exits_2_with_workflow_file(capsys: pytest.CaptureFixture[str],
                                                          vqa_copy: Path) -> None:
    workflow = vqa_copy / "workflow.yaml"
    workflow.write_text(workflow.read_text().replace("  topology: vqa-medium\n", "  topology: elsewhere\n"))
    code, _, err = run(capsys, "plan", "-f", vqa_copy)
    assert code == 2
    assert f"{workflow}:{line_of(workflow, 'topology: elsewhere')}: spec.topology: workflow 'vqa-medium' names Topology 'elsewhere'" in err


@pytest.mark.parametrize("limit", ["0", "-1", "nan"])
def test_bad_time_limit_exits_2(capsys: pytest.CaptureFixture[str], limit: str) -> None:
    code, out, err = run(capsys, "plan", "-f", VQA, "--no-baselines", "--time-limit", limit)
    assert code == 2 and out == ""
    assert err == "error: --time-limit must be positive\n"


def test_bad_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["plan", "-f", str(VQA), "--strategy", "nope"], ["plan"], [], ["frobnicate"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
    _, err = capsys.readouterr()
    assert "usage: jellybean" in err and "Traceback" not in err


def test_internal_error_exits_3_in_one_line(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: object) -> int:
        raise RuntimeError("boom")
    monkeypatch.delenv("JELLYBEAN_DEBUG", raising=False)
    monkeypatch.setitem(cli.COMMANDS, "schema", dataclasses.replace(cli.COMMANDS["schema"], run=broken))
    code, out, err = run(capsys, "schema")
    assert code == 3 and out == ""
    assert err.startswith("internal error: RuntimeError: boom") and err.count("\n") == 1


# --- schema ---------------------------------------------------------------------------------


def test_schema_prints_the_three_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "schema")
    assert code == 0
    schemas = json.loads(out)
    assert sorted(schemas) == ["ModelZoo", "Topology", "Workflow"]
    assert schemas["Workflow"]["properties"]["kind"]["enum"] == ["Workflow", "InferenceWorkflow"]
    code, out, _ = run(capsys, "schema", "--kind", "Topology")
    assert code == 0 and json.loads(out)["title"] == "Topology"


# --- import ---------------------------------------------------------------------------------


def test_import_jellybean_then_plan(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_dir = tmp_path / "imported"
    code, out, err = run(capsys, "import", "jellybean", VQA_DATA, "--out", out_dir)
    assert code == 0
    written = sorted(p.name for p in out_dir.glob("*.yaml"))
    assert written == ["topology.yaml", "workflow.yaml", "zoo.yaml"]
    for name in written:
        assert f"wrote {out_dir / name}" in out
    assert f"next: jellybean plan -f {out_dir}" in out
    code, out, _ = run(capsys, "validate", "-f", out_dir)
    assert code == 0
    code, plan = plan_json(capsys, "-f", out_dir, "--exclusive-instances", "--no-baselines")
    assert code == 0
    _, committed = plan_json(capsys, "-f", VQA, "--exclusive-instances", "--no-baselines")
    assert plan["cost"]["total_per_hour"] == pytest.approx(committed["cost"]["total_per_hour"])


def test_import_of_a_missing_folder_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "import", "jellybean", tmp_path / "nope", "--out", tmp_path / "out")
    assert code == 2 and str(tmp_path / "nope") in err


# --- a real process -------------------------------------------------------------------------


def test_subprocess_json_is_pure() -> None:
    """No solver banner or log line may leak onto stdout: it must parse as JSON as a whole."""
    result = subprocess.run(
        [sys.executable, "-m", "jellybean", "plan", "-f", str(VQA), "--format", "json", "--no-baselines"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["feasible"] is True and plan["models"]["VQA"] == "default"
    assert "Traceback" not in result.stderr


def test_subprocess_invalid_input_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("apiVersion: jellybean.io/v1alpha1\nkind: Nope\n")
    result = subprocess.run([sys.executable, "-m", "jellybean", "validate", "-f", str(path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"{path}:2: kind: unknown kind 'Nope'" in result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr


def test_send_takes_its_payload_files_after_its_options() -> None:
    from jellybean.cli import build_parser, parse

    args = parse(build_parser(), ["send", "digits-live", "--site", "cam-1", "a.npy", "--wait", "5", "b.npy"])
    assert args.payloads == ["a.npy", "b.npy"] and args.site == "cam-1" and args.wait == 5
    with pytest.raises(SystemExit):
        parse(build_parser(), ["plan", "-f", "x", "stray"])
