"""A fault-injecting TCP proxy between orchestratord and one engine.

Modes: ``pass``; ``latency`` (every chunk is delayed by ``latency_ms``);
``blackhole`` (every byte of every connection open now or opened until the
hole heals is dropped, in both directions: those connections stay dead, as
after a real loss of the path); ``reset()`` aborts every open connection.
The upstream port can change while running (an engine restarted elsewhere).

The proxy also watches the bytes (ORCH-6103): each ``POST /completion`` whose
body carries a ``[chaos-NNNNNN]`` marker becomes an :class:`Exchange` with
its open/close times, the engine slot (``id_slot``) the engine reported, and
whether the engine sent its final chunk (``"stop":true``) before the
connection ended. The invariant checker uses these to prove that no request
was retried after its cancel and that a cut engine stream never became a
clean ``end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

_REQ = re.compile(rb"(GET|POST|DELETE|PUT) (/[^ ]*) HTTP/1\.[01]")
_MARK = re.compile(rb"\[chaos-(\d{6})\]")
_SLOT = re.compile(rb'"id_slot"\s*:\s*(-?\d+)')
_STOP = re.compile(rb'"stop"\s*:\s*true')
_EVAL = re.compile(rb'"tokens_evaluated"\s*:\s*(\d+)')


@dataclass
class Exchange:
    engine: int
    path: str
    arrival: int | None = None
    opened: float = field(default_factory=time.time)
    closed: float | None = None
    id_slot: int | None = None  # llama-server says it in the final chunk only
    prompt_tokens: int | None = None  # "tokens_evaluated": ties the request to a /slots entry
    final: bool = False  # the engine sent its last chunk
    t_final: float | None = None  # when the proxy saw it (ORCH-6250: after a cancel?)
    bytes_down: int = 0
    cut: str = ""  # why the proxy ended it: "upstream-eof", "reset", "blackhole", ...


class _Conn:
    def __init__(self, proxy: FaultProxy, client: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.dead = proxy.mode == "blackhole"
        self.current: Exchange | None = None
        self.up_tail = b""
        self.down_tail = b""
        self.req_head = b""  # the current request's first bytes (its arrival marker)

    def sniff_up(self, data: bytes) -> None:
        buf = self.up_tail + data
        start = None  # where the newest request of this read begins in ``buf``
        for m in _REQ.finditer(buf):
            if m.end() > len(self.up_tail):  # not already seen
                self._close_exchange("next-request")
                self.current = Exchange(self.proxy.index, m.group(2).decode(errors="replace"))
                self.req_head = b""
                start = m.start()
                if self.current.path.startswith("/completion"):
                    self.proxy.exchanges.append(self.current)
        cur = self.current
        if cur is not None and cur.arrival is None:
            # Only this request's own bytes: on a kept-alive connection the tail of
            # the previous request (another arrival's marker) is still in ``buf``.
            own = buf[start:] if start is not None else data
            self.req_head = (self.req_head + own)[:8192]
            mark = _MARK.search(self.req_head)
            if mark:
                cur.arrival = int(mark.group(1))
        self.up_tail = buf[-256:]

    def sniff_down(self, data: bytes) -> None:
        cur = self.current
        if cur is None:
            return
        cur.bytes_down += len(data)
        buf = self.down_tail + data
        if cur.id_slot is None or cur.id_slot < 0:  # early chunks may say -1
            for m in _SLOT.finditer(buf):
                if int(m.group(1)) >= 0:
                    cur.id_slot = int(m.group(1))
                    break
        if cur.prompt_tokens is None:
            m = _EVAL.search(buf)
            if m:
                cur.prompt_tokens = int(m.group(1))
        if _STOP.search(buf):
            cur.final = True
            if cur.t_final is None:
                cur.t_final = time.time()
        self.down_tail = buf[-64:]

    def _close_exchange(self, why: str) -> None:
        if self.current is not None and self.current.closed is None:
            self.current.closed = time.time()
            self.current.cut = why
        self.current = None

    def abort(self, why: str) -> None:
        self._close_exchange(why)
        for w in (self.client, self.upstream):
            if w is not None:
                with contextlib.suppress(OSError):
                    sock = w.get_extra_info("socket")
                    if sock is not None:  # RST, not FIN: as a dead peer looks
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                w.transport.abort()


class FaultProxy:
    def __init__(self, index: int, upstream_port: int) -> None:
        self.index = index
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.latency_s = 0.0
        self.exchanges: list[Exchange] = []
        self.conns: set[_Conn] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            c.abort("proxy-closed")
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5)

    def blackhole(self, on: bool) -> None:
        self.mode = "blackhole" if on else "pass"
        if on:
            for c in self.conns:
                c.dead = True
                c._close_exchange("blackhole")

    def latency(self, ms: int) -> None:
        self.latency_s = ms / 1000.0
        self.mode = "latency" if ms else "pass"

    def reset(self) -> None:
        for c in list(self.conns):
            c.abort("reset")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(self, writer)
        self.conns.add(conn)
        try:
            if conn.dead:  # opened inside a black hole: swallow it
                while await reader.read(65536):
                    pass
                return
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            except OSError:
                conn.abort("refused")
                return
            conn.upstream = up_w
            await asyncio.gather(
                self._pump(conn, reader, up_w, up=True),
                self._pump(conn, up_r, writer, up=False),
            )
        except Exception:
            conn.abort("error")
        finally:
            self.conns.discard(conn)
            conn._close_exchange(conn.current.cut if conn.current and conn.current.cut else "eof")
            for w in (writer, conn.upstream):
                if w is not None:
                    with contextlib.suppress(Exception):
                        w.close()

    async def _pump(
        self, conn: _Conn, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, up: bool
    ) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if conn.dead:
                    continue  # black hole: the bytes are lost
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                    if conn.dead:
                        continue
                (conn.sniff_up if up else conn.sniff_down)(data)
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if not conn.dead:
                # One side ended: end the other (an engine that died cuts its stream).
                if not up and conn.current is not None and conn.current.closed is None:
                    conn.current.closed = time.time()
                    conn.current.cut = "upstream-eof"
                conn.abort("upstream-eof" if not up else "client-eof")


class ProxyThread:
    """A :class:`FaultProxy` on an event loop of its own, in a thread (ORCH-6255): its
    stamps (a request opened, orchestratord's close of the engine connection) and its
    forwarding do not wait for the runner's loop, whose clients, monitors and report
    work stall it for tens of milliseconds, once 1.5 s, under a CI run's load. The
    runner's calls (the faults) are posted to the proxy's loop; ``exchanges`` is the
    proxy's list, appended there and read after ``close``."""

    def __init__(self, index: int, upstream_port: int) -> None:
        self.proxy = FaultProxy(index, upstream_port)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name=f"fault-proxy-{index}", daemon=True
        )

    @property
    def index(self) -> int:
        return self.proxy.index

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def exchanges(self) -> list[Exchange]:
        return self.proxy.exchanges

    @property
    def upstream_port(self) -> int:
        return self.proxy.upstream_port

    @upstream_port.setter
    def upstream_port(self, port: int) -> None:
        self.loop.call_soon_threadsafe(setattr, self.proxy, "upstream_port", port)

    async def start(self) -> int:
        self.thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.proxy.start(), self.loop)
        return await asyncio.wrap_future(fut)

    async def close(self) -> None:
        if not self.thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self.proxy.close(), self.loop)
        with contextlib.suppress(Exception):
            await asyncio.wrap_future(fut)
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self.thread.join, 5)
        if not self.thread.is_alive():
            self.loop.close()

    def blackhole(self, on: bool) -> None:
        self.loop.call_soon_threadsafe(self.proxy.blackhole, on)

    def latency(self, ms: int) -> None:
        self.loop.call_soon_threadsafe(self.proxy.latency, ms)

    def reset(self) -> None:
        self.loop.call_soon_threadsafe(self.proxy.reset)
