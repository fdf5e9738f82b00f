"""Twisted's name resolution while a capture is active (for `host`).

Twisted's GAIResolver keeps the `socket.getaddrinfo` it was given at construction, by default
the function the module imported: the stock one when the reactor was made before the capture,
so the names it resolves never reach _names.py and its connections to "localhost" get host None.
While capturing, a resolver holding the stock function is given one that calls whatever
`socket.getaddrinfo` is at call time (netstats' while capturing, the stock one after): the same
answers and errors, and the names seen.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

_stock_getaddrinfo = socket.getaddrinfo  # (netstats is imported before any capture starts)


def resolver_class() -> Any:
    """Twisted's GAIResolver if twisted.internet._resolver is imported, else None."""
    module = sys.modules.get("twisted.internet._resolver")
    return getattr(module, "GAIResolver", None)


def _getaddrinfo(*args: Any, **kwargs: Any) -> Any:
    return socket.getaddrinfo(*args, **kwargs)


def resolve_host_name(original: Any) -> Any:
    """GAIResolver.resolveHostName, resolving through `socket.getaddrinfo` as it is now."""

    def resolveHostName(self: Any, *args: Any, **kwargs: Any) -> Any:
        held = self.__dict__
        if held.get("_getaddrinfo") is _stock_getaddrinfo:
            held["_getaddrinfo"] = _getaddrinfo
        return original(self, *args, **kwargs)

    resolveHostName.__wrapped__ = original  # type: ignore[attr-defined]
    return resolveHostName
