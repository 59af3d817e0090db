"""The worker-adapter API: the one contract an engine adapter implements.

An adapter talks to **one engine replica** (one ``llama-server`` process, one
vLLM server, ...) and hides its wire protocol. Third parties publish adapters
as their own distributions that depend on ``llama-orch-core`` only and
register a :class:`WorkerAdapter` subclass under the entry-point group
``llama_orch.adapters``; the entry-point name is the engine id users write in
config (ORCH-3001). The daemons obtain adapters only through
:func:`load_adapter_class` (ORCH-3002).

Lifecycle: ``adapter = cls(target)``; ``await adapter.health()`` until ready;
``await adapter.props()``; then any number of concurrent ``generate`` calls;
``await adapter.aclose()`` at the end.

Contract (ORCH-3003..ORCH-3009), each checked by the adapter's own tests:

* ``health()`` never raises for an engine that is loading or down: it returns
  :class:`Health` with ``ready=False`` and a ``detail``.
* ``props()`` reports slots, per-slot ctx, ``engine_version``,
  ``model_digest`` and capabilities (:class:`Capability`).
* ``generate(req)`` is an async iterator of :class:`TokenChunk` events
  followed by exactly one :class:`Finished`. The concatenated ``text`` of the
  chunks is exactly the engine's output. Errors are raised as
  :mod:`llama_orch.core.errors` exceptions: ``PoolUnready`` (loading),
  ``InvalidParams`` (e.g. context overflow), ``WorkerReset`` (connection lost
  or error inside the stream), ``DecodeTimeout`` (no progress in time).
* Errors surface from the first ``__anext__`` (``generate`` is an async
  generator), not from the call. A consumer that stops reading early must
  close the iterator (``aclose()`` or ``contextlib.aclosing``).
* Closing the iterator (``aclose()``, or cancelling the task consuming it)
  **must abort upstream generation** and free the engine slot; ``cancel``
  does the same for a request identified by ``task_id``, after which the
  iterator ends with ``Finished(reason="canceled")``.
* ``tokenize(text)`` counts tokens with the engine's own tokenizer.
* ``embed(texts)`` (capability ``embed``) returns one vector per text; the
  request fields ``json_schema`` and ``logprobs`` are honoured only by an
  adapter that declares ``json_schema`` / ``logprobs`` (ORCH-9200..9202).
* ``metrics()`` returns a normalised scrape of the engine's counters.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncGenerator
from contextvars import ContextVar
from enum import StrEnum
from importlib.metadata import entry_points
from typing import Any, ClassVar, Final, Literal

import msgspec

from .api import TokenLogprob

__all__ = [
    "ADAPTER_ENTRY_POINT_GROUP",
    "CANCELED",
    "ENGINE_TRACE_HEADERS",
    "AdapterEvent",
    "AdapterLoadError",
    "AdapterTarget",
    "Capability",
    "Embeddings",
    "EngineMetrics",
    "EngineProps",
    "Finished",
    "GenerateRequest",
    "Health",
    "StopReason",
    "TokenChunk",
    "TokenLogprob",
    "WorkerAdapter",
    "available_adapters",
    "load_adapter_class",
]

ADAPTER_ENTRY_POINT_GROUP = "llama_orch.adapters"
# Finished.reason after cancel(task_id) (ORCH-3006): one spelling for every adapter.
CANCELED: Final = "canceled"
# Why a generation ended (Finished.reason; the task's `end` event carries it on).
StopReason = Literal["eos", "stop", "length", "canceled"]
# ORCH-7044: the W3C trace-context headers (``traceparent``, ``tracestate``) that a
# run's engine requests carry, set by the run (its own asyncio task) when tracing is
# on; an adapter that speaks HTTP adds them to every request it sends meanwhile.
ENGINE_TRACE_HEADERS: ContextVar[dict[str, str] | None] = ContextVar(
    "llama_orch_engine_trace_headers", default=None
)
_log = logging.getLogger(__name__)


class Capability(StrEnum):
    INTERRUPTIBLE_DECODE = "interruptible_decode"  # a running decode can be paused/resumed
    TOKENIZE = "tokenize"  # tokenize() uses the engine's tokenizer
    METRICS = "metrics"  # metrics() scrapes real engine counters
    SEEDED_SAMPLING = "seeded_sampling"  # a per-request seed reproduces a stream
    CHAT_TEMPLATE = "chat_template"  # the engine can apply the model's chat template
    GRAMMAR = "grammar"  # GenerateRequest.grammar (GBNF) constrains the output (ORCH-1010)
    JSON_SCHEMA = "json_schema"  # GenerateRequest.json_schema constrains the output (ORCH-9200)
    LOGPROBS = "logprobs"  # GenerateRequest.logprobs fills TokenChunk.logprobs (ORCH-9201)
    EMBED = "embed"  # embed() returns embeddings (ORCH-9210)
    EMBED_ONLY = "embed_only"  # the engine embeds and generates nothing (ORCH-9280)
    # one prompt cache per engine slot, reused only by a request pinned there: honours
    # GenerateRequest.engine_slot and engine_slot_source (ORCH-2371, llama-server)
    ENGINE_SLOTS = "engine_slots"


class AdapterTarget(msgspec.Struct, frozen=True, kw_only=True):
    """Where a replica lives and what the pool manager knows about it."""

    replica_id: str
    base_url: str = ""
    model_ref: str = ""
    model_digest: str = ""
    engine_version: str = ""
    options: dict[str, Any] = {}


class Health(msgspec.Struct, frozen=True):
    live: bool
    ready: bool
    detail: str = ""


class EngineProps(msgspec.Struct, frozen=True, kw_only=True):
    engine: str
    engine_version: str
    model_ref: str
    model_digest: str
    slots: int
    ctx: int  # per-slot context window, in tokens
    capabilities: frozenset[Capability] = frozenset()


class GenerateRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What the orchestrator asks an engine to do. ``prompt`` is final text
    (a chat template, if any, was already applied)."""

    task_id: str
    prompt: str
    max_tokens: int
    seed: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    cache_prompt: bool = True
    grammar: str | None = None  # GBNF, only for adapters declaring GRAMMAR (ORCH-1010)
    # Only for adapters with the matching capability (ORCH-9200, ORCH-9201):
    # a JSON schema the output must match, and the number of most likely
    # alternatives to report per token (0: the chosen token's own logprob only).
    json_schema: dict[str, Any] | None = None
    logprobs: int | None = None
    # ORCH-2356: the engine slot placement pinned the task to (llama-server
    # ``id_slot``); adapters that cannot pin a slot ignore it.
    engine_slot: int | None = None
    # ORCH-2369: an idle engine slot whose cache the adapter copies into
    # ``engine_slot`` first (a shared prefix is then not prefilled again); adapters
    # that cannot copy a slot ignore it.
    engine_slot_source: int | None = None
    # ORCH-1013: an `embedding` task's texts; the runner embeds them (one `embed`
    # call) instead of generating, and ``prompt`` is their text for the forecasts.
    inputs: tuple[str, ...] = ()


