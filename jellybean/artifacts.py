"""Artifact variants: weights files in the operator's model store, verified, loaded and run.

A ModelZoo variant with ``artifact: {format, uri, sha256}`` is served from a file, not from code:

- **The store.** ``uri`` is a path inside the model store, a directory the operator names
  (``--model-store DIR``; ``$JELLYBEAN_MODEL_STORE``; the chart mounts a volume there). Nothing
  outside it is ever read: the path may not hold ``..`` (the document is refused), and the file it
  names, once every symlink is resolved, must lie inside the store's own resolved root; it must be a
  regular file (a FIFO or a device is refused without blocking on it: the file is opened
  non-blocking and checked with ``fstat``) and at most ``max_bytes`` long. Remote stores (S3, GCS,
  HTTP, an OCI registry) could come later as a fetch into this same directory, checked the same way:
  the digest is what is trusted, not the place.
- **The digest.** The file's SHA-256 is computed over the bytes read, every time it is loaded, and
  the model is built from *those* bytes (never by reopening the path), so what runs is what was
  checked.
- **Formats.** ``onnx`` runs on onnxruntime's CPU provider, with its intra-op threads set to the
  instance's CPU share and one inter-op thread; ``torchscript`` is a ``torch.jit.save`` file;
  ``torch-export`` a ``torch.export.save`` ``.pt2`` ExportedProgram (run through its ``module()``).
  Both torch formats use ``torch.set_num_threads(threads)``.
- **The signature** names the inputs and outputs (dtype, shape, the batch dimension as ``-1`` or
  ``batch``). It is checked against the artifact before anything is served: ONNX against the graph's
  declared inputs and outputs; the torch formats by a trial run on a zero batch.

The message contract. A message is a dict of named values (numpy arrays, numbers, strings, lists)
plus the runtime's metadata (``frame_id``, ``source``, ``site``, ``received_at``...). An artifact
runner reads each input from the message field of the input's name (or its ``field``), after the
variant's ``pre`` steps; stacks the messages of a batch along the batch dimension; runs the model once
per batch; splits every output back into one value per message, named by the output (or its
``field``); applies the ``post`` steps; and hands on, per message, the outputs (and the fields the
variant lists in ``keep``). A post step may drop a message (``keep-if``: fan-out 0) or make several of
it (``fan-out``: one message per item of a list), each of which the next stage receives as a message of
its own. At an output, a result carries the sink's outputs under ``outputs`` (name -> nested lists).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from jellybean.spec.zoo import Artifact, Signature, Step, TensorSpec, Variant

#: Largest artifact file read (a store is the operator's, but a runaway file must not fill memory).
MAX_ARTIFACT_BYTES = 2 * 1024**3
_CHUNK_BYTES = 1024 * 1024

#: ONNX's element types, by the names onnxruntime reports.
_ONNX_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
                "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int16)": "int16",
                "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


class ArtifactError(ValueError):
    """An artifact that cannot be served: a user's or an operator's mistake, said in words."""


def default_model_store() -> Path:
    """``$JELLYBEAN_MODEL_STORE``, else ``$JELLYBEAN_HOME/models``, else ``~/.cache/jellybean/models``."""
    named = os.environ.get("JELLYBEAN_MODEL_STORE")
    if named:
        return Path(named)
    home = os.environ.get("JELLYBEAN_HOME")
    return Path(home) / "models" if home else Path.home() / ".cache" / "jellybean" / "models"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK_BYTES), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelStore:
    """The operator's directory of artifacts; reads only regular files inside it, verified."""

    def __init__(self, root: Path | str, *, max_bytes: int = MAX_ARTIFACT_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    def locate(self, uri: str) -> Path:
        """The file ``uri`` names, resolved, or :class:`ArtifactError` when it is not inside the store."""
        relative = uri.removeprefix("store://")
        parts = relative.split("/")
        if relative.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\x00" in relative:
            raise ArtifactError(f"{uri!r} is not a path inside the model store (no absolute paths, no `..`)")
        try:
            root = self.root.resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise ArtifactError(f"the model store {str(self.root)!r} does not exist ({type(exc).__name__}); "
                                "create it, or name another with --model-store DIR") from exc
        if not root.is_dir():
            raise ArtifactError(f"the model store {str(self.root)!r} is not a directory")
        try:
            target = (root / relative).resolve(strict=True)
        except FileNotFoundError as exc:
            raise ArtifactError(f"{uri!r} is not in the model store {str(self.root)!r}; put the file there "
                                "(or name the store that has it with --model-store DIR)") from exc
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
            raise ArtifactError(f"{uri!r} cannot be resolved in the model store: {type(exc).__name__}: {exc}") from exc
        if not target.is_relative_to(root):
            raise ArtifactError(f"{uri!r} leads outside the model store (a symlink to {str(target)!r}); "
                                "artifacts are read only from inside the store")
        return target

    def read(self, artifact: Artifact) -> bytes:
        """The artifact's bytes, once their SHA-256 matched the document's."""
        path = self.locate(artifact.uri)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise ArtifactError(f"{artifact.uri!r} cannot be opened: {type(exc).__name__}: {exc}") from exc
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactError(f"{artifact.uri!r} is not a regular file (a FIFO, a device or a directory)")
            if info.st_size > self.max_bytes:
                raise ArtifactError(f"{artifact.uri!r} is {info.st_size} bytes, over the {self.max_bytes}-byte "
                                    "limit of one artifact")
            digest = hashlib.sha256()
            chunks = []
            read = 0
            while True:
                block = os.read(fd, _CHUNK_BYTES)
                if not block:
                    break
                read += len(block)
                if read > self.max_bytes:  # grew while being read
                    raise ArtifactError(f"{artifact.uri!r} is over the {self.max_bytes}-byte limit of one artifact")
                digest.update(block)
                chunks.append(block)
        finally:
            os.close(fd)
        found = digest.hexdigest()
        if found != artifact.sha256:
            raise ArtifactError(f"{artifact.uri!r} has SHA-256 {found}, not the {artifact.sha256} the document "
                                "says: the file changed, or the document names the wrong one")
        return b"".join(chunks)


# --- loading ---------------------------------------------------------------------------------------


class _Model(Protocol):
    """A loaded artifact: ``run(inputs by name) -> outputs by name``, and what its graph declares
    (ONNX only: name -> (dtype, shape); None for the torch formats, checked by a trial run)."""

    declared_inputs: dict[str, tuple[str, list]] | None
    declared_outputs: dict[str, tuple[str, list]] | None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class _Onnx:
    def __init__(self, data: bytes, threads: int, outputs: list[str]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are the artifact's business
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ArtifactError(f"not a valid ONNX model: {type(exc).__name__}: {str(exc)[:300]}") from exc
        self.declared_inputs = {i.name: (_ONNX_DTYPES.get(i.type, i.type), list(i.shape)) for i in self.session.get_inputs()}
        self.declared_outputs = {o.name: (_ONNX_DTYPES.get(o.type, o.type), list(o.shape)) for o in self.session.get_outputs()}
        self.outputs = outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self.outputs, feeds)
        return dict(zip(self.outputs, values))


class _Torch:
    declared_inputs = declared_outputs = None

    def __init__(self, module: Any, inputs: list[str], outputs: list[str]) -> None:
        self.module, self.inputs, self.outputs = module, inputs, outputs

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            result = self.module(*[torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in self.inputs])
        if isinstance(result, dict):
            missing = [n for n in self.outputs if n not in result]
            if missing:
                raise ArtifactError(f"the model returned no output named {missing[0]!r} (it returned "
                                    f"{', '.join(map(str, result))})")
            values = [result[n] for n in self.outputs]
        else:
            values = list(result) if isinstance(result, (tuple, list)) else [result]
            if len(values) != len(self.outputs):
                raise ArtifactError(f"the model returned {len(values)} outputs; the signature declares "
                                    f"{len(self.outputs)} ({', '.join(self.outputs)})")
        return {name: v.detach().numpy() if hasattr(v, "detach") else np.asarray(v) for name, v in zip(self.outputs, values)}


def load_model(artifact: Artifact, signature: Signature, data: bytes, *, threads: int = 1) -> _Model:
    """Build the model from verified bytes (:meth:`ModelStore.read`)."""
    inputs = [t.name for t in signature.inputs]
    outputs = [t.name for t in signature.outputs]
    if artifact.format == "onnx":
        return _Onnx(data, threads, outputs)
    import torch

    torch.set_num_threads(threads)
    if artifact.format == "torchscript":
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:
            raise ArtifactError(f"not a valid TorchScript file: {type(exc).__name__}: {str(exc)[:300]}") from exc
        module.eval()
        return _Torch(module, inputs, outputs)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:
        raise ArtifactError(f"not a valid torch.export (.pt2) file: {type(exc).__name__}: {str(exc)[:300]}") from exc
    return _Torch(program.module(), inputs, outputs)


def _concrete(spec: TensorSpec, batch: int) -> tuple[int, ...]:
    return tuple(batch if d in (-1, "batch") else int(d) for d in spec.shape)


def check_signature(model: _Model, signature: Signature, artifact: Artifact) -> None:
    """The declared signature against the artifact: ONNX's graph, or a trial run on a zero batch."""
    if model.declared_inputs is not None and model.declared_outputs is not None:
        for side, declared, specs in (("input", model.declared_inputs, signature.inputs),
                                      ("output", model.declared_outputs, signature.outputs)):
            names = {t.name for t in specs}
            if side == "input":
                for name in declared:
                    if name not in names:
                        raise ArtifactError(f"the ONNX graph has input {name!r}, which the signature does not declare "
                                            f"(declared: {', '.join(sorted(names))})")
            for t in specs:
                if t.name not in declared:
                    raise ArtifactError(f"the signature's {side} {t.name!r} is not in the ONNX graph (its {side}s: "
                                        f"{', '.join(declared)})")
                dtype, shape = declared[t.name]
                if dtype != t.dtype:
                    raise ArtifactError(f"{side} {t.name!r} is {dtype} in the ONNX graph, not {t.dtype}")
                if len(shape) != len(t.shape):
                    raise ArtifactError(f"{side} {t.name!r} has {len(shape)} dimensions in the ONNX graph "
                                        f"({shape}), the signature {len(t.shape)} ({t.shape})")
                for axis, (theirs, ours) in enumerate(zip(shape, t.shape)):
                    if isinstance(theirs, int) and isinstance(ours, int) and ours != -1 and theirs != ours:
                        raise ArtifactError(f"{side} {t.name!r}: dimension {axis} is {theirs} in the ONNX graph, "
                                            f"{ours} in the signature")
                    if isinstance(theirs, int) and theirs > 0 and ours in (-1, "batch") and theirs != 1:
                        raise ArtifactError(f"{side} {t.name!r}: dimension {axis} is the batch in the signature "
                                            f"but fixed at {theirs} in the ONNX graph")
    # Every format: a trial run on a zero batch, whose outputs must have the declared ranks and sizes.
    feeds = {t.name: np.full(_concrete(t, 1), t.fill or 0, dtype=t.dtype) for t in signature.inputs}
    try:
        produced = model.run(feeds)
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"a trial run on a zero batch of the declared inputs failed: {type(exc).__name__}: "
                            f"{str(exc).strip()[:300]}") from exc
    for t in signature.outputs:
        value = produced[t.name]
        if value.ndim != len(t.shape):
            raise ArtifactError(f"output {t.name!r} has {value.ndim} dimensions ({list(value.shape)}) on a trial run, "
                                f"the signature {len(t.shape)} ({t.shape})")
        expected = _concrete(t, 1)
        if tuple(value.shape) != expected:
            raise ArtifactError(f"output {t.name!r} has shape {list(value.shape)} on a batch of 1, the signature "
                                f"says {list(expected)}")
        if str(value.dtype) != t.dtype:
            raise ArtifactError(f"output {t.name!r} is {value.dtype} on a trial run, not {t.dtype}")


