"""ORCH-2965: the transport-error mapping as a slotted class maps exactly as the
``contextlib.contextmanager`` generator it replaced (kept below as the reference).

Every exception a block may raise (every ``aiohttp.ClientError`` subclass, timeouts,
``OSError``s, the stream client's own, errors that are not transport failures, a
cancel, ``StopIteration``, none), both timeout mappings: the same error type, message,
engine, chained cause and context, and an unmapped exception passes through as the very
object with its traceback.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import aiohttp
import pytest
from llama_orch.adapter_http import map_transport_errors
from llama_orch.adapter_http._errors import TransportErrors
from llama_orch.adapter_http._lean import BadAnswer, ConnectTimeout, StaleConnection
from llama_orch.core.errors import DecodeTimeout, OrchError, WorkerReset

from .test_transport_errors import _instance, _subclasses


@contextmanager
def _ref(
    what: str, engine: str, timeout_s: float, *, on_timeout: type[OrchError] = WorkerReset
) -> Iterator[None]:
    """c3b55ed's ``map_transport_errors``."""
    try:
        yield
    except aiohttp.ClientError as exc:
        raise WorkerReset(f"{what}: {type(exc).__name__}: {exc}", engine=engine) from exc
    except TimeoutError as exc:
        raise on_timeout(f"{what}: no answer in {timeout_s}s", engine=engine) from exc
    except OSError as exc:
        raise WorkerReset(f"{what}: {type(exc).__name__}: {exc}", engine=engine) from exc


class _OwnTimeout(TimeoutError):
    """A ``TimeoutError`` subclass that is not aiohttp's."""


def _raisers() -> list[object]:
    out: list[object] = [None]
    for cls in [aiohttp.ClientError, *_subclasses(aiohttp.ClientError)]:
        out.append(lambda cls=cls: _instance(cls))
    out += [
        lambda: TimeoutError(),
        lambda: TimeoutError("t"),
        lambda: _OwnTimeout("own"),
        lambda: ConnectionResetError(104, "reset"),
        lambda: OSError(111, "refused"),
        lambda: ssl.SSLError("bad"),
        lambda: StaleConnection("stale"),
        lambda: ConnectTimeout("no connection"),
        lambda: BadAnswer("bad chunk"),
        lambda: KeyError("k"),
        lambda: ValueError("v"),
        lambda: WorkerReset("already mapped", engine="e"),
        lambda: asyncio.CancelledError("c"),
        lambda: KeyboardInterrupt(),
        lambda: StopIteration(3),
    ]
    return out


def _observe(cm: AbstractContextManager[None], make: object) -> object:
    raised = make() if callable(make) else None
    try:
        with cm:
            if raised is not None:
                raise raised
    except BaseException as exc:  # the outcome is what is compared
        if exc is raised:
            return ("passed through", exc.__traceback__ is not None, _frames(exc))
        return (
            type(exc),
            str(exc),
            getattr(exc, "engine", None),
            exc.__cause__ is raised,
            exc.__context__ is raised,
            exc.__suppress_context__,
        )
    return "ok"


def _frames(exc: BaseException) -> list[str]:
    out = []
    tb = exc.__traceback__
    while tb is not None:
        out.append(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return out


@pytest.mark.parametrize("on_timeout", [WorkerReset, DecodeTimeout])
def test_the_mapping_is_the_generators(on_timeout: type[OrchError]) -> None:
    seen = set()
    for make in _raisers():
        want = _observe(_ref("POST /x", "eng", 2.5, on_timeout=on_timeout), make)
        got = _observe(map_transport_errors("POST /x", "eng", 2.5, on_timeout=on_timeout), make)
        direct = _observe(TransportErrors("POST /x", "eng", 2.5, on_timeout), make)
        assert got == want == direct, (make() if callable(make) else None, want, got)
        seen.add(want[0] if isinstance(want, tuple) else want)
    assert {WorkerReset, on_timeout, "passed through", "ok"} <= seen


def test_the_mapping_is_not_a_generator() -> None:
    """The cut itself: fails where ``map_transport_errors`` is a ``contextmanager``."""
    cm = map_transport_errors("GET /x", "eng", 1.0)
    assert type(cm) is TransportErrors
    assert not hasattr(cm, "__dict__")  # slotted
