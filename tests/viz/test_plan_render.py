"""``jellybean plan --render``: the picture of a plan holds what the plan says, as text a reader
(and this test) can find, and stays within its caps for a city."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from jellybean.cli import main
from jellybean.generate.city import write_city
from jellybean.optimizer import Plan, plan
from jellybean.spec.bundle import Bundle, load_bundle
from jellybean.viz.pareto import with_accuracy_target
from jellybean.viz.plan_render import layout_plan, render_plan
from tests.viz.pictures import png_size, svg_text

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ["vqa-medium", "vehicle-tracking"]


@pytest.fixture(scope="module", params=WORKFLOWS)
def planned(request: pytest.FixtureRequest) -> tuple[Bundle, Plan]:
    bundle = load_bundle([ROOT / "workflows" / request.param])
    return bundle, plan(bundle, baselines=False)


def test_svg_shows_stages_variants_sites_and_flows(planned: tuple[Bundle, Plan], tmp_path: Path) -> None:
    bundle, result = planned
    path = render_plan(result, bundle.topology, tmp_path / "plan.svg")
    text = svg_text(path)
    assert result.cost is not None
    assert f"{result.workflow}: ${result.cost.total_per_hour:.3f}/h" in text
    assert f"accuracy {result.accuracy:.2f}" in text
    for a in result.assignments:  # every placement, with its variant, in its site's box
        assert f"{a.stage}: {a.variant}, share" in text
    for site in {u.site for u in result.instances} | {end for link in result.links for end in (link.from_, link.to)}:
        assert site in text
    for use in result.instances:
        assert f"{use.instance}" in text and f"{use.count}/{use.available} used" in text
    assert re.search(r"\u2191 [\d.,]+ GB/h", text), "no uplink flow label"
    for tier in {s.tier.value for s in bundle.topology.spec.sites}:
        assert tier in text.splitlines()


def test_png_is_a_png_of_sensible_size(planned: tuple[Bundle, Plan], tmp_path: Path) -> None:
    bundle, result = planned
    width, height = png_size(render_plan(result, bundle.topology, tmp_path / "plan.png"))
    assert 600 <= width <= 4000 and 300 <= height <= 3000


def test_shares_of_each_stage_add_up_to_one(planned: tuple[Bundle, Plan]) -> None:
    """The shares in the boxes, times the sites each box stands for, cover each stage's requests."""
    bundle, result = planned
    layout = layout_plan(result, bundle.topology)
    shown: dict[str, float] = {}
    for box in layout.boxes.values():
        for text, kind in box.lines:
            match = re.fullmatch(r"(\S+): \S+, share ([\d.]+)%( each)?", text)
            if kind == "stage" and match:
                sites = len(box.members) if match[3] else 1
                shown[match[1]] = shown.get(match[1], 0.0) + float(match[2]) * sites
    assert set(shown) == set(result.models)
    for stage, percent in shown.items():
        assert percent == pytest.approx(100.0, abs=0.1 * len(result.assignments)), stage


def test_identical_sites_are_one_box_and_every_site_is_somewhere() -> None:
    bundle = load_bundle([ROOT / "workflows" / "vehicle-tracking"])
    layout = layout_plan(plan(bundle, baselines=False), bundle.topology)
    titles = {box.title for box in layout.boxes.values()}
    assert {"hub-1 \u00d72", "cam-01 \u00d712"} <= titles
    assert "hub-2" not in layout.boxes  # drawn in hub-1's stack
    drawn = [m for box in layout.boxes.values() for m in box.members]
    assert sorted(drawn) == sorted(s.name for s in bundle.topology.spec.sites)
    assert [band.tier for band in layout.bands] == ["cloud", "edge", "hub", "device"]


def test_a_city_is_capped_per_tier_and_renders_quickly(tmp_path: Path) -> None:
    write_city(100, tmp_path / "city")
    bundle = load_bundle([tmp_path / "city"])
    result = plan(bundle, baselines=False, time_limit_s=30)
    layout = layout_plan(result, bundle.topology, max_boxes_per_tier=3)
    for band in layout.bands:
        assert 1 <= len(band.boxes) <= 3
    drawn = [m for box in layout.boxes.values() for m in box.members]
    assert sorted(drawn) == sorted(s.name for s in bundle.topology.spec.sites)
    more = [box for box in layout.boxes.values() if box.more]
    assert more and all(box.title == f"+{len(box.members)} more sites" for box in more)
    placed = {a.site for a in result.assignments}
    hubs = next(band for band in layout.bands if band.tier == "hub")
    assert all(key in placed for key in hubs.boxes if not layout.boxes[key].more)  # placement drawn first
    assert all(f.child in layout.boxes and f.parent in layout.boxes for f in layout.flows)
    started = time.perf_counter()
    text = svg_text(render_plan(result, bundle.topology, tmp_path / "city.svg"))
    assert time.perf_counter() - started < 10
    assert "more sites" in text and "GB/h over" in text


def test_an_infeasible_plan_is_refused(tmp_path: Path) -> None:
    bundle = with_accuracy_target(load_bundle([ROOT / "workflows" / "vehicle-tracking"]), 99.0)
    result = plan(bundle, baselines=False)
    assert not result.feasible
    with pytest.raises(ValueError, match="infeasible"):
        render_plan(result, bundle.topology, tmp_path / "plan.svg")
    assert not (tmp_path / "plan.svg").exists()


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_render_writes_the_picture_and_keeps_stdout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "pictures" / "plan.png"
    code = main(["plan", "-f", str(ROOT / "workflows" / "vehicle-tracking"), "--no-baselines", "--render", str(path)])
    out, err = capsys.readouterr()
    assert code == 0
    assert out.startswith("Workflow vehicle-tracking: strategy optimal") and "picture" not in out
    assert err.strip() == f"plan picture written to {path}"
    png_size(path)


@pytest.mark.parametrize("name", ["plan.pdf", "plan", "plan.svg.txt"])
def test_cli_render_refuses_other_file_types(capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str) -> None:
    code = main(["plan", "-f", str(ROOT / "workflows" / "vqa-medium"), "--render", str(tmp_path / name)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("error: --render: ") and "must end in .svg or .png" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_render_of_an_infeasible_plan_says_so(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    folder = tmp_path / "vt"
    folder.mkdir()
    for source in (ROOT / "workflows" / "vehicle-tracking").glob("*.yaml"):
        text = source.read_text()
        if source.name == "workflow.yaml":
            assert "accuracy: 33.0" in text
            text = text.replace("accuracy: 33.0", "accuracy: 99.0")
        (folder / source.name).write_text(text)
    path = tmp_path / "plan.svg"
    code = main(["plan", "-f", str(folder), "--no-baselines", "--render", str(path)])
    out, err = capsys.readouterr()
    assert code == 1
    assert "No feasible plan" in out
    assert "no picture to draw" in err and "Traceback" not in err
    assert not path.exists()
