"""The HTTP adapter in ``.docs/write-your-own-adapter.md`` runs as written (ORCH-4100).

The guide's code block is executed against a fake engine: health, props,
metrics and one stream through ``llama_orch.adapter_http.HttpAdapter``.
"""

from __future__ import annotations

import re
import types

from aiohttp import web
from llama_orch.core.adapter_api import (
    AdapterTarget,
    EngineMetrics,
    Finished,
    GenerateRequest,
    TokenChunk,
)
from llama_orch.testing.fake_http import FakeHTTPEngine, sse_response

from .conftest import ROOT

GUIDE = ROOT / ".docs" / "write-your-own-adapter.md"


def _guide_module() -> types.ModuleType:
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    code = next(b for b in blocks if "class EchoHttpAdapter(HttpAdapter)" in b)
    module = types.ModuleType("guide_echo_http")
    exec(compile(code, str(GUIDE), "exec"), module.__dict__)
    return module


async def test_guide_http_adapter_streams_through_the_base() -> None:
    guide = _guide_module()

    async def generate(request: web.Request) -> web.StreamResponse:
        resp = await sse_response(request)
        for word in (b" a", b" b"):
            await resp.write(b'data: {"text": "%s"}\n\n' % word)
        await resp.write(b'data: {"done": true}\n\n')
        return resp

    async def info(request: web.Request) -> web.Response:
        return web.json_response({"version": "1", "model": "m", "ctx": 100})

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="x_total 3\n")

    routes = {"POST /generate": generate, "GET /info": info, "GET /health": ok, "GET /metrics": ok}
    async with FakeHTTPEngine(routes) as fake:
        adapter = guide.EchoHttpAdapter(AdapterTarget(replica_id="r", base_url=fake.base_url))
        try:
            assert (await adapter.health()).ready
            props = await adapter.props()
            assert (props.engine, props.slots, props.ctx) == ("echo-http", 4, 100)
            assert await adapter.metrics() == EngineMetrics(raw={"x_total": 3.0})
            req = GenerateRequest(task_id="t", prompt="x", max_tokens=5, seed=1)
            events = [ev async for ev in adapter.generate(req)]
        finally:
            await adapter.aclose()
    assert events == [
        TokenChunk(" a"),
        TokenChunk(" b"),
        Finished(reason="eos", tokens_generated=2),
    ]
