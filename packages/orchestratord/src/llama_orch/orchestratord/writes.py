"""One socket write per connection and event-loop turn (ORCH-2766).

hypercorn writes every ASGI message of a response on its own: the head, each
body message, the chunked terminator. A ``send`` on a loopback socket runs the
receiver's network stack in the sender's process, so those writes were ~30 % of
orchestratord's CPU in the profile of a one-token stream (issue #15's facade,
issue #20). :class:`CoalescingTCPServer` gives hypercorn's connection a writer that keeps
what the connection produces during one turn of the event loop and writes it
once at the end of that turn (``call_soon``): nothing waits for a later turn,
flow control is hypercorn's (``drain`` when the transport's buffer is full), and
``write_eof``/``close`` write what is pending first.

hypercorn (0.17, 0.18) has no hook for this: its asyncio worker makes each
connection with the ``TCPServer`` name of ``hypercorn.asyncio.run``, which
:func:`coalesce_hypercorn_writes` points at the subclass.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.asyncio.worker_context import AsyncioSingleTask

from .idle import IdleTimer
from .leanconn import CONNECTION_RESET, lean_hypercorn_objects, reset_transport

__all__ = [
    "WRITE_THROUGH",
    "CoalescingTCPServer",
    "CoalescingWriter",
    "TurnJoiner",
    "coalesce_hypercorn_writes",
]

# ORCH-8022: a turn's pending bytes at which the joining writers write at once, so that
# the transport's flow control pauses a replay whose reader accepts nothing
WRITE_THROUGH = 65_536


class TurnJoiner:
    """What the joining writers share (ORCH-2766 under hypercorn, ORCH-2814 under
    uvicorn): the writes of one loop turn kept and written as one by ``flush``, called
    by ``call_soon`` at the end of the turn, or at once when the turn's pending bytes
    reach :data:`WRITE_THROUGH` (ORCH-8022)."""

    __slots__ = ("_flush_handle", "_loop", "_pending", "_size")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0  # the pending bytes (ORCH-8022)
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes) -> None:
        self._pending.append(data)
        self._size += len(data)
        if self._size >= WRITE_THROUGH:  # ORCH-8022: flow control sees a long replay
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self.flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self.flush)

    def flush(self) -> None:
        raise NotImplementedError

    def _take(self) -> bytes | None:
        """What is pending, as one write (None: nothing); nothing pending after."""
        self._flush_handle = None
        pending = self._pending
        if not pending:
            return None
        self._pending = []
        self._size = 0
        return pending[0] if len(pending) == 1 else b"".join(pending)

    def _drop(self) -> None:
        """Nothing pending, nothing scheduled (ORCH-8024's reset)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._pending, self._size = [], 0


class CoalescingWriter(TurnJoiner):
    """The part of :class:`asyncio.StreamWriter` hypercorn's connection uses, with
    the writes of one loop turn joined into one (:class:`TurnJoiner`); ``write_eof``
    and ``close`` write what is pending first."""

    __slots__ = ("_writer",)

    def __init__(self, writer: asyncio.StreamWriter, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self._writer = writer

    def flush(self) -> None:
        data = self._take()
        if data is None:
            return
        try:
            self._writer.write(data)
        except (ConnectionError, RuntimeError):
            pass  # the transport is gone: drain() and the read side report it

    async def drain(self) -> None:
        await self._writer.drain()  # flow control: paused by earlier turns' writes

    def abort(self) -> None:
        """ORCH-8024: the connection reset now, what is pending dropped."""
        self._drop()
        reset_transport(self._writer.transport)

    def write_eof(self) -> None:
        self.flush()
        self._writer.write_eof()

    def close(self) -> None:
        self.flush()
        self._writer.close()

    async def wait_closed(self) -> None:
        await self._writer.wait_closed()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._writer.get_extra_info(name, default)


class CoalescingTCPServer(TCPServer):
    """hypercorn's connection, writing through a :class:`CoalescingWriter`."""

    def __init__(
        self,
        app: Any,
        loop: asyncio.AbstractEventLoop,
        config: Any,
        context: Any,
        state: Any,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self._coalescing = CoalescingWriter(writer, loop)
        coalescing = cast(asyncio.StreamWriter, self._coalescing)
        lean_hypercorn_objects(context)  # ORCH-2770: its events without empty deques
        super().__init__(app, loop, config, context, state, reader, coalescing)
        # ORCH-2782: the keep-alive timeout as a timer, not two tasks per request
        self.idle_task = cast(AsyncioSingleTask, IdleTimer(self))

    async def run(self) -> None:
        # ORCH-8024: each request's AppQueue gets this connection's reset (its spawn
        # runs in this task, so it sees the variable)
        CONNECTION_RESET.set(self._coalescing.abort)
        await super().run()

    async def close_idle(self) -> None:
        """hypercorn's server-side close of an idle connection (ORCH-2782)."""
        await self._initiate_server_close()


def coalesce_hypercorn_writes() -> None:
    """Make hypercorn's asyncio worker serve connections with
    :class:`CoalescingTCPServer` (idempotent, process-wide)."""
    # the module's own name, looked up at each accepted connection (not re-exported)
    setattr(hypercorn_run, "TCPServer", CoalescingTCPServer)  # noqa: B010
    lean_hypercorn_objects()  # ORCH-2770: each request's receive queue without deques
