"""Messages on the wire: a batch of messages (dicts) as bytes, its field names and array layouts said
once per connection.

Why. What a link carries is what the plan prices, so the bytes of a message must not depend on how
many others share its send. A pickled batch of dicts (what the data plane sent before) repeats its
field names and each array's dtype and shape once per *batch*: a digits crop costs 552 bytes sent
alone and 331 in a batch of 16, a label 181 and 72, and how large the batches get depends on the
machine's speed. Here a batch is *columns*: each field that holds an array of one dtype and shape in
every message is one contiguous run of raw bytes, every other field one list of values; the
*schema* (the field names, and dtype and shape of each array field) is sent the first time a
connection uses it and named by a small number after that. So a message costs its values, whatever
its batch, and a send costs a fixed few dozen bytes (:data:`BATCH_OVERHEAD_BYTES`).

``Encoder``/``Decoder`` are one connection's two ends (they must see the same batches in the same
order: the connection writes and reads them in order). :func:`pack_messages` and
:func:`unpack_messages` are the stateless form (every schema inline), for transports without a
connection of their own (Ray actor calls, the in-process fake) and for measuring what a message
costs (:func:`message_bytes`, which ``jellybean profile`` uses).

Blobs only ever come from our own actors over authenticated connections (the data-plane secret), as
before: the framing is pickle's (protocol 5), arrays travel as ``bytearray`` (writable where they
arrive, no copy).
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np

#: A connection remembers at most this many schemas; past it, a batch says its schema inline.
MAX_SCHEMAS = 256
#: What one send adds to its messages' values (pickle's framing, the group's header, the column lists'
#: headers): measured by :func:`batch_overhead_bytes` for typical messages, rounded up.
BATCH_OVERHEAD_BYTES = 48

_ARRAY, _OBJECT = "a", "o"

#: The identity and timing fields the runtime gives every message it carries (its frame id, where the
#: frame entered, when; ``jellybean.runtime.worker.META``), with values of typical size: what a
#: message costs is measured with them (:func:`travelling_bytes`), since they travel with it.
IDENTITY_EXAMPLE = {"frame_id": "cameras@cam-1#100000", "source": "cameras", "site": "cam-1",
                    "received_at": 1.8e9, "sent_at": 1.8e9}


def _kinds(messages: list[dict]) -> tuple:
    """The schema of a batch whose messages share the first one's field names: each field an array
    column (same non-object dtype and shape in every message) or an object column."""
    first = messages[0]
    kinds = []
    for key, value in first.items():
        if type(value) is np.ndarray and not value.dtype.hasobject:
            dtype, shape = value.dtype, value.shape
            if all(type(m[key]) is np.ndarray and m[key].dtype == dtype and m[key].shape == shape for m in messages):
                kinds.append((key, _ARRAY, dtype.str, shape))
                continue
        kinds.append((key, _OBJECT))
    return tuple(kinds)


def _groups(messages: list[dict]) -> list[list[int]]:
    """Positions of the messages, grouped by field names (in order): one group in the usual case."""
    if not messages:
        return []
    keys0 = list(messages[0])
    if all(list(m) == keys0 for m in messages):  # dict key views compare as sets: lists keep the order
        return [list(range(len(messages)))]
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(messages):
        groups.setdefault(tuple(m), []).append(i)
    return list(groups.values())


class Encoder:
    """The sending end of one connection."""

    def __init__(self) -> None:
        self.schemas: dict[tuple, int] = {}

    def encode(self, messages: list[dict]) -> bytes:
        """``(new schemas, groups, order)``: each group ``(schema id or inline schema, count, columns)``;
        ``order`` the messages' positions when there are several groups (else None)."""
        new: list[tuple[int, tuple]] = []
        groups = []
        positions = _groups(messages)
        for group in positions:
            batch = messages if len(positions) == 1 else [messages[i] for i in group]
            kinds = _kinds(batch)
            ref: Any = self.schemas.get(kinds)
            if ref is None:
                if len(self.schemas) < MAX_SCHEMAS:
                    ref = len(self.schemas) + 1
                    self.schemas[kinds] = ref
                    new.append((ref, kinds))
                else:
                    ref = kinds
            columns = []
            for kind in kinds:
                key = kind[0]
                if kind[1] == _ARRAY:
                    columns.append(bytearray(np.stack([m[key] for m in batch]).tobytes()))
                else:
                    columns.append([m[key] for m in batch])
            groups.append((ref, len(batch), columns))
        order = None if len(positions) <= 1 else [i for group in positions for i in group]
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, protocol=5)
        pickler.fast = True  # no memo: a repeated value costs the same in every batch, and nothing is cyclic
        pickler.dump((new, groups, order))
        return buffer.getvalue()


