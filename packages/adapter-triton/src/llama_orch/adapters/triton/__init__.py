"""llama-orch worker adapter for NVIDIA Triton (entry point ``triton``).

KServe v2 health, metadata and statistics, the generate extension's
``generate_stream`` and the Prometheus metrics port of Triton 2.51; see
README.md for the model contract, the mapping and the limits.
"""

from ._adapter import TritonAdapter
from ._metrics import to_engine_metrics
from ._options import TritonOptions
from ._stream import GenerateStream

__all__ = [
    "GenerateStream",
    "TritonAdapter",
    "TritonOptions",
    "to_engine_metrics",
]
