"""ORCH-2801: reads that hold whole chunks are decoded without the unparsed buffer,
and every wire decodes exactly as the byte-at-a-time parser decodes it (seeded
random wires: sizes, hex case, leading zeros, extensions, CRLF inside the data,
trailers, bytes beyond the end, malformed chunks; random splits)."""

from __future__ import annotations

import asyncio
import random

from llama_orch.adapter_http._lean import StreamConn

_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        pass

    def close(self) -> None:
        self.closed = True  # as asyncio's: no more reads are delivered

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Counting(StreamConn):
    """Counts the calls of the general parser."""

    parsed = 0

    def _parse_body(self) -> None:
        Counting.parsed += 1
        super()._parse_body()


def _chunk(rng: random.Random) -> bytes:
    data = bytes(rng.choice(b"ab\r\n {}:") for _ in range(rng.randint(1, 300)))
    size = f"{len(data):x}"
    if rng.random() < 0.3:
        size = size.upper()
    if rng.random() < 0.1:
        size = "00" + size
    if rng.random() < 0.1:
        size += ";ext=1"
    return size.encode() + b"\r\n" + data + b"\r\n"


def _wire(rng: random.Random) -> tuple[bytes, list[int]]:
    """An answer and the offsets where its parts (head, chunks, end) begin."""
    parts = [_HEAD, *(_chunk(rng) for _ in range(rng.randint(0, 8)))]
    fault = rng.random()
    if fault < 0.08:
        parts.append(b"5\r\nhelloXX")  # data not followed by CRLF
    elif fault < 0.14:
        parts.append(b"zz\r\n")  # a bad size
    elif fault < 0.18:
        parts.append(b"-1\r\nx\r\n")  # a negative size
    else:
        parts.append(b"0\r\n" + (b"X-T: t\r\n" if rng.random() < 0.3 else b"") + b"\r\n")
        if rng.random() < 0.1:
            parts.append(b"HTTP/1.1 200 OK\r\n")  # bytes beyond the end
    starts = [sum(len(p) for p in parts[:i]) for i in range(1, len(parts))]
    return b"".join(parts), starts


async def _decode(wire: bytes, cuts: list[int]) -> tuple[bytes, str, bool, bool]:
    conn = StreamConn(asyncio.get_running_loop())
    transport = _Transport()
    conn.connection_made(transport)
    conn.start(b"POST / HTTP/1.1\r\n\r\n")
    prev = 0
    for cut in [*cuts, len(wire)]:
        if cut > prev and not transport.closed:
            conn.data_received(wire[prev:cut])
            prev = cut
    body, error = bytearray(), ""
    try:
        while True:
            part = await asyncio.wait_for(conn.read(), 0.01) if not conn.at_end else b""
            if not part:
                break
            body += part
    except TimeoutError:
        error = "incomplete"
    except ConnectionError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return bytes(body), error, conn.at_end, conn.keep_alive


async def test_every_split_decodes_as_one_byte_at_a_time() -> None:
    rng = random.Random(2801)
    for _ in range(400):
        wire, starts = _wire(rng)
        expected = await _decode(wire, list(range(1, len(wire))))  # never a whole chunk
        assert await _decode(wire, []) == expected, wire
        assert await _decode(wire, starts) == expected, wire  # every read whole chunks
        for _ in range(4):  # reads that begin at some chunks' starts and inside others
            cuts = rng.sample(starts, rng.randint(0, len(starts)))
            cuts += rng.sample(range(1, len(wire)), rng.randint(0, 4))
            assert await _decode(wire, sorted(set(cuts))) == expected, (wire, cuts)


async def test_whole_chunks_skip_the_general_parser() -> None:
    conn = Counting(asyncio.get_running_loop())
    conn.connection_made(_Transport())
    conn.start(b"POST / HTTP/1.1\r\n\r\n")
    conn.data_received(_HEAD)
    Counting.parsed = 0
    for token in (b"a", b"bc", b"data: x\r\n\r\n" * 3):
        conn.data_received(b"%x\r\n%s\r\n" % (len(token), token))
        assert await conn.read() == token
    conn.data_received(b"1\r\na\r\n2\r\nbc\r\n")  # two whole chunks in one read
    assert await conn.read() == b"abc"
    assert Counting.parsed == 0
    conn.data_received(b"1\r\na\r\n2\r\nb")  # the rest of a read goes to the parser
    conn.data_received(b"c\r\n0\r\n\r\n")
    assert await conn.read() == b"abc"
    assert await conn.read() == b""
    assert Counting.parsed == 2 and conn.at_end and conn.keep_alive
