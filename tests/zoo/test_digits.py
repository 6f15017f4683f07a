from __future__ import annotations

import numpy as np
import pytest

from jellybean.zoo import digits


def test_frames_are_deterministic_and_well_formed() -> None:
    a, starts = digits.frames_with_starts("train", 40, seed=3)
    b = digits.frames("train", 40, seed=3)
    assert len(a) == len(b) == 40
    for i, (x, y, columns) in enumerate(zip(a, b, starts)):
        assert x["frame_id"] == y["frame_id"] == i
        assert x["truth"] == y["truth"] and np.array_equal(x["image"], y["image"])
        assert x["sent_at"] == 0.0 and set(x) == {"frame_id", "image", "truth", "sent_at"}
        assert x["image"].dtype == np.float32 and x["image"].shape == (8, 48)
        assert x["image"].min() >= 0.0 and x["image"].max() <= 1.0
        assert 1 <= len(x["truth"]) <= 4 and len(columns) == len(x["truth"])
        assert all(isinstance(d, int) and 0 <= d <= 9 for d in x["truth"])
        assert columns == sorted(columns) and columns[0] >= 0 and columns[-1] + 8 <= 48
        assert all(b - a >= 9 for a, b in zip(columns, columns[1:]))  # 8 wide + at least 1 blank column
    assert not np.array_equal(digits.frames("train", 5, seed=4)[0]["image"], a[0]["image"])
    assert not np.array_equal(digits.frames("test", 1, seed=3)[0]["image"], a[0]["image"])
    counts = {len(f["truth"]) for f in a}
    assert counts == {1, 2, 3, 4}


def test_splits_are_disjoint_and_cover_the_dataset() -> None:
    train, test = set(digits.split_indices("train")), set(digits.split_indices("test"))
    assert not train & test
    assert len(train | test) == 1797 and len(train) == 1258
    with pytest.raises(ValueError):
        digits.frames("validation", 1)


def test_frames_hold_the_split_images() -> None:
    """The digit pixels of a test frame are (up to noise) one of the test images, never a train one."""
    (frame,), (columns,) = digits.frames_with_starts("test", 1, seed=0)
    test_images, _ = digits.digit_images("test")
    train_images, _ = digits.digit_images("train")
    for column in columns:
        window = frame["image"][:, column:column + 8]
        assert np.abs(test_images - window).max(axis=(1, 2)).min() < 0.3
        distance_train = np.abs(train_images - window).max(axis=(1, 2)).min()
        distance_test = np.abs(test_images - window).max(axis=(1, 2)).min()
        assert distance_test < distance_train or distance_train > 0.3


def test_crop_clips_into_the_frame() -> None:
    image = np.arange(8 * 48, dtype=np.float32).reshape(8, 48)
    assert digits.crop(image, -3).shape == (8, 8) and digits.crop(image, -3)[0, 0] == 0
    assert digits.crop(image, 45)[0, -1] == 47
