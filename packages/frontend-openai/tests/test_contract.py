"""``contracts/openapi/openai.yaml`` is valid, lists exactly the mounted routes, and
the live answers validate against it (ORCH-9114, ORCH-9120..9123, ORCH-9130)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import jsonschema
import yaml
from llama_orch.frontends.openai import OpenAIFrontend
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from starlette.routing import Route

DOC_PATH = Path(__file__).resolve().parents[3] / "contracts" / "openapi" / "openai.yaml"
DOC: dict[str, Any] = yaml.safe_load(DOC_PATH.read_text(encoding="utf-8"))
MSGS = [{"role": "user", "content": "hi"}]


def _check(name: str, body: object) -> None:
    uri = "urn:llama-orch:openai.yaml"
    registry: Registry = Registry().with_resource(
        uri, Resource.from_contents(DOC, default_specification=DRAFT202012)
    )
    jsonschema.Draft202012Validator(
        {"$ref": f"{uri}#/components/schemas/{name}"}, registry=registry
    ).validate(body)


def test_document_is_valid_openapi():
    assert DOC["openapi"] == "3.1.0"
    validate(DOC)


def test_document_lists_exactly_the_mounted_routes():
    class _Host:  # routes() only attaches the frontend's state to the host
        def attach(self, state: object) -> None:
            self.state = state

    mounted = {
        (m.lower(), r.path)
        for r in OpenAIFrontend().routes(_Host())  # type: ignore[arg-type]
        if isinstance(r, Route)
        for m in (r.methods or ()) - {"HEAD"}
    }
    documented = {(m, p) for p, ops in DOC["paths"].items() for m in ops}
    assert mounted == documented


async def test_live_answers_match_the_document(start_daemon, config, key):
    d = await start_daemon(config())
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=d.url, headers=auth) as http:
        r = await http.post(
            "/v1/chat/completions", json={"model": "mock", "messages": MSGS, "max_tokens": 3}
        )
        _check("ChatCompletion", r.json())
        r = await http.post("/v1/completions", json={"model": "mock", "prompt": "a"})
        _check("Completion", r.json())
        _check("ModelList", (await http.get("/v1/models")).json())
        r = await http.post(
            "/v1/messages", json={"model": "mock", "messages": MSGS, "max_tokens": 3}
        )
        _check("Message", r.json())
        r = await http.post(
            "/v1/responses", json={"model": "mock", "input": "hi", "max_output_tokens": 3}
        )
        _check("ResponseObject", r.json())
        _check("ResponseObject", (await http.get(f"/v1/responses/{r.json()['id']}")).json())
        r = await http.post("/v1/chat/completions", json={"model": "x", "messages": MSGS})
        assert r.status_code == 404
        _check("OpenAIError", r.json())
        r = await http.post("/v1/messages", json={"model": "x", "messages": MSGS, "max_tokens": 3})
        assert r.status_code == 404
        _check("AnthropicError", r.json())
