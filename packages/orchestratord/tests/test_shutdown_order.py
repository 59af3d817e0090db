"""What a shutdown leaves behind, under either HTTP server (ORCH-2817, ORCH-2818, ORCH-6262).

An HTTP adapter opens its client session lazily, so an adapter called after its
``aclose`` opens a new session that nothing closes (aiohttp reports it when it is
collected: the unraisable ``ResourceWarning: Unclosed client session`` seen under
uvicorn in ``test_service_real_llamacpp.py``). These tests use the mock adapter and
record the order of its calls instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from llama_orch.adapters.mock import MockAdapter
from llama_orch.core.config import Config
from llama_orch.orchestratord.serve import _bind, serve

SERVERS = ["hypercorn", "uvicorn"]


def _config(http_server: str, **pool: Any) -> Config:
    doc = {
        "server": {"port": 0, "shutdown_grace_s": 0.1, "http_server": http_server},
        "auth": {"enabled": False},
        "pools": [{"id": "mock", "engine": "mock", "model": "m", "endpoints": ["m://0"], **pool}],
    }
    return msgspec.convert(doc, Config)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every ``health`` and ``aclose`` of a mock adapter, in order, as (call, adapter id)."""
    log: list[tuple[str, int]] = []
    health, aclose = MockAdapter.health, MockAdapter.aclose

    async def logged_health(self: MockAdapter) -> Any:
        log.append(("health", id(self)))
        return await health(self)

    async def logged_aclose(self: MockAdapter) -> None:
        log.append(("aclose", id(self)))
        await aclose(self)

    monkeypatch.setattr(MockAdapter, "health", logged_health)
    monkeypatch.setattr(MockAdapter, "aclose", logged_aclose)
    return log


async def _serve_until(config: Config, enough: Any) -> None:
    """Serve ``config`` until ``enough()`` holds (polled), then shut down and wait."""
    stop = asyncio.Event()
    served = asyncio.create_task(serve(config, shutdown_trigger=stop.wait))
    for _ in range(500):
        if enough() or served.done():
            break
        await asyncio.sleep(0.01)
    assert enough(), "the condition never held"
    stop.set()
    await asyncio.wait_for(served, 30)


@pytest.mark.parametrize("http_server", SERVERS)
async def test_no_adapter_call_after_its_close(calls, http_server):
    """ORCH-2817: a Ready endpoint's liveness probe (ORCH-1119), every 5 ms here, stops
    before its adapter closes at shutdown; under uvicorn, whose shutdown waits at least
    0.1 s after the drain, probes came after the close (a new session each, for an
    HTTP adapter)."""
    config = _config(http_server, health_probe_interval_s=0.005)
    await _serve_until(config, lambda: sum(c == "health" for c, _ in calls) >= 4)
    closed = {who: n for n, (call, who) in enumerate(calls) if call == "aclose"}
    assert closed, calls
    late = [n for n, (call, who) in enumerate(calls) if call == "health" and n > closed.get(who, n)]
    assert not late, f"health called after aclose at {late}: {calls}"


@pytest.mark.parametrize("http_server", SERVERS)
async def test_an_endpoint_still_probing_is_closed_at_shutdown(calls, http_server):
    """ORCH-2817: an endpoint never Ready is probed until its startup timeout; a shutdown
    before then closes the adapter it was probing with (it was never the pool's)."""
    config = _config(http_server, adapter_options={"fail": "unready"})
    await _serve_until(config, lambda: sum(c == "health" for c, _ in calls) >= 2)
    probed = {who for call, who in calls if call == "health"}
    closed = {who for call, who in calls if call == "aclose"}
    assert probed and probed <= closed, calls


async def test_uvicorn_awaits_the_requests_it_cancels():
    """ORCH-2818: a request still open after the drain and uvicorn's 1 s grace is
    cancelled, and ``serve_uvicorn`` returns only once it ended (its cleanup done);
    uvicorn's own ``Server.shutdown`` cancels and returns without awaiting."""
    from llama_orch.orchestratord.uvserve import serve_uvicorn

    started, ended = asyncio.Event(), []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        started.set()
        try:
            await asyncio.Event().wait()  # never answers on its own
        finally:
            await asyncio.sleep(0.05)  # cleanup that awaits, as closing a session does
            ended.append("cleaned up")

    sock = _bind("127.0.0.1", 0)
    stop = asyncio.Event()
    served = asyncio.create_task(
        serve_uvicorn(app, sock, max_head_bytes=8192, ssl_context=None, shutdown_trigger=stop.wait)
    )
    _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(started.wait(), 5)
        stop.set()
        await asyncio.wait_for(served, 10)
        assert ended == ["cleaned up"]
    finally:
        writer.close()


