"""Labelled audio for voice-activity detection, made here: espeak-ng speech, mixed with silence and
noise at known places, cut into the chunks a microphone sends.

Why made, not downloaded: nothing is fetched at run time, and the labels must be exact. Each
utterance is synthesised alone (``espeak-ng --stdout``, 22,050 Hz, resampled to 16 kHz), so where it
speaks is known from its own clean signal: a 10 ms frame is speech when its RMS is above 5% of the
utterance's loudest frame (the pauses between words are not). Utterances are placed in a stream after
gaps of 0.3-1.2 s, the whole stream gets background noise (white, at an amplitude of 0.002-0.02),
and a fifth of the gaps get a louder noise burst (non-speech that a detector must not take for
speech).

A chunk is what Silero VAD reads at 16 kHz: 512 new samples (32 ms) after the 64 before them
(``CHUNK_SAMPLES = 576``); its label is whether at least half of its 512 new samples are speech.
"""

from __future__ import annotations

import hashlib
import io
import os
import secrets
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

RATE_HZ = 16_000
HOP_SAMPLES = 512
CONTEXT_SAMPLES = 64
CHUNK_SAMPLES = HOP_SAMPLES + CONTEXT_SAMPLES
FRAME_SAMPLES = 160  # 10 ms

SENTENCES = [
    "turn on the lights in the kitchen", "what is the weather like tomorrow", "seven", "yes", "no",
    "call the front desk please", "stop", "the delivery van is parked outside the north gate",
    "play some music", "how far is the nearest station", "left", "right", "open the garage door",
    "set a timer for ten minutes", "thank you very much", "the camera on aisle four is offline",
    "go", "remind me to buy milk", "is anybody there", "lower the volume a little",
]
VOICES = ["en-us", "en-gb", "en-us+m3", "en-us+f2", "en-gb+f4", "en-us+m7", "en-gb-scotland", "en-us+f5"]
#: Bump when the recipe changes: cached datasets of another version are rebuilt.
VERSION = 1


class MissingTool(RuntimeError):
    """espeak-ng is not installed (Debian: ``apt-get install espeak-ng``)."""


def _speak(text: str, voice: str, speed_wpm: int) -> np.ndarray:
    binary = shutil.which("espeak-ng")
    if binary is None:
        raise MissingTool("the speech dataset is synthesised with espeak-ng, which is not installed here "
                          "(Debian: apt-get install espeak-ng; `make demo-audio` installs it)")
    wav = subprocess.run([binary, "-v", voice, "-s", str(speed_wpm), "--stdout", text], capture_output=True,
                         check=True, timeout=30).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
    from scipy.signal import resample_poly

    g = np.gcd(RATE_HZ, rate)
    return resample_poly(samples, RATE_HZ // g, rate // g).astype(np.float32)


def _active(clean: np.ndarray) -> np.ndarray:
    """Per sample: whether its 10 ms frame of the clean utterance is speech (RMS > 5% of the loudest)."""
    frames = len(clean) // FRAME_SAMPLES
    rms = np.sqrt(np.mean(clean[: frames * FRAME_SAMPLES].reshape(frames, FRAME_SAMPLES) ** 2, axis=1))
    on = rms > 0.05 * rms.max() if frames else np.zeros(0, bool)
    mask = np.repeat(on, FRAME_SAMPLES)
    return np.concatenate([mask, np.zeros(len(clean) - len(mask), bool)])


def stream(seed: int = 0, utterances: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """A labelled stream: samples at 16 kHz and, per sample, whether it is speech."""
    rng = np.random.default_rng(seed)
    pieces, labels = [], []
    for _ in range(utterances):
        gap = int(rng.uniform(0.3, 1.2) * RATE_HZ)
        silence = np.zeros(gap, np.float32)
        if rng.random() < 0.2:  # a noise burst in the gap: loud, and not speech
            start, length = int(rng.integers(0, gap // 2)), int(rng.integers(gap // 8, gap // 2))
            silence[start:start + length] += (rng.standard_normal(length) * rng.uniform(0.05, 0.2)).astype(np.float32)
        pieces.append(silence)
        labels.append(np.zeros(gap, bool))
        text = SENTENCES[int(rng.integers(len(SENTENCES)))]
        voice = VOICES[int(rng.integers(len(VOICES)))]
        clean = _speak(text, voice, int(rng.integers(130, 200)))
        clean *= np.float32(rng.uniform(0.3, 0.9) / max(1e-6, float(np.abs(clean).max())))
        pieces.append(clean)
        labels.append(_active(clean))
    samples = np.concatenate(pieces)
    samples += (rng.standard_normal(len(samples)) * rng.uniform(0.002, 0.02)).astype(np.float32)
    return np.clip(samples, -1.0, 1.0).astype(np.float32), np.concatenate(labels)


def chunks(samples: np.ndarray, speech: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chunks of ``CHUNK_SAMPLES`` (64 of context, 512 new) every 512 samples, and their labels."""
    count = (len(samples) - CONTEXT_SAMPLES) // HOP_SAMPLES
    starts = np.arange(count) * HOP_SAMPLES
    audio = np.stack([samples[s:s + CHUNK_SAMPLES] for s in starts]).astype(np.float32)
    truth = np.array([speech[s + CONTEXT_SAMPLES:s + CHUNK_SAMPLES].mean() >= 0.5 for s in starts])
    return audio, truth


def labelled_chunks(cache_dir: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The chunks of the stream of ``seed``, cached in ``cache_dir/speech``."""
    key = hashlib.sha256(f"v{VERSION}/{seed}".encode()).hexdigest()[:12]
    path = Path(cache_dir) / "speech" / f"chunks-{key}.npz"
    if path.is_file():
        with np.load(path) as data:
            return data["audio"], data["truth"]
    audio, truth = chunks(*stream(seed))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several sources may build it at once (each microphone's actor): each writes its own file and
    # renames it into place, so a reader finds a whole file or none.
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp.npz")
    np.savez_compressed(tmp, audio=audio, truth=truth)
    tmp.replace(path)
    return audio, truth