def _loaded(variant: Variant, store: ModelStore, *, threads: int, checked: bool = True) -> _Model:
    """``variant``'s artifact read from ``store`` (its digest verified), loaded, and (``checked``)
    held against its signature."""
    if variant.artifact is None or variant.signature is None:
        raise ArtifactError(f"variant {variant.name!r} has no artifact")
    model = load_model(variant.artifact, variant.signature, store.read(variant.artifact), threads=threads)
    if checked:
        check_signature(model, variant.signature, variant.artifact)
    return model


def prove_loadable(variant: Variant, store: ModelStore, *, threads: int = 1) -> None:
    """Read, verify, load and check ``variant``'s artifact (raises :class:`ArtifactError`)."""
    _loaded(variant, store, threads=threads)


# --- steps -----------------------------------------------------------------------------------------


def _decode_image(value: Any, mode: str | None) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(bytes(value))) as image:
        image = image.convert("L" if mode == "gray" else "RGB")
        return np.asarray(image, dtype=np.float32) / 255.0


def _decode_audio(value: Any, rate: int | None) -> np.ndarray:
    import wave

    with wave.open(io.BytesIO(bytes(value))) as w:
        if rate is not None and w.getframerate() != rate:
            raise ValueError(f"audio at {w.getframerate()} Hz; the step expects {rate} Hz")
        width, channels = w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}.get(width)
    if dtype is None:
        raise ValueError(f"{8 * width}-bit WAV samples are not supported (8, 16 or 32)")
    samples = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    samples = (samples - 128.0) / 128.0 if width == 1 else samples / float(2 ** (8 * width - 1))
    return samples.reshape(-1, channels).mean(axis=1)


