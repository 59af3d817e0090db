"""Model sources (entry-point group ``llama_orch.model_sources``) and the cache.

Built in: ``file``, ``pypi``, ``https``, ``hf``; the contract is
:mod:`llama_orch.core.model_source_api`. :class:`ModelCache` fetches any
reference into the host's content-addressed cache (ORCH-3300..3303).
"""

from ._cache import Fetched, ModelCache, UnknownModelSource

__all__ = ["Fetched", "ModelCache", "UnknownModelSource"]
