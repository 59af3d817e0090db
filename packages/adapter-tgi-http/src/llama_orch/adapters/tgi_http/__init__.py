"""llama-orch worker adapter for Hugging Face TGI (entry point ``tgi-http``).

Speaks TGI's native API (``/generate_stream``, ``/info``, ``/health``,
``/tokenize``, ``/metrics``); see README.md for the mapping and its limits.
"""

from ._adapter import TgiHttpAdapter, generate_parameters
from ._options import TgiOptions
from ._stream import GenerateStream

__all__ = ["GenerateStream", "TgiHttpAdapter", "TgiOptions", "generate_parameters"]
