"""`jellybean split`: a torch-export network cut at layer boundaries; every cut's head then tail equals
the whole network; on a paid uplink with a small hub, the MILP picks a cut over "all here" and "all
there", cheaper than the best unsplit plan; served end to end with the whole network's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jellybean.cli import main  # noqa: E402
from jellybean.split import ALEXNET_INPUT, alexnet, export_alexnet, find_cuts, split_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ROOT / "workflows" / "split"


def test_every_cut_of_a_graph_gives_the_whole_networks_outputs() -> None:
    model = alexnet()
    batch = torch.export.Dim("batch", min=1, max=64)
    module = torch.export.export(model, (torch.zeros(2, *ALEXNET_INPUT),), dynamic_shapes=({0: batch},)).module()
    cuts = find_cuts(module)
    assert len(cuts) == 19  # after each of AlexNet's 20 layers but the last: it is a chain
    x = torch.randn(3, *ALEXNET_INPUT)
    with torch.no_grad():
        whole = model(x)
        for cut in cuts:
            head, tail = split_module(module, cut)
            out = tail(head(x))
            out = out[0] if isinstance(out, (tuple, list)) else out
            torch.testing.assert_close(out, whole, rtol=1e-5, atol=1e-6)


def test_a_residual_block_is_never_cut_inside() -> None:
    class Residual(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

        def forward(self, x):
            y = torch.relu(self.a(x))
            return self.b(y) + x  # x crosses every point between its use by a and the sum

    module = torch.export.export(Residual().eval(), (torch.zeros(2, 8),)).module()
    cuts = find_cuts(module)
    names = [n.name for n in module.graph.nodes]
    assert all(names.index(c) >= names.index("add") for c in cuts) or not cuts


@pytest.fixture(scope="module")
def split_docs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("split")
    store = folder / "models"
    export_alexnet(store / "demo" / "alexnet.pt2")
    from jellybean.artifacts import sha256_file

    zoo = (SPLIT / "zoo.yaml").read_text()
    committed = zoo.split("sha256: ")[1].split("}")[0]
    (folder / "zoo.yaml").write_text(zoo.replace(committed, sha256_file(store / "demo" / "alexnet.pt2")))
    assert main(["profile", "-f", str(folder / "zoo.yaml"), "--model-store", str(store), "--batch-sizes", "1,4",
                 "--repeats", "3", "--out", str(folder / "zoo.yaml")]) == 0
    assert main(["split", "-f", str(folder / "zoo.yaml"), "--variant", "alexnet", "--model-store", str(store),
                 "--max-cuts", "1", "--batch-sizes", "1,4", "--repeats", "3", "--out", str(folder / "zoo-split.yaml"),
                 "--workflow", str(SPLIT / "workflow.yaml"), "--stage", "classify",
                 "--out-workflow", str(folder / "workflow-split.yaml")]) == 0
    return {"folder": folder, "store": store}


def test_the_planner_puts_the_head_at_the_hub_and_the_tail_in_the_cloud_for_less(split_docs: dict) -> None:
    from jellybean.optimizer import plan as make_plan
    from jellybean.spec import load_bundle

    folder = split_docs["folder"]
    split = make_plan(load_bundle([folder / "zoo-split.yaml", SPLIT / "topology.yaml", folder / "workflow-split.yaml"]),
                      baselines=False)
    whole = make_plan(load_bundle([folder / "zoo.yaml", SPLIT / "topology.yaml", SPLIT / "workflow.yaml"]),
                      baselines=False)
    by_stage = {a.stage: a for a in split.assignments}
    assert by_stage["classify-head"].variant == by_stage["classify-tail"].variant
    assert by_stage["classify-head"].variant.startswith("cut-")
    assert (by_stage["classify-head"].site, by_stage["classify-tail"].site) == ("hub", "cloud")
    (only,) = whole.assignments
    assert only.site == "cloud"  # unsplit: the whole network does not fit the hub's memory, so all there
    assert split.cost.total_per_hour < 0.5 * whole.cost.total_per_hour  # the raw frames' egress is what it saves


def test_the_split_plan_serves_the_whole_networks_outputs(split_docs: dict) -> None:
    from jellybean.optimizer import plan as make_plan
    from jellybean.runtime.dataplane import Pipeline
    from jellybean.runtime.replicas import InProcessBackend
    from jellybean.runtime.worker import COMPLETED
    from jellybean.spec import load_bundle
    from tests.runtime.inprocess import ends, inject

    folder = split_docs["folder"]
    workflow = (folder / "workflow-split.yaml").read_text().replace("replay: noise-images", "ingest: http")
    (folder / "workflow-http.yaml").write_text(workflow)
    bundle = load_bundle([folder / "zoo-split.yaml", SPLIT / "topology.yaml", folder / "workflow-http.yaml"])
    plan = make_plan(bundle, baselines=False)
    backend = InProcessBackend()
    p = Pipeline(bundle, plan, backend=backend, model_store=split_docs["store"], data_token="t", report_interval_s=3600.0)
    try:
        p.start()
        x = np.random.default_rng(4).standard_normal((5, *ALEXNET_INPUT)).astype(np.float32)
        answers = ends(p, inject(p, [{"image": row} for row in x], site="cam-1", source="camera", reply=True), 60)
        with torch.no_grad():
            expected = alexnet()(torch.from_numpy(x)).numpy()
        results = sorted(answers.values(), key=lambda a: int(a[1]["frame_id"].rsplit("#", 1)[1]))
        for k, (state, result) in enumerate(results):
            assert state == COMPLETED
            np.testing.assert_allclose(result["outputs"]["scores"], expected[k], rtol=1e-4, atol=1e-5)
            assert result["outputs"]["label"] == int(np.argmax(expected[k]))
    finally:
        p.stop(drain=False)
        backend.close()
