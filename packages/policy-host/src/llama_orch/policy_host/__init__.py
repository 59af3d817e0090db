"""Run llama-orch policies: WebAssembly in a wasmtime sandbox, or native plugins."""

from .errors import ImportRefused, PolicyCallError, PolicyError, PolicyLoadError
from .host import AdmissionResult, PlacementResult, PolicyHost, load_policy
from .native import available_policies
from .vectors import VectorReport, run_vectors
from .wasm import WasmPolicy, fetch_allowed

__all__ = [
    "AdmissionResult",
    "ImportRefused",
    "PlacementResult",
    "PolicyCallError",
    "PolicyError",
    "PolicyHost",
    "PolicyLoadError",
    "VectorReport",
    "WasmPolicy",
    "available_policies",
    "fetch_allowed",
    "load_policy",
    "run_vectors",
]
