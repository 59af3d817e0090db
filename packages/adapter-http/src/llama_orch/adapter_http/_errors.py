"""Transport failures -> core errors, in one place (STYLE rule 5).

::

    aiohttp.ClientError (refused, reset, cut short, bad answer) -> WorkerReset
    no answer within the call's timeout                         -> on_timeout
                                                                   (WorkerReset, or
                                                                   DecodeTimeout for
                                                                   opening a stream)
    any other OSError (the stream connection's, ``_lean``)      -> WorkerReset

``aiohttp.ServerTimeoutError`` is both a ClientError and a TimeoutError; it
is a transport failure (WorkerReset). ``TimeoutError`` is an ``OSError``: it is
matched first. Every raise chains ``from exc``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import aiohttp
from llama_orch.core.errors import OrchError, WorkerReset

__all__ = ["map_transport_errors"]


@contextmanager
def map_transport_errors(
    what: str, engine: str, timeout_s: float, *, on_timeout: type[OrchError] = WorkerReset
) -> Iterator[None]:
    try:
        yield
    except aiohttp.ClientError as exc:
        raise WorkerReset(f"{what}: {type(exc).__name__}: {exc}", engine=engine) from exc
    except TimeoutError as exc:
        raise on_timeout(f"{what}: no answer in {timeout_s}s", engine=engine) from exc
    except OSError as exc:
        raise WorkerReset(f"{what}: {type(exc).__name__}: {exc}", engine=engine) from exc
