"""Which bytes left orchestratord first: kernel receive stamps on loopback (ORCH-2821).

:class:`StampedLlamaServer` is a small fake ``llama-server`` (``/health``,
``/props``, ``/metrics``, ``/slots``, ``/tokenize``, ``/apply-template`` and a
streamed ``/completion``) served from a thread with blocking sockets, whose
listening socket has ``SO_TIMESTAMPNS``: for each ``/completion`` request it keeps
the kernel's receive stamp of the request's last bytes. :func:`stamped_head` sends
one request to orchestratord on a socket with the same option and returns the
stamp of the answer's first bytes. On loopback the stamp is taken when the sender's
``send`` hands the segment to the receiving socket, in the sender's own call, so
two stamps of bytes one process sent compare in the order it sent them, whatever
the receivers' scheduling (Linux, ``socket(7)``).
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from types import TracebackType

__all__ = ["StampedLlamaServer", "stamped_head"]

SO_TIMESTAMPNS = 35  # Linux (asm-generic); the control message has the same number
_CMSG = socket.CMSG_SPACE(16)  # struct timespec
CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _recv(sock: socket.socket, size: int) -> tuple[bytes, int]:
    """One ``recvmsg``: the bytes and the stamp of the last segment they came in
    (0 without one)."""
    data, ancillary, _flags, _addr = sock.recvmsg(size, _CMSG)
    stamp = 0
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = struct.unpack("qq", payload[:16])
            stamp = sec * 1_000_000_000 + nsec
    return data, stamp


def _answer(status: str, body: bytes, ctype: str = "application/json") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body


class StampedLlamaServer:
    """``with StampedLlamaServer() as engine:`` serves on ``engine.base_url``;
    ``engine.completions`` holds ``(stamp_ns, request body)`` per ``/completion``."""

    def __init__(self, tokens: int = 2) -> None:
        self.tokens = tokens
        self.completions: list[tuple[int, dict[str, object]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)  # accepted inherit
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> StampedLlamaServer:
        self._acceptor.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._acceptor.join(5)
        for t in list(self._threads):
            t.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            buf, stamp = b"", 0
            try:
                while b"\r\n\r\n" not in buf:
                    data, stamp = _recv(conn, 65536)
                    if not data:
                        return
                    buf += data
                head, _, body = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path = lines[0].split(" ")[:2]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                while len(body) < length:
                    data, stamp = _recv(conn, 65536)
                    if not data:
                        return
                    body += data
                conn.sendall(self._route(method, path.split("?")[0], body, stamp))
            except OSError:
                return

    def _route(self, method: str, path: str, body: bytes, stamp: int) -> bytes:
        doc = json.loads(body) if body else {}
        if path == "/health":
            return _answer("200 OK", b'{"status":"ok"}')
        if path == "/props":
            props = {
                "total_slots": 4,
                "default_generation_settings": {"n_ctx": 4096, "params": {}},
                "model_path": "/fake/stamped.gguf",
                "build_info": "b0-stamped",
                "chat_template": CHATML,
                "bos_token": "<|im_start|>",
                "eos_token": "<|im_end|>",
            }
            return _answer("200 OK", json.dumps(props).encode())
        if path == "/metrics":
            return _answer("200 OK", b"llamacpp:requests_processing 0\n", "text/plain")
        if path == "/slots":
            return _answer("200 OK", b"[]")
        if path == "/tokenize":
            n = len(str(doc.get("content", "")).split()) + 1
            return _answer("200 OK", json.dumps({"tokens": list(range(1, n + 1))}).encode())
        if path == "/apply-template":
            prompt = "".join(
                f"<|im_start|>{m.get('role', '')}\n{m.get('content', '')}<|im_end|>\n"
                for m in doc.get("messages") or []
            )
            return _answer("200 OK", json.dumps({"prompt": prompt}).encode())
        if method == "POST" and path == "/completion":
            with self._lock:
                self.completions.append((stamp, doc))
            n = min(self.tokens, int(doc.get("n_predict", self.tokens)))
            p = len(str(doc.get("prompt", "")).split()) + 1
            events = [
                {"index": 0, "content": f" t{i}", "tokens": [1000 + i], "stop": False,
                 "id_slot": 0, "tokens_predicted": i + 1, "tokens_evaluated": p}
                for i in range(n)
            ]  # fmt: skip
            events.append(
                {"index": 0, "content": "", "tokens": [], "id_slot": 0, "stop": True,
                 "model": "stamped", "tokens_predicted": n, "tokens_evaluated": p,
                 "stop_type": "limit", "stopping_word": "", "tokens_cached": p + n,
                 "timings": {}}
            )  # fmt: skip
            sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
            return _answer("200 OK", sse, "text/event-stream")
        return _answer("404 Not Found", b'{"error":{"code":404,"message":"no route"}}')


def stamped_head(port: int, request: bytes, *, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send ``request`` to ``127.0.0.1:port`` on a new connection; return the kernel
    stamp of the answer's first segment (its first byte read alone, so the stamp is
    that segment's) and the whole answer, read until the connection closes or a
    chunked body's last chunk arrives."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(timeout_s)
        sock.connect(("127.0.0.1", port))
        sock.sendall(request)
        first, stamp = _recv(sock, 1)
        answer = first
        deadline = time.monotonic() + timeout_s
        while not answer.endswith(b"\r\n0\r\n\r\n") and time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return stamp, answer
