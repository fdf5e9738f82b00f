"""ASGI middleware: each HTTP or WebSocket request runs under `netstats.tag(route=...)`.

The route is the template of the route that matches (Starlette and FastAPI: "/users/{id}",
found in the app's `routes` the way their router does), else the request's path.

>>> from netstats.integrations.asgi import TagRequests
>>> app = TagRequests(app, label="route")           # or app.add_middleware(TagRequests)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._tagging import tag
from . import check_label, log, set_span_attributes

Scope = MutableMapping[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]


def route_of(app: Any, scope: Scope) -> str | None:
    """The matching route's template in app's routes (Starlette's Route/Mount shape), or None."""
    routes = getattr(app, "routes", None)
    if not isinstance(routes, (list, tuple)):
        return None
    partial = None
    for route in routes:
        matches = getattr(route, "matches", None)
        path = getattr(route, "path", None)
        if matches is None or not isinstance(path, str):
            continue
        match, child = matches(scope)
        kind = getattr(match, "name", "")
        if kind == "FULL":
            inner = route_of(route, {**scope, **child}) if hasattr(route, "routes") else None
            return path + inner if inner is not None else path or "/"
        if kind == "PARTIAL" and partial is None:
            partial = path  # the path matches, the method does not (a 405)
    return partial


class TagRequests:
    """Run each request of `app` under `netstats.tag(**{label: route})`."""

    def __init__(self, app: App, label: str = "route", *, span_attributes: bool = False) -> None:
        self.app = app
        self.label = check_label(label)
        self.span_attributes = bool(span_attributes)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope.get("type") not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        t = tag(**{self.label: self._route(scope)})
        with t:
            try:
                await self.app(scope, receive, send)
            finally:
                if self.span_attributes:
                    set_span_attributes(t)

    def _route(self, scope: Scope) -> str:
        path = scope.get("path") or "/"
        try:
            route = route_of(scope.get("app") or self.app, scope)
            if route is None and scope.get("app") is not None:
                route = route_of(self.app, scope)
        except Exception:
            log.exception("netstats: could not find the route of %r (tagged by its path)", path)
            route = None
        return route if route is not None else str(path)
