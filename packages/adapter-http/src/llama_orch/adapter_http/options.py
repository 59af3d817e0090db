"""The timeouts every HTTP adapter takes from ``AdapterTarget.options``.

An adapter's options struct subclasses :class:`HttpTimeouts`; constraints
live in the types (STYLE rule 6), so :func:`parse_options` is one
``msgspec.convert``. Unknown keys are ignored: the pool manager may keep
engine launch settings in the same mapping.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec
from llama_orch.core.errors import InvalidParams

__all__ = ["HttpTimeouts", "Positive", "PositiveSeconds", "parse_options"]

PositiveSeconds = Annotated[float, msgspec.Meta(gt=0)]
Positive = Annotated[int, msgspec.Meta(gt=0)]

Opts = TypeVar("Opts", bound="HttpTimeouts")


class HttpTimeouts(msgspec.Struct, frozen=True, kw_only=True):
    idle_timeout_s: PositiveSeconds = 60.0  # max silence between two reads of a stream
    connect_timeout_s: PositiveSeconds = 10.0  # TCP connect
    request_timeout_s: PositiveSeconds = 30.0  # a whole non-streaming call
    health_timeout_s: PositiveSeconds = 5.0  # a slower health answer counts as not live
    # Pooled engine connections are dropped after this long idle (ORCH-2721): below
    # llama-server's and uvicorn's 5 s, so the engine rarely closes one first. 0 = no pool.
    keepalive_s: Annotated[float, msgspec.Meta(ge=0)] = 4.0


def parse_options(raw: dict[str, object], cls: type[Opts], engine: str) -> Opts:
    """``raw`` as ``cls``; a wrong type or value fails loudly as InvalidParams."""
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        raise InvalidParams(f"invalid {engine} adapter options: {exc}", engine=engine) from exc
