"""Mock engine options, read from ``AdapterTarget.options``.

Unknown or ill-typed options fail loudly with :class:`InvalidParams` when the
adapter is constructed, so a typo in a test's config is not silently ignored.
"""

from __future__ import annotations

import msgspec
from llama_orch.core.errors import InvalidParams

__all__ = ["Fault", "MockOptions", "parse_options"]


class Fault(msgspec.Struct, frozen=True):
    """A parsed ``fail`` option: ``kind`` plus the token count ``after`` it strikes."""

    kind: str  # none | unready | error_at_start | reset_after | hang_after
    after: int = 0


class MockOptions(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    slots: int = 1
    ctx: int = 2048
    token_delay_ms: float = 0
    eos_after: int | None = None
    fail: str = "none"
    engine_version: str = "mock-1"
    model_digest: str = "mock-digest"
    embeddings: bool = False  # declare ``embed``: 8-dim vectors derived from the text
    # an embedding engine (vLLM's pooling runner): ``embed`` and ``embed_only``,
    # and every generation refused (ORCH-9280)
    embed_only: bool = False
    # declare ``engine_slots`` (ORCH-2371), as llama-server's adapter does: placement
    # then pins slots; the mock itself ignores the pins (it keeps no cache)
    engine_slots: bool = False

    @property
    def fault(self) -> Fault:
        return _parse_fault(self.fail)


_SIMPLE_FAULTS = frozenset({"none", "unready", "error_at_start"})
_COUNTED_FAULTS = frozenset({"reset_after", "hang_after"})


def _parse_fault(spec: str) -> Fault:
    if spec in _SIMPLE_FAULTS:
        return Fault(spec)
    kind, sep, count = spec.partition(":")
    if sep and kind in _COUNTED_FAULTS and count.isdigit():
        return Fault(kind, int(count))
    raise InvalidParams(
        f"mock option fail={spec!r}: expected none, unready, error_at_start, "
        "reset_after:N or hang_after:N"
    )


def parse_options(raw: dict[str, object]) -> MockOptions:
    try:
        opts = msgspec.convert(raw, MockOptions)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid mock adapter options: {exc}") from exc
    if opts.slots < 1 or opts.ctx < 1 or opts.token_delay_ms < 0:
        raise InvalidParams("mock options need slots >= 1, ctx >= 1 and token_delay_ms >= 0")
    if opts.eos_after is not None and opts.eos_after < 0:
        raise InvalidParams("mock option eos_after must be >= 0")
    opts.fault  # noqa: B018 - validate the fault spec now, not at first generate
    return opts