class _Sleeps:
    """``uvicorn.server``'s view of :mod:`asyncio`, recording each ``sleep``: when it
    began and, if it ran to its end, when it ended (loop time)."""

    def __init__(self) -> None:
        self.slept: list[list[float | None]] = []  # [began, ended or None]

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float, result: Any = None) -> Any:
        loop = asyncio.get_running_loop()
        entry: list[float | None] = [loop.time(), None]
        self.slept.append(entry)
        out = await asyncio.sleep(delay, result)
        entry[1] = loop.time()
        return out


async def test_uvicorn_stops_on_events_not_on_its_timers(monkeypatch):
    """ORCH-6262: after the trigger, ``serve_uvicorn`` neither starts nor waits out one
    of uvicorn's timers (its ``Server.shutdown`` slept 0.1 s and polled every 0.1 s, and
    the Date ticker's next tick was up to 0.1 s away), and still closes an idle
    keep-alive connection at once and lets a busy one finish its response (ORCH-2818's
    grace)."""
    import uvicorn.server
    from llama_orch.orchestratord.uvserve import serve_uvicorn

    sleeps = _Sleeps()
    monkeypatch.setattr(uvicorn.server, "asyncio", sleeps)
    streaming, release = asyncio.Event(), asyncio.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/stream":
            await send({"type": "http.response.body", "body": b"a", "more_body": True})
            streaming.set()
            await release.wait()
        await send({"type": "http.response.body", "body": b"z"})

    sock = _bind("127.0.0.1", 0)
    host, port = sock.getsockname()[:2]
    stop = asyncio.Event()
    served = asyncio.create_task(
        serve_uvicorn(app, sock, max_head_bytes=8192, ssl_context=None, shutdown_trigger=stop.wait)
    )
    idle_r, idle_w = await asyncio.open_connection(host, port)
    busy_r, busy_w = await asyncio.open_connection(host, port)
    try:
        idle_w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(idle_r.readuntil(b"z\r\n0\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 200"), answer  # and kept alive
        busy_w.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(streaming.wait(), 5)
        assert sleeps.slept, "the Date ticker runs on uvicorn's sleep while serving"
        triggered = asyncio.get_running_loop().time()
        stop.set()
        assert await asyncio.wait_for(idle_r.read(), 5) == b""  # closed at once
        assert not served.done()  # the busy connection keeps the server open
        release.set()
        rest = await asyncio.wait_for(busy_r.read(), 5)  # its response, then the close
        await asyncio.wait_for(served, 5)
        assert rest.endswith(b"z\r\n0\r\n\r\n"), rest
        after = [entry for entry in sleeps.slept if max(t or 0.0 for t in entry) > triggered]
        assert not after, f"uvicorn timers after the trigger (began, ended): {after}"
    finally:
        idle_w.close()
        busy_w.close()


async def test_suspect_probes_and_replaced_adapters_end_before_the_close(calls):
    """ORCH-2817 (amended): a suspect replica's re-admission probe (ORCH-1117) is
    cancelled and awaited by ``Pool.stop_tasks``, and the close of a replaced replica's
    adapter is a task the pool keeps and awaits (before, neither was kept: the probe
    called ``health`` for up to 120 s after shutdown, the close could be collected)."""
    from llama_orch.core.replica import ReplicaState
    from llama_orch.orchestratord.pools import Pool

    config = _config("uvicorn")
    pool = Pool(config.pools[0], config.admission)
    ready = ReplicaState(
        pool_id="mock", replica_id="r0", engine="mock", status="ready", base_url="m://0", slots=1
    )
    pool.update(ready)
    first = pool.replicas["r0"].adapter
    pool.suspect("r0", "no answer", probe_s=30.0)  # its first health check is 30 s away
    assert not pool.replicas["r0"].state.ready
    pool.update(msgspec.structs.replace(ready, base_url="m://1"))  # a restarted engine
    second = pool.replicas["r0"].adapter
    assert second is not first
    probes = set(pool._probes)
    assert len(probes) == 1 and not any(t.done() for t in probes)
    await pool.stop_tasks()
    assert all(t.done() for t in probes)  # cancelled and awaited
    assert ("aclose", id(first)) in calls  # the replaced adapter's close was awaited
    assert not any(call == "health" for call, _ in calls)  # the probe never ran again
    await asyncio.sleep(0)
    assert not any(call == "health" for call, _ in calls)
    await second.aclose()