class TokenChunk(msgspec.Struct, frozen=True, tag="token"):
    """Newly generated text; ``n_tokens`` engine tokens produced it (>= 1);
    ``logprobs`` of those tokens when the request asked for them."""

    text: str
    n_tokens: int = 1
    logprobs: list[TokenLogprob] | None = None


class Embeddings(msgspec.Struct, frozen=True, kw_only=True):
    """What :meth:`WorkerAdapter.embed` returns: one vector per input, in order,
    and the prompt tokens the engine counted for all of them."""

    vectors: list[list[float]]
    prompt_tokens: int


class Finished(msgspec.Struct, frozen=True, tag="finished", kw_only=True):
    """End of a generation. ``reason`` is ``eos``, ``stop``, ``length`` (``max_tokens``
    reached or context full) or ``canceled`` (after :meth:`WorkerAdapter.cancel`)."""

    reason: StopReason
    tokens_generated: int
    prompt_tokens: int = 0
    # ORCH-2351: the engine slot that ran the task, where the engine says so
    engine_slot: int | None = None


AdapterEvent = TokenChunk | Finished


class EngineMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """A normalised scrape; ``None`` where the engine does not say."""

    requests_running: float | None = None
    requests_waiting: float | None = None
    prompt_tokens_total: float | None = None
    generated_tokens_total: float | None = None
    kv_cache_usage_ratio: float | None = None
    # The engine's own prefix-cache counters, in prompt tokens (ORCH-2322): tokens
    # served from its cache, and prompt tokens looked up in it (hits + misses).
    prefix_cache_hits_total: float | None = None
    prefix_cache_queries_total: float | None = None
    raw: dict[str, float] = {}


class WorkerAdapter(abc.ABC):
    """Base class of every engine adapter. See the module docstring."""

    engine: ClassVar[str]

    def __init__(self, target: AdapterTarget) -> None:
        self.target = target

    @abc.abstractmethod
    async def health(self) -> Health: ...

    @abc.abstractmethod
    async def props(self) -> EngineProps: ...

    @abc.abstractmethod
    def generate(self, req: GenerateRequest) -> AsyncGenerator[AdapterEvent, None]: ...

    @abc.abstractmethod
    async def cancel(self, task_id: str) -> None: ...

    @abc.abstractmethod
    async def tokenize(self, text: str) -> list[int]: ...

    async def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        """Render chat ``messages`` into a prompt (engines with a chat template)."""
        from .errors import InvalidParams

        raise InvalidParams(f"engine {self.engine} does not support the chat workload")

    async def embed(self, texts: list[str]) -> Embeddings:
        """Embed ``texts`` (engines with the ``embed`` capability, ORCH-9210)."""
        from .errors import InvalidParams

        raise InvalidParams(f"engine {self.engine} does not serve embeddings")

    @abc.abstractmethod
    async def metrics(self) -> EngineMetrics: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Default: nothing to release."""


class AdapterLoadError(Exception):
    """A configured adapter is missing or is not a :class:`WorkerAdapter`."""


def load_adapter_class(engine: str) -> type[WorkerAdapter]:
    """Load the adapter registered as ``engine`` (fails loudly, ORCH-3002)."""
    matches = entry_points(group=ADAPTER_ENTRY_POINT_GROUP, name=engine)
    if not matches:
        known = sorted(ep.name for ep in entry_points(group=ADAPTER_ENTRY_POINT_GROUP))
        raise AdapterLoadError(f"no adapter registered for engine {engine!r}; installed: {known}")
    ep = next(iter(matches))
    try:
        cls = ep.load()
    except Exception as exc:
        raise AdapterLoadError(f"adapter {engine!r} ({ep.value}) failed to import: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, WorkerAdapter)):
        raise AdapterLoadError(f"adapter {engine!r} ({ep.value}) is not a WorkerAdapter subclass")
    return cls


def available_adapters() -> dict[str, type[WorkerAdapter]]:
    """Every loadable adapter; a broken one is skipped with a log line."""
    found: dict[str, type[WorkerAdapter]] = {}
    for ep in entry_points(group=ADAPTER_ENTRY_POINT_GROUP):
        try:
            found[ep.name] = load_adapter_class(ep.name)
        except AdapterLoadError as exc:
            _log.warning("skipping adapter %s: %s", ep.name, exc)
    return found