def _resize(value: np.ndarray, size: list[int]) -> np.ndarray:
    import torch

    array = np.asarray(value, dtype=np.float32)
    tensor = torch.from_numpy(array if array.ndim == 3 else array[..., None]).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)
    out = out[0].permute(1, 2, 0).numpy()
    return out if array.ndim == 3 else out[..., 0]


def _crops(image: np.ndarray, boxes: Any, size: list[int]) -> list[np.ndarray]:
    image = np.asarray(image)
    height, width = image.shape[:2]
    crops = []
    for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x0, y0 = int(max(0, np.floor(box[0]))), int(max(0, np.floor(box[1])))
        x1, y1 = int(min(width, np.ceil(box[2]))), int(min(height, np.ceil(box[3])))
        if x1 <= x0 or y1 <= y0:
            continue
        crops.append(_resize(image[y0:y1, x0:x1], size))
    return crops


def apply_step(step: Step, message: dict, *, in_place: bool = False) -> list[dict]:
    """One step on one message: the messages it becomes (one, none for ``keep-if``, several for
    ``fan-out``). ``in_place``: the message is the runner's own (an output it made), written into
    rather than copied."""
    if step.field not in message:
        raise ValueError(f"step {step.op!r} reads field {step.field!r}, which the message lacks "
                         f"(it has: {', '.join(sorted(k for k in message if not k.startswith('_')))})")
    value = message[step.field]
    op, to = step.op, step.target
    if op == "keep-if":
        return [message] if bool(np.asarray(value).all()) else []
    if op == "fan-out":
        return [{**message, to: item} for item in list(value)]
    out = message if in_place else dict(message)
    if op == "decode-image":
        out[to] = _decode_image(value, step.mode)
    elif op == "decode-audio":
        out[to] = _decode_audio(value, step.rate)
    elif op == "resize":
        out[to] = _resize(value, step.size or [])
    elif op == "normalize":
        x = np.asarray(value, dtype=np.float32)
        if step.scale is not None:
            x = x * np.float32(step.scale)
        if step.mean is not None:
            x = x - np.asarray(step.mean, dtype=np.float32)
        if step.std is not None:
            x = x / np.asarray(step.std, dtype=np.float32)
        out[to] = x
    elif op == "pad":
        x = np.asarray(value).reshape(-1)
        length = int(step.length or 0)
        out[to] = x[:length] if len(x) >= length else np.concatenate([x, np.zeros(length - len(x), dtype=x.dtype)])
    elif op == "transpose":
        out[to] = np.transpose(np.asarray(value), step.axes)
    elif op == "crop-boxes":
        if step.boxes not in message:
            raise ValueError(f"step 'crop-boxes' reads boxes from {step.boxes!r}, which the message lacks")
        out[to] = _crops(value, message[step.boxes], step.size or [])
    elif op == "argmax":
        scores = np.asarray(value).reshape(-1)
        index = int(np.argmax(scores))
        out[to] = step.labels[index] if step.labels and index < len(step.labels) else index
        _judge(step, out, out[to])
    elif op == "top-k":
        scores = np.asarray(value).reshape(-1)
        order = np.argsort(-scores, kind="stable")[: step.k]
        out[to] = [step.labels[i] if step.labels and i < len(step.labels) else int(i) for i in order]
        out[f"{to}_scores"] = scores[order]
    elif op == "threshold":
        x = np.asarray(value)
        out[to] = bool(x.reshape(-1)[0] > step.above) if x.size == 1 else x > step.above
        _judge(step, out, out[to])
    return [out]


