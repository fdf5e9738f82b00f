"""Web middleware that tags each request with its route (see `netstats.tag()`).

- `netstats.integrations.asgi.TagRequests(app, label="route")`: ASGI (Starlette, FastAPI, any);
- `netstats.integrations.wsgi.TagRequests(app, label="route")`: WSGI (Flask, Django, any).

The bytes the request's code moves (its outbound calls, and with `servers=True` the response it
writes) then carry the label, in `conn.tags`, `Capture.by_tag()`, the reports and the exporters
(`tag_labels=("route",)`). With `span_attributes=True` and OpenTelemetry installed, the bytes of
each request are also set on the span current when it ends (`netstats.rx`, `netstats.tx`).
Neither module imports a web framework: each asks the app it wraps for its routes.
"""

from __future__ import annotations

import logging
from typing import Any

from .._tagging import tag

log = logging.getLogger("netstats")


def check_label(label: Any) -> str:
    if not isinstance(label, str) or not label:
        raise TypeError(f"label must be a non-empty str (the tag key, e.g. 'route'), not {label!r}")
    return label


def set_span_attributes(t: tag) -> None:
    """The request's bytes on the current OpenTelemetry span, if there is a recording one."""
    try:
        from opentelemetry import trace
    except ImportError:
        return
    try:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute("netstats.rx", t.rx)
            span.set_attribute("netstats.tx", t.tx)
    except Exception:
        log.exception("netstats: could not set a span's attributes (the request is unaffected)")
