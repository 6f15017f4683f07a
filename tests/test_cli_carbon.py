"""``jellybean plan``'s carbon: the report in the table and the JSON, ``--objective``,
``--carbon-price``, ``--carbon-budget`` and ``--at``, and the errors a user gets for each."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from jellybean.cli import main
from tests.test_cli import run

ROOT = Path(__file__).resolve().parents[1]
VEHICLES = ROOT / "workflows" / "vehicle-tracking"
VQA = ROOT / "workflows" / "vqa-medium"


def plan_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code, out, _ = run(capsys, "plan", "-f", VEHICLES, "--no-baselines", *argv, "--format", "json")
    return code, json.loads(out)


def _default(capsys: pytest.CaptureFixture[str]) -> dict:
    code, plan = plan_json(capsys)
    assert code == 0
    return plan


def test_the_default_plan_reports_its_carbon(capsys: pytest.CaptureFixture[str]) -> None:
    plan = _default(capsys)
    assert plan["objective"] == "cost"
    carbon = plan["carbon"]
    assert carbon["intensity"] == "daily mean" and carbon["uncounted"] == [] and carbon["budget_g_per_hour"] is None
    assert carbon["total_g_per_hour"] == pytest.approx(sum(t["g_per_hour"] for t in carbon["by_tier"].values()))
    assert carbon["total_g_per_hour"] == pytest.approx(sum(i["carbon_g_per_hour"] for i in plan["instances"]))
    assert all(i["power_w"] > 0 for i in plan["instances"])


def test_objective_carbon_trades_cost_for_carbon(capsys: pytest.CaptureFixture[str]) -> None:
    cheapest = _default(capsys)
    code, green = plan_json(capsys, "--objective", "carbon")
    assert code == 0 and green["objective"] == "carbon"
    assert green["carbon"]["total_g_per_hour"] < cheapest["carbon"]["total_g_per_hour"] * 0.9
    assert green["cost"]["total_per_hour"] > cheapest["cost"]["total_per_hour"]
    assert any(note.startswith("least carbon") for note in green["solver"]["notes"])


def test_a_carbon_price_and_a_budget(capsys: pytest.CaptureFixture[str]) -> None:
    cheapest = _default(capsys)
    code, priced = plan_json(capsys, "--objective", "cost+carbon", "--carbon-price", "1000")
    assert code == 0 and priced["objective"] == "cost+carbon"
    carbon = priced["carbon"]
    assert carbon["price_per_tonne"] == 1000
    assert carbon["cost_per_hour"] == pytest.approx(0.001 * carbon["total_g_per_hour"])  # $1000/t = $0.001/g
    assert carbon["total_g_per_hour"] < cheapest["carbon"]["total_g_per_hour"]
    budget = (carbon["total_g_per_hour"] + cheapest["carbon"]["total_g_per_hour"]) / 2
    code, out, _ = run(capsys, "plan", "-f", VEHICLES, "--no-baselines", "--carbon-budget", f"{budget:.3f}")
    assert code == 0
    assert f"Carbon budget: {float(f'{budget:.3f}'):g} gCO2/h" in out
    total = float(re.search(r"^total +[0-9.,]+ +([0-9.,]+)$", out.split("Carbon (")[1], re.M)[1].replace(",", ""))
    assert total <= budget


def test_a_budget_below_the_least_carbon_says_how_low_it_can_go(capsys: pytest.CaptureFixture[str]) -> None:
    code, green = plan_json(capsys, "--objective", "carbon")
    least = green["carbon"]["total_g_per_hour"]
    code, out, _ = run(capsys, "plan", "-f", VEHICLES, "--carbon-budget", "50")
    assert code == 1
    assert (f"carbon budget 50 gCO2/h (--carbon-budget) unreachable: the least carbon any plan reaches within the "
            f"other limits is {least:.2f} gCO2/h") in out
    assert "heuristic plan violates: carbon" in out  # the baselines keep to the budget too


def test_the_table_shows_carbon_per_tier_and_beside_each_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "-f", VEHICLES)
    assert code == 0
    section = out.split("Carbon (instances in use at idle + (busy - idle) x utilisation; sites' intensity: daily mean)")
    assert len(section) == 2 and "POWER W" in section[1] and "GCO2/H" in section[1]
    assert "GCO2/H  ACCURACY" in out.split("Baselines")[1]


def test_a_plan_without_carbon_figures_has_no_carbon_section(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "-f", VQA, "--no-baselines")
    assert code == 0 and "Carbon" not in out and "GCO2" not in out


@pytest.mark.parametrize("argv, message", [
    (["--objective", "cost+carbon"], "--objective cost+carbon needs --carbon-price USD_PER_TONNE"),
    (["--objective", "carbon", "--carbon-price", "50"], "--carbon-price is used only with --objective cost+carbon"),
    (["--objective", "cost+carbon", "--carbon-price", "nan"], "--carbon-price must be a number from 0 to 1e9"),
    (["--objective", "cost+carbon", "--carbon-price", "-5"], "--carbon-price must be a number from 0 to 1e9"),
    (["--carbon-budget", "-1"], "--carbon-budget must be a number from 0 to 1e12"),
    (["--carbon-budget", "inf"], "--carbon-budget must be a number from 0 to 1e12"),
    (["--at", "25:00"], "--at must be a UTC time of day HH:MM"),
    (["--at", "9:30"], "--at must be a UTC time of day HH:MM"),
])
def test_carbon_flags_are_checked(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run(capsys, "plan", "-f", VEHICLES, "--no-baselines", *argv)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def test_a_carbon_objective_without_figures_names_what_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "-f", VQA, "--objective", "carbon")
    assert code == 2 and out == ""
    assert "least carbon, then least cost needs the power of every instance group" in err
    assert "... and" in err and "power_w: {idle: W, busy: W}" in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as info:
        main(["plan", "-f", str(VQA), "--objective", "greenest"])
    assert info.value.code == 2
    capsys.readouterr()


def _with_cloud_series(tmp_path: Path, series: str) -> Path:
    folder = tmp_path / "vehicles"
    shutil.copytree(VEHICLES, folder)
    topology = folder / "topology.yaml"
    text = topology.read_text()
    line = next(k for k in text.splitlines() if "carbon_intensity_g_per_kwh: 379.069" in k)
    topology.write_text(text.replace(line, f"      carbon_intensity_g_per_kwh: {series}"))
    return folder


def test_a_series_is_read_at_the_time_asked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The cloud's grid clean at night (UTC): at 03:00 the least-carbon plan is in the cloud and
    greener than by the daily mean; at noon the cloud is dirty and the plan stays in the city."""
    folder = _with_cloud_series(tmp_path, "[{from: '00:00', g_per_kwh: 20}, {from: '06:00', g_per_kwh: 900}]")
    outs = {}
    for at in ("03:00", "12:00", None):
        code, out, _ = run(capsys, "plan", "-f", folder, "--no-baselines", "--objective", "carbon", "--format", "json",
                           *(["--at", at] if at else []))
        assert code == 0
        outs[at] = json.loads(out)
    assert outs["03:00"]["carbon"]["intensity"] == "at 03:00 UTC"
    assert outs[None]["carbon"]["intensity"] == "daily mean"
    night, noon = outs["03:00"], outs["12:00"]
    assert night["carbon"]["total_g_per_hour"] < noon["carbon"]["total_g_per_hour"]
    assert "cloud" in night["carbon"]["by_tier"] and "cloud" not in noon["carbon"]["by_tier"]


def test_a_bad_series_is_refused_with_its_file_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = _with_cloud_series(tmp_path, "\n        - {from: '06:00', g_per_kwh: 300}\n        - {from: '05:00', g_per_kwh: 9}")
    topology = folder / "topology.yaml"
    number = next(i for i, k in enumerate(topology.read_text().splitlines(), start=1) if "'05:00'" in k)
    code, out, err = run(capsys, "plan", "-f", folder)
    assert code == 2 and out == ""
    assert (f"{topology}:{number}: spec.sites[0].carbon_intensity_g_per_kwh[1].from: step 05:00 does not come after "
            "the step before it (06:00) (list the steps in time order, each once)") in err
