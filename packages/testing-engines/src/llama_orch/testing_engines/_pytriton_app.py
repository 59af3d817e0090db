"""A real Triton server (through nvidia-pytriton) serving a decoupled text model.

Run **inside the pytriton venv** (never imported by llama-orch itself)::

    python _pytriton_app.py CONFIG_JSON

``CONFIG_JSON`` names the ports, the model name, the access token for the
restricted endpoints, the number of model instances and the ``llama-server``
whose native ``/completion`` stream the model wraps, so the text is real model
output (``llama_base_url``, else ``$PYTRITON_APP_LLAMA_URL``). The model is
decoupled: ``text_input`` (BYTES) in, one response per engine chunk with

* ``text_output`` (BYTES): the delta text,
* ``num_output_tokens`` (INT32): tokens behind this delta,
* ``num_input_tokens`` (INT32): prompt tokens the engine evaluated,
* ``finish_reason`` (BYTES): empty until the last response, then
  ``eos`` / ``stop`` / ``length``.

Request parameters (Triton passes scalars only): ``max_tokens``, ``seed``,
``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repeat_penalty``,
``stop`` (a JSON array in a string), ``cache_prompt``. A prompt starting
with ``FAIL_AFTER=<n>\n`` makes the model raise after ``n`` responses (the
marker is not sent to the engine): the only way to get a real mid-stream
error out of Triton on demand.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.client import HTTPResponse
from typing import Any

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

_FLOAT = ("temperature", "top_p", "min_p", "repeat_penalty")
_INT = ("seed", "top_k")
_FAIL = "FAIL_AFTER="
# JSON as the engine and Triton pass it; pytriton and numpy are not typed (and not
# installed in the workspace): their objects are Any here.
Json = dict[str, Any]


def _read_engine(resp: HTTPResponse, out: queue.Queue[Json | Exception | None]) -> None:
    """Read the engine's whole stream into ``out`` (a thread of its own).

    Triton does not tell this model about a client disconnect; reading the
    engine to its end here, independently of whether anyone still pulls
    responses from the generator, bounds what a cancelled request costs the
    engine to its ``max_tokens`` (a safeguard: whether PyTriton keeps pulling
    from such a generator was not established).
    """
    try:
        with resp:
            for raw in resp:
                line = raw.decode("utf-8").strip()
                if line.startswith("data:"):
                    chunk = json.loads(line[5:])
                    out.put(chunk)
                    if "error" in chunk or chunk.get("stop"):
                        break
    except Exception as exc:  # handed to the generator
        out.put(exc)
    finally:
        out.put(None)


def _engine_stream(base_url: str, body: Json) -> Iterator[Json]:
    req = urllib.request.Request(
        base_url + "/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        resp = urllib.request.urlopen(req, timeout=120)
    except urllib.error.HTTPError as exc:
        # e.g. 400 exceed_context_size_error: pass the engine's words on.
        raise RuntimeError(
            f"engine HTTP {exc.code}: {exc.read().decode(errors='replace')}"
        ) from None
    chunks: queue.Queue[Json | Exception | None] = queue.Queue()
    threading.Thread(target=_read_engine, args=(resp, chunks), daemon=True).start()
    while (chunk := chunks.get()) is not None:
        if isinstance(chunk, Exception):
            raise RuntimeError(f"engine stream broken: {chunk}")
        if "error" in chunk:
            raise RuntimeError(f"engine error: {chunk['error']}")
        yield chunk
        if chunk.get("stop"):
            return


def _response(text: str, n_tokens: int, n_input: int, finish: str) -> Json:
    return {
        "text_output": np.array([text.encode("utf-8")], dtype=np.object_),
        "num_output_tokens": np.array([n_tokens], dtype=np.int32),
        "num_input_tokens": np.array([n_input], dtype=np.int32),
        "finish_reason": np.array([finish.encode()], dtype=np.object_),
    }


def make_infer(base_url: str) -> Callable[[list[Any]], Iterator[list[Json]]]:
    reasons: dict[str | None, str] = {"eos": "eos", "word": "stop", "limit": "length"}

    def infer(requests: list[Any]) -> Iterator[list[Json]]:
        for request in requests:  # batching=False: one request per call
            params = dict(request.parameters or {})
            prompt = request["text_input"][0].decode("utf-8")
            body: Json = {
                "prompt": prompt,
                "n_predict": int(params.get("max_tokens", 16)),
                "stream": True,
                "cache_prompt": bool(params.get("cache_prompt", True)),
            }
            for key in _FLOAT:
                if key in params:
                    body[key] = float(params[key])
            for key in _INT:
                if key in params:
                    body[key] = int(params[key])
            if "stop" in params:
                body["stop"] = json.loads(str(params["stop"]))
            fail_after = -1
            if prompt.startswith(_FAIL):
                head, _, prompt = prompt.partition("\n")
                fail_after = int(head[len(_FAIL) :])
                body["prompt"] = prompt
            sent, predicted = 0, 0
            for chunk in _engine_stream(base_url, body):
                if sent == fail_after:
                    raise RuntimeError(f"injected failure after {sent} responses")
                now = int(chunk.get("tokens_predicted", predicted))
                n, predicted = max(0, now - predicted), max(predicted, now)
                n_input = int(chunk.get("tokens_evaluated", 0))
                if chunk.get("stop"):
                    reason = reasons.get(chunk.get("stop_type"), "length")
                    yield [_response(chunk.get("content", ""), n, n_input, reason)]
                elif chunk.get("content"):
                    yield [_response(chunk["content"], n, n_input, "")]
                else:
                    continue
                sent += 1

    return infer


def main() -> None:
    cfg = json.loads(sys.argv[1])
    # From the config (the fixture), or from the environment when pool-managerd
    # launches the app (its JSON argument carries ports, model and instances only).
    llama_url = cfg.get("llama_base_url") or os.environ["PYTRITON_APP_LLAMA_URL"]
    # pytriton stops cleanly on SIGINT; a test harness may have set SIG_IGN.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    config = TritonConfig(
        http_address="127.0.0.1",
        http_port=cfg["http_port"],
        grpc_address="127.0.0.1",
        grpc_port=cfg["grpc_port"],
        metrics_port=cfg["metrics_port"],
        allow_sagemaker=False,
    )
    security = TritonSecurityConfig(access_token=cfg["access_token"])
    with Triton(config=config, security_config=security) as triton:
        triton.bind(
            model_name=cfg["model_name"],
            # One instance per engine slot: a generation the model was not
            # told to stop (Triton does not pass disconnects on) then holds
            # one instance, not the whole model.
            infer_func=[make_infer(llama_url) for _ in range(cfg["instances"])],
            inputs=[Tensor(name="text_input", dtype=bytes, shape=(1,))],
            outputs=[
                Tensor(name="text_output", dtype=bytes, shape=(1,)),
                Tensor(name="num_output_tokens", dtype=np.int32, shape=(1,)),
                Tensor(name="num_input_tokens", dtype=np.int32, shape=(1,)),
                Tensor(name="finish_reason", dtype=bytes, shape=(1,)),
            ],
            config=ModelConfig(batching=False, decoupled=True),
            strict=False,
        )
        print("PYTRITON_APP_SERVING", flush=True)
        try:
            triton.serve()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
