"""Write llama-orch policies: the ABI v1 and its types (see :mod:`.abi`)."""

from .abi import *  # noqa: F403
from .abi import __all__ as __all__
