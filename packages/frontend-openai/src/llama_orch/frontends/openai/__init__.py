"""OpenAI- and Anthropic-compatible APIs on the llama-orch task queue.

Registered as the frontend ``openai`` (entry-point group
``llama_orch.frontends``); orchestratord mounts its routes next to OrchQueue
v1. Each request becomes one task admitted like ``POST /v1/tasks``.
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_orch.orchestratord.frontends import Frontend, FrontendHost
from starlette.routing import BaseRoute

from . import _anthropic, _openai, _responses
from ._flow import Backgrounds, Facade, FrontendState

__all__ = ["OpenAIFrontend"]


class OpenAIFrontend(Frontend):
    """``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/v1/embeddings``,
    ``/v1/responses`` and the Anthropic ``/v1/messages``."""

    name = "openai"
    # ORCH-2786: the streamed completions, served below Starlette's routing
    lean_routes = frozenset({("POST", "/v1/chat/completions"), ("POST", "/v1/completions")})

    def routes(self, host: FrontendHost) -> Sequence[BaseRoute]:
        """The module-level route tables; their endpoints find this state through
        ``FrontendHost.of(request)`` (ORCH-4122)."""
        openai = _openai.render_error
        host.attach(
            FrontendState(
                openai=Facade(host, "openai", openai),
                responses=Facade(host, "openai", openai),
                anthropic=Facade(host, "anthropic", _anthropic.render_error),
                backgrounds=Backgrounds(host),
            )
        )
        return [*_openai.ROUTES, *_responses.ROUTES, *_anthropic.ROUTES]
