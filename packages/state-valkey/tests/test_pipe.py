"""The pipelined connection of the llorch calls (ORCH-2595)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import libvalkey
import pytest
from llama_orch.core.state_store import Event, StateStoreError, StoreUnavailable
from llama_orch.state_valkey import ValkeyStateStore
from llama_orch.state_valkey._pipe import Address, Pipe, bulk, event_bulks, pack


def _fixed(addr: Address) -> Callable[[], Awaitable[Address]]:
    async def address() -> Address:
        return addr

    return address


def _addr(url: str) -> tuple[str, int]:
    host, _, port = url.split("//", 1)[1].split("/", 1)[0].rpartition(":")
    return host, int(port)


class FakeServer:
    """A RESP server on loopback that records the commands it got and answers each
    with ``answer(command)``: bytes to send, or None to stay silent."""

    def __init__(self, answer: Callable[[list[bytes]], bytes | None]) -> None:
        self.answer = answer
        self.commands: list[list[bytes]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        parser = libvalkey.Reader()
        try:
            while data := await reader.read(65536):
                parser.feed(data)
                while (cmd := parser.gets()) is not False:
                    self.commands.append(cmd)
                    out = self.answer(cmd)
                    if out is not None:
                        writer.write(out)
        finally:
            writer.close()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        host, port = self.server.sockets[0].getsockname()[:2]
        return host, port


@pytest.fixture
async def fake() -> AsyncIterator[Callable[[Callable[[list[bytes]], bytes | None]], FakeServer]]:
    servers: list[FakeServer] = []

    def make(answer: Callable[[list[bytes]], bytes | None]) -> FakeServer:
        s = FakeServer(answer)
        servers.append(s)
        return s

    yield make
    for s in servers:
        if s.server is not None:
            s.server.close()
            await s.server.wait_closed()


async def _start(s: FakeServer) -> FakeServer:
    s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
    return s


def test_pack_encodes_as_valkey_py_does() -> None:
    assert pack(("FCALL", b"x\r\n", 7, 0.5)) == (
        b"*4\r\n$5\r\nFCALL\r\n$3\r\nx\r\n\r\n$1\r\n7\r\n$3\r\n0.5\r\n"
    )
    with pytest.raises(TypeError):
        pack(("SET", None))


def _flat(batches: list[tuple[str, int, list[Event]]]) -> list[object]:
    flat: list[object] = []
    for task_id, epoch, events in batches:
        flat += [task_id, epoch, len(events)]
        for ev in events:
            flat += [ev.kind, ev.data]
    return flat


def _batches(rng: random.Random) -> list[tuple[str, int, list[Event]]]:
    kinds = ["token", "started", "metrics", "end", "error", "ünïcode"]
    datas = [b"", b"\r\n", b"$3\r\n", bytes(range(256)), b'{"t":"token","i":7}']
    return [
        (
            f"t-{rng.randrange(10**6)}-ä",
            rng.choice([0, 1, 7, 2**40]),
            [
                Event(rng.choice(kinds), rng.choice(datas) + rng.randbytes(rng.randrange(40)))
                for _ in range(rng.randrange(0, 12))
            ],
        )
        for _ in range(rng.randrange(1, 6))
    ]


def test_event_bulks_pack_as_the_flat_arguments() -> None:
    """ORCH-2621: the events packed straight into the command are the bytes the generic
    packing makes of the same arguments (seeded random batches, odd kinds and data)."""
    rng = random.Random(2621)
    head = ("FCALL", "llorch_append_many", 1, "llorch:")
    for _ in range(300):
        batches = _batches(rng)
        tail: list[bytes] = []
        for task_id, epoch, events in batches:
            tail += (bulk(task_id.encode()), bulk(b"%d" % epoch), bulk(b"%d" % len(events)))
            event_bulks(events, tail)
        assert pack(head, tail) == pack((*head, *_flat(batches)))


async def test_append_many_sends_the_flat_arguments_bytes(valkey_url: str) -> None:
    """ORCH-2621 on the store's own path: ``append_many`` sends exactly the command the
    generic packing of its flat arguments makes, and the store answers it."""
    store = ValkeyStateStore(valkey_url, key_prefix="pipe-append")
    await store.start()
    try:
        assert store._pipe is not None
        sent: list[bytes] = []
        real = store._pipe.call_packed

        async def spy(packed: bytes) -> object:
            sent.append(packed)
            return await real(packed)

        store._pipe.call_packed = spy  # type: ignore[method-assign]
        batches = _batches(random.Random(7))
        results = await store.append_many(batches)
        assert len(results) == len(batches)  # unknown tasks: each batch its own refusal
        assert all(isinstance(r, KeyError) for r in results)
        key = "{pipe-append}:"
        assert sent == [pack(("FCALL", "llorch_append_many", 1, key, *_flat(batches)))]
    finally:
        await store.close()


async def test_one_write_per_turn_and_replies_in_order(valkey_url: str) -> None:
    """A command with nothing in flight leaves at once; the ones that follow in the
    same turn of the loop leave in one write; each caller gets its own reply, in the
    order the commands were sent."""
    pipe = Pipe(_fixed(_addr(valkey_url)), timeout_s=10)
    try:
        assert await pipe.call("PING") == b"PONG"
        conn = pipe._conn
        assert conn is not None and conn.transport is not None
        writes: list[int] = []
        real_write = conn.transport.write

        def counting(data: bytes | bytearray | memoryview) -> None:
            writes.append(len(data))
            real_write(data)

        conn.transport.write = counting  # type: ignore[method-assign]
        replies = await asyncio.gather(*(pipe.call("ECHO", f"m{i}") for i in range(200)))
        assert replies == [f"m{i}".encode() for i in range(200)]
        # the first at once (nothing was in flight), the 199 others in one write
        assert len(writes) == 2, writes
        await pipe.call("ECHO", "a")
        await pipe.call("ECHO", "b")
        assert len(writes) == 4  # one each when calls are awaited one by one
    finally:
        pipe.close()


async def test_error_replies_are_mapped(valkey_url: str, fake: Callable[..., FakeServer]) -> None:
    pipe = Pipe(_fixed(_addr(valkey_url)), timeout_s=10)
    try:
        with pytest.raises(StateStoreError) as info:
            await pipe.call("FCALL", "llorch_no_such_function", 0)
        assert not isinstance(info.value, StoreUnavailable)
        assert await pipe.call("PING") == b"PONG"  # the connection stays
    finally:
        pipe.close()

    def loading(cmd: list[bytes]) -> bytes:
        if cmd[0] == b"GET":
            return b"-LOADING the server is loading its dataset\r\n"
        return b"-READONLY You can't write against a read only replica.\r\n"

    s = await _start(fake(loading))
    plain = Pipe(_fixed(s.address), timeout_s=10)
    behind = Pipe(_fixed(s.address), timeout_s=10, sentinel=True)
    try:
        with pytest.raises(StoreUnavailable):
            await plain.call("GET", "k")
        with pytest.raises(StateStoreError) as info:  # a URL's primary: a refusal
            await plain.call("SET", "k", "v")
        assert not isinstance(info.value, StoreUnavailable)
        with pytest.raises(StoreUnavailable):  # behind Sentinels: ask them again
            await behind.call("SET", "k", "v")
        assert behind._conn is None
    finally:
        plain.close()
        behind.close()


async def test_a_silent_server_fails_every_call_then_reconnects(
    fake: Callable[..., FakeServer],
) -> None:
    """No reply within the socket timeout: every call in flight gets StoreUnavailable
    (not only the oldest), the connection is dropped, the next call opens another."""
    silent = True
    s = await _start(fake(lambda cmd: None if silent else b"+PONG\r\n"))
    pipe = Pipe(_fixed(s.address), timeout_s=0.3)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        got = await asyncio.gather(*(pipe.call("PING") for _ in range(5)), return_exceptions=True)
        assert all(isinstance(g, StoreUnavailable) for g in got), got
        assert 0.25 <= loop.time() - t0 < 5
        silent = False
        assert await pipe.call("PING") == b"PONG"
        assert s.connections == 2
    finally:
        pipe.close()


async def test_a_dropped_connection_fails_calls_in_flight(
    fake: Callable[..., FakeServer],
) -> None:
    drop: list[asyncio.Event] = []

    def answer(cmd: list[bytes]) -> bytes | None:
        if cmd[0] == b"QUIT":
            drop[0].set()
            return None
        return b"+PONG\r\n" if cmd[0] == b"PING" else None

    s = await _start(fake(answer))
    drop.append(asyncio.Event())
    pipe = Pipe(_fixed(s.address), timeout_s=10)
    try:
        assert await pipe.call("PING") == b"PONG"
        waiting = asyncio.ensure_future(pipe.call("BLPOP", "k", 0))  # never answered
        await asyncio.sleep(0)
        conn = pipe._conn
        assert conn is not None and conn.transport is not None
        conn.transport.close()  # the connection goes away with a call in flight
        with pytest.raises(StoreUnavailable):
            await waiting
        assert await pipe.call("PING") == b"PONG"
        assert s.connections == 2
    finally:
        pipe.close()


async def test_a_call_cancelled_before_it_left_is_not_sent(
    fake: Callable[..., FakeServer],
) -> None:
    s = await _start(fake(lambda cmd: b"+OK\r\n"))
    pipe = Pipe(_fixed(s.address), timeout_s=10)
    try:
        assert await pipe.call("PING") == b"OK"
        first = asyncio.ensure_future(pipe.call("SET", "first", "1"))
        gone = asyncio.ensure_future(pipe.call("SET", "gone", "1"))
        await asyncio.sleep(0)  # the first left at once; gone waits for the turn's write
        gone.cancel()
        assert await first == b"OK"
        assert await pipe.call("SET", "kept", "1") == b"OK"
        assert [c[1] for c in s.commands if c[0] == b"SET"] == [b"first", b"kept"]
        assert gone.cancelled()
    finally:
        pipe.close()


async def test_auth_and_select_go_first(fake: Callable[..., FakeServer]) -> None:
    s = await _start(fake(lambda cmd: b"+OK\r\n"))
    pipe = Pipe(_fixed(s.address), timeout_s=10, password="pw", username="u", db=3)
    try:
        assert await pipe.call("SET", "k", "v") == b"OK"
        assert s.commands[:3] == [[b"AUTH", b"u", b"pw"], [b"SELECT", b"3"], [b"SET", b"k", b"v"]]
    finally:
        pipe.close()
    refusing = await _start(fake(lambda cmd: b"-WRONGPASS invalid\r\n"))
    bad = Pipe(_fixed(refusing.address), timeout_s=10, password="nope")
    try:
        with pytest.raises(StateStoreError):
            await bad.call("PING")
    finally:
        bad.close()


async def test_an_unreachable_address_is_store_unavailable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pipe = Pipe(_fixed(("127.0.0.1", port)), timeout_s=2)
    with pytest.raises(StoreUnavailable):
        await pipe.call("PING")


async def test_the_store_sends_its_library_calls_on_the_pipe(valkey_url: str) -> None:
    """ValkeyStateStore puts every FCALL on the pipe; with a URL's database it selects it."""
    store = ValkeyStateStore(valkey_url, key_prefix="pipe")
    await store.start()
    try:
        assert store._pipe is not None
        await store.heartbeat("i-pipe", 5000)
        assert store._pipe._conn is not None  # the FCALL went there
        assert [v.instance_id for v in await store.instances()] == ["i-pipe"]
    finally:
        await store.close()
