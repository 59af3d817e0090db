"""The facade's completions served below Starlette's routing (ORCH-2786, ORCH-2785).

The same requests to the served application (``build_app``) and to one with
``lean_routes=False`` (every route through Starlette), in process: the same
status, head and body, up to the ids and times of the tasks each one ran.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
from llama_orch.orchestratord.app import build_app
from llama_orch.testing_engines.asgi import Answer, AsgiCall
from starlette.middleware.errors import ServerErrorMiddleware

ADMIN_KEY = "llo_test-admin-" + "k" * 40  # conftest's admin key (no tenant)


@pytest.fixture
def entered_starlette(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The requests that entered Starlette's middleware stack."""
    seen: list[str] = []
    original = ServerErrorMiddleware.__call__

    async def counting(self, scope, receive, send):  # type: ignore[no-untyped-def]
        seen.append(f"{scope['method']} {scope['path']}")
        await original(self, scope, receive, send)

    monkeypatch.setattr(ServerErrorMiddleware, "__call__", counting)
    yield seen


def _h(key: str | None) -> dict[str, str]:
    h = {"Content-Type": "application/json", "X-Correlation-Id": "cid-facade"}
    if key is not None:
        h["Authorization"] = f"Bearer {key}"
    return h


def _chat(**doc: object) -> list[bytes]:
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], **doc}
    return [msgspec.json.encode(body)]


def _same(one: Answer, other: Answer) -> None:
    assert (one.status, one.headers, one.body) == (other.status, other.headers, other.body)


async def test_facade_completions_answer_as_through_starlette(
    start_daemon, config, key, entered_starlette
):
    """ORCH-2786: refusals byte for byte, a stream's head alike; and the two routes
    do not enter Starlette's stack on the served application while others do."""
    daemon = await start_daemon(config())
    lean_app = build_app(daemon.orch)
    plain_app = build_app(daemon.orch, lean_routes=False)
    refusals = [
        ("/v1/chat/completions", _h(None), _chat()),
        ("/v1/chat/completions", _h(ADMIN_KEY), _chat()),
        ("/v1/chat/completions", _h(key), _chat(model="no-such-model")),
        ("/v1/chat/completions", _h(key), [b"{not json"]),
        ("/v1/completions", _h(key), [msgspec.json.encode({"model": "mock-model"})]),
        ("/v1/completions", _h(None), [b"{}"]),
    ]
    for path, headers, body in refusals:
        lean = await AsgiCall("POST", path, headers, body).run(lean_app)
        plain = await AsgiCall("POST", path, headers, body).run(plain_app)
        assert lean.status >= 400 and lean.header(b"x-correlation-id") == "cid-facade"
        _same(lean, plain)

    streamed = []
    for app in (lean_app, plain_app):
        ans = await AsgiCall(
            "POST", "/v1/chat/completions", _h(key), _chat(stream=True, max_tokens=3)
        ).run(app)
        assert ans.status == 200 and ans.body.endswith(b"data: [DONE]\n\n"), ans.body
        streamed.append(ans)
    lean, plain = streamed
    task = b"x-llorch-task-id"
    lean = lean.replaced(lean.header(task), plain.header(task))
    assert lean.headers == plain.headers  # the body's ids and times differ

    entered_starlette.clear()
    await AsgiCall("POST", "/v1/completions", _h(key), [b"{}"]).run(lean_app)
    await AsgiCall("POST", "/v1/chat/completions", _h(key), _chat(max_tokens=2)).run(lean_app)
    assert entered_starlette == []
    others = [("GET", "/v1/chat/completions"), ("POST", "/v1/messages"), ("GET", "/v1/models")]
    for method, path in others:
        await AsgiCall(method, path, _h(key), [b"{}"]).run(lean_app)
    assert entered_starlette == [f"{m} {p}" for m, p in others]
