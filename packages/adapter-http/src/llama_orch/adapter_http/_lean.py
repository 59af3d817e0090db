"""A lean HTTP/1.1 client connection for engine streams (ORCH-2745..ORCH-2747).

An open stream needs the answer's status, its body framing (chunked,
``Content-Length`` or until close) and whether the connection may carry another
request. aiohttp keeps ~9 KB per open response for more than that (the head's
headers kept three times, the parser's lists, five deques; issue #20, mem12).
:class:`StreamConn` is an :class:`asyncio.Protocol` that keeps one bytearray of
unparsed input, one of decoded body, a few ints and a future while a reader
waits: no header is kept, nothing per read is allocated beyond the bytes read.

:class:`StreamPool` is one keep-alive pool per adapter (one replica): a connection
goes back only when its answer was read to its end and the engine did not say
``Connection: close``; a pooled connection idle for ``keepalive_s`` is dropped.
A try on a pooled connection that ends before any byte of an answer is marked
``stale`` so that the caller sends the request again (ORCH-2721).

Failures are ``OSError`` subclasses (``ConnectionError`` for a cut or a bad
answer, never ``TimeoutError``): :func:`~._errors.map_transport_errors` maps them.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as _ssl
from typing import cast
from urllib.parse import urlsplit

__all__ = ["BadAnswer", "StreamConn", "StreamPool"]

_HEAD_MAX = 65_536  # an answer's head larger than this is refused
_LINE_MAX = 4_096  # a chunk-size or trailer line larger than this is refused
_PAUSE_AT = 262_144  # decoded bytes buffered before reading pauses

# body framing
_UNTIL_CLOSE = 0
_LENGTH = 1
_CHUNKED = 2
# chunked state in ``_left`` when not inside a chunk's data
_SIZE = -1  # a chunk-size line is next
_CRLF = -2  # the CRLF after a chunk's data is next
_TRAILER = -3  # trailer lines, then the empty line that ends the body


class BadAnswer(ConnectionError):
    """The engine's bytes are not an HTTP/1.1 answer this client reads."""


class StaleConnection(ConnectionError):
    """A pooled connection ended before any byte of an answer: the engine never
    saw the request (ORCH-2721)."""


class ConnectTimeout(ConnectionError):
    """No TCP connection within ``connect_timeout_s`` (a transport failure, not
    the stream's idle timeout)."""


