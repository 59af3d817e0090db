"""One HTTP request to an ASGI application in the test's own event loop (ORCH-2785).

``AsgiCall`` scripts ``receive`` (the body parts, then nothing until
:meth:`AsgiCall.disconnect`) and records what ``send`` gets, so that two
applications can be given the same request and their answers compared byte for
byte, without a server or a socket between them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Answer", "AsgiCall"]

Message = dict[str, Any]
App = Callable[
    [dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


@dataclass
class Answer:
    """Status, head (in order) and the concatenated body of one response."""

    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: bytes) -> str:
        return dict(self.headers)[name].decode()

    def replaced(self, old: str, new: str) -> Answer:
        """This answer with ``old`` read as ``new`` in the head and body (e.g. the id
        of a task one application admitted, as the other's)."""
        o, n = old.encode(), new.encode()
        return Answer(
            self.status, [(k, v.replace(o, n)) for k, v in self.headers], self.body.replace(o, n)
        )


class AsgiCall:
    """One request: ``await AsgiCall(...).run(app)``; a held stream ends with ``disconnect()``."""

    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: Sequence[bytes] = (b"",),
    ) -> None:
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 8080),
        }
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        parts = list(body) or [b""]
        for i, part in enumerate(parts):
            self.inbox.put_nowait(
                {"type": "http.request", "body": part, "more_body": i < len(parts) - 1}
            )
        self.answer = Answer()
        self.started = asyncio.Event()

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.answer.status = message["status"]
            self.answer.headers = list(message.get("headers", []))
            self.started.set()
        elif message["type"] == "http.response.body":
            self.answer.body += message.get("body", b"")

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})

    async def run(self, app: App) -> Answer:
        """The answer; an exception the application raised on after it answered (as
        Starlette does after its 500) is the server's to log, not the caller's."""
        try:
            await app(self.scope, self.receive, self.send)
        except Exception:
            if not self.started.is_set():
                raise
        return self.answer
