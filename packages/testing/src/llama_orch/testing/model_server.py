"""A local origin for model files: plain HTTP with ranges, and the Hub's layout.

Tests of the ``https`` and ``hf`` model sources (ORCH-3300, ORCH-3301) need an
origin they control, since these machines reach no model hub. The server runs
in its own thread (the sources are synchronous) and serves:

* ``GET /files/<name>`` with ``Range`` support (206) for resumable downloads;
* ``HEAD|GET /<owner>/<repo>/resolve/<revision>/<path>`` the way the Hub
  does for LFS files: 302 to a CDN URL, with ``X-Repo-Commit``,
  ``X-Linked-Etag`` (the file's sha256) and ``X-Linked-Size``; the revision
  may be a branch or the commit; ``GET /cdn/...`` serves the bytes.

``cut_after`` makes the next downloads stop after that many bytes (a
connection that drops half-way); ``requests`` records what was asked.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from aiohttp import web

__all__ = ["HubRepo", "ModelFileServer"]


@dataclass
class HubRepo:
    """One repository of the fake Hub: files by path, one commit, branch names."""

    files: dict[str, Path]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    revisions: tuple[str, ...] = ("main",)


@dataclass
class _State:
    files: dict[str, Path] = field(default_factory=dict)
    repos: dict[str, HubRepo] = field(default_factory=dict)
    cut_after: int | None = None
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)


class ModelFileServer:
    def __init__(self) -> None:
        self.state = _State()
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._digests: dict[Path, str] = {}

    # ------------------------------------------------------------------ config

    def add_file(self, name: str, path: Path) -> str:
        self.state.files[name] = path
        return f"{self.url}/files/{name}"

    def add_repo(self, repo: str, hub: HubRepo) -> None:
        self.state.repos[repo] = hub

    def cut_after(self, n: int | None) -> None:
        self.state.cut_after = n

    def _sha256(self, path: Path) -> str:
        if path not in self._digests:
            h = hashlib.sha256()
            with path.open("rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
            self._digests[path] = h.hexdigest()
        return self._digests[path]

    # ------------------------------------------------------------------ handlers

    async def _send(self, request: web.Request, path: Path) -> web.StreamResponse:
        size = path.stat().st_size
        start = 0
        rng = request.headers.get("Range")
        self.state.requests.append((request.method, request.path, rng))
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= size:
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        resp = web.StreamResponse(status=206 if start else 200)
        resp.content_length = size - start
        resp.headers["Accept-Ranges"] = "bytes"
        if start:
            resp.headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        await resp.prepare(request)
        budget = self.state.cut_after
        with path.open("rb") as fh:
            fh.seek(start)
            while block := fh.read(1 << 20):
                if budget is not None:
                    block = block[:budget]
                    budget -= len(block)
                await resp.write(block)
                if budget == 0:
                    assert request.transport is not None
                    request.transport.close()  # the connection drops half-way
                    return resp
        await resp.write_eof()
        return resp

    async def _file(self, request: web.Request) -> web.StreamResponse:
        path = self.state.files.get(request.match_info["name"])
        if path is None:
            raise web.HTTPNotFound()
        return await self._send(request, path)

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        repo = f"{request.match_info['owner']}/{request.match_info['name']}"
        hub = self.state.repos.get(repo)
        rev, file = request.match_info["rev"], request.match_info["path"]
        if hub is None or rev not in (*hub.revisions, hub.commit) or file not in hub.files:
            self.state.requests.append((request.method, request.path, None))
            raise web.HTTPNotFound(headers={"X-Error-Code": "EntryNotFound"})
        path = hub.files[file]
        self.state.requests.append((request.method, request.path, None))
        if request.method in ("HEAD", "GET"):
            raise web.HTTPFound(
                f"/cdn/{repo}/{hub.commit}/{file}",
                headers={
                    "X-Repo-Commit": hub.commit,
                    "X-Linked-Etag": f'"{self._sha256(path)}"',
                    "X-Linked-Size": str(path.stat().st_size),
                    "ETag": '"not-the-lfs-digest"',
                },
            )
        raise web.HTTPMethodNotAllowed(request.method, ["HEAD", "GET"])

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        repo = f"{request.match_info['owner']}/{request.match_info['name']}"
        hub = self.state.repos.get(repo)
        file = request.match_info["path"]
        if hub is None or request.match_info["commit"] != hub.commit or file not in hub.files:
            raise web.HTTPNotFound()
        return await self._send(request, hub.files[file])

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        ready = threading.Event()
        app = web.Application()
        app.router.add_get("/files/{name}", self._file)
        app.router.add_get("/cdn/{owner}/{name}/{commit}/{path:.+}", self._cdn)
        app.router.add_route("*", "/{owner}/{name}/resolve/{rev}/{path:.+}", self._resolve)

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._runner = web.AppRunner(app)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            server = site._server
            assert server is not None
            # aiohttp types its server as AbstractServer; the loop's create_server made a Server
            port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="model-file-server", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("the model file server did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(30)
