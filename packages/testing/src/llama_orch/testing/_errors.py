"""Error-mapping checks of the conformance suite (ORCH-3003, ORCH-3007, ORCH-4013).

A mixin of :class:`~llama_orch.testing.AdapterConformance`: its tests use the
fixtures and helpers defined there (``request``, ``run``, ``expect_error``,
``fault_case``).
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from llama_orch.core.adapter_api import GenerateRequest, WorkerAdapter
from llama_orch.core.errors import DecodeTimeout, InvalidParams, OrchError, PoolUnready, WorkerReset

from ._engine import EngineUnderTest, Fault, FaultCase
from ._util import (
    _POLL_S,
    _STABLE_POLLS,
    StreamResult,
    _fail,
    _poll_until,
    _ready,
)


class ErrorChecks:
    if TYPE_CHECKING:  # the helpers of AdapterConformance, which this class is mixed into

        @staticmethod
        def request(eut: EngineUnderTest, **overrides: Any) -> GenerateRequest: ...

        @staticmethod
        async def run(
            eut: EngineUnderTest, adapter: WorkerAdapter, req: GenerateRequest, behaviour: str
        ) -> StreamResult: ...

        @staticmethod
        async def expect_error(
            eut: EngineUnderTest,
            adapter: WorkerAdapter,
            req: GenerateRequest,
            error: type[OrchError],
            behaviour: str,
        ) -> tuple[str, OrchError]: ...

        @staticmethod
        async def fault_case(
            eut: EngineUnderTest, fault: Fault
        ) -> AbstractAsyncContextManager[FaultCase]: ...

    async def test_context_overflow_is_invalid_params(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3007: a prompt longer than the context -> InvalidParams."""
        eut = engine_under_test
        ctx = (await adapter.props()).ctx
        prompt = " ".join(["hello"] * (ctx + 64))
        await self.expect_error(
            eut,
            adapter,
            self.request(eut, prompt=prompt, max_tokens=4),
            InvalidParams,
            "error: context overflow -> INVALID_PARAMS",
        )

    async def test_loading_is_not_ready_and_pool_unready(
        self, engine_under_test: EngineUnderTest
    ) -> None:
        """ORCH-3003, ORCH-3007: loading -> live, not ready (every poll); generate ->
        PoolUnready; once loaded, ready stays true."""
        eut = engine_under_test
        async with await self.fault_case(eut, Fault.LOADING) as case:
            a = case.adapter
            try:
                answers = []
                for _ in range(_STABLE_POLLS):
                    answers.append(await a.health())
                    await asyncio.sleep(_POLL_S)
                if any(h.ready for h in answers) or not all(h.detail for h in answers):
                    _fail(
                        "health: loading -> not ready",
                        f"a loading engine must be not ready, with a detail: {answers}",
                    )
                await self.expect_error(
                    eut,
                    a,
                    case.request or self.request(eut),
                    PoolUnready,
                    "error: loading -> POOL_UNREADY",
                )
                if case.finish_loading is not None:
                    await case.finish_loading()
                    await _poll_until(
                        lambda: _ready(a),
                        eut.expect.timeout_s,
                        "health: loading -> ready",
                        "never became ready",
                    )
                    for _ in range(_STABLE_POLLS):
                        h = await a.health()
                        if not h.ready:
                            _fail("health: no flapping", f"ready, then {h} after loading ended")
                        await asyncio.sleep(_POLL_S)
            finally:
                await a.aclose()

    async def test_unreachable_engine_is_not_live(self, engine_under_test: EngineUnderTest) -> None:
        """ORCH-3003, ORCH-3007: health never raises; generate -> WorkerReset."""
        eut = engine_under_test
        async with await self.fault_case(eut, Fault.UNREACHABLE) as case:
            a = case.adapter
            try:
                try:
                    h = await a.health()
                except Exception as exc:
                    _fail("health: unreachable", f"health() raised {type(exc).__name__}: {exc}")
                    raise
                if h.live or h.ready or not h.detail:
                    _fail("health: unreachable", f"expected not live, not ready, a detail: {h}")
                await self.expect_error(
                    eut,
                    a,
                    case.request or self.request(eut),
                    WorkerReset,
                    "error: unreachable -> WORKER_RESET",
                )
            finally:
                await a.aclose()

    async def _fault_stream(
        self, eut: EngineUnderTest, fault: Fault, error: type[OrchError], behaviour: str
    ) -> tuple[str, OrchError, FaultCase]:
        async with await self.fault_case(eut, fault) as case:
            try:
                text, exc = await self.expect_error(
                    eut, case.adapter, case.request or self.request(eut), error, behaviour
                )
            finally:
                await case.adapter.aclose()
        if case.expected_text is not None and text != case.expected_text:
            _fail(
                behaviour,
                f"text sent before the fault must be delivered first: "
                f"expected {case.expected_text!r}, got {text!r}",
            )
        return text, exc, case

    async def test_reset_mid_stream_is_worker_reset(
        self, engine_under_test: EngineUnderTest
    ) -> None:
        """ORCH-3007: the connection drops mid-stream -> WorkerReset, chained."""
        b = "error: reset mid-stream -> WORKER_RESET"
        _, exc, case = await self._fault_stream(
            engine_under_test, Fault.RESET_MID_STREAM, WorkerReset, b
        )
        if case.chained and exc.__cause__ is None:
            _fail(b, f"WorkerReset not chained to the transport error (raise ... from): {exc}")

    async def test_stall_mid_stream_is_decode_timeout(
        self, engine_under_test: EngineUnderTest
    ) -> None:
        """ORCH-3007: no progress in time -> DecodeTimeout."""
        await self._fault_stream(
            engine_under_test,
            Fault.STALL_MID_STREAM,
            DecodeTimeout,
            "error: stall -> DECODE_TIMEOUT",
        )

    async def test_error_inside_200_stream_is_worker_reset(
        self, engine_under_test: EngineUnderTest
    ) -> None:
        """ORCH-3007: an error event inside an HTTP 200 stream -> WorkerReset."""
        await self._fault_stream(
            engine_under_test,
            Fault.ERROR_IN_STREAM,
            WorkerReset,
            "error: error inside a 200 stream -> WORKER_RESET",
        )

    async def test_sse_framing_per_spec(self, engine_under_test: EngineUnderTest) -> None:
        """ORCH-4014: comments, no space after the colon, CRLF and events split across
        reads (even inside a UTF-8 character) reconstruct the exact text."""
        eut = engine_under_test
        b = "SSE parsing"
        async with await self.fault_case(eut, Fault.SSE_FRAMING) as case:
            try:
                r = await self.run(eut, case.adapter, case.request or self.request(eut), b)
            finally:
                await case.adapter.aclose()
        if case.expected_text is None:
            _fail(b, "the SSE_FRAMING fault case must give expected_text")
        if r.text != case.expected_text:
            _fail(b, f"expected {case.expected_text!r}, reconstructed {r.text!r}")
