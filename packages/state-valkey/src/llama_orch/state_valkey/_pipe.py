"""One pipelined connection for the store's non-blocking calls (ORCH-2595).

valkey-py's asyncio client spends, per command, a connection-pool checkout and
release, the packing of the command in Python, a ``send`` of its own and a read
of its own (measured: 85-150 µs of client CPU per round trip on loopback,
``bench/store_client_cpu.py``). The store's calls that never block at the server
(every ``FCALL`` of the llorch library) go instead on one connection of their own:

* a command issued while none is in flight leaves at once (the server works on it
  while the turn goes on); the commands issued after it in the same turn of the
  event loop leave together in one write (one system call for them all);
* the replies are parsed by libvalkey's C reader as they arrive and handed to the
  callers in the order the commands were sent (the server answers in that order);
* a broken or silent connection fails every call in flight with
  :class:`~llama_orch.core.state_store.StoreUnavailable` (as valkey-py's
  connection errors and socket timeouts do), and the next call connects again.

Blocking reads (``XREAD BLOCK``), ``WAIT``/``WAITAOF`` and the rare calls stay on
valkey-py's pool: a blocking read would hold every call queued behind it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import libvalkey
from llama_orch.core.state_store import Event, StateStoreError, StoreUnavailable

__all__ = ["Address", "Pipe", "bulk", "event_bulks", "pack"]

# (host, port) for TCP, or the path of a unix socket
Address = tuple[str, int] | str


def pack(args: tuple[Any, ...], tail: Sequence[bytes] = ()) -> bytes:
    """One command in RESP, encoded as valkey-py encodes arguments (bytes as they
    are, str as UTF-8, int and float by ``repr``); ``tail``: more arguments already
    encoded, one bulk string each (:func:`bulk`, :func:`event_bulks`)."""
    parts = [b"*%d\r\n" % (len(args) + len(tail))]
    for a in args:
        t = type(a)
        if t is bytes:
            b = a
        elif t is str:
            b = a.encode()
        elif t is int or t is float:
            b = repr(a).encode()
        elif isinstance(a, bytes | bytearray | memoryview):
            b = bytes(a)
        else:
            raise TypeError(f"a store argument must be bytes, str, int or float, not {t}")
        parts.append(b"$%d\r\n" % len(b))
        parts.append(b)
        parts.append(b"\r\n")
    parts += tail
    return b"".join(parts)


def bulk(b: bytes) -> bytes:
    """One argument as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(b), b)


_KINDS: dict[str, bytes] = {}  # an event kind's bulk string, made once per kind


def event_bulks(events: Iterable[Event], out: list[bytes]) -> None:
    """Each event's kind and data as two bulk strings, appended to ``out`` (ORCH-2621):
    what :func:`pack` makes of the same arguments, without a flat argument list and
    three parts per argument."""
    add = out.append
    kinds = _KINDS
    for ev in events:
        k = kinds.get(ev.kind)
        if k is None:
            k = kinds[ev.kind] = bulk(ev.kind.encode())
        add(k)
        data = ev.data
        add(b"$%d\r\n%b\r\n" % (len(data), data))


def _refusal(err: libvalkey.ReplyError, *, sentinel: bool) -> Exception:
    """An error reply as valkey-py's client would surface it through ``_call``."""
    msg = str(err)
    # valkey-py raises these as connection errors (BusyLoadingError, and ReadOnlyError on
    # a Sentinel-managed connection: the primary was demoted, ask the Sentinels again)
    if msg.startswith("LOADING") or "max number of clients reached" in msg:
        return StoreUnavailable(f"state store unreachable: {msg}")
    if sentinel and msg.startswith("READONLY"):
        return StoreUnavailable(f"state store unreachable: {msg}")
    return StateStoreError(f"state store refused the call: {msg}")