def _batch_decision(step: Step, scores: np.ndarray) -> list:
    """``argmax`` or ``threshold`` over a whole batch (``scores``: one row per item), per item as
    :func:`apply_step` would give it."""
    if step.op == "argmax":
        indices = np.argmax(scores, axis=1).tolist()
        labels = step.labels
        return [labels[i] if labels and i < len(labels) else i for i in indices]
    decided = scores > step.above
    return decided[:, 0].tolist() if scores.shape[1] == 1 else list(decided)


def f1_percent(tp: int, fp: int, fn: int) -> float:
    """F1 in percent, ``100 * 2 TP / (2 TP + FP + FN)``: the measure of a yes/no answer (is there
    speech?) that a ``judge`` step's verdicts add up to, used alike by the profiler (a variant's
    accuracy) and the runtime (the served frames'); 0 when nothing was positive on either side."""
    return 100.0 * 2 * tp / max(1, 2 * tp + fp + fn)


def _judge(step: Step, message: dict, decided: Any) -> None:
    """Where the frame has a ground truth (a replayed, labelled dataset) and the step is its answer,
    say whether it is right: what `jellybean run` measures accuracy from."""
    if step.judge and message.get("truth") is not None:
        truth = message["truth"]
        message["correct"] = bool(decided == truth) if not isinstance(truth, np.ndarray) else bool(np.all(decided == truth))


