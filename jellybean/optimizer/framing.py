"""What a message costs on a link, framing included: the one home of how the planner prices bytes
that the data plane puts on an uplink.

A message of ``m`` bytes (its fields as the data plane carries them: a source's ``payload_kb``, a
variant's ``output_kb``, an output's ``result_kb``) crosses a link inside a *send* of
``n = min(link_batch_messages, floor(P / m))`` messages, at least one (:meth:`Framing.per_send`:
the senders keep to it, waiting at most ``link_batch_wait_ms`` for company; a message that fills a
segment on its own waits for none). On the wire a send is our call header
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
    """How messages travel on links, and how they are priced: a send to another site waits at most
    ``wait_ms`` for company, until it holds :meth:`messages_per_send` messages; ``enabled`` false
    prices payload bytes alone (the sends are the same)."""

    enabled: bool = True
    messages_per_send: int = 8  # Topology.link_batch_messages: the most a send waits for
    wait_ms: float = 10.0  # Topology.link_batch_wait_ms

    def per_send(self, kb: float) -> int:
        """How many messages of ``kb`` KB a send to another site carries: ``min(n, floor(P / m))``,
        at least 1. Company is only worth waiting for while the send would not fill one segment
        (past that, a message saves its send's framing, under 6% of its own bytes); none is waited
        for without a wait (``wait_ms`` 0)."""
        if self.wait_ms <= 0:
            return 1
        size = kb * 1024.0
        if size <= 0:
            return max(1, self.messages_per_send)
        return max(1, min(self.messages_per_send, int(SEGMENT_PAYLOAD_BYTES // size)))

    def wire_kb(self, kb: float) -> float:
        """``wire(m)`` of the module docstring, with ``n`` = :meth:`per_send`, in KB as ``kb`` is."""
        if not self.enabled:
            return kb
        return (kb * 1024.0 * (1.0 + SEGMENT_HEADER_BYTES / SEGMENT_PAYLOAD_BYTES)
                + SEND_FRAMING_BYTES / self.per_send(kb)) / 1024.0

    def wait_bound_ms(self, kb: float) -> float:
        """The longest a message of ``kb`` KB waits for company: ``wait_ms``, or nothing when it
        travels alone."""
        return self.wait_ms if self.per_send(kb) > 1 else 0.0

    def expected_wait_ms(self, kb: float, rate_per_s: float, burst: float = 1.0) -> float:
        """The median wait for company (what a measured median latency is compared with) of messages
        of ``kb`` KB sent at ``rate_per_s`` to one peer, in bursts of ``burst`` (the messages of one
        frame leave together: they wait together). A send's window opens with a burst and closes once
        ``k`` messages are there, after ``(k / burst - 1) / lambda_b`` with ``lambda_b = rate / burst``
        bursts/s (Poisson), or at ``T``: ``L = min(T, (k / burst - 1) / lambda_b)``. The burst that
        opens it waits ``L``; the ``x = lambda_b L`` others arrive uniformly within it. So a share
        ``1 / (1 + x)`` of the bursts waits ``L`` and the rest less: the median is ``L`` while
        ``x <= 1``, else ``L (1 + x) / (2 x)``. None when a burst fills a send."""
        k = self.per_send(kb)
        burst = max(burst, 1.0)
        if k <= burst or self.wait_ms <= 0:
            return 0.0
        bursts_per_ms = max(rate_per_s, 1e-9) / burst / 1000.0
        window = min(self.wait_ms, (k / burst - 1.0) / bursts_per_ms)
        others = bursts_per_ms * window
        return window if others <= 1.0 else window * (1.0 + others) / (2.0 * others)