class _Conn(asyncio.Protocol):
    """One connection: the calls in flight, in the order their commands were sent."""

    def __init__(self, timeout_s: float, on_lost: Callable[[_Conn], None]) -> None:
        self.reader = libvalkey.Reader()
        self.waiting: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.out: list[tuple[asyncio.Future[Any], bytes]] = []  # this turn's, not sent yet
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._timeout_s = timeout_s
        self._on_lost = on_lost
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    # -------------------------------------------------------------- protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not an isinstance check: uvloop's transports are not asyncio.Transport
        # subclasses (ORCH-2808)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.waiting
        while True:
            reply = self.reader.gets()
            if reply is False:  # no complete reply yet (RESP2 has no boolean)
                return
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.fail(StoreUnavailable("state store sent a reply nobody asked for"))
                return
            fut, _ = waiting.popleft()
            if not fut.done():  # its caller may have been cancelled meanwhile
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(StoreUnavailable(f"state store unreachable: {exc or 'connection closed'}"))

    # -------------------------------------------------------------- calls
    def send(self, packed: bytes) -> asyncio.Future[Any]:
        fut = self._loop.create_future()
        if self.closed:  # lost between the connect and its AUTH/SELECT
            fut.set_exception(StoreUnavailable("state store unreachable: connection closed"))
            return fut
        if not self.waiting and not self.out and self.transport is not None:
            # nothing in flight: it leaves at once, so the server works on it while this
            # turn goes on; the commands that follow in the turn leave together at its end
            self.waiting.append((fut, time.monotonic()))
            if self._timer is None:
                self._timer = self._loop.call_later(self._timeout_s, self._check)
            self.transport.write(packed)
            return fut
        if not self.out:  # the first command of this turn: one write at its end
            self._loop.call_soon(self._flush)
        self.out.append((fut, packed))
        return fut

    def _flush(self) -> None:
        """Send this turn's commands in one write; a call cancelled before it left is
        not sent (as valkey-py sends nothing for a call cancelled before its send)."""
        out, self.out = self.out, []
        if self.closed or self.transport is None:
            return  # fail() already failed them
        now = time.monotonic()
        if not self.waiting and self._timer is None:
            self._timer = self._loop.call_later(self._timeout_s, self._check)
        data = []
        for fut, packed in out:
            if not fut.done():
                self.waiting.append((fut, now))
                data.append(packed)
        if data:
            self.transport.write(b"".join(data))

    def _check(self) -> None:
        """The socket timeout: the oldest call waited that long without a reply."""
        self._timer = None
        if self.closed or not self.waiting:
            return
        age = time.monotonic() - self.waiting[0][1]
        if age >= self._timeout_s:
            self.fail(StoreUnavailable(f"state store unreachable: no reply in {age:.1f} s"))
        else:
            self._timer = self._loop.call_later(self._timeout_s - age, self._check)

    def fail(self, exc: Exception) -> None:
        """Fail every call in flight and close: the next call connects again."""
        if not self.closed:
            self.closed = True
            self._on_lost(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiting, self.waiting = self.waiting, collections.deque()
        out, self.out = self.out, []
        for fut, _ in [*waiting, *out]:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # a cancelled caller's future: no "never retrieved" warning
        if self.transport is not None:
            self.transport.abort()


class Pipe:
    """Calls on one pipelined connection to the address ``address()`` answers at
    each (re)connect (a Sentinel's current primary, or a fixed address)."""

    def __init__(
        self,
        address: Callable[[], Awaitable[Address]],
        *,
        timeout_s: float,
        password: str | None = None,
        username: str | None = None,
        db: int = 0,
        sentinel: bool = False,
    ) -> None:
        self._address = address
        self._timeout_s = timeout_s
        self._hello: list[tuple[Any, ...]] = []
        if password is not None:
            self._hello.append(("AUTH", username, password) if username else ("AUTH", password))
        if db:
            self._hello.append(("SELECT", db))
        self._sentinel = sentinel
        self._conn: _Conn | None = None
        self._connecting: asyncio.Lock | None = None

    async def call(self, *args: Any) -> Any:
        return await self.call_packed(pack(args))

    async def call_packed(self, packed: bytes) -> Any:
        """:meth:`call` of a command already in RESP (:func:`pack`)."""
        conn = self._conn
        if conn is None:
            conn = await self._connect()
        reply = await conn.send(packed)
        if isinstance(reply, libvalkey.ReplyError):
            exc = _refusal(reply, sentinel=self._sentinel)
            if isinstance(exc, StoreUnavailable):
                conn.fail(exc)
            raise exc
        return reply

    async def _connect(self) -> _Conn:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:  # one connect for all the callers that found none
            if self._conn is not None:
                return self._conn
            loop = asyncio.get_running_loop()
            conn: _Conn | None = None

            def make() -> _Conn:
                nonlocal conn
                conn = _Conn(self._timeout_s, self._lost)
                return conn

            try:
                async with asyncio.timeout(self._timeout_s):
                    addr = await self._address()
                    if isinstance(addr, str):
                        await loop.create_unix_connection(make, addr)
                    else:
                        await loop.create_connection(make, addr[0], addr[1])
                    assert conn is not None
                    for cmd in self._hello:  # AUTH, SELECT: before any call is sent
                        reply = await conn.send(pack(cmd))
                        if isinstance(reply, libvalkey.ReplyError):
                            conn.fail(StoreUnavailable("closed after a refused AUTH/SELECT"))
                            raise StateStoreError(f"state store refused {cmd[0]}: {reply}")
            except (OSError, TimeoutError) as exc:
                if conn is not None:
                    conn.fail(StoreUnavailable(f"state store unreachable: {exc}"))
                raise StoreUnavailable(f"state store unreachable: {exc}") from exc
            except StoreUnavailable:
                raise
            except Exception as exc:  # e.g. the Sentinels could not name a primary
                if isinstance(exc, StateStoreError):
                    raise
                raise StoreUnavailable(f"state store unreachable: {exc}") from exc
            self._conn = conn
            return conn

    def _lost(self, conn: _Conn) -> None:
        if self._conn is conn:
            self._conn = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(StoreUnavailable("state store client closed"))
