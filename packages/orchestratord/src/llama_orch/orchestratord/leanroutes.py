"""The task API's submit and stream routes below Starlette's routing (ORCH-2783..2786).

``POST /v1/tasks`` (the 202 and the streaming submit, ORCH-2710) and
``GET /v1/tasks/{task_id}/stream`` are the routes every task passes and the
ones whose response stays open for the task's life. Through Starlette each
request walks the router's list of every route, builds two ``Request``s and
passes four wrapper coroutines (server-error and exception middlewares, the
route's ``request_response`` and its exception wrapper), and an open stream
keeps all of them suspended until it ends (~6.6 KB per stream, issue #20).

:class:`LeanRoutes` sits below the correlation-id and body-limit middlewares
(so the ``X-Correlation-Id`` header, the log context of ORCH-7031 and the
bounds of ORCH-8010..8012 are the ones every route gets) and in front of the
Starlette application. It recognises exactly these methods and paths and calls
the same guarded endpoints and the same exception handlers the application
uses; everything else goes to the application unchanged. A frontend may name
routes of its own without path parameters to be served the same way
(``Frontend.lean_routes``, ORCH-2786: the OpenAI facade's streamed completions).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["Endpoint", "ExceptionHandler", "LeanRoutes", "handler_for", "lean_endpoints"]

Endpoint = Callable[[Request], Awaitable[Response]]
ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]

_TASKS = "/v1/tasks"
_TASK_PREFIX = "/v1/tasks/"
_STREAM_SUFFIX = "/stream"


def handler_for(
    handlers: Mapping[type[Exception], ExceptionHandler], exc: Exception
) -> ExceptionHandler | None:
    """The handler registered for the nearest class of ``exc`` (Starlette's lookup)."""
    for cls in type(exc).__mro__:
        handler = handlers.get(cls)
        if handler is not None:
            return handler
    return None


def lean_endpoints(
    routes: Sequence[BaseRoute], wanted: Collection[tuple[str, str]]
) -> dict[tuple[str, str], Endpoint]:
    """(method, path) -> endpoint of the ``wanted`` routes among ``routes``, each a
    ``Route`` without path parameters whose endpoint is an async function (what
    Starlette's ``request_response`` calls as is); a wanted route that is not such a
    one is a frontend's programming error (ORCH-2786)."""
    found: dict[tuple[str, str], Endpoint] = {}
    for route in routes:
        if not isinstance(route, Route):
            continue
        for method in route.methods or ():
            if (method, route.path) not in wanted:
                continue
            if route.param_convertors or not inspect.iscoroutinefunction(route.endpoint):
                raise TypeError(f"{method} {route.path} cannot be served below the router")
            found[method, route.path] = route.endpoint
    missing = set(wanted) - set(found)
    if missing:
        raise TypeError(f"lean routes not among the frontend's routes: {sorted(missing)}")
    return found


class LeanRoutes:
    """``POST /v1/tasks`` and ``GET /v1/tasks/{task_id}/stream`` served without
    Starlette's middleware and route chain (ORCH-2783); ``app`` is the Starlette
    application, which serves everything else and whose ``state`` the endpoints read.

    ``handlers`` are the application's exception handlers. As in Starlette, an
    exception with a handler of its own class (``OrchError``: the envelope of
    ORCH-2001) is answered by it; any other is given to the ``Exception`` handler
    (it logs, ORCH-2006), answered with its response when nothing was sent yet,
    and raised on to the server."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        submit: Endpoint,
        stream: Endpoint,
        handlers: Mapping[type[Exception], ExceptionHandler],
        exact: Mapping[tuple[str, str], Endpoint] | None = None,
    ) -> None:
        self.app = app
        # (method, path) -> endpoint of the routes without path parameters
        self._exact: dict[tuple[str, str], Endpoint] = {("POST", _TASKS): submit}
        self._exact.update(exact or {})
        self._stream = stream
        self._handlers = {cls: h for cls, h in handlers.items() if cls is not Exception}
        self._unexpected = handlers[Exception]

    def match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]] | None:
        """The endpoint and path parameters of a request this serves, else ``None``:
        the same matches as the Starlette routes ``/v1/tasks`` (POST),
        ``/v1/tasks/{task_id}/stream`` (GET; ``task_id`` one non-empty segment) and
        the ``exact`` ones (ORCH-2786)."""
        endpoint = self._exact.get((method, path))
        if endpoint is not None:
            return endpoint, {}
        if method == "GET" and path.startswith(_TASK_PREFIX) and path.endswith(_STREAM_SUFFIX):
            task_id = path[len(_TASK_PREFIX) : -len(_STREAM_SUFFIX)]
            if task_id and "/" not in task_id:
                return self._stream, {"task_id": task_id}
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = None
        if scope["type"] == "http" and not scope.get("root_path"):
            found = self.match(scope["method"], scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        endpoint, params = found
        scope["app"] = self.app  # what Starlette sets: ``request.app.state``
        scope["path_params"] = params
        try:
            response = await endpoint(Request(scope, receive, send))
        except Exception as exc:
            handler = handler_for(self._handlers, exc)
            if handler is None:
                await self._fail(scope, receive, send, exc, started=False)
                raise
            response = await handler(Request(scope, receive, send), exc)
            exc.__traceback__ = None  # as Starlette: a reused instance would grow it
        try:
            await response(scope, receive, send)
        except Exception as exc:
            # Our responses send their start before anything that can fail, so
            # nothing more is sent (a response that failed before its start would
            # get the server's own 500 here, Starlette's envelope there).
            await self._fail(scope, receive, send, exc, started=True)
            raise

    async def _fail(
        self, scope: Scope, receive: Receive, send: Send, exc: Exception, *, started: bool
    ) -> None:
        """Starlette's server-error middleware: the handler logs and answers, the
        answer goes out when nothing was sent, the caller raises on."""
        response = await self._unexpected(Request(scope), exc)
        if not started:
            await response(scope, receive, send)
