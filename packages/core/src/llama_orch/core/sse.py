"""Server-Sent Events framing: an incremental parser and an encoder (ORCH-1201).

Pure code, shared by orchestratord (encoding), the CLI client and the engine
adapters (parsing). The parser follows the WHATWG event-stream rules that
matter in practice: ``\\n``, ``\\r\\n`` and ``\\r`` line endings, comment
lines starting with ``:``, one optional space after the colon, multi-line
``data`` joined with ``\\n``, events split across arbitrary reads, and a
field without a colon meaning an empty value.
"""

from __future__ import annotations

import msgspec

__all__ = ["SSEMessage", "SSEParser", "encode_event"]


class SSEMessage(msgspec.Struct, frozen=True, gc=False):
    """One dispatched event. ORCH-2824: a frozen struct made in C (a frozen dataclass
    sets each field through ``object.__setattr__``: ~0.9 µs a message, one per token)."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Feed bytes in, get complete messages out."""

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None
        self._saw_cr = False
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        if not chunk:
            return []  # an empty read must not forget a pending \r
        if self._saw_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the \n of a \r\n split across reads
        self._saw_cr = chunk.endswith(b"\r")
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # The carried-over tail never holds a line ending, so normalising
            # the joined buffer is exact: \r\n and a lone \r both end a line.
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        end = buf.rfind(b"\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        # Line-wise in C (split/decode), not byte-wise in Python: this runs once
        # per engine chunk on the token path. A multi-byte character never
        # spans a \n, so decoding the complete lines at once equals per line.
        # ORCH-2824: a ``data`` line and the blank line that dispatches (the two
        # lines of every engine event) are handled here, not by a call each.
        out: list[SSEMessage] = []
        data = self._data
        for line in buf[:end].decode("utf-8", errors="replace").split("\n"):
            if not line:
                msg = self._dispatch()
                data = self._data
                if msg is not None:
                    out.append(msg)
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith(" ", 5) else line[5:])
            else:
                self._line(line)  # another field or a comment: never dispatches
        return out

    def _line(self, line: str) -> SSEMessage | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "retry":
            if value.isdigit():
                self._retry = int(value)
        return None

    def _dispatch(self) -> SSEMessage | None:
        if self._id is not None:
            self.last_event_id = self._id
        if not self._data:
            self._event = ""
            self._retry = None
            return None
        data = self._data
        text = data[0] if len(data) == 1 else "\n".join(data)  # the same string
        msg = SSEMessage(self._event or "message", text, self._id, self._retry)
        self._event, self._data, self._retry = "", [], None
        return msg


def encode_event(event: str, data: bytes, event_id: int | None = None) -> bytes:
    """One SSE frame: ``id:``, ``event:``, ``data:`` lines and a blank line.

    ``data`` must be single-line JSON (msgspec output never contains a raw
    newline), so one ``data:`` line is exact.
    """
    head = (
        f"id: {event_id}\nevent: {event}\ndata: "
        if event_id is not None
        else (f"event: {event}\ndata: ")
    )
    return head.encode() + data + b"\n\n"
