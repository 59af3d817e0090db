"""How an adapter package describes its engine to the conformance suite.

An :class:`EngineUnderTest` is plain data plus callables: the suite never
starts or stops engines itself. The package's own fixture owns the engine
(a real server, an in-process fake, ...) and hands the suite a factory of
fresh adapters pointed at it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType

from llama_orch.core.adapter_api import Capability, GenerateRequest, WorkerAdapter

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_SAMPLING",
    "EngineUnderTest",
    "Expectations",
    "Fault",
    "FaultCase",
    "FaultFactory",
    "Probes",
]

DEFAULT_PROMPT = "Once upon a time, in a small village by the sea,"
DEFAULT_SAMPLING: Mapping[str, float] = MappingProxyType(
    {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repeat_penalty": 1.0}
)


class Fault(StrEnum):
    """Engine situations the suite provokes through :attr:`EngineUnderTest.faults`.

    Context overflow is not listed: the suite provokes it on the normal engine
    with a prompt longer than ``props().ctx``.
    """

    LOADING = "loading"  # engine answers but is loading its model
    UNREACHABLE = "unreachable"  # nothing listens at the replica's address
    RESET_MID_STREAM = "reset_mid_stream"  # the connection drops after some tokens
    STALL_MID_STREAM = "stall_mid_stream"  # the engine stops sending, keeps the connection
    ERROR_IN_STREAM = "error_in_stream"  # an error event inside an HTTP 200 stream
    SSE_FRAMING = "sse_framing"  # comments, no space after ':', events split across reads


@dataclass(kw_only=True)
class FaultCase:
    """One provoked fault: an adapter pointed at the faulty engine.

    The suite closes ``adapter`` (``aclose``) itself; the context manager that
    yielded the case tears the faulty engine down.

    * ``expected_text``: for ``SSE_FRAMING`` the exact text the stream must
      reconstruct; for ``RESET_MID_STREAM`` / ``ERROR_IN_STREAM`` the text
      the engine sent before failing (the adapter must deliver it first).
    * ``finish_loading``: for ``LOADING``, makes the engine ready; the suite
      then expects ``ready`` to become and stay true.
    * ``request``: the request to send (default: the suite's own).
    * ``chained``: the error must be chained to a transport exception.
    """

    adapter: WorkerAdapter
    expected_text: str | None = None
    finish_loading: Callable[[], Awaitable[None]] | None = None
    request: GenerateRequest | None = None
    # The adapter's error must be chained (raise ... from) to a transport
    # error; False for in-process engines that have no transport.
    chained: bool = True


FaultFactory = Callable[[], AbstractAsyncContextManager[FaultCase]]


@dataclass(frozen=True, kw_only=True)
class Probes:
    """Engine-side observations that do not go through the adapter under test.

    Each probe receives the adapter the suite is using (an in-process engine
    such as the mock *is* its adapter; HTTP engines ignore it and ask the
    engine directly, e.g. ``/slots`` or ``/metrics``). Probes run inside the
    test's event loop: create HTTP sessions per call, not at import time.
    """

    # Tokens the engine has generated in total (e.g. vllm:generation_tokens_total).
    generated_tokens_total: Callable[[WorkerAdapter], Awaitable[float]] | None = None
    # Generations the engine is running right now (e.g. /slots is_processing).
    busy_slots: Callable[[WorkerAdapter], Awaitable[int]] | None = None
    # The engine's own non-streamed output for a request (same seed and sampling).
    reference_text: Callable[[WorkerAdapter, GenerateRequest], Awaitable[str]] | None = None


@dataclass(frozen=True, kw_only=True)
class Expectations:
    """What the adapter must report for this engine. ``None`` means "any
    plausible value" (non-empty string, positive integer)."""

    slots: int | None = None
    ctx: int | None = None
    engine_version: str | None = None
    model_digest: str | None = None
    model_ref: str | None = None
    # The exact capability set the adapter must claim for this engine.
    capabilities: frozenset[Capability] | None = None
    prompt: str = DEFAULT_PROMPT
    sampling: Mapping[str, float] = field(default_factory=lambda: DEFAULT_SAMPLING)
    max_tokens: int = 24
    # A request the engine ends with end-of-sequence before its max_tokens
    # (e.g. an instruct model's chat prompt); None: eos is not checked.
    eos_request: GenerateRequest | None = None
    # False only for engines without a sampler (the mock hashes the seed).
    greedy_at_zero_temperature: bool = True
    # True for engines whose text includes the matched stop string (TGI).
    stop_text_included: bool = False
    # Normalised EngineMetrics fields this engine must fill (not None).
    metrics_fields: frozenset[str] = frozenset()
    # Upper bound for any single operation of the suite, in seconds.
    timeout_s: float = 60.0
    # How long a cancelled generation may keep the engine busy, in seconds.
    cancel_settle_s: float = 5.0


@dataclass(frozen=True, kw_only=True)
class EngineUnderTest:
    """An adapter package's description of one engine for the suite.

    ``engine`` is the entry-point name in ``llama_orch.adapters``;
    ``make_adapter()`` returns a fresh adapter for the running, ready engine
    (the suite closes it). ``faults`` maps the faults this engine (or a fake
    of it) can produce on demand to factories of :class:`FaultCase`; a
    missing fault is reported as a skip naming the fault.
    """

    engine: str
    make_adapter: Callable[[], WorkerAdapter]
    expect: Expectations = field(default_factory=Expectations)
    probes: Probes = field(default_factory=Probes)
    faults: Mapping[Fault, FaultFactory] = field(default_factory=dict)
