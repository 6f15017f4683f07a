from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from jellybean.zoo import digits
from jellybean.zoo.registry import LOADERS, MissingWeights, UnknownLoader, load_runner, loader_names, weights_path
from jellybean.zoo.runner import AggregatorRunner, ClassifierRunner, DetectorRunner, pick_starts

PASS = ("frame_id", "truth", "sent_at")


def _stamp(payloads: list[dict]) -> list[dict]:
    return [{**p, "sent_at": 100.0 + i} for i, p in enumerate(payloads)]


def test_registry_names() -> None:
    assert loader_names() == list(LOADERS)
    tasks = {}
    for spec in LOADERS.values():
        tasks.setdefault(spec.task, []).append(spec.name)
    assert len(tasks["digit-detection"]) == 3 and len(tasks["digit-classification"]) == 4
    assert tasks["reading-aggregation"] == ["digits-aggregator"]
    assert LOADERS["digits-classifier-cnn-large-int8"].precision == "int8"


@pytest.mark.parametrize("name", ["nope", "../digits/digits-detector-tiny", "os.system", "jellybean.zoo.models:MLP",
                                  "/tmp/x.pt", ""])
def test_unknown_loader_refused(name: str, tmp_path: Path) -> None:
    with pytest.raises(UnknownLoader) as info:
        load_runner(name, tmp_path)
    assert isinstance(info.value, KeyError)
    assert "unknown model loader" in str(info.value) and "digits-detector-tiny" in str(info.value)


def test_missing_or_tampered_weights_refused(quick_zoo: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingWeights, match="jellybean zoo build"):
        load_runner("digits-classifier-mlp", tmp_path)
    (tmp_path / "digits").mkdir()
    (tmp_path / "digits" / "manifest.json").write_text((quick_zoo / "digits" / "manifest.json").read_text())
    path = weights_path(tmp_path, "digits-classifier-mlp")
    data = bytearray(weights_path(quick_zoo, "digits-classifier-mlp").read_bytes())
    data[-30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(MissingWeights, match="SHA-256"):
        load_runner("digits-classifier-mlp", tmp_path)


def test_load_runner_sets_threads(quick_zoo: Path) -> None:
    before = torch.get_num_threads()
    try:
        load_runner("digits-classifier-mlp", quick_zoo, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["digits-detector-tiny", "digits-detector-small", "digits-detector-large"])
def test_detector_contract(quick_zoo: Path, name: str) -> None:
    runner = load_runner(name, quick_zoo)
    frames = _stamp(digits.frames("test", 12, seed=1))
    frames.append({"frame_id": 99, "image": np.zeros((8, 48), np.float32), "truth": [1], "sent_at": 7.0})
    outputs = runner(frames)
    assert len(outputs) == len(frames)
    for frame, messages in zip(frames, outputs):
        assert messages, "a frame is never lost"
        for k, m in enumerate(messages):
            assert {key: m[key] for key in PASS} == {key: frame[key] for key in PASS}
            assert set(m) == {"frame_id", "index", "count", "image", "truth", "sent_at"}
            assert m["index"] == k
            if m["count"] == 0:
                assert len(messages) == 1 and m["image"] is None
            else:
                assert m["count"] == len(messages)
                assert m["image"].shape == (8, 8) and m["image"].dtype == np.float32
    assert runner([]) == []


def test_detector_sentinel_when_nothing_found() -> None:
    class Nothing(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 48), -20.0)

    frames = digits.frames("test", 3)
    outputs = DetectorRunner(Nothing())(frames)
    assert [len(o) for o in outputs] == [1, 1, 1]
    for frame, (m,) in zip(frames, outputs):
        assert m == {"frame_id": frame["frame_id"], "truth": frame["truth"], "sent_at": 0.0, "index": 0, "count": 0,
                     "image": None}


def test_pick_starts_suppresses_neighbours() -> None:
    p = np.zeros(48)
    p[[3, 4, 12, 13, 30, 45]] = [0.9, 0.95, 0.8, 0.7, 0.4, 0.99]  # 45 cannot start a box; 30 is too weak
    assert pick_starts(p) == [4, 13]  # 3 and 12 lie within 8 columns of a stronger start


@pytest.mark.parametrize("name", ["digits-classifier-mlp", "digits-classifier-cnn", "digits-classifier-cnn-large",
                                  "digits-classifier-cnn-large-int8"])
