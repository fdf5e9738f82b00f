"""Twisted's name resolution and TLS protocol while a capture is active.

`TLSMemoryBIOProtocol.makeConnection` links its pyOpenSSL Connection (memory BIO, counting the
plaintext: see pyopenssl.py) to the captured socket under its transport, client and server
side: the socket's own bytes, the ciphertext, go apart.

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

from .. import _engine

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


def tls_protocol_class() -> Any:
    """Twisted's TLSMemoryBIOProtocol if twisted.protocols.tls is imported, else None."""
    module = sys.modules.get("twisted.protocols.tls")
    return getattr(module, "TLSMemoryBIOProtocol", None)


def make_connection(original: Any) -> Any:
    """TLSMemoryBIOProtocol.makeConnection, linking its TLS object to the transport's socket."""

    def makeConnection(self: Any, transport: Any) -> Any:
        result = original(self, transport)
        _link(self, transport)
        return result

    makeConnection.__wrapped__ = original  # type: ignore[attr-defined]
    return makeConnection


@_engine.guarded
def _link(protocol: Any, transport: Any) -> None:
    tls_obj = protocol.__dict__.get("_tlsConnection")
    held = getattr(tls_obj, "__dict__", {})
    if "_netstats_counts" not in held or held["_netstats_counts"] is not None:
        return  # not made while pyOpenSSL was patched (it would count nothing), or linked already
    get_handle = getattr(transport, "getHandle", None)
    sock = get_handle() if get_handle is not None else None
    c = getattr(sock, "_netstats_counts", None)
    if c is None or c.conn is not c or c.closed is not None:
        return  # not a captured socket (or TLS already runs over it)
    _engine.link_tls(c, sock, tls_obj)
