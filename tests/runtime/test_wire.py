"""The actors' own connections (jellybean.runtime.wire) over real sockets on 127.0.0.1: the secret,
calls matched to replies, errors that leave the connection usable, and a peer that goes away."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from jellybean.runtime.wire import (
    DELIVER, HEADER, MAGIC, MAX_PAYLOAD_BYTES, PUSH, Address, PeerGone, RemoteError, SocketTransport, WireServer,
)

SECRET = "s3cret"


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


def _push(client: SocketTransport, address: Address, message: dict, sizes: list | None = None):
    """One message pushed (a batch of one), its encoded size noted in ``sizes``."""
    return client.push(address, [message], (sizes if sizes is not None else []).append)


async def _server(handlers=None) -> tuple[WireServer, Address]:
    async def echo(messages: list[dict]) -> dict:
        value = messages[0]
        if value.get("boom"):
            raise ValueError("a bad batch")
        return {"got": value["n"]}

    server = WireServer(handlers or {PUSH: echo}, SECRET)
    return server, await server.start("127.0.0.1")


def test_calls_get_their_own_replies_even_out_of_order() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def handler(messages: list[dict]) -> dict:
            n = messages[0]["n"]
            if n == 0:
                await release.wait()  # the first call finishes last
            return {"got": n}

        server, address = await _server({PUSH: handler})
        client = SocketTransport(SECRET)
        first = asyncio.ensure_future(_push(client, address, {"n": 0}))
        rest = await asyncio.gather(*(_push(client, address, {"n": n}) for n in range(1, 20)))
        assert [r["got"] for r in rest] == list(range(1, 20))
        assert not first.done()
        release.set()
        assert (await first) == {"got": 0}
        assert len(client.connections) == 1  # one connection per peer, multiplexed
        client.close()
        server.close()

    run(main())


def test_an_error_in_the_handler_is_a_failed_call_not_a_dead_peer() -> None:
    async def main() -> None:
        server, address = await _server()
        client = SocketTransport(SECRET)
        with pytest.raises(RemoteError, match="ValueError: a bad batch") as caught:
            await _push(client, address, {"n": 1, "boom": True})
        assert not client.is_death(caught.value)
        assert (await _push(client, address, {"n": 2})) == {"got": 2}  # the connection is still good
        client.close()
        server.close()

    run(main())


def test_a_peer_that_goes_away_fails_its_calls_as_a_death() -> None:
    async def main() -> None:
        entered, never = asyncio.Event(), asyncio.Event()

        async def stuck(messages: list[dict]) -> dict:
            entered.set()
            await never.wait()
            return {}

        server, address = await _server({PUSH: stuck})
        client = SocketTransport(SECRET)
        call = asyncio.ensure_future(_push(client, address, {"n": 1}))
        await entered.wait()
        server.close()  # what a dying process does to its sockets
        with pytest.raises(PeerGone) as caught:
            await call
        assert client.is_death(caught.value)
        with pytest.raises(PeerGone, match="cannot connect"):
            await _push(client, address, {"n": 2})  # nobody listens any more
        client.close()

    run(main())


def test_a_connection_without_the_secret_is_closed_unheard() -> None:
    async def main() -> None:
        handled = []

        async def handler(messages: list[dict]) -> dict:
            handled.append(messages)
            return {}

        server, address = await _server({PUSH: handler})
        wrong = SocketTransport("not-the-secret")
        with pytest.raises(PeerGone):
            await _push(wrong, address, {"n": 1})
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")  # not our protocol at all
        assert await reader.read() == b""
        assert handled == [] and server.refused == 2
        wrong.close()
        server.close()

    run(main())


def test_an_oversized_or_unknown_request_closes_the_connection() -> None:
    async def main() -> None:
        server, address = await _server()
        for header in (HEADER.pack(MAX_PAYLOAD_BYTES + 1, PUSH, 1), HEADER.pack(3, DELIVER, 1)):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(MAGIC + struct.pack("!H", len(SECRET)) + SECRET.encode() + header + b"abc")
            assert await reader.read() == b""  # closed, nothing allocated for the claimed size
        server.close()

    run(main())


def test_nothing_listens_on_a_closed_port() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        client = SocketTransport(SECRET)
        with pytest.raises(PeerGone, match="cannot connect"):
            await _push(client, Address("127.0.0.1", port), {"n": 1})

    run(main())


def test_the_kernel_counts_what_a_connection_put_on_the_wire() -> None:
    """``sent_bytes`` is TCP_INFO's count: at least every request's header and payload plus a
    segment header each, and no more than that plus the ACKs and the hello; a reconnect keeps what
    the old connection sent."""
    async def main() -> None:
        server, address = await _server()
        client = SocketTransport(SECRET)
        messages = [{"n": n, "pad": b"x" * (100 * n)} for n in range(30)]
        sizes: list[int] = []
        for message in messages:
            await _push(client, address, message, sizes)
        framed = sum(HEADER.size + size for size in sizes)
        sent = client.sent_bytes()
        assert sent is not None, "TCP_INFO is there on Linux"
        assert framed + 66 * len(messages) <= sent[address] <= framed + 66 * 3 * len(messages) + 200
        assert client.wire_bytes(1000) == HEADER.size + 1000 + 66
        client.connections[address].close()  # the connection goes; its count stays
        await _push(client, address, messages[1])
        assert client.sent_bytes()[address] > sent[address]
        client.close()
        server.close()

    run(main())


async def _a_call_in_the_peers_hands():
    """A peer that never answers, and a call to it that it has received."""
    arrived = asyncio.Event()

    async def hang(messages: list[dict]) -> dict:
        arrived.set()
        await asyncio.Event().wait()
        return {}

    server, address = await _server({PUSH: hang})
    client = SocketTransport(SECRET)
    waiting = asyncio.ensure_future(_push(client, address, {"n": 1}))
    await asyncio.wait_for(arrived.wait(), 5)
    return server, address, client, waiting


def test_a_peer_the_control_plane_declares_dead_fails_its_waiting_calls_at_once() -> None:
    """A killed process can keep its sockets open for a while: ``forget`` fails what waits on it
    (as a death, so that it is routed again) without waiting for the connection to break."""
    async def main() -> None:
        server, address, client, waiting = await _a_call_in_the_peers_hands()  # the call is in the peer's hands
        client.forget(address)
        with pytest.raises(PeerGone, match="dead"):
            await asyncio.wait_for(waiting, 5)
        assert client.is_death(waiting.exception())
        client.forget(Address("127.0.0.1", 9))  # a peer never connected to: nothing to do
        client.close()
        server.close()

    run(main())


def test_a_socket_closed_under_the_connection_still_fails_its_calls_and_keeps_its_count() -> None:
    """asyncio may close a socket whose peer went away before the connection's reader hears of it:
    then TCP_INFO cannot be read (the descriptor is -1). The count stays the last one read, reports
    keep working, and the calls waiting on it fail as a death (a ValueError here once left a source
    unable to report and its frames waiting forever)."""
    async def main() -> None:
        server, address, client, waiting = await _a_call_in_the_peers_hands()
        conn = client.connections[address]
        before = client.sent_bytes()[address]
        conn.sock._sock.close()  # the descriptor goes, as when the transport closes it first
        assert conn.sock.fileno() == -1
        assert client.sent_bytes()[address] == before  # no ValueError: the last count stands
        conn._close("connection lost (the peer's node went away)")
        with pytest.raises(PeerGone, match="went away"):
            await asyncio.wait_for(waiting, 5)
        client.close()
        server.close()

    run(main())


def test_a_push_that_is_not_a_batch_of_ours_closes_the_connection_unhandled() -> None:
    """After the secret, a PUSH whose payload does not decode (a schema it never said, or no batch at
    all) ends the connection; nothing reaches the handler, and the server serves others still."""
    async def main() -> None:
        handled: list = []

        async def handler(messages: list[dict]) -> dict:
            handled.append(messages)
            return {}

        server, address = await _server({PUSH: handler})
        for payload in (b"not a pickle", __import__("pickle").dumps(([], [(7, 1, [[1]])], None))):
            reader, writer = await asyncio.open_connection(address.host, address.port)
            writer.write(MAGIC + struct.pack("!H", len(SECRET)) + SECRET.encode()
                         + HEADER.pack(len(payload), PUSH, 1) + payload)
            assert await reader.read() == b""
            writer.close()
        client = SocketTransport(SECRET)
        assert await _push(client, address, {"n": 3}) == {}
        assert handled == [[{"n": 3}]]
        client.close()
        server.close()

    run(main())
