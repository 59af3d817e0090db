"""``POST /v1/embeddings`` (ORCH-9210..ORCH-9213): one engine call on a pool whose
engine adapter declares ``Capability.EMBED``, holding one of its slots
(``FrontendHost.embed``)."""

from __future__ import annotations

import array
import base64
import sys
from typing import Any

import msgspec
from llama_orch.core.adapter_api import Capability
from llama_orch.core.errors import OrchError
from llama_orch.orchestratord.frontends import FrontendHost
from llama_orch.orchestratord.pools import Pool
from starlette.requests import Request
from starlette.responses import Response

from ._common import ApiError, resolve_model
from ._engine import pool_capabilities
from ._flow import FrontendState, decode_body
from ._wire import EmbeddingsRequest, StrictEmbeddingsRequest

__all__ = ["embeddings"]

_json = msgspec.json.Encoder()
MAX_INPUTS = 2048  # OpenAI's own bound on inputs per request


def _b64(vector: list[float]) -> str:
    """``encoding_format: base64``: little-endian float32, what the SDKs decode (and
    ask for by default)."""
    packed = array.array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode()


def _texts(req: EmbeddingsRequest) -> list[str]:
    texts = [req.input] if isinstance(req.input, str) else req.input
    if not texts:
        raise ApiError(400, "`input` must not be empty", param="input", code="invalid_value")
    if len(texts) > MAX_INPUTS:
        raise ApiError(
            400, f"at most {MAX_INPUTS} inputs per request", param="input", code="invalid_value"
        )
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ApiError(
                400, "token-array inputs are not supported: send text", param=f"input[{i}]",
                code="unsupported_parameter",
            )  # fmt: skip
        if not t:
            raise ApiError(
                400, "inputs must not be empty strings", param=f"input[{i}]", code="invalid_value"
            )
    return texts


async def embeddings(request: Request) -> Response:
    host = FrontendHost.of(request)
    facade = host.state(FrontendState).openai
    pool: Pool | None = None
    facade.received()
    try:
        who = host.principal(request, facade.api)
        req = decode_body(
            await request.body(), EmbeddingsRequest, StrictEmbeddingsRequest,
            facade.strict(request),
        )  # fmt: skip
        pool = resolve_model(host, req.model)
        if req.dimensions is not None:
            raise ApiError(
                400, "`dimensions` is not supported: the model's own size is returned",
                param="dimensions", code="unsupported_parameter",
            )  # fmt: skip
        texts = _texts(req)
        caps = await pool_capabilities(host, pool, facade.api)
        if Capability.EMBED not in caps:  # ORCH-9211
            raise ApiError(
                400, f"model `{req.model}` does not serve embeddings (its pool's engine"
                " was not started with embeddings on)", param="model",
                code="unsupported_parameter",
            )  # fmt: skip
        out = await host.embed(pool, texts, who.tenant, api=facade.api)
    except ApiError as exc:
        return facade.api_error(exc, pool)
    except OrchError as exc:
        return facade.orch_error(exc)
    encode = _b64 if req.encoding_format == "base64" else list
    data: list[dict[str, Any]] = [
        {"object": "embedding", "index": i, "embedding": encode(v)}
        for i, v in enumerate(out.vectors)
    ]
    body = {
        "object": "list",
        "data": data,
        "model": req.model,
        "usage": {"prompt_tokens": out.prompt_tokens, "total_tokens": out.prompt_tokens},
    }
    return Response(_json.encode(body), media_type="application/json")
