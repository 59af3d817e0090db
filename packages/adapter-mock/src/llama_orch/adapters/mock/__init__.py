"""Deterministic in-process mock engine adapter (entry point ``mock``).

It is registered under ``llama_orch.adapters`` like any third-party adapter,
and reports ``engine == "mock"`` so it can never pass for a real engine.
"""

from ._adapter import CANCELLED, MockAdapter
from ._options import MockOptions
from ._text import BOS_ID, WORDS

__all__ = ["BOS_ID", "CANCELLED", "WORDS", "MockAdapter", "MockOptions"]
