"""Payloads become frames: what each content type decodes to, and what is refused, with the reason."""

from __future__ import annotations

import io
import json
import pickle
import wave

import numpy as np
import pytest
from PIL import Image

from jellybean.runtime.sources import MAX_ARRAY_BYTES, PayloadError, decode_payload

FRAME = np.linspace(0, 1, 8 * 48, dtype=np.float32).reshape(8, 48)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def png(array: np.ndarray, kind: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=kind)
    return buffer.getvalue()


def wav(samples: np.ndarray, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(samples.astype(np.int16).tobytes())
    return buffer.getvalue()


def test_npy_with_dtype_and_shape_checked() -> None:
    fields = decode_payload(npy(FRAME), "application/x-npy", array="image", dtype="float32", shape=(8, 48))
    assert fields["image"].dtype == np.float32 and np.array_equal(fields["image"], FRAME)
    with pytest.raises(PayloadError, match="shape 4x48, expected 8x48"):
        decode_payload(npy(FRAME[:4]), "application/x-npy", array="image", shape=(8, 48))
    fields = decode_payload(npy(FRAME[:3]), "application/x-npy", array="image", shape=(-1, 48))
    assert fields["image"].shape == (3, 48)


def test_a_pickled_npy_is_refused_without_being_loaded() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PayloadError, match="not a .npy array"):
        decode_payload(buffer.getvalue(), "application/x-npy", array="image")
    with pytest.raises(PayloadError, match="not a .npy array"):
        decode_payload(pickle.dumps(FRAME), "application/x-npy", array="image")


def test_png_and_jpeg_become_arrays_and_floats_when_asked() -> None:
    grey = (FRAME * 255).astype(np.uint8)
    fields = decode_payload(png(grey), "image/png", array="image", dtype="float32", shape=(8, 48))
    assert fields["image"].dtype == np.float32 and np.allclose(fields["image"], grey / 255.0)
    raw = decode_payload(png(grey), "image/png", array="image")["image"]
    assert raw.dtype == np.uint8 and np.array_equal(raw, grey)
    jpeg = decode_payload(png(np.stack([grey] * 3, axis=-1), "JPEG"), "image/jpeg", array="image")["image"]
    assert jpeg.shape == (8, 48, 3)
    with pytest.raises(PayloadError, match="not a PNG image"):
        decode_payload(png(grey, "JPEG"), "image/png", array="image")
    with pytest.raises(PayloadError, match="not a readable PNG"):
        decode_payload(b"\x89PNG garbage", "image/png", array="image")


def test_a_decompression_bomb_is_refused() -> None:
    big = Image.new("L", (10_000, 10_000))  # 100 megapixels, a few kB as PNG
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 1_000_000
    with pytest.raises(PayloadError):
        decode_payload(buffer.getvalue(), "image/png", array="image")


def test_wav_becomes_samples_in_range() -> None:
    samples = (np.sin(np.linspace(0, 20, 1600)) * 20_000).astype(np.int16)
    fields = decode_payload(wav(samples), "audio/wav", array="audio", dtype="float32")
    assert fields["audio"].dtype == np.float32 and fields["audio"].shape == (1600,)
    assert np.abs(fields["audio"]).max() <= 1.0
    with pytest.raises(PayloadError, match="not a readable WAV"):
        decode_payload(b"RIFF....WAVEjunk", "audio/wav", array="audio")


def test_json_arrays_and_objects() -> None:
    fields = decode_payload(json.dumps(FRAME.tolist()).encode(), "application/json", array="image", dtype="float32",
                            shape=(8, 48))
    assert np.allclose(fields["image"], FRAME)
    fields = decode_payload(json.dumps({"image": [[1, 2], [3, 4]], "camera": "door"}).encode(), "application/json",
                            array="image")
    assert fields["camera"] == "door" and fields["image"].tolist() == [[1, 2], [3, 4]]
    for body, message in [(b"{", "invalid JSON"), (b'{"x": 1}', "needs the field 'image'"),
                          (b'[[1, 2], [3]]', "array of numbers"), (b'{"image": [1], "frame_id": 3}', "set by the runtime"),
                          (b'{"image": [1], "extra": [1, 2]}', "only scalar extra fields")]:
        with pytest.raises(PayloadError, match=message):
            decode_payload(body, "application/json", array="image")


def test_an_unsupported_type_is_refused_as_such() -> None:
    with pytest.raises(PayloadError) as info:
        decode_payload(b"hello", "text/plain", array="image")
    assert info.value.unsupported and "unsupported content type 'text/plain'" in str(info.value)


def test_a_huge_array_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from jellybean.runtime import sources

    monkeypatch.setattr(sources, "MAX_ARRAY_BYTES", 1000)
    with pytest.raises(PayloadError, match="more than 1000"):
        decode_payload(npy(np.zeros(1000, dtype=np.float32)), "application/x-npy", array="image")
    assert MAX_ARRAY_BYTES > 1000
