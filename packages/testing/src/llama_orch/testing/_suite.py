"""The adapter conformance suite: one test class every adapter package subclasses.

Each test checks one behaviour of the worker-adapter contract
(ORCH-3003..ORCH-3011) and fails with a message that starts with the name of
that behaviour in brackets, e.g. ``[stop reason: length]``, so a broken
mapping is named, not just "assert False" (ORCH-4012).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, aclosing
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from llama_orch.core.adapter_api import (
    AdapterEvent,
    Capability,
    Finished,
    GenerateRequest,
    TokenChunk,
    WorkerAdapter,
    load_adapter_class,
)
from llama_orch.core.errors import (
    InvalidParams,
    OrchError,
)

from ._engine import EngineUnderTest, Fault, FaultCase
from ._errors import ErrorChecks
from ._util import (
    _POLL_S,
    _STABLE_POLLS,
    StreamResult,
    _fail,
    _fields,
    _pick_stop,
    _poll_until,
    collect_stream,
)

__all__ = ["AdapterConformance", "StreamResult", "collect_stream"]


class AdapterConformance(ErrorChecks):
    """Subclass in your adapter's tests and provide the ``engine_under_test`` fixture.

    ``engine_label`` names the engine (and model) behind the run; it is the
    parameter id of every test, e.g. ``test_stop_reason_length[llama-server]``.
    """

    engine_label: ClassVar[str] = ""
    # Explicit marks: the suite runs in pytest-asyncio's strict and auto modes.
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "engine_under_test" in metafunc.fixturenames:
            label = self.engine_label or type(self).__name__
            metafunc.parametrize("engine_under_test", [label], ids=[label], indirect=True)

    # -- fixtures -----------------------------------------------------------
    @pytest_asyncio.fixture
    async def adapter(self, engine_under_test: EngineUnderTest) -> AsyncIterator[WorkerAdapter]:
        a = engine_under_test.make_adapter()
        try:
            yield a
        finally:
            await a.aclose()

    # -- helpers ------------------------------------------------------------
    @staticmethod
    def request(eut: EngineUnderTest, **overrides: Any) -> GenerateRequest:
        e = eut.expect
        fields: dict[str, Any] = {
            "task_id": f"conf-{uuid.uuid4().hex[:12]}",
            "prompt": e.prompt,
            "max_tokens": e.max_tokens,
            "seed": 1234,
            "cache_prompt": False,
            **e.sampling,
        }
        fields.update(overrides)
        return GenerateRequest(**fields)

    @staticmethod
    async def run(
        eut: EngineUnderTest, adapter: WorkerAdapter, req: GenerateRequest, behaviour: str
    ) -> StreamResult:
        try:
            async with asyncio.timeout(eut.expect.timeout_s):
                return await collect_stream(adapter.generate(req), behaviour=behaviour)
        except TimeoutError:
            _fail(behaviour, f"generation did not finish within {eut.expect.timeout_s}s")
        except OrchError as exc:
            _fail(behaviour, f"generation failed: {type(exc).__name__}: {exc}")
        raise AssertionError("unreachable")

    @staticmethod
    async def expect_error(
        eut: EngineUnderTest,
        adapter: WorkerAdapter,
        req: GenerateRequest,
        error: type[OrchError],
        behaviour: str,
    ) -> tuple[str, OrchError]:
        """Run ``req``; it must fail with ``error``. Returns (text before it, error)."""
        text: list[str] = []
        try:
            async with asyncio.timeout(eut.expect.timeout_s):
                async with aclosing(adapter.generate(req)) as it:
                    async for ev in it:
                        if isinstance(ev, TokenChunk):
                            text.append(ev.text)
                        elif isinstance(ev, Finished):
                            _fail(
                                behaviour,
                                f"expected {error.__name__}, got a normal end {ev!r} "
                                f"after {''.join(text)!r}",
                            )
        except error as exc:
            return "".join(text), exc
        except TimeoutError:
            _fail(behaviour, f"expected {error.__name__}, nothing within {eut.expect.timeout_s}s")
        except OrchError as exc:
            _fail(behaviour, f"expected {error.__name__}, got {type(exc).__name__}: {exc}")
        except Exception as exc:
            _fail(
                behaviour,
                f"a transport exception escaped the adapter: {type(exc).__name__}: {exc} "
                f"(expected {error.__name__}, ORCH-3007)",
            )
        _fail(behaviour, f"expected {error.__name__}, the stream ended without an error")
        raise AssertionError("unreachable")

    @staticmethod
    async def fault_case(
        eut: EngineUnderTest, fault: Fault
    ) -> AbstractAsyncContextManager[FaultCase]:
        factory = eut.faults.get(fault)
        if factory is None:
            pytest.skip(f"engine {eut.engine!r} provides no way to provoke fault {fault.value!r}")
        return factory()

    async def _counter(self, eut: EngineUnderTest, adapter: WorkerAdapter) -> float | None:
        probe = eut.probes.generated_tokens_total
        if probe is not None:
            return await probe(adapter)
        return None

    async def _wait_idle(
        self, eut: EngineUnderTest, adapter: WorkerAdapter, behaviour: str
    ) -> None:
        probe = eut.probes.busy_slots
        if probe is None:
            return
        deadline = time.monotonic() + eut.expect.cancel_settle_s
        while (busy := await probe(adapter)) > 0:
            if time.monotonic() > deadline:
                _fail(
                    behaviour,
                    f"upstream generation not stopped: the engine still reports {busy} busy "
                    f"slot(s) {eut.expect.cancel_settle_s}s after the cancel",
                )
            await asyncio.sleep(_POLL_S)  # polling the engine: it offers no event

    async def _assert_counter_frozen(
        self,
        eut: EngineUnderTest,
        adapter: WorkerAdapter,
        before: float | None,
        limit: int,
        behaviour: str,
    ) -> None:
        """The engine-side token counter must stop growing after a cancel."""
        if before is None:
            return
        await asyncio.sleep(0.5)  # let counters the engine updates lazily catch up
        c1 = await self._counter(eut, adapter)
        await asyncio.sleep(1.0)
        c2 = await self._counter(eut, adapter)
        assert c1 is not None and c2 is not None
        if c2 != c1:
            _fail(
                behaviour,
                f"upstream generation not stopped: the engine's generated-token counter "
                f"grew from {c1} to {c2} in the second after the cancel",
            )
        if c1 - before >= limit:
            _fail(
                behaviour,
                f"upstream generation not stopped: the engine generated {c1 - before} tokens, "
                f"the whole max_tokens={limit}",
            )

    # -- discovery and identity --------------------------------------------
    async def test_entry_point_loads_adapter(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3001, ORCH-3010: the adapter is found by its entry-point name."""
        try:
            cls = load_adapter_class(engine_under_test.engine)
        except Exception as exc:
            _fail("entry point", f"load_adapter_class({engine_under_test.engine!r}): {exc}")
            raise
        if cls is not type(adapter):
            _fail("entry point", f"entry point: {cls!r}, make_adapter(): {type(adapter)!r}")
        if cls.engine != engine_under_test.engine:
            _fail(
                "entry point",
                f"{cls.__name__}.engine is {cls.engine!r}, "
                f"the entry point is {engine_under_test.engine!r}",
            )

    async def test_health_ready_without_flapping(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3003: a serving engine is live and ready, every time it is asked."""
        answers = []
        for _ in range(_STABLE_POLLS):
            answers.append(await adapter.health())
            await asyncio.sleep(_POLL_S)
        if not all(h.live and h.ready for h in answers):
            _fail("health: ready", f"a serving engine answered {answers}")

    async def test_props_report_engine_identity(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3004: slots, per-slot ctx, engine_version, model_digest, capabilities."""
        e = engine_under_test.expect
        p = await adapter.props()
        if p.engine != engine_under_test.engine:
            _fail("props: engine", f"engine={p.engine!r}, expected {engine_under_test.engine!r}")
        checks: list[tuple[str, object, object]] = [
            ("slots", p.slots, e.slots),
            ("ctx", p.ctx, e.ctx),
            ("engine_version", p.engine_version, e.engine_version),
            ("model_digest", p.model_digest, e.model_digest),
            ("model_ref", p.model_ref, e.model_ref),
        ]
        for name, got, want in checks:
            if want is not None and got != want:
                _fail(f"props: {name}", f"{name}={got!r}, expected {want!r}")
            if want is None and not got:
                _fail(f"props: {name}", f"{name} is empty ({got!r})")
        if p.slots < 1 or p.ctx < 1:
            _fail("props: slots/ctx", f"slots={p.slots}, ctx={p.ctx} (both must be >= 1)")
        if e.capabilities is not None and p.capabilities != e.capabilities:
            _fail(
                "props: capabilities",
                f"claimed {sorted(p.capabilities)}, expected {sorted(e.capabilities)}",
            )

    # -- streaming ------------------------------------------------------------
    async def test_stream_reconstructs_text_with_contiguous_token_counts(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3005: chunks concatenate to the engine's output; every engine token
        is counted once (the chunks' n_tokens add up to tokens_generated when the
        stream ends on length, and never exceed it)."""
        eut = engine_under_test
        req = self.request(eut)
        r = await self.run(eut, adapter, req, "streaming")
        if not r.chunks or not r.text:
            _fail("streaming", f"no text streamed for {req.prompt!r}: {r.finished!r}")
        counted = sum(c.n_tokens for c in r.chunks)
        # Tokens that produce no text (an eos token, text held back for a stop
        # string) are counted only in Finished; a length-ended stream has none.
        exact = r.finished.reason == "length"
        if counted > r.finished.tokens_generated or (
            exact and counted != r.finished.tokens_generated
        ):
            _fail(
                "streaming: token indices",
                f"chunks account for {counted} tokens, Finished says "
                f"tokens_generated={r.finished.tokens_generated} with reason "
                f"{r.finished.reason!r} (gap or double count)",
            )
        if r.finished.tokens_generated > req.max_tokens:
            n = r.finished.tokens_generated
            _fail("streaming", f"{n} tokens > max_tokens={req.max_tokens}")
        if r.finished.prompt_tokens < 1:
            _fail("streaming: prompt_tokens", f"Finished.prompt_tokens={r.finished.prompt_tokens}")
        ref = eut.probes.reference_text
        if ref is not None:
            want = await ref(adapter, req)
            if r.text != want:
                _fail(
                    "streaming: exact text",
                    f"streamed text differs from the engine's own output:\n"
                    f"  streamed: {r.text!r}\n  engine:   {want!r}",
                )

    async def test_stop_reason_length(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3005: max_tokens reached -> reason 'length', exactly max_tokens tokens."""
        eut = engine_under_test
        r = await self.run(eut, adapter, self.request(eut, max_tokens=5), "stop reason: length")
        if r.finished.reason != "length" or r.finished.tokens_generated != 5:
            _fail(
                "stop reason: length",
                f"max_tokens=5 must end with reason 'length' after 5 tokens, got "
                f"reason={r.finished.reason!r} tokens_generated={r.finished.tokens_generated}",
            )

    async def test_stop_reason_stop_string(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3005: a stop string ends the stream with reason 'stop' where it occurs."""
        eut = engine_under_test
        greedy = {"temperature": 0.0, "max_tokens": 32}
        full = await self.run(eut, adapter, self.request(eut, **greedy), "stop reason: stop")
        text = full.text
        stop, at = _pick_stop(text)
        if not stop:
            pytest.skip(f"no 3-character stop string occurs first after the start of {text!r}")
        r = await self.run(
            eut, adapter, self.request(eut, stop=(stop,), **greedy), "stop reason: stop"
        )
        if r.finished.reason != "stop":
            _fail(
                "stop reason: stop",
                f"stop={stop!r} occurs in the output {text!r} but the stream ended with "
                f"reason={r.finished.reason!r}",
            )
        before = text[:at]
        if eut.expect.stop_text_included:
            ok = r.text.startswith(before + stop) and text.startswith(r.text)
        else:
            ok = r.text == before
        if not ok:
            _fail(
                "stop reason: stop",
                f"with stop={stop!r} the text must end at the stop string: expected "
                f"{before!r}{' + stop' if eut.expect.stop_text_included else ''}, got {r.text!r}",
            )

    async def test_stop_reason_eos(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3005: the model's end-of-sequence -> reason 'eos' before max_tokens."""
        eut = engine_under_test
        req = eut.expect.eos_request
        if req is None:
            pytest.skip(f"engine {eut.engine!r} names no request that ends with eos")
        req = GenerateRequest(**{**_fields(req), "task_id": f"conf-{uuid.uuid4().hex[:12]}"})
        r = await self.run(eut, adapter, req, "stop reason: eos")
        if r.finished.reason != "eos" or r.finished.tokens_generated >= req.max_tokens:
            _fail(
                "stop reason: eos",
                f"expected reason 'eos' before {req.max_tokens} tokens, got "
                f"reason={r.finished.reason!r} after {r.finished.tokens_generated} tokens "
                f"({r.text!r})",
            )

    # -- sampling ----------------------------------------------------------
    async def test_same_seed_same_text_different_seed_different_text(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3011: the seed is forwarded: same seed -> same text; other seeds differ."""
        eut = engine_under_test
        if Capability.SEEDED_SAMPLING not in (await adapter.props()).capabilities:
            pytest.skip(f"engine {eut.engine!r} does not claim seeded_sampling")
        b = "sampling: seed"
        a1 = await self.run(eut, adapter, self.request(eut, seed=1234), b)
        a2 = await self.run(eut, adapter, self.request(eut, seed=1234), b)
        if a1.text != a2.text:
            _fail(b, f"seed 1234 twice gave different text:\n  {a1.text!r}\n  {a2.text!r}")
        for s in (1, 2, 3):  # one differing seed is enough; stop there
            if (await self.run(eut, adapter, self.request(eut, seed=s), b)).text != a1.text:
                break
        else:
            _fail(b, f"seeds 1, 2, 3 and 1234 all gave {a1.text!r}: the seed is not forwarded")

    async def test_temperature_zero_is_greedy(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-4011: temperature 0 maps to greedy decoding, whatever the seed."""
        eut = engine_under_test
        b = "sampling: temperature 0 is greedy"
        if not eut.expect.greedy_at_zero_temperature:
            pytest.skip(f"engine {eut.engine!r} has no sampler (declared in its Expectations)")
        texts = [
            (await self.run(eut, adapter, self.request(eut, seed=s, temperature=0.0), b)).text
            for s in (1, 2)
        ]
        if texts[0] != texts[1]:
            _fail(b, f"temperature=0 with seeds 1 and 2 gave different text: {texts}")

    async def test_tokenize_matches_prompt_tokens(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3008: tokenize() counts like the engine counts a prompt."""
        eut = engine_under_test
        if Capability.TOKENIZE not in (await adapter.props()).capabilities:
            pytest.skip(f"engine {eut.engine!r} does not claim tokenize")
        ids = await adapter.tokenize(eut.expect.prompt)
        r = await self.run(eut, adapter, self.request(eut, max_tokens=1), "tokenize")
        if not ids or not all(isinstance(i, int) for i in ids):
            _fail("tokenize", f"tokenize returned {ids!r}")
        if len(ids) != r.finished.prompt_tokens:
            _fail(
                "tokenize",
                f"tokenize() counts {len(ids)} tokens, the engine evaluated "
                f"{r.finished.prompt_tokens} prompt tokens for the same text",
            )

    async def test_chat_template_claim_is_honest(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3004: chat_template claimed -> a prompt is rendered; else InvalidParams."""
        msgs = [{"role": "user", "content": "Name a colour."}]
        if Capability.CHAT_TEMPLATE in (await adapter.props()).capabilities:
            prompt = await adapter.apply_chat_template(msgs)
            if "Name a colour." not in prompt:
                _fail("chat template", f"rendered prompt lacks the message: {prompt!r}")
        else:
            with pytest.raises(InvalidParams):
                await adapter.apply_chat_template(msgs)

    # -- cancel ---------------------------------------------------------------
    async def _start_long(
        self, eut: EngineUnderTest, adapter: WorkerAdapter
    ) -> tuple[GenerateRequest, float | None]:
        ctx = (await adapter.props()).ctx
        before = await self._counter(eut, adapter)
        return self.request(eut, max_tokens=max(64, ctx // 2)), before

    async def test_cancel_by_close_stops_upstream(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3006, ORCH-4013: closing the iterator aborts the engine's generation."""
        eut = engine_under_test
        b = "cancel: close stops upstream"
        req, before = await self._start_long(eut, adapter)
        it = adapter.generate(req)
        got = 0
        async with asyncio.timeout(eut.expect.timeout_s):
            async for ev in it:
                if isinstance(ev, Finished):
                    _fail(b, f"generation of {req.max_tokens} tokens ended before the cancel")
                got += 1
                if got >= 2:
                    break
        await it.aclose()
        await self._wait_idle(eut, adapter, b)
        await self._assert_counter_frozen(eut, adapter, before, req.max_tokens, b)
        # The slot is free again: a new generation runs at once.
        await self.run(eut, adapter, self.request(eut, max_tokens=2), b)

    async def test_cancel_by_task_id_ends_with_canceled(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3006, ORCH-4013: cancel(task_id) ends the stream with reason 'canceled' and stops
        the engine; cancelling an ended or unknown task does not raise."""
        eut = engine_under_test
        b = "cancel: cancel(task_id)"
        req, before = await self._start_long(eut, adapter)
        events: list[AdapterEvent] = []
        first = asyncio.Event()

        async def consume() -> None:
            async with aclosing(adapter.generate(req)) as it:
                async for ev in it:
                    events.append(ev)
                    first.set()

        task = asyncio.create_task(consume())
        try:
            async with asyncio.timeout(eut.expect.timeout_s):
                await first.wait()
                await adapter.cancel(req.task_id)
                await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
        last = events[-1]
        if not isinstance(last, Finished) or last.reason != "canceled":
            _fail(b, f"after cancel(task_id) the stream must end with reason 'canceled': {last!r}")
        await self._wait_idle(eut, adapter, b)
        await self._assert_counter_frozen(eut, adapter, before, req.max_tokens, b)
        await adapter.cancel(req.task_id)  # already ended: no error
        await adapter.cancel("conf-no-such-task")

    # -- metrics --------------------------------------------------------------
    async def test_metrics_normalised(
        self, engine_under_test: EngineUnderTest, adapter: WorkerAdapter
    ) -> None:
        """ORCH-3009: the common fields are filled, sane, and follow the engine's work."""
        eut = engine_under_test
        if Capability.METRICS not in (await adapter.props()).capabilities:
            pytest.skip(f"engine {eut.engine!r} does not claim metrics")
        b = "metrics"
        m0 = await adapter.metrics()
        for name in sorted(eut.expect.metrics_fields):
            if getattr(m0, name) is None:
                _fail(f"metrics: {name}", f"{name} is None; raw samples: {sorted(m0.raw)[:20]}")
        if not m0.raw:
            _fail(b, "raw samples are empty")
        kv = m0.kv_cache_usage_ratio
        if kv is not None and not 0.0 <= kv <= 1.0:
            _fail("metrics: kv_cache_usage_ratio", f"{kv} is not a ratio in [0, 1]")
        fields = eut.expect.metrics_fields
        if "requests_running" in fields:
            req = self.request(eut, max_tokens=64)
            async with asyncio.timeout(eut.expect.timeout_s):
                async with aclosing(adapter.generate(req)) as it:
                    async for _ in it:
                        running = (await adapter.metrics()).requests_running
                        if running is None or running < 1:
                            _fail(
                                "metrics: requests_running",
                                f"{running} while a generation is streaming",
                            )
                        break
            await self._wait_idle(eut, adapter, b)
        if "generated_tokens_total" in fields:
            g0 = (await adapter.metrics()).generated_tokens_total
            r = await self.run(eut, adapter, self.request(eut), b)
            want = (g0 or 0.0) + r.finished.tokens_generated

            seen: list[float | None] = []

            async def grown() -> bool:
                seen.append((await adapter.metrics()).generated_tokens_total)
                return seen[-1] == want

            await _poll_until(
                grown,
                5.0,
                "metrics: generated_tokens_total",
                lambda: (
                    f"must grow by the {r.finished.tokens_generated} generated tokens "
                    f"(from {g0} to {want}); last scrape {seen[-1:]}"
                ),
            )
