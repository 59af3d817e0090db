"""Startup self-tests of each replica before it takes traffic (ORCH-7050..ORCH-7053).

Until a pool has one replica that passed (startup), a replica reported
Ready (for a given address, model digest and engine version) is kept out of
placement, reported as
``starting``, and these checks run against it through adapters of its own:

1. ``preload``: the engine answers health as Ready and its props report slots and ctx;
2. ``decode``: a one-token generation reaches its final event;
3. ``cancel``: a generation is abandoned after its first event, and the slot
   it held takes a one-token generation again;

   (an engine that only embeds, ``Capability.EMBED_ONLY``, embeds one text in
   both instead: it has no generation to decode or cancel, ORCH-9283)
4. ``telemetry``: the engine's metrics scrape answers and the replica's
   ``model_state`` series is in the orchestrator's own ``/metrics`` page.

Each check is logged (``self-test`` lines with ``check``, ``ok``, ``detail``)
and kept for ``/v1/capabilities``. All passing, the Ready state is applied;
one failing keeps the replica not Ready with the failed check as its
``last_error``, so the pool stays Unready with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
from llama_orch.core.adapter_api import Capability, Finished, GenerateRequest, WorkerAdapter
from llama_orch.core.api import SelfTestCheck, SelfTestReport
from llama_orch.core.replica import ReplicaState

from .pools import Pool

__all__ = ["SelfTests"]

_log = logging.getLogger("llama_orch.orchestratord")
# the names SelfTestCheck.name accepts, in the order they run
CheckName = Literal["preload", "decode", "cancel", "telemetry"]
CHECKS: tuple[CheckName, ...] = ("preload", "decode", "cancel", "telemetry")


class SelfTestFailed(Exception):
    pass


def _request(max_tokens: int) -> GenerateRequest:
    return GenerateRequest(
        task_id=f"selftest-{uuid.uuid4().hex}",
        prompt="Hello",
        max_tokens=max_tokens,
        seed=1,
        cache_prompt=False,
    )


async def _decode(adapter: WorkerAdapter) -> str:
    stream = adapter.generate(_request(1))
    finished = None
    try:
        async for ev in stream:
            if isinstance(ev, Finished):
                finished = ev
    finally:
        await stream.aclose()
    if finished is None:
        raise SelfTestFailed("the engine stream ended without a final event")
    return f"finished ({finished.reason})"


async def _embed(adapter: WorkerAdapter) -> str:
    """``decode`` of an engine that only embeds (ORCH-9283): one vector comes back."""
    out = await adapter.embed(["Hello"])
    if len(out.vectors) != 1 or not out.vectors[0]:
        raise SelfTestFailed(f"embed answered {len(out.vectors)} vectors for 1 input")
    return f"embedded ({len(out.vectors[0])} dimensions)"


async def _cancel(adapter: WorkerAdapter, fresh: Callable[[], WorkerAdapter]) -> str:
    req = _request(32)
    stream = adapter.generate(req)
    try:
        first = await anext(stream)
    finally:
        await adapter.cancel(req.task_id)
        await stream.aclose()
    again = fresh()  # the canceled generation's slot serves a new client again
    try:
        await _decode(again)
    finally:
        await again.aclose()
    return f"canceled after the first {type(first).__name__}; slot free again"


class SelfTests:
    def __init__(
        self, *, enabled: bool, timeout_s: float, telemetry_page: Callable[[], bytes]
    ) -> None:
        self.enabled = enabled
        self.timeout_s = timeout_s
        self._page = telemetry_page
        self.reports: dict[tuple[str, str], SelfTestReport] = {}
        self._passed: set[tuple[str, ...]] = set()
        self._failed: set[tuple[str, ...]] = set()
        self._pools_passed: set[str] = set()  # startup is over for these pools
        self._running: dict[tuple[str, str], ReplicaState] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False  # no new checks once shutdown began (ORCH-4123)
        # Told (engine, ms) of every passed ``decode`` check: seeds the service-time
        # model's overhead prior of that engine (ORCH-1954).
        self.on_decode: Callable[[str, float], None] | None = None

    @staticmethod
    def _identity(state: ReplicaState) -> tuple[str, ...]:
        return (
            state.pool_id,
            state.replica_id,
            state.base_url,
            state.model_digest,
            state.engine_version,
        )

    def gate(self, pool: Pool, state: ReplicaState, adapter: WorkerAdapter | None) -> bool:
        """Called by :meth:`Pool.update` for a Ready state: True lets it through now."""
        ident = self._identity(state)
        if not self.enabled or ident in self._passed or state.pool_id in self._pools_passed:
            return True  # tested, or the pool is past startup (restarts, reloads)
        if ident in self._failed or self._closed:
            return False  # stays out with its reason until another identity shows up
        key = (state.pool_id, state.replica_id)
        if key in self._running:
            self._running[key] = state  # newest Ready snapshot, applied after the checks
            return False
        self._running[key] = state
        holding = msgspec.structs.replace(state, status="starting", last_error=None)
        pool.update(holding)
        task = asyncio.get_running_loop().create_task(
            self._run(pool, state, adapter, holding), name=f"selftest-{state.replica_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return False

    async def _run(
        self,
        pool: Pool,
        state: ReplicaState,
        given: WorkerAdapter | None,
        holding: ReplicaState,
    ) -> None:
        key = (state.pool_id, state.replica_id)
        # Own adapters, one per step: the checks never share connections with each other
        # or with the adapter that will serve tasks.
        adapter = pool.new_adapter(state)
        checks: list[SelfTestCheck] = []
        started = time.time()

        def fresh() -> WorkerAdapter:
            return pool.new_adapter(state)

        async def isolated(step: Callable[[WorkerAdapter], Awaitable[str]]) -> str:
            own = fresh()
            try:
                return await step(own)
            finally:
                await own.aclose()

        embed_only = False  # an embedding engine: decode and cancel embed (ORCH-9283)
        try:

            async def preload() -> str:
                nonlocal embed_only
                health = await adapter.health()
                if not health.ready:
                    raise SelfTestFailed(f"health not ready: {health.detail}")
                props = await adapter.props()
                if props.slots < 1 or props.ctx < 1:
                    raise SelfTestFailed(f"props report {props.slots} slots, ctx {props.ctx}")
                embed_only = Capability.EMBED_ONLY in props.capabilities
                return f"ready; ctx {props.ctx}, {props.slots} slot(s)"

            async def embed_twice(own: WorkerAdapter) -> str:
                first = await _embed(own)
                return f"no generation to cancel; {first}, again on a fresh connection: " + (
                    await isolated(_embed)
                )

            async def telemetry() -> str:
                await adapter.metrics()
                page = self._page().decode()
                if f'replica_id="{state.replica_id}"' not in page or "model_state{" not in page:
                    raise SelfTestFailed("model_state of the replica is missing from /metrics")
                return "engine scrape answered; model_state exported"

            steps = {
                "preload": preload,
                "decode": lambda: isolated(_embed if embed_only else _decode),
                "cancel": lambda: isolated(
                    embed_twice if embed_only else lambda a: _cancel(a, fresh)
                ),
                "telemetry": telemetry,
            }
            for name in CHECKS:
                t0 = time.monotonic()
                try:
                    async with asyncio.timeout(self.timeout_s):
                        detail = await steps[name]()
                    ok = True
                except TimeoutError:
                    ok, detail = False, f"no answer within {self.timeout_s:g}s"
                except SelfTestFailed as exc:
                    ok, detail = False, str(exc)
                except Exception as exc:
                    ok = False
                    detail = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                check = SelfTestCheck(
                    name=name, ok=ok, detail=detail, duration_ms=int((time.monotonic() - t0) * 1000)
                )
                checks.append(check)
                _log.log(
                    logging.INFO if ok else logging.ERROR,
                    "self-test",
                    extra={
                        "pool_id": state.pool_id,
                        "replica_id": state.replica_id,
                        "engine": state.engine,
                        "engine_version": state.engine_version,
                        "check": name,
                        "ok": ok,
                        "detail": detail,
                    },
                )
                if not ok:
                    break
        finally:
            await adapter.aclose()
        passed = len(checks) == len(CHECKS) and all(c.ok for c in checks)
        self.reports[key] = SelfTestReport(
            pool_id=state.pool_id,
            replica_id=state.replica_id,
            passed=passed,
            checks=checks,
            at_ms=int(started * 1000),
        )
        latest = self._running.pop(key, state)
        if pool.states.get(state.replica_id) is not holding:
            return  # a newer not-Ready snapshot arrived meanwhile: it stands
        if passed:
            if self.on_decode is not None:
                self.on_decode(pool.engine, float(checks[CHECKS.index("decode")].duration_ms))
            self._passed.add(self._identity(latest))
            self._pools_passed.add(state.pool_id)
            pool.update(latest, adapter=given)
        else:
            self._failed.add(self._identity(state))
            bad = checks[-1]
            pool.update(
                msgspec.structs.replace(
                    latest,
                    status="starting",
                    last_error=f"self-test {bad.name} failed: {bad.detail}",
                )
            )

    @property
    def running(self) -> bool:
        return bool(self._running)

    async def aclose(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