def test_classifier_contract_one_forward_pass(quick_zoo: Path, name: str) -> None:
    runner = load_runner(name, quick_zoo)
    assert isinstance(runner, ClassifierRunner)
    calls = []
    runner.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    frames, starts = digits.frames_with_starts("test", 6, seed=2)
    crops = _stamp([{"frame_id": f["frame_id"], "index": k, "count": len(columns), "truth": f["truth"],
                     "sent_at": 0.0, "image": digits.crop(f["image"], c)}
                    for f, columns in zip(frames, starts) for k, c in enumerate(columns)])
    crops.insert(2, {"frame_id": 50, "index": 0, "count": 0, "image": None, "truth": [3], "sent_at": 1.5})
    outputs = runner(crops)
    assert calls == [sum(c["image"] is not None for c in crops)]  # the batch, once
    assert len(outputs) == len(crops)
    for crop, messages in zip(crops, outputs):
        (m,) = messages
        assert set(m) == {"frame_id", "index", "count", "digit", "truth", "sent_at"}
        assert {k: m[k] for k in PASS + ("index", "count")} == {k: crop[k] for k in PASS + ("index", "count")}
        if crop["image"] is None:
            assert m["digit"] is None
        else:
            assert isinstance(m["digit"], int) and 0 <= m["digit"] <= 9
    only_sentinel = runner([crops[2]])
    assert only_sentinel[0][0]["digit"] is None


def _predictions(frames: list[dict]) -> list[dict]:
    out = []
    for f in frames:
        n = len(f["truth"])
        out += [{"frame_id": f["frame_id"], "index": k, "count": n, "digit": d, "truth": f["truth"],
                 "sent_at": f["sent_at"]} for k, d in enumerate(f["truth"])]
    return out


def test_aggregator_joins_each_frame_once_in_any_order(quick_zoo: Path) -> None:
    frames = _stamp(digits.frames("test", 40, seed=5))
    messages = _predictions(frames)
    messages.append({"frame_id": 1000, "index": 0, "count": 0, "digit": None, "truth": [4, 2], "sent_at": 3.0})
    wrong = next(m for m in messages if m["frame_id"] == 7)
    wrong["digit"] = (wrong["digit"] + 1) % 10
    random.Random(0).shuffle(messages)  # out of order, interleaved across frames
    aggregator = load_runner("digits-aggregator", quick_zoo)
    assert isinstance(aggregator, AggregatorRunner)
    outputs = []
    for start in range(0, len(messages), 7):  # arbitrary batches
        batch = messages[start:start + 7]
        result = aggregator(batch)
        assert len(result) == len(batch) and all(len(r) <= 1 for r in result)
        outputs += [m for r in result for m in r]
    assert sorted(m["frame_id"] for m in outputs) == sorted([f["frame_id"] for f in frames] + [1000])
    assert not aggregator.pending
    by_id = {m["frame_id"]: m for m in outputs}
    for f in frames:
        m = by_id[f["frame_id"]]
        assert set(m) == {"frame_id", "reading", "truth", "correct", "sent_at"}
        assert m["sent_at"] == f["sent_at"] and m["truth"] == f["truth"]
        assert m["correct"] == (f["frame_id"] != 7)
        assert (m["reading"] == f["truth"]) == m["correct"]
    assert by_id[1000]["reading"] == [] and by_id[1000]["correct"] is False


def test_aggregator_buffer_is_bounded() -> None:
    aggregator = AggregatorRunner(max_pending=2)
    partial = [{"frame_id": i, "index": 0, "count": 2, "digit": 1, "truth": [1, 1], "sent_at": 0.0} for i in range(3)]
    assert aggregator(partial) == [[], [], []]
    assert list(aggregator.pending) == [1, 2] and aggregator.dropped == 1
    done = aggregator([{**partial[2], "index": 1}])
    assert done[0][0]["reading"] == [1, 1] and list(aggregator.pending) == [1]


def test_end_to_end_pipeline_reads_frames(quick_zoo: Path) -> None:
    detector = load_runner("digits-detector-large", quick_zoo)
    classifier = load_runner("digits-classifier-cnn", quick_zoo)
    aggregator = load_runner("digits-aggregator", quick_zoo)
    frames = digits.frames("test", 50, seed=9)
    crops = [m for out in detector(frames) for m in out]
    readings = [m for out in aggregator([m for out in classifier(crops) for m in out]) for m in out]
    assert sorted(r["frame_id"] for r in readings) == list(range(50))
    assert sum(r["correct"] for r in readings) >= 20  # even a quick build reads many frames right
