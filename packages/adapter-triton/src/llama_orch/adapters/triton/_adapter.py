"""The Triton adapter: KServe v2 health/metadata/statistics and the generate
extension's ``generate_stream`` over HTTP.

Transport, streaming loop and cancel by disconnect come from
:class:`llama_orch.adapter_http.HttpAdapter`. Cancellation (ORCH-3006,
ORCH-4072) drops the HTTP connection; Triton then cancels the request in the
core, but a **Python-backend model is not told** (it runs to its end, Triton
counts a success): for such models the cancel is effective only on the
client side. See README.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

import msgspec
from llama_orch.adapter_http import HttpAdapter
from llama_orch.core.adapter_api import (
    AdapterTarget,
    Capability,
    EngineMetrics,
    EngineProps,
    GenerateRequest,
    Health,
)
from llama_orch.core.errors import InvalidParams, WorkerReset
from llama_orch.core.prometheus import parse_prometheus

from ._errors import ENGINE, error_from_response
from ._metrics import to_engine_metrics
from ._options import TritonOptions
from ._stream import GenerateStream
from ._wire import encoder, model_metadata_decoder, server_metadata_decoder

__all__ = ["TritonAdapter"]

_TOKEN_HEADER = "triton-access-token"


class TritonAdapter(HttpAdapter):
    engine: ClassVar[str] = ENGINE
    options: TritonOptions
    options_type = TritonOptions
    error_table = staticmethod(error_from_response)

    def __init__(self, target: AdapterTarget) -> None:
        super().__init__(target)
        model = self.options.model
        version = self.options.model_version
        self._model_path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        self._metrics_url = self.options.metrics_url or _default_metrics_url(self.base_url)

    async def health(self) -> Health:
        """ORCH-4071: server ready and model ready (200) → ready; 400 → live, not ready."""
        try:
            live, _ = await self.probe("/v2/health/live")
            server, _ = await self.probe("/v2/health/ready")
            model, body = await self.probe(self._model_path + "/ready")
        except Exception as exc:  # never raises: any failure means "not live"
            return Health(live=False, ready=False, detail=f"{type(exc).__name__}: {exc}")
        if live != 200:
            return Health(live=False, ready=False, detail=f"GET /v2/health/live: HTTP {live}")
        if server != 200:
            return Health(live=True, ready=False, detail=f"GET /v2/health/ready: HTTP {server}")
        if model != 200:
            why = body[:200].decode("utf-8", "replace") or f"HTTP {model}"
            return Health(live=True, ready=False, detail=f"model {self.options.model}: {why}")
        return Health(live=True, ready=True)

    async def props(self) -> EngineProps:
        """ORCH-4071: version from ``GET /v2``, model checked via its metadata."""
        server = self.decode(server_metadata_decoder, await self.call("GET", "/v2"), "GET /v2")
        path = self._model_path
        meta = self.decode(model_metadata_decoder, await self.call("GET", path), f"GET {path}")
        inputs = {t.name for t in meta.inputs}
        outputs = {t.name for t in meta.outputs}
        if "text_input" not in inputs or "text_output" not in outputs:
            raise InvalidParams(
                f"Triton model {meta.name!r} is not a text model: inputs {sorted(inputs)}, "
                f"outputs {sorted(outputs)} (need text_input -> text_output)",
                engine=ENGINE,
            )
        t = self.target
        return EngineProps(
            engine=ENGINE,
            engine_version=t.engine_version or f"{server.name}-{server.version}",
            model_ref=t.model_ref or meta.name,
            model_digest=t.model_digest,
            slots=self.options.slots,
            ctx=self.options.ctx,
            capabilities=frozenset({Capability.METRICS, Capability.SEEDED_SAMPLING}),
        )

    async def tokenize(self, text: str) -> list[int]:
        """Triton has no generic tokenize endpoint (no TOKENIZE capability)."""
        raise InvalidParams("Triton exposes no tokenizer endpoint", engine=ENGINE)

    async def statistics(self) -> dict[str, float]:
        """``GET /v2/models/{m}/stats`` (restricted: needs ``access_token``)."""
        headers = {_TOKEN_HEADER: self.options.access_token} if self.options.access_token else None
        payload = await self.call("GET", self._model_path + "/stats", headers=headers)
        try:
            stats = msgspec.json.decode(payload)
            model = stats["model_stats"][0]
            inference = model["inference_stats"]
            return {
                "inference_count": float(model["inference_count"]),
                "execution_count": float(model["execution_count"]),
                "success_count": float(inference["success"]["count"]),
                "fail_count": float(inference["fail"]["count"]),
            }
        except (msgspec.DecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
            raise WorkerReset(f"GET .../stats: unexpected answer: {exc}", engine=ENGINE) from exc

    async def metrics(self) -> EngineMetrics:
        """ORCH-4073: the metrics port, plus model statistics when a token is set."""
        payload = await self.call("GET", self._metrics_url)
        samples = parse_prometheus(payload.decode("utf-8", "replace"))
        if self.options.access_token:
            for key, value in (await self.statistics()).items():
                samples[f"stats:{key}"] = value
        return to_engine_metrics(samples, self.options.model)

    async def stream_request(self, req: GenerateRequest) -> tuple[str, object]:
        params: dict[str, object] = {
            "max_tokens": req.max_tokens,
            "seed": req.seed,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "min_p": req.min_p,
            "repeat_penalty": req.repeat_penalty,
            "cache_prompt": req.cache_prompt,
        }
        if req.top_k > 0:
            params["top_k"] = req.top_k
        if req.stop:
            # Triton request parameters are scalars only: a JSON array in a string.
            params["stop"] = encoder.encode(list(req.stop)).decode()
        body = {"id": req.task_id, "text_input": req.prompt, "parameters": params}
        return self._model_path + "/generate_stream", body

    def new_decoder(self, req: GenerateRequest) -> GenerateStream:
        return GenerateStream(req.max_tokens)


def _default_metrics_url(base: str) -> str:
    parts = urlsplit(base)
    return f"{parts.scheme or 'http'}://{parts.hostname or '127.0.0.1'}:8002/metrics"
