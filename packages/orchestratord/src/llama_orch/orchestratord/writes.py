"""One socket write per connection and event-loop turn (ORCH-2766).

hypercorn writes every ASGI message of a response on its own: the head, each
body message, the chunked terminator. A ``send`` on a loopback socket runs the
receiver's network stack in the sender's process, so those writes were ~30 % of
orchestratord's CPU in the profile of a one-token stream (issue #15's facade,
issue #20). :class:`CoalescingTCPServer` keeps what a connection produces during
one turn of the event loop and writes it once at the end of that turn
(``call_soon``): nothing waits for a later turn, and flow control is hypercorn's
(``drain`` when the transport's buffer is full).

hypercorn (0.17, 0.18) has no hook for this: its asyncio worker makes each
connection with the ``TCPServer`` name of ``hypercorn.asyncio.run``, which
:func:`coalesce_hypercorn_writes` points at the subclass.
"""

from __future__ import annotations

import asyncio

import hypercorn.asyncio.run as hypercorn_run
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.events import Closed, Event, RawData

__all__ = ["CoalescingTCPServer", "coalesce_hypercorn_writes"]


class CoalescingTCPServer(TCPServer):
    """hypercorn's connection with the writes of one loop turn sent as one."""

    _pending: list[bytes] | None = None
    _flush_handle: asyncio.Handle | None = None

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, RawData):
            if self._pending is None:
                self._pending = []
            self._pending.append(event.data)
            if self._flush_handle is None:
                self._flush_handle = self.loop.call_soon(self._flush)
            try:
                await self.writer.drain()  # paused by earlier turns' writes: wait
            except (ConnectionError, RuntimeError):
                await self.protocol.handle(Closed())
            return
        if isinstance(event, Closed):
            self._flush()  # what was sent before the close goes out first
        await super().protocol_send(event)

    def _flush(self) -> None:
        self._flush_handle = None
        pending = self._pending
        if not pending:
            return
        self._pending = None
        try:
            self.writer.write(pending[0] if len(pending) == 1 else b"".join(pending))
        except (ConnectionError, RuntimeError):
            pass  # the transport is gone: the read side sees the close

    async def _close(self) -> None:
        self._flush()
        await super()._close()


def coalesce_hypercorn_writes() -> None:
    """Make hypercorn's asyncio worker serve connections with
    :class:`CoalescingTCPServer` (idempotent, process-wide)."""
    # the module's own name, looked up at each accepted connection (not re-exported)
    setattr(hypercorn_run, "TCPServer", CoalescingTCPServer)  # noqa: B010
