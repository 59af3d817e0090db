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
matched first. Every raise chains ``from exc``. A slotted class, not a
``contextlib.contextmanager`` generator: the stream path enters one per engine request
and the generator's context manager object cost a few microseconds more (ORCH-2965).
"""

from __future__ import annotations

from types import TracebackType

import aiohttp
from llama_orch.core.errors import OrchError, WorkerReset

__all__ = ["TransportErrors", "map_transport_errors"]


class TransportErrors:
    """``with TransportErrors(what, engine, timeout_s):`` maps what the block raises."""

    __slots__ = ("_engine", "_on_timeout", "_timeout_s", "_what")

    def __init__(
        self, what: str, engine: str, timeout_s: float, on_timeout: type[OrchError] = WorkerReset
    ) -> None:
        self._what = what
        self._engine = engine
        self._timeout_s = timeout_s
        self._on_timeout = on_timeout

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            return
        if isinstance(exc, aiohttp.ClientError):
            raise WorkerReset(
                f"{self._what}: {type(exc).__name__}: {exc}", engine=self._engine
            ) from exc
        if isinstance(exc, TimeoutError):
            raise self._on_timeout(
                f"{self._what}: no answer in {self._timeout_s}s", engine=self._engine
            ) from exc
        if isinstance(exc, OSError):
            raise WorkerReset(
                f"{self._what}: {type(exc).__name__}: {exc}", engine=self._engine
            ) from exc


def map_transport_errors(
    what: str, engine: str, timeout_s: float, *, on_timeout: type[OrchError] = WorkerReset
) -> TransportErrors:
    return TransportErrors(what, engine, timeout_s, on_timeout)
