"""OpenAI- and Anthropic-compatible APIs on the llama-orch task queue.

Registered as the frontend ``openai`` (entry-point group
``llama_orch.frontends``); orchestratord mounts its routes next to OrchQueue
v1. Each request becomes one task admitted like ``POST /v1/tasks``.
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_orch.orchestratord.frontends import Frontend, FrontendHost
from starlette.routing import BaseRoute

from ._anthropic import anthropic_routes
from ._openai import openai_routes
from ._responses import responses_routes

__all__ = ["OpenAIFrontend"]


class OpenAIFrontend(Frontend):
    """``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/v1/embeddings``,
    ``/v1/responses`` and the Anthropic ``/v1/messages``."""

    name = "openai"

    def routes(self, host: FrontendHost) -> Sequence[BaseRoute]:
        return [*openai_routes(host), *responses_routes(host), *anthropic_routes(host)]