def apply_steps(steps: list[Step], message: dict, *, in_place: bool = False) -> list[dict]:
    messages = [message]
    for step in steps:
        messages = [m for each in messages for m in apply_step(step, each, in_place=in_place)]
        in_place = True  # what a step made is its own
    return messages


# --- the runner ------------------------------------------------------------------------------------


class ArtifactRunner:
    """A runner (``messages -> outputs per message``) over a verified artifact and its steps.

    Per batch it does what a caller with one array per item must do anyway (stack them), plus: the
    constant inputs (made once per batch size and kept), one view per item of each output, the post
    steps. ``bench/artifacts.py`` measures what that adds to calling the artifact directly."""

    stateful = False

    def __init__(self, variant: Variant, model: _Model) -> None:
        assert variant.signature is not None
        self.variant, self.model = variant, model
        self.signature = variant.signature
        self.fed = [(t.name, t.key, tuple(int(d) for d in t.shape if d not in (-1, "batch")), np.dtype(t.dtype),
                     t.batch_axis or 0) for t in self.signature.inputs if t.fill is None]
        self.constants = [t for t in self.signature.inputs if t.fill is not None]
        self.outputs = [(t.name, t.key, t.batch_axis or 0) for t in self.signature.outputs]
        self.keep = list(variant.keep)
        self._constant_feeds: dict[int, dict[str, np.ndarray]] = {}
        # The post steps that can run on the whole batch at once (argmax and threshold of an output):
        # one numpy call per batch instead of one per message; the rest run per message.
        keys = {key for _, key, _ in self.outputs}
        vectorised = 0
        for step in variant.post:
            if step.op not in ("argmax", "threshold") or step.field not in keys:
                break
            vectorised += 1
        self.batch_post, self.item_post = variant.post[:vectorised], variant.post[vectorised:]
        self.judged = [step for step in self.batch_post if step.judge]

    def _constants(self, n: int) -> dict[str, np.ndarray]:
        feeds = self._constant_feeds.get(n)
        if feeds is None:
            feeds = {t.name: np.full(_concrete(t, n), t.fill, dtype=t.dtype) for t in self.constants}
            if len(self._constant_feeds) < 64:
                self._constant_feeds[n] = feeds
        return feeds

    def __call__(self, messages: list[dict]) -> list[list[dict]]:
        if not messages:
            return []
        pre, post, keep, judged = self.variant.pre, self.item_post, self.keep, self.judged
        prepared = [apply_steps(pre, m) for m in messages] if pre else [[m] for m in messages]
        rows = [row for group in prepared for row in group] if pre else messages
        n = len(rows)
        produced: list[dict] = [{} for _ in range(n)]
        if rows:
            feeds = {name: self._stack(name, key, shape, dtype, axis, rows) for name, key, shape, dtype, axis in self.fed}
            if self.constants:
                feeds.update(self._constants(n))
            outputs = self.model.run(feeds)
            for name, key, axis in self.outputs:
                value = np.asarray(outputs[name])
                if value.shape[axis] != n:
                    raise ValueError(f"output {name!r} has {value.shape[axis]} items along its batch dimension "
                                     f"for a batch of {n}")
                items = value if axis == 0 else np.moveaxis(value, axis, 0)
                for i in range(n):
                    produced[i][key] = items[i]
                for step in self.batch_post:
                    if step.field == key:
                        decided = _batch_decision(step, items.reshape(n, -1))
                        for i in range(n):
                            produced[i][step.target] = decided[i]
        results: list[list[dict]] = []
        k = 0
        for message, group in zip(messages, prepared):
            outs: list[dict] = []
            for _ in group:
                out = produced[k]
                k += 1
                for name in keep:
                    if name in message:
                        out[name] = message[name]
                if "truth" in message:
                    out["truth"] = message["truth"]
                    for step in judged:
                        _judge(step, out, out[step.target])
                outs.extend(apply_steps(post, out, in_place=True) if post else (out,))
            results.append(outs)
        return results

    @staticmethod
    def _stack(name: str, key: str, per_item: tuple, dtype: np.dtype, axis: int, rows: list[dict]) -> np.ndarray:
        values = []
        for row in rows:
            value = row.get(key)
            if value is None:
                raise ValueError(f"input {name!r} reads field {key!r}, which the message lacks")
            value = np.asarray(value, dtype=dtype)
            if value.shape != per_item:
                raise ValueError(f"input {name!r}: a message's {key!r} has shape {list(value.shape)}, the "
                                 f"signature expects {list(per_item)} per item")
            values.append(value)
        return np.stack(values, axis=axis)


def artifact_runner(variant: Variant, store: ModelStore, *, threads: int = 1) -> ArtifactRunner:
    """Read, verify, load and check the variant's artifact, then wrap it as a runner."""
    return ArtifactRunner(variant, _loaded(variant, store, threads=threads))


def calling(variant: Variant, store: ModelStore, *, threads: int = 1) -> Callable[[dict[str, np.ndarray]], dict]:
    """The bare model of ``variant`` (verified and loaded, no steps): what the overhead benchmark and
    the tests hold the runner against."""
    return _loaded(variant, store, threads=threads, checked=False).run
