"""The speech workflow's plugin: its dataset (``speech-chunks``) and its cloud stage (``speech-archive``),
registered under ``jellybean.datasets`` and ``jellybean.runners`` in ``pyproject.toml``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jellybean.plugins import default_cache_dir


def speech_chunks(seed: int) -> list[dict]:
    """Labelled 36 ms chunks of espeak-ng speech, silence and noise (:mod:`jellybean.speech.audio`):
    ``{"audio": float32[576], "truth": bool}``, in stream order."""
    from jellybean.speech.audio import labelled_chunks

    audio, truth = labelled_chunks(default_cache_dir(), seed)
    return [{"audio": a, "truth": bool(t)} for a, t in zip(audio, truth)]


def speech_archive(*, cache_dir: Path, threads: int = 1):  # noqa: ANN201 - a runner (jellybean.plugins)
    """The cloud end of the speech workflow: what reaches it is speech only (the VAD dropped the rest
    on the way). It keeps, per chunk, the VAD's probability, the chunk's loudness and its duration:
    where an ASR model would run, which no package here carries."""

    def run(messages: list[dict]) -> list[list[dict]]:
        out = []
        for m in messages:
            audio = np.asarray(m.get("audio", ()), dtype=np.float32)
            new = audio[-512:] if audio.size else audio
            rms = float(np.sqrt(np.mean(new**2))) if new.size else 0.0
            out.append([{"speech_prob": float(np.asarray(m.get("speech_prob", 0.0)).reshape(-1)[0]),
                         "rms_db": round(20.0 * np.log10(max(rms, 1e-6)), 2), "speech_ms": 32.0}])
        return out

    return run


speech_archive.task = "speech-archive"  # type: ignore[attr-defined]
speech_archive.description = "keeps the speech chunks' VAD probability and loudness (where ASR would run)"  # type: ignore[attr-defined]
