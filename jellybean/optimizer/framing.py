"""What a message costs on a link, framing included: the one home of how the planner prices bytes
that the data plane puts on an uplink.

A message of ``m`` bytes (its fields as the data plane carries them: a source's ``payload_kb``, a
variant's ``output_kb``, an output's ``result_kb``) crosses a link inside a *send* of
``n = link_batch_messages`` messages (``Topology.link_batch_messages``: the senders keep to it,
waiting at most ``link_batch_wait_ms`` for company). On the wire a send is our call header
(:data:`CALL_HEADER_BYTES`), the batch's own framing (:data:`BATCH_FRAMING_BYTES`: the columns'
headers, :mod:`jellybean.codec`) and its messages, cut into TCP segments of at most
:data:`SEGMENT_PAYLOAD_BYTES` bytes, each with :data:`SEGMENT_HEADER_BYTES` of Ethernet, IP and TCP
headers; its last segment is on average half full, so a send pays half a segment's headers more
than its bytes' share. Per message::

    wire(m) = m (1 + H / P) + F / n,    F = C + B + H / 2

with ``H = 66``, ``P = 1448``, ``C = 9``, ``B = 48``: a 72-byte label in sends of 8 costs 86 bytes, a
1,600-byte frame 1,684. The replies (the frames' outcomes) and the ACKs travel the other way and are
not priced. ``Topology.message_framing: false`` prices payloads alone (JellyBean's cost model, for
comparisons with it).
"""

from __future__ import annotations

from dataclasses import dataclass

#: TCP's payload per segment on an Ethernet MTU of 1,500 bytes (20 B IP, 20 B TCP, 12 B timestamps).
SEGMENT_PAYLOAD_BYTES = 1448
#: Ethernet (14 B), IP (20 B), TCP with timestamps (32 B) per segment.
SEGMENT_HEADER_BYTES = 66
#: Our call header on the actors' connections (``jellybean.runtime.wire.HEADER``: length, kind, call id).
CALL_HEADER_BYTES = 9
#: A batch's own framing in :mod:`jellybean.codec` (pickle's frame, the group, one header per column),
#: for messages of up to a dozen fields; measured by ``jellybean.codec.batch_overhead_bytes``.
BATCH_FRAMING_BYTES = 48
#: What one send adds to its messages' bytes: the call header, the batch's framing, and on average
#: half a segment's headers for its last, partly filled segment.
SEND_FRAMING_BYTES = CALL_HEADER_BYTES + BATCH_FRAMING_BYTES + SEGMENT_HEADER_BYTES / 2


@dataclass(frozen=True)
class Framing:
    """How messages are priced on links: ``messages_per_send`` share a send's framing; ``enabled``
    false prices payload bytes alone."""

    enabled: bool = True
    messages_per_send: int = 8

    def wire_kb(self, kb: float) -> float:
        """``wire(m)`` of the module docstring, in KB (1024 bytes) as ``kb`` is."""
        if not self.enabled:
            return kb
        return (kb * 1024.0 * (1.0 + SEGMENT_HEADER_BYTES / SEGMENT_PAYLOAD_BYTES)
                + SEND_FRAMING_BYTES / max(1, self.messages_per_send)) / 1024.0
