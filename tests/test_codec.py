"""Messages on the wire (:mod:`jellybean.codec`): what arrives is what was sent, a connection says a
schema once, and a message's bytes do not depend on how many share its send."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from jellybean.codec import MAX_SCHEMAS, Decoder, Encoder, batch_overhead_bytes, message_bytes, pack_messages, unpack_messages


def _equal(a: list[dict], b: list[dict]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if list(x) != list(y):
            return False
        for key in x:
            if isinstance(x[key], np.ndarray):
                if not (isinstance(y[key], np.ndarray) and x[key].dtype == y[key].dtype and np.array_equal(x[key], y[key])):
                    return False
            elif x[key] != y[key]:
                return False
    return True


BATCHES = [
    [],
    [{"frame_id": "a", "image": np.arange(6, dtype=np.float32).reshape(2, 3)}],
    [{"frame_id": str(k), "image": np.full((8, 48), k, np.float32), "truth": [k]} for k in range(16)],
    [{"frame_id": "a", "image": np.zeros(3)}, {"frame_id": "b", "image": np.zeros(4)}],  # shapes differ
    [{"frame_id": "a", "image": np.zeros(3)}, {"frame_id": "b", "image": None}],  # one has none
    [{"frame_id": "a", "x": np.zeros(2, np.int64)}, {"frame_id": "b", "x": np.zeros(2, np.float64)}],  # dtypes differ
    [{"frame_id": "a", "x": np.array([1, None], dtype=object)}, {"frame_id": "b", "x": np.array([2, None], dtype=object)}],
    [{"frame_id": "a", "x": np.zeros(2)}, {"frame_id": "b"}, {"frame_id": "c", "x": np.ones(2)}],  # a field missing
    [{"b": 1, "a": 2}, {"a": 3, "b": 4}],  # the same fields in another order
    [{"frame_id": "a", "x": np.zeros((0, 5), np.float32)}, {"frame_id": "b", "x": np.zeros((0, 5), np.float32)}],
]


@pytest.mark.parametrize("messages", BATCHES)
def test_a_batch_arrives_as_it_was_sent_in_its_order(messages: list[dict]) -> None:
    assert _equal(unpack_messages(pack_messages(messages)), messages)


def test_a_connection_says_each_schema_once_and_its_batches_decode_in_order() -> None:
    encoder, decoder = Encoder(), Decoder()
    batches = [BATCHES[2][:4], BATCHES[2][4:9], BATCHES[7], BATCHES[2][9:]]
    blobs = [encoder.encode(b) for b in batches]
    assert [_equal(decoder.decode(blob), b) for blob, b in zip(blobs, batches)] == [True] * 4
    new, _groups, _order = pickle.loads(blobs[1])
    assert new == []  # the frames' schema was said by the first batch
    assert len(blobs[3]) < len(encoder.__class__().encode(batches[3]))  # later batches are smaller for it


def test_a_decoder_that_never_heard_a_schema_refuses_the_batch() -> None:
    encoder = Encoder()
    encoder.encode(BATCHES[2][:1])
    with pytest.raises(KeyError):
        Decoder().decode(encoder.encode(BATCHES[2][1:3]))


def test_arrays_travel_as_raw_columns_and_arrive_writable_and_separate() -> None:
    messages = [{"frame_id": str(k), "image": np.full((8, 48), k, np.float32)} for k in range(16)]
    blob = pack_messages(messages)
    assert len(blob) < 16 * 8 * 48 * 4 + 16 * 8 + 200  # raw floats, a few bytes per frame id, a small header
    arrived = unpack_messages(blob)
    arrived[0]["image"][:] = -1.0  # a model that writes into its input touches its own message only
    assert float(arrived[1]["image"][0, 0]) == 1.0


def test_schemas_a_connection_remembers_are_bounded() -> None:
    encoder, decoder = Encoder(), Decoder()
    for k in range(MAX_SCHEMAS + 5):
        batch = [{f"field{k}": k}]
        assert decoder.decode(encoder.encode(batch)) == batch
    assert len(encoder.schemas) == MAX_SCHEMAS and len(decoder.schemas) == MAX_SCHEMAS


def test_a_message_costs_the_same_whatever_its_batch() -> None:
    """Per message, a batch of b costs its values plus the send's framing over b: the values do not
    change with b (the schema is said once per connection, no pickle memo ties messages together)."""
    rng = np.random.default_rng(0)
    crops = [{"frame_id": f"cameras@cam-1#{100000 + k}", "source": "cameras", "site": "cam-1", "received_at": 1e9 + k,
              "sent_at": 1e9 + k, "truth": [int(d) for d in rng.integers(0, 10, 3)], "index": k % 3, "count": 3,
              "image": rng.random((8, 8), dtype=np.float32)} for k in range(64)]
    per_message = message_bytes(crops[:16])
    encoder = Encoder()
    encoder.encode(crops[:1])
    overhead = batch_overhead_bytes(Encoder(), crops[:1])
    for b in (1, 2, 4, 8, 16, 32):
        sizes = [len(encoder.encode(crops[i:i + b])) for i in range(0, 64 - b + 1, b)]
        mean = sum(sizes) / len(sizes)
        assert abs(mean - (b * per_message + overhead)) <= 0.03 * b * per_message, (b, mean, per_message, overhead)


def test_the_planner_prices_a_send_as_the_data_plane_frames_it() -> None:
    """The framing constants the planner prices (:mod:`jellybean.optimizer.framing`) are the data
    plane's: our call header's size, and at least the codec's framing of a batch of typical messages."""
    from jellybean.optimizer.framing import BATCH_FRAMING_BYTES, CALL_HEADER_BYTES
    from jellybean.runtime.wire import HEADER

    assert HEADER.size == CALL_HEADER_BYTES
    crop = {"frame_id": "cameras@cam-1#100000", "source": "cameras", "site": "cam-1", "received_at": 1e9,
            "sent_at": 1e9, "truth": [1, 2, 3], "index": 0, "count": 3, "image": np.zeros((8, 8), np.float32)}
    label = {**{k: v for k, v in crop.items() if k != "image"}, "digit": 7}
    for message in (crop, label):
        assert batch_overhead_bytes(Encoder(), [message]) <= BATCH_FRAMING_BYTES
