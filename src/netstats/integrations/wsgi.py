"""WSGI middleware: each request runs under `netstats.tag(route=...)`, the response's
iteration included.

The route is the matching rule's template where the app exposes one (Flask: "/users/<int:id>",
from its `url_map`; Django: the resolved URL pattern), else the request's path.

>>> from netstats.integrations.wsgi import TagRequests
>>> app.wsgi_app = TagRequests(app.wsgi_app, label="route")     # Flask
>>> application = TagRequests(get_wsgi_application())            # Django
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .._tagging import tag
from . import check_label, log, set_span_attributes

App = Callable[[dict[str, Any], Any], Iterable[bytes]]


def flask_route(app: Any, environ: dict[str, Any]) -> str | None:
    """The Flask rule (e.g. "/users/<int:id>") that environ's request matches in app, else None."""
    owner = getattr(app, "__self__", app)  # app.wsgi_app, a bound method of the Flask app
    url_map = getattr(owner, "url_map", None)
    if url_map is None or not hasattr(url_map, "bind_to_environ"):
        return None
    try:
        rule, _ = url_map.bind_to_environ(environ).match(return_rule=True)
    except Exception:  # werkzeug's NotFound, MethodNotAllowed, RequestRedirect: no rule
        return None
    return str(rule.rule)


def django_route(environ: dict[str, Any]) -> str | None:
    """The Django URL pattern (its route) that environ's path resolves to, else None (also when
    Django's URLs were never imported)."""
    urls: Any = sys.modules.get("django.urls")  # a Django app has imported it; never imported here
    if urls is None:
        return None
    try:
        match = urls.resolve(environ.get("PATH_INFO") or "/")
    except urls.Resolver404:
        return None
    return "/" + str(match.route) if match.route is not None else None


class TagRequests:
    """Run each request of `app` under `netstats.tag(**{label: route})`."""

    def __init__(self, app: App, label: str = "route", *, span_attributes: bool = False) -> None:
        self.app = app
        self.label = check_label(label)
        self.span_attributes = bool(span_attributes)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        t = tag(**{self.label: self._route(environ)})
        with t:
            result = self.app(environ, start_response)
        return self._iterate(t, result)

    def _iterate(self, t: tag, result: Iterable[bytes]) -> Iterator[bytes]:
        # Each chunk is made under the tag (a streamed body may call out), and only it: the
        # server writes what it gets in its own context.
        try:
            with t:
                chunks = iter(result)
            while True:
                with t:
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        return
                yield chunk
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                with t:
                    close()
            if self.span_attributes:
                set_span_attributes(t)

    def _route(self, environ: dict[str, Any]) -> str:
        path = str(environ.get("PATH_INFO") or "/")
        try:
            route = flask_route(self.app, environ) or django_route(environ)
        except Exception:
            log.exception("netstats: could not find the route of %r (tagged by its path)", path)
            route = None
        return route or path