class StreamConn(asyncio.Protocol):
    """One engine connection, one answer at a time; :meth:`head` then :meth:`read`."""

    __slots__ = (
        "_body",
        "_buf",
        "_done",
        "_exc",
        "_left",
        "_loop",
        "_mode",
        "_paused",
        "_waiter",
        "closed",
        "got_bytes",
        "idle_since",
        "keep_alive",
        "reused",
        "status",
        "transport",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()  # received, not yet parsed
        self._body = bytearray()  # decoded body, not yet read
        self._waiter: asyncio.Future[None] | None = None
        self._exc: BaseException | None = None
        self._mode = _UNTIL_CLOSE
        self._left = 0
        self._done = False  # the body ended
        self._paused = False
        self.status = 0  # 0 until the head arrived
        self.keep_alive = False
        self.closed = False
        self.reused = False  # carried an earlier answer (from the pool)
        self.got_bytes = False  # any byte of the current answer arrived
        self.idle_since = 0.0

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not an isinstance check: uvloop's transports are not asyncio.Transport
        # subclasses (ORCH-2808)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        if self._done:  # bytes beyond the answer's end: never pooled
            self.keep_alive = False
            return
        if self._left == _SIZE and self._mode == _CHUNKED and self.status and not self._buf:
            data = self._whole_chunks(data)  # ORCH-2801
        self._buf += data
        try:
            if not self.status:
                self._parse_head()
            if self.status and self._buf:
                self._parse_body()
        except BadAnswer as exc:
            self._exc = exc
            self.close()
        if self._paused is False and len(self._body) > _PAUSE_AT and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if not self._done and self._exc is None:
            if self.status and self._mode == _UNTIL_CLOSE and exc is None:
                self._done = True  # the body is everything up to the close
            elif not self.got_bytes and self.reused:
                self._exc = StaleConnection("pooled engine connection closed before an answer")
            else:
                what = "the end of the answer" if self.status else "an answer"
                cut = ConnectionResetError(f"engine closed the connection before {what}")
                if exc is not None:
                    cut.__cause__ = exc
                self._exc = cut
        self._wake()

    # -- parsing -------------------------------------------------------------
    def _parse_head(self) -> None:
        while True:
            buf = self._buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _HEAD_MAX:
                    raise BadAnswer("answer head too large")
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[: end + 4]
            version, _, rest = lines[0].partition(b" ")
            code = rest[:3]
            if not version.startswith(b"HTTP/1.") or not code.isdigit():
                raise BadAnswer(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            status = int(code)
            if 100 <= status < 200:
                continue  # an interim answer: the real one follows
            keep_alive = version == b"HTTP/1.1"
            mode, length = _UNTIL_CLOSE, 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"transfer-encoding":
                    if value.strip().lower().endswith(b"chunked"):
                        mode = _CHUNKED
                elif name == b"content-length" and mode != _CHUNKED:
                    value = value.strip()
                    if not value.isdigit():
                        raise BadAnswer(f"bad Content-Length {value[:40]!r}")
                    mode, length = _LENGTH, int(value)
                elif name == b"connection":
                    tokens = value.strip().lower()
                    if b"close" in tokens:
                        keep_alive = False
                    elif b"keep-alive" in tokens:
                        keep_alive = True
            if status in (204, 304):
                mode, length = _LENGTH, 0
            self.status = status
            self._mode = mode
            self.keep_alive = keep_alive and mode != _UNTIL_CLOSE
            self._left = length if mode == _LENGTH else _SIZE
            if mode == _LENGTH and length == 0:
                self._done = True
            return

    def _whole_chunks(self, data: bytes) -> bytes:
        """The chunks at the start of ``data`` that it holds whole (size line without
        extensions, data, CRLF), decoded straight into the body; returns the rest
        for :meth:`_parse_body`, which also decides on anything unusual (ORCH-2801:
        an engine's read is usually whole chunks, one token each)."""
        body = self._body
        pos, end = 0, len(data)
        while pos < end:
            i = data.find(b"\r\n", pos, pos + _LINE_MAX)
            if i < 0:
                break
            try:
                size = int(data[pos:i], 16)
            except ValueError:
                break  # an extension or a bad size: the parser's
            start = i + 2
            stop = start + size
            if size <= 0 or stop + 2 > end or data[stop : stop + 2] != b"\r\n":
                break  # the last chunk, a part of one, or a bad one: the parser's
            body += memoryview(data)[start:stop]
            pos = stop + 2
        return data[pos:] if pos else data

    def _parse_body(self) -> None:
        buf = self._buf
        if self._mode == _UNTIL_CLOSE:
            self._body += buf
            del buf[:]
            return
        if self._mode == _LENGTH:
            n = min(self._left, len(buf))
            self._body += buf[:n]
            del buf[:n]
            self._left -= n
            if self._left == 0:
                self._end(buf)
            return
        left = self._left
        while buf and not self._done:
            if left > 0:  # inside a chunk's data
                n = min(left, len(buf))
                self._body += buf[:n] if n < len(buf) else buf
                del buf[:n]
                left -= n
                if left == 0:
                    left = _CRLF
            elif left == _SIZE or left == _TRAILER:
                i = buf.find(b"\r\n")
                if i < 0:
                    if len(buf) > _LINE_MAX:
                        raise BadAnswer("chunk-size or trailer line too long")
                    break
                line = bytes(buf[:i])
                del buf[: i + 2]
                if left == _TRAILER:
                    if not line:
                        self._end(buf)
                    continue
                size = line.split(b";", 1)[0].strip()
                try:
                    left = int(size, 16)
                except ValueError:
                    raise BadAnswer(f"bad chunk size {size[:40]!r}") from None
                if left < 0:
                    raise BadAnswer(f"bad chunk size {size[:40]!r}")
                if left == 0:
                    left = _TRAILER
            else:  # _CRLF
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise BadAnswer("chunk data not followed by CRLF")
                del buf[:2]
                left = _SIZE
        self._left = left

    def _end(self, rest: bytearray) -> None:
        self._done = True
        if rest:  # bytes beyond the answer: the connection is not reused
            self.keep_alive = False
            del rest[:]

    # -- the reader's side ------------------------------------------------------
    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def head(self) -> int:
        """The answer's status, once its head arrived."""
        while not self.status:
            if self._exc is not None:
                raise self._exc
            await self._wait()
        return self.status

    async def read(self) -> bytes:
        """The body's next bytes; ``b""`` at its end. A failure set by :meth:`fail`
        is raised at once; bytes that arrived before a cut are read first."""
        while True:
            exc = self._exc
            if exc is not None and not isinstance(exc, ConnectionError):
                raise exc
            body = self._body
            if body:
                out = bytes(body)
                del body[:]
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return out
            if exc is not None:
                raise exc
            if self._done:
                return b""
            await self._wait()

    async def read_all(self) -> bytes:
        parts = []
        while data := await self.read():
            parts.append(data)
        return b"".join(parts)

    @property
    def at_end(self) -> bool:
        return self._done and not self._body

    def fail(self, exc: BaseException) -> None:
        """Wake the reader with ``exc`` (a cancel, the idle timer)."""
        if self._exc is None:
            self._exc = exc
        self._wake()

    def start(self, request: bytes) -> None:
        """Send one request on this connection, ready to read its answer."""
        assert self.transport is not None
        self.status = 0
        self._done = False
        self._exc = None
        self.got_bytes = False
        self.transport.write(request)

    def close(self) -> None:
        """Drop the socket (the engine sees the disconnect)."""
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()


class StreamPool:
    """The stream connections to one engine base URL (one per adapter)."""

    __slots__ = (
        "_closed",
        "_connect_s",
        "_family",
        "_host",
        "_hostport",
        "_idle",
        "_keepalive_s",
        "_port",
        "_prefix",
        "_ssl",
    )

    def __init__(self, base_url: str, *, keepalive_s: float, connect_timeout_s: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        tls = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if tls else 80)
        self._ssl: _ssl.SSLContext | None = _ssl.create_default_context() if tls else None
        self._prefix = parts.path.rstrip("/")
        default = (443 if tls else 80) == self._port
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._hostport = (host if default else f"{host}:{self._port}").encode("idna")
        self._keepalive_s = keepalive_s
        self._connect_s = connect_timeout_s
        self._idle: list[StreamConn] = []
        self._closed = False
        # ORCH-2805: plain HTTP to an IP address connects its own socket (no name to
        # resolve); TLS and host names keep asyncio's ``create_connection``.
        self._family = None if tls else _ip_family(self._host)

    def request(self, path: str, body: bytes, headers: bytes) -> bytes:
        """The bytes of ``POST path`` with a JSON ``body``; ``headers`` are extra
        ``Name: value\\r\\n`` lines."""
        return b"".join(
            (
                b"POST ",
                (self._prefix + path).encode("utf-8"),
                b" HTTP/1.1\r\nHost: ",
                self._hostport,
                b"\r\nContent-Type: application/json\r\nAccept: */*\r\nContent-Length: ",
                b"%d" % len(body),
                b"\r\n",
                headers,
                b"\r\n",
                body,
            )
        )

    async def acquire(self) -> StreamConn:
        """A pooled connection (``reused``) or a new one."""
        loop = asyncio.get_running_loop()
        idle = self._idle
        while idle:
            conn = idle.pop()  # the most recently used: least likely closed
            expired = loop.time() - conn.idle_since >= self._keepalive_s
            if conn.closed or not conn.keep_alive or expired:
                conn.close()
                continue
            conn.reused = True
            return conn
        if self._family is not None:
            return await self._connect(loop, self._family)
        try:
            async with asyncio.timeout(self._connect_s):
                _, conn = await loop.create_connection(
                    lambda: StreamConn(loop), self._host, self._port, ssl=self._ssl
                )
        except TimeoutError:
            raise self._timed_out() from None
        return conn

    async def _connect(self, loop: asyncio.AbstractEventLoop, family: int) -> StreamConn:
        """ORCH-2805: a new connection to an IP address: a non-blocking ``connect``,
        its completion awaited with one writer callback and one timer (what
        ``create_connection`` does for an address, less its resolution step, its
        candidates loop and an ``asyncio.timeout`` per connection); the socket is
        closed on any failure or cancellation."""
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY
        try:
            sock.setblocking(False)
            try:
                sock.connect((self._host, self._port))
            except BlockingIOError:
                await self._connected(loop, sock)
            _, conn = await loop.create_connection(lambda: StreamConn(loop), sock=sock)
        except BaseException:
            sock.close()
            raise
        return conn

    async def _connected(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        """Wait until ``sock``'s connect completes; its error, or ``ConnectTimeout``."""
        done = loop.create_future()
        fd = sock.fileno()
        loop.add_writer(fd, _settle, done, None)
        timer = loop.call_later(self._connect_s, self._expire, done)
        try:
            await done
        finally:
            loop.remove_writer(fd)
            timer.cancel()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, f"connect to {self._host}:{self._port}: {os.strerror(err)}")

    def _expire(self, done: asyncio.Future[None]) -> None:
        _settle(done, self._timed_out())

    def _timed_out(self) -> ConnectTimeout:
        return ConnectTimeout(f"no connection to {self._host}:{self._port} in {self._connect_s}s")

    def release(self, conn: StreamConn) -> None:
        """Pool ``conn`` if its answer was read to the end and it may carry another."""
        if self._closed or self._keepalive_s <= 0 or not conn.keep_alive or conn.closed:
            conn.close()
            return
        if not conn.at_end:
            conn.close()
            return
        conn.idle_since = asyncio.get_running_loop().time()
        self._idle = [c for c in self._idle if not c.closed]
        self._idle.append(conn)

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()


def _ip_family(host: str) -> int | None:
    """``AF_INET``/``AF_INET6`` if ``host`` is an IP address (no scope), else None."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    if not done.done():
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)