class Decoder:
    """The receiving end of one connection."""

    def __init__(self) -> None:
        self.schemas: dict[int, tuple] = {}

    def decode(self, blob: bytes) -> list[dict]:
        new, groups, order = pickle.loads(blob)  # noqa: S301 - blobs only ever come from our own actors
        for ref, kinds in new:
            self.schemas[ref] = kinds
        out: list[dict] = []
        for ref, count, columns in groups:
            kinds = self.schemas[ref] if type(ref) is int else ref
            names = [kind[0] for kind in kinds]
            values = []
            for kind, column in zip(kinds, columns):
                if kind[1] == _ARRAY:
                    values.append(np.frombuffer(column, dtype=np.dtype(kind[2])).reshape((count, *kind[3])))
                else:
                    values.append(column)
            out.extend(dict(zip(names, row)) for row in zip(*values))
        if order is not None:
            arranged: list[Any] = [None] * len(out)
            for position, message in zip(order, out):
                arranged[position] = message
            out = arranged
        return out


def pack_messages(messages: list[dict]) -> bytes:
    """A batch as one blob with its schemas inline (no connection to remember them)."""
    return Encoder().encode(messages)


def unpack_messages(blob: bytes) -> list[dict]:
    """The messages of :func:`pack_messages` (or of a connection's first batch)."""
    return Decoder().decode(blob)


def message_bytes(messages: list[dict]) -> float:
    """What one of ``messages`` costs on a connection that already knows its schema, in bytes: the
    batch's size less the size of an empty send, over the count. Independent of the batch's size up
    to a few bytes (pickle writes small integers and short lists more tightly)."""
    if not messages:
        return 0.0
    encoder = Encoder()
    encoder.encode(messages[:1])  # the schema is now known, as on a connection already in use
    return (len(encoder.encode(messages)) - batch_overhead_bytes(encoder, messages[:1])) / len(messages)


def travelling_bytes(outputs: list[dict], batch: int = 16) -> float:
    """What one of a model's ``outputs`` costs as the runtime carries it: its fields and the runtime's
    identity fields (:data:`IDENTITY_EXAMPLE`; a field the output has, such as a dataset's ground
    truth, travels as it is), in batches of ``batch`` on a connection that knows their schema. This is
    what a zoo's ``output_kb`` says (times 1024)."""
    if not outputs:
        return 0.0
    carried = [{**m, **IDENTITY_EXAMPLE, "frame_id": f"cameras@cam-1#{100000 + k}"} for k, m in enumerate(outputs)]
    sizes = [message_bytes(carried[i:i + batch]) * len(carried[i:i + batch]) for i in range(0, len(carried), batch)]
    return sum(sizes) / len(carried)


def batch_overhead_bytes(encoder: Encoder | None = None, sample: list[dict] | None = None) -> int:
    """What a send adds to its messages' values: a batch of one message, less that message's values
    measured as the difference between a batch of two and a batch of one."""
    sample = sample or [{"frame_id": "camera@site#1", "received_at": 0.0}]
    enc = encoder or Encoder()
    enc.encode(sample)
    one = len(enc.encode(sample))
    two = len(enc.encode(sample * 2))
    return one - (two - one)
