"""Sends to another site carry ``link_messages`` messages (the plan priced their framing so), waiting
at most ``link_wait_s`` for them; sends on one site take whatever is queued. Against a recording
transport, in this process."""

from __future__ import annotations

import asyncio

from jellybean.codec import pack_messages, unpack_messages
from jellybean.runtime.worker import COMPLETED, Forwarder, Peer, mark, new_outcome


class Recorder:
    """A transport that completes every message and remembers each send's size."""

    def __init__(self) -> None:
        self.sends: list[int] = []
        self.sent_bytes_total = 0

    async def push(self, handle, messages, sent):
        blob = pack_messages(messages)
        sent(len(blob))
        self.sends.append(len(unpack_messages(blob)))
        outcome = new_outcome()
        for m in messages:
            mark(outcome, m["frame_id"], COMPLETED)
        await asyncio.sleep(0)  # a yield, as a real transport's await: other sends interleave
        return outcome

    async def deliver(self, handle, blob):
        return {}

    def is_death(self, exc: BaseException) -> bool:
        return False

    def wire_bytes(self, payload_bytes: int) -> int:
        return payload_bytes

    def sent_bytes(self) -> None:
        return None

    def forget(self, handle) -> None:
        pass


def _forwarder(peer_site: str, *, link_messages: int = 8, link_wait_s: float = 0.05) -> tuple[Forwarder, Recorder]:
    recorder = Recorder()
    forwarder = Forwarder(recorder, site="hub", link_messages=link_messages, link_wait_s=link_wait_s)
    forwarder.configure({"next": [Peer("next/0", peer_site, 1.0, "h")]})
    return forwarder, recorder


def _frames(n: int, start: int = 0) -> list[dict]:
    return [{"frame_id": f"f{k}", "x": k} for k in range(start, start + n)]


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def test_a_unit_bound_for_another_site_leaves_in_sends_of_the_planned_size_and_ends_whole() -> None:
    async def main() -> None:
        forwarder, recorder = _forwarder("cloud")
        outcome = await forwarder.send("next", _frames(12))
        assert recorder.sends == [8, 4]
        assert sorted(outcome["ends"]) == sorted(f"f{k}" for k in range(12))
        assert {end[0] for end in outcome["ends"].values()} == {COMPLETED}
        await forwarder.close()

    run(main())


def test_a_backlog_for_another_site_leaves_in_one_send() -> None:
    """Two sends' worth queued or more (a saturated replica's outputs): one send of all of it, up to
    ``coalesce``, instead of a call per ``link_messages``; every frame still ends once."""
    async def main() -> None:
        forwarder, recorder = _forwarder("cloud")
        outcome = await forwarder.send("next", _frames(20))
        assert recorder.sends == [20]
        assert sorted(outcome["ends"]) == sorted(f"f{k}" for k in range(20))
        assert {end[0] for end in outcome["ends"].values()} == {COMPLETED}
        await forwarder.close()

    run(main())


def test_messages_for_another_site_wait_for_company_then_leave_together() -> None:
    async def main() -> None:
        forwarder, recorder = _forwarder("cloud", link_wait_s=5.0)
        futures = [forwarder.send("next", _frames(1, k)) for k in range(8)]  # one at a time, as a source sends
        await asyncio.gather(*futures)
        assert recorder.sends == [8]  # the eighth completed the send: nobody waited the 5 s
        await forwarder.close()

    run(main())


def test_a_lone_message_for_another_site_leaves_once_the_wait_is_up() -> None:
    async def main() -> None:
        forwarder, recorder = _forwarder("cloud", link_wait_s=0.02)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await forwarder.send("next", _frames(3))
        assert recorder.sends == [3]
        assert loop.time() - started >= 0.015
        await forwarder.close()

    run(main())


def test_the_same_site_takes_whatever_is_queued_at_once() -> None:
    async def main() -> None:
        forwarder, recorder = _forwarder("hub")
        await forwarder.send("next", _frames(20))
        assert recorder.sends == [20]
        await forwarder.close()

    run(main())


def test_without_a_wait_sends_to_another_site_are_not_held() -> None:
    async def main() -> None:
        forwarder, recorder = _forwarder("cloud", link_wait_s=0.0)
        await forwarder.send("next", _frames(20))
        assert recorder.sends == [20]
        await forwarder.close()

    run(main())


def test_a_backlog_behind_a_full_window_leaves_as_one_send() -> None:
    """When every call of the window is outstanding (the peer or the link cannot keep up), the next
    send takes whatever is queued: the backlog needs no more calls than that."""
    async def main() -> None:
        recorder = Recorder()
        gate, entered = asyncio.Event(), asyncio.Event()
        push = recorder.push

        async def slow(handle, messages, sent):
            entered.set()
            await gate.wait()
            return await push(handle, messages, sent)

        recorder.push = slow
        forwarder = Forwarder(recorder, window=1, site="hub", link_messages=8, link_wait_s=0.05)
        forwarder.configure({"next": [Peer("next/0", "cloud", 1.0, "h")]})
        first = forwarder.send("next", _frames(8))
        channel = forwarder.channels["next/0"]
        await asyncio.wait_for(entered.wait(), 10)  # the first send on its way, holding the one window slot
        assert channel.calls
        rest = forwarder.send("next", _frames(30, 8))
        assert channel.queued == 30  # routing is synchronous: the backlog waits behind the full window
        gate.set()
        await asyncio.gather(first, rest)
        assert recorder.sends == [8, 30]
        await forwarder.close()

    run(main())


def test_a_sender_whose_messages_fill_a_segment_alone_waits_for_nobody() -> None:
    async def main() -> None:
        forwarder, recorder = _forwarder("cloud", link_messages=1, link_wait_s=5.0)
        await forwarder.send("next", _frames(3))
        assert recorder.sends == [3]  # at once, whatever is queued, as on one site
        await forwarder.close()

    run(main())
