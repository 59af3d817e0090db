"""llama-orch adapter conformance suite (ORCH-4010..ORCH-4016).

Subclass :class:`AdapterConformance` in an adapter package's tests and give
it an ``engine_under_test`` fixture returning an :class:`EngineUnderTest`;
see this distribution's README for the whole interface.
"""

from ._engine import (
    DEFAULT_PROMPT,
    DEFAULT_SAMPLING,
    EngineUnderTest,
    Expectations,
    Fault,
    FaultCase,
    FaultFactory,
    Probes,
)
from ._suite import AdapterConformance, StreamResult, collect_stream

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_SAMPLING",
    "AdapterConformance",
    "EngineUnderTest",
    "Expectations",
    "Fault",
    "FaultCase",
    "FaultFactory",
    "Probes",
    "StreamResult",
    "collect_stream",
]
