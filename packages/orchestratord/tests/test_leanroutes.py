"""The submit and stream routes below Starlette's routing (ORCH-2783..2785).

Each request goes to two applications built on one running orchestrator: the
served one (``build_app``: the lean dispatcher in front of Starlette) and one
with ``lean_routes=False`` (every route through Starlette), called in process
with a scripted ``receive`` and a recording ``send``. Their answers must be
the same bytes, up to the task ids of the tasks each one admitted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import pytest
from llama_orch.orchestratord.app import build_app
from llama_orch.orchestratord.leanroutes import LeanRoutes, lean_endpoints
from llama_orch.testing_engines.asgi import Answer, AsgiCall
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp


def same(one: Answer, other: Answer, ids: tuple[str, str] | None = None) -> None:
    """Equal status, head (in order) and body, ``ids[0]`` read as ``ids[1]``."""
    if ids is not None:
        one = one.replaced(*ids)
    assert (one.status, one.headers, one.body) == (other.status, other.headers, other.body)


def _headers(key: str | None, **more: str) -> dict[str, str]:
    h = {"X-Correlation-Id": "cid-lean", "Content-Type": "application/json", **more}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    return h


def _body(**doc: Any) -> list[bytes]:
    doc.setdefault("prompt", "hello world")
    return [msgspec.json.encode(doc)]


async def _both(
    apps: tuple[ASGIApp, ASGIApp],
    method: str,
    path: str,
    headers: dict[str, str],
    body: Sequence[bytes] = (b"",),
) -> tuple[Answer, Answer]:
    lean = await AsgiCall(method, path, headers, list(body)).run(apps[0])
    starlette = await AsgiCall(method, path, headers, list(body)).run(apps[1])
    return lean, starlette


@pytest.fixture
def entered_starlette(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The paths of the requests that entered Starlette's middleware stack."""
    seen: list[str] = []
    original = ServerErrorMiddleware.__call__

    async def counting(self: ServerErrorMiddleware, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        seen.append(f"{scope['method']} {scope['path']}")
        await original(self, scope, receive, send)

    monkeypatch.setattr(ServerErrorMiddleware, "__call__", counting)
    yield seen


async def test_lean_routes_answer_as_starlette_does(
    start_orchestrator, mock_config, tenant_keys, entered_starlette
):
    """ORCH-2785 (proves ORCH-2783, ORCH-2784): the same status, headers and body on both
    paths for successes and every refusal of the two routes."""
    auth, keys = tenant_keys("a", "b")
    config = mock_config(
        auth=auth,
        slots=4,
        limits={"max_body_bytes": 2048, "max_streams_per_tenant": 1},
        adapter_options={"slots": 4},
    )
    run = await start_orchestrator(config)
    lean_app = build_app(run.orch)
    plain_app = build_app(run.orch, lean_routes=False)
    apps = (lean_app, plain_app)
    a, b = keys["a"], keys["b"]

    # a 202 submit each, the task read to its end (frames are then fixed bytes)
    accepted: list[tuple[str, Answer]] = []
    for app in apps:
        ans = await AsgiCall("POST", "/v1/tasks", _headers(a), _body(max_tokens=3)).run(app)
        assert ans.status == 202, ans.body
        doc = msgspec.json.decode(ans.body)
        await run.settled(doc["task_id"])
        # the finish forecast learns from the task before: not compared (nor the
        # length, which its digits change, once checked)
        assert ans.header(b"content-length") == str(len(ans.body))
        ans.headers = [(k, v) for k, v in ans.headers if k != b"content-length"]
        ans.body = msgspec.json.encode({k: v for k, v in doc.items() if k != "predicted_finish_ms"})
        accepted.append((doc["task_id"], ans))
    (lean_id, lean_202), (plain_id, plain_202) = accepted
    assert lean_202.header(b"x-correlation-id") == "cid-lean"
    same(lean_202, plain_202, (lean_id, plain_id))

    # the stream of an ended task, whole and resumed: the same frames
    for last in (None, "1"):
        more = {} if last is None else {"Last-Event-ID": last}
        lean = await AsgiCall("GET", f"/v1/tasks/{lean_id}/stream", _headers(a, **more), [b""]).run(
            lean_app
        )
        plain = await AsgiCall(
            "GET", f"/v1/tasks/{lean_id}/stream", _headers(a, **more), [b""]
        ).run(plain_app)
        assert lean.status == 200 and b"event: end" in lean.body
        same(lean, plain)

    # refusals: 401, 403, 400, 404 (unknown and another tenant's), 413
    cases: list[tuple[str, str, dict[str, str], list[bytes]]] = [
        ("POST", "/v1/tasks", _headers(None), _body()),
        ("POST", "/v1/tasks", _headers("llo_not-a-key" + "x" * 40), _body()),
        ("POST", "/v1/tasks", _headers(keys["admin"]), _body()),
        ("POST", "/v1/tasks", _headers(a), _body(max_tokens=-1)),
        ("POST", "/v1/tasks", _headers(a), [b"{not json"]),
        ("POST", "/v1/tasks", _headers(a, Accept="text/event-stream"), _body(pool_id="nope")),
        ("POST", "/v1/tasks", _headers(a), [b'{"prompt": "' + b"x" * 1500, b"x" * 1500 + b'"}']),
        ("POST", "/v1/tasks", _headers(a, **{"Content-Length": "4000"}), [b"{}"]),
        ("GET", f"/v1/tasks/{lean_id}/stream", _headers(None), [b""]),
        ("GET", f"/v1/tasks/{lean_id}/stream", _headers(b), [b""]),
        ("GET", "/v1/tasks/unknown-task/stream", _headers(a), [b""]),
        ("GET", f"/v1/tasks/{lean_id}/stream", _headers(a, **{"Last-Event-ID": "x"}), [b""]),
    ]
    for method, path, headers, body in cases:
        lean, plain = await _both(apps, method, path, headers, body)
        assert lean.status >= 400, (path, lean.status, lean.body)
        assert lean.header(b"x-correlation-id") == "cid-lean"
        same(lean, plain)
    statuses = [(await AsgiCall(m, p, h, list(bd)).run(lean_app)).status for m, p, h, bd in cases]
    assert statuses == [401, 401, 403, 400, 400, 400, 413, 413, 401, 404, 404, 400]

    # an unexpected exception: the 500 envelope, logged, raised on to the server
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a fault the envelope must not tell")

    run.orch.submit = broken  # type: ignore[method-assign]
    lean, plain = await _both(apps, "POST", "/v1/tasks", _headers(a), _body())
    assert lean.status == 500 and b"fault" not in lean.body
    same(lean, plain)
    del run.orch.submit

    # a streaming submit, then the tenant's one stream held open: 429 on both routes
    opened: list[tuple[AsgiCall, asyncio.Task[Answer]]] = []
    answers: list[tuple[Answer, Answer]] = []
    for app in apps:
        call = AsgiCall(
            "POST",
            "/v1/tasks",
            _headers(a, Accept="text/event-stream"),
            _body(max_tokens=2000),
        )
        held = asyncio.create_task(call.run(app))
        await asyncio.wait_for(call.started.wait(), 10)
        opened.append((call, held))
        over_submit = await AsgiCall(
            "POST", "/v1/tasks", _headers(a, Accept="text/event-stream"), _body()
        ).run(app)
        over_stream = await AsgiCall("GET", f"/v1/tasks/{lean_id}/stream", _headers(a), [b""]).run(
            app
        )
        answers.append((over_submit, over_stream))
    for lean, plain in zip(*answers, strict=True):
        assert lean.status == 429
        same(lean, plain)
    held_ids = [c.answer.header(b"x-task-id") for c, _ in opened]
    lean_sse, plain_sse = (c.answer for c, _ in opened)
    assert lean_sse.status == 200
    lean_sse.body = plain_sse.body = b""  # the frames' times differ; the heads must not
    same(lean_sse, plain_sse, (held_ids[0], held_ids[1]))
    for call, held in opened:
        call.disconnect()  # ORCH-2712: the writer ends, the task keeps running
        await asyncio.wait_for(held, 10)
    for task_id in held_ids:
        assert run.orch.get(task_id).state in ("queued", "running")
        run.orch.cancel(task_id)


async def test_lean_routes_skip_starlettes_stack(
    start_orchestrator, mock_config, entered_starlette
):
    """ORCH-2783: submit (202 and streaming) and stream do not enter Starlette's middleware
    stack; another route, another method (HEAD too) or a path that is not exactly theirs does."""
    run = await start_orchestrator(mock_config())
    app = build_app(run.orch)
    assert isinstance(app.app.app, LeanRoutes)  # type: ignore[attr-defined]
    ans = await AsgiCall("POST", "/v1/tasks", _headers(None), _body(max_tokens=2)).run(app)
    assert ans.status == 202
    task_id = msgspec.json.decode(ans.body)["task_id"]
    sse = _headers(None, Accept="text/event-stream")
    ans = await AsgiCall("POST", "/v1/tasks", sse, _body(max_tokens=2)).run(app)
    assert ans.status == 200 and b"event: end" in ans.body
    await run.settled(task_id)
    ans = await AsgiCall("GET", f"/v1/tasks/{task_id}/stream", _headers(None), [b""]).run(app)
    assert ans.status == 200 and b"event: end" in ans.body
    assert entered_starlette == []
    others = [
        ("GET", f"/v1/tasks/{task_id}"),
        ("HEAD", f"/v1/tasks/{task_id}/stream"),
        ("POST", "/v1/tasks/"),
        ("GET", "/v1/tasks/stream"),
        ("GET", f"/v1/tasks/{task_id}/stream/"),
        ("POST", f"/v1/tasks/{task_id}/stream"),
        ("GET", "/v1/tasks"),
    ]
    for method, path in others:
        await AsgiCall(method, path, _headers(None), [b""]).run(app)
    assert entered_starlette == [f"{m} {p}" for m, p in others]


def test_a_frontend_names_only_plain_async_routes():
    """ORCH-2786: a named route that is not mounted, has path parameters or a sync
    endpoint fails the construction; a plain async one is served by its endpoint."""

    async def endpoint(request: Request) -> Response:
        return Response()

    def sync_endpoint(request: Request) -> Response:
        return Response()

    routes = [
        Route("/v1/x", endpoint, methods=["POST"]),
        Route("/v1/x/{item}", endpoint, methods=["POST"]),
        Route("/v1/y", sync_endpoint, methods=["POST"]),
    ]
    assert lean_endpoints(routes, {("POST", "/v1/x")}) == {("POST", "/v1/x"): endpoint}
    assert lean_endpoints(routes, set()) == {}
    for wanted in [("POST", "/v1/x/{item}"), ("POST", "/v1/y"), ("GET", "/v1/x"), ("POST", "/z")]:
        with pytest.raises(TypeError):
            lean_endpoints(routes, {wanted})


def _held_frames(task: asyncio.Task[Any]) -> list[str]:
    """``file:function`` of each coroutine a suspended task holds, outermost first."""
    out: list[str] = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        code = coro.cr_code
        out.append(f"{code.co_filename}:{code.co_qualname}")
        coro = coro.cr_await
    return out


async def test_an_open_stream_holds_no_starlette_frame(start_orchestrator, mock_config):
    """ORCH-2783, ORCH-2787: while a stream is open, its request holds the coroutines of
    the correlation-id middleware, the dispatcher and one of the SSE writer: none of
    Starlette's (through Starlette's routing they are held: the check sees them) nor
    of the body-limit middleware."""
    run = await start_orchestrator(mock_config(adapter_options={"token_delay_ms": 50}))
    held: dict[bool, list[str]] = {}
    for lean in (True, False):
        app = build_app(run.orch, lean_routes=lean)
        sse = _headers(None, Accept="text/event-stream")
        call = AsgiCall("POST", "/v1/tasks", sse, _body(max_tokens=50))
        request = asyncio.create_task(call.run(app))
        await asyncio.wait_for(call.started.wait(), 10)
        await asyncio.sleep(0.1)  # some frames written: the writer waits for the next
        held[lean] = _held_frames(request)
        call.disconnect()
        await asyncio.wait_for(request, 10)
        run.orch.cancel(call.answer.header(b"x-task-id"))
    writer = [f for f in held[True] if ":TaskStream." in f]
    assert len(writer) == 1, held[True]  # ORCH-2787: one coroutine of the SSE writer
    assert not [f for f in held[True] if ":BodyLimit." in f], held[True]  # ORCH-2787
    assert [f.rsplit(":", 1)[1] for f in held[True]][1:3] == [
        "CorrelationId.__call__",
        "LeanRoutes.__call__",
    ]
    assert not [f for f in held[True] if "/starlette/" in f], held[True]
    assert len([f for f in held[False] if "/starlette/" in f]) >= 4, held[False]
