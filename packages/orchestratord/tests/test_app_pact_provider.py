"""Pact provider verification: orchestratord against the CLI's pact (ORCH-6009).

The pact files in ``contracts/pacts/`` are written by the consumer tests in
``packages/cli/tests/test_pact_consumer.py``. Here a real orchestratord (mock
adapter endpoints, pool ``default``) is served in-process and the Pact
verifier replays every interaction against it over HTTP; provider states are
set up through the same public API the interactions use (a task with the
consumer's ``task_id``, a session opened by a task with its ``session_id``).
A second test breaks one response field and shows that verification fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from llama_orch.orchestratord import app as app_module
from pact import Verifier

PACT_DIR = Path(__file__).resolve().parents[3] / "contracts" / "pacts"
PACT_FILE = PACT_DIR / "llorch-cli-orchestratord.json"
# verifies what the consumer tests merged into the file in this run, after them, on their
# worker: another worker's merge could be read half written (ORCH-6240, ORCH-6009)
pytestmark = pytest.mark.xdist_group("pact")


async def _set_state(run: Any, state: str, params: dict[str, Any]) -> None:
    """Bring orchestratord into a provider state through its public API."""
    body: dict[str, Any] = {"prompt": "provider state", "max_tokens": 4}
    if state == "a task exists":
        body["task_id"] = params["task_id"]
    elif state == "a session exists":
        body["session_id"] = params["session_id"]
    else:
        # "pool default is ready" (and "", no state): start_orchestrator waited
        # for a Ready replica already.
        assert state in ("pool default is ready", ""), state
        return
    resp = await run.submit(**body)
    # 400 "already exists": an earlier interaction set the same state up.
    if resp.status != 202 and "already exists" not in await resp.text():
        raise AssertionError(f"provider state {state!r} failed: {await resp.text()}")


@contextlib.asynccontextmanager
async def _state_server(run: Any) -> AsyncIterator[str]:
    """A state-change endpoint in this event loop (pact's own helper server leaks a socket)."""

    async def change(request: web.Request) -> web.Response:
        doc = await request.json()
        if doc.get("action", "setup") == "setup":
            await _set_state(run, doc.get("state") or "", doc.get("params") or {})
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/_state", change)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield str(server.make_url("/_state"))
    finally:
        await server.close()


def _verify(url: str, state_url: str) -> str | None:
    """Replay the pact; None when it verifies, else the verifier's report."""
    host = url.removeprefix("http://").rsplit(":", 1)[0]
    verifier = (
        Verifier("orchestratord", host=host)
        .add_transport(url=url)
        .add_source(PACT_FILE)
        .state_handler(state_url, teardown=False, body=True)
        .set_request_timeout(10_000)
    )
    try:
        verifier.verify()
    except RuntimeError:
        return verifier.output(strip_ansi=True)
    return None


async def _verify_against(run: Any) -> str | None:
    async with _state_server(run) as state_url:
        return await asyncio.to_thread(_verify, run.url, state_url)


async def _start(start_orchestrator, mock_config) -> Any:  # type: ignore[no-untyped-def]
    run = await start_orchestrator(mock_config(id="default"))
    assert run.orch.pools["default"].ready_replicas()
    return run


def test_pact_files_exist():
    """The consumer side wrote its contract where the provider reads it."""
    doc = json.loads(PACT_FILE.read_text())
    assert doc["consumer"]["name"] == "llorch-cli" and doc["provider"]["name"] == "orchestratord"
    assert len(doc["interactions"]) >= 8


async def test_orchestratord_honours_the_cli_pact(start_orchestrator, mock_config):
    """ORCH-6009: every interaction of the CLI's pact verifies against orchestratord."""
    failures = await _verify_against(await _start(start_orchestrator, mock_config))
    assert failures is None, failures


class _BrokenEncoder:
    """Renames ``queue_position`` in every JSON answer: a breaking response change."""

    def __init__(self) -> None:
        self._inner = msgspec.json.Encoder()

    def encode(self, obj: object) -> bytes:
        return self._inner.encode(obj).replace(b'"queue_position"', b'"queue_pos"')


async def test_a_broken_response_field_fails_verification(
    start_orchestrator, mock_config, monkeypatch
):
    """ORCH-6009: the verification is not vacuous: one renamed response field fails it."""
    monkeypatch.setattr(app_module, "_json", _BrokenEncoder())
    failures = await _verify_against(await _start(start_orchestrator, mock_config))
    assert failures is not None, "verification passed with a renamed response field"
    assert "missing the following keys: queue_position" in failures, failures
    assert "a completion task submission" in failures
