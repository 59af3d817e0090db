"""Shared transport of llama-orch's HTTP worker adapters (ORCH-4100).

Not an adapter itself (no entry point): an adapter distribution depends on
it and subclasses :class:`HttpAdapter`, keeping only its wire mapping.
"""

from ._decode import SSEStream
from ._errors import map_transport_errors
from .base import HttpAdapter, StreamDecoder
from .options import HttpTimeouts, Positive, PositiveSeconds, parse_options

__all__ = [
    "HttpAdapter",
    "HttpTimeouts",
    "Positive",
    "PositiveSeconds",
    "SSEStream",
    "StreamDecoder",
    "map_transport_errors",
    "parse_options",
]
