"""ORCH-4102: transport failures map to the core error tree in one place."""

from __future__ import annotations

import ssl

import aiohttp
import pytest
from aiohttp.client_exceptions import UnixClientConnectorError
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from llama_orch.adapter_http import map_transport_errors
from llama_orch.core.errors import DecodeTimeout, OrchError, WorkerReset
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL


def _subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        if sub.__module__.startswith("aiohttp"):
            out.append(sub)
        out += _subclasses(sub)
    return sorted(set(out), key=lambda c: c.__qualname__)


_KEY = ConnectionKey(*(["127.0.0.1", 1, False] + [None] * (len(ConnectionKey._fields) - 3)))
_URL = URL("http://127.0.0.1:1/x")
_REQUEST = RequestInfo(_URL, "GET", CIMultiDictProxy(CIMultiDict()), _URL)


def _instance(cls: type) -> BaseException:
    """A well-formed instance, built as aiohttp builds it."""
    if issubclass(cls, aiohttp.ClientResponseError):
        return cls(_REQUEST, (), status=502, message="bad gateway")
    if issubclass(cls, UnixClientConnectorError):
        return cls("/tmp/sock", _KEY, OSError(111, "refused"))
    if issubclass(cls, aiohttp.ClientConnectorCertificateError):
        return cls(_KEY, ssl.SSLCertVerificationError("bad cert"))
    if issubclass(cls, aiohttp.ClientConnectorError):
        return cls(_KEY, OSError(111, "refused"))
    if issubclass(cls, aiohttp.ServerFingerprintMismatch):
        return cls(b"want", b"got", "127.0.0.1", 1)
    return cls("boom")


@pytest.mark.parametrize("cls", [aiohttp.ClientError, *_subclasses(aiohttp.ClientError)])
def test_every_aiohttp_client_error_is_worker_reset(cls: type[BaseException]) -> None:
    raised = _instance(cls)
    with pytest.raises(WorkerReset) as info:
        with map_transport_errors("GET /x", "eng", 3.0):
            raise raised
    assert info.value.__cause__ is raised, "the original error must be chained (raise ... from)"
    assert info.value.engine == "eng" and "GET /x" in info.value.message
    assert cls.__name__ in info.value.message


@pytest.mark.parametrize("on_timeout", [WorkerReset, DecodeTimeout])
def test_timeout_maps_to_the_chosen_error(on_timeout: type[OrchError]) -> None:
    with pytest.raises(on_timeout, match=r"POST /s: no answer in 2.5s") as info:
        with map_transport_errors("POST /s", "eng", 2.5, on_timeout=on_timeout):
            raise TimeoutError
    assert isinstance(info.value.__cause__, TimeoutError)


def test_other_errors_pass_through_unmapped() -> None:
    with pytest.raises(KeyError):
        with map_transport_errors("GET /x", "eng", 1.0):
            raise KeyError("not transport")
