"""Which name a connection's address came from (its `host`), learned from getaddrinfo().

A lookup names connections to the (address, port) pairs it returned, and only a client's:
nobody asked an accepted connection's peer by name. An address asked for as such (a literal)
names nothing, never a name looked up for something else:
- on the connecting thread (exact): each pair this thread looked up names the next connection
  begun to it on this thread, once (create_connection's way: look up, then connect to each
  result in turn). A lookup of a literal, or asyncio's create_connection() to one (it looks
  nothing up then), says "no name"; asyncio's loop.getaddrinfo() answers on the loop's thread
  as a lookup of its own.
- else (trio and Twisted resolve on a worker thread; C code): a name another thread resolved
  to that very pair in the last minute, unless a literal was looked up for it since; on an
  asyncio loop's thread, also the names its loop.getaddrinfo() gave (aiohttp connects to the
  address it looked up, later connections from its cache).
- `connect(("name", port))`, which the C socket resolves itself: that name.
A lookup on this thread that no connection followed, then a connection to one of its pairs
asked for by number, cannot be told from create_connection: it takes the name. Bounded: the
oldest go first.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

_lookups = threading.local()  # .pending: {(address, port): _Lookup} of this thread, not yet used
_PENDING_MAX = 64
# (address, port) -> (name, when, thread, delivered): `thread` made the lookup itself, or had it
# `delivered` (asyncio's loop.getaddrinfo() answer, on the loop's thread)
_names: dict[tuple[Any, int], tuple[str, float, int, bool]] = {}
_NAMES_MAX = 4096
_NAME_SECONDS = 60.0


class _Lookup:
    """One lookup of this thread: its name (None for a literal), and the seconds it took, which
    the first connection to one of its addresses takes as its dns_time."""

    __slots__ = ("name", "took")

    def __init__(self, name: str | None, took: float | None) -> None:
        self.name, self.took = name, took


def _pending() -> dict[tuple[Any, int], _Lookup]:
    pending: dict[tuple[Any, int], _Lookup] | None = getattr(_lookups, "pending", None)
    if pending is None:
        pending = _lookups.pending = {}
    return pending


def resolved(host: Any, results: Any, seconds: float | None = None, delivered: bool = False) -> None:
    """getaddrinfo(host, ...) returned results in `seconds`: remember which name gave which pairs.
    `delivered`: the lookup was made on a worker thread for this one (asyncio's loop)."""
    if isinstance(host, bytes):
        host = host.decode("idna")
    name = host if isinstance(host, str) and host and not _literal(host) else None
    lookup = _Lookup(name, seconds) if name is not None else _NO_NAME
    pending = _pending()
    now = time.monotonic()
    for result in results:  # (family, type, proto, canonical name, sockaddr)
        pair = (result[4][0], result[4][1])
        pending.pop(pair, None)  # (re-inserted last: the oldest go first when full)
        if len(pending) >= _PENDING_MAX:
            pending.pop(next(iter(pending)))
        pending[pair] = lookup
        _names.pop(pair, None)  # a literal asked for: no other thread's guess for this pair
        if name is not None:
            if len(_names) >= _NAMES_MAX:
                _names.pop(next(iter(_names)))
            _names[pair] = (name, now, threading.get_ident(), delivered)


_NO_NAME = _Lookup(None, None)


def literal_asked(host: str, port: Any) -> None:
    """A connection to (host, port) is asked for with no lookup (asyncio's create_connection):
    if host is an address literal, the next connection to it on this thread names nothing,
    unless a lookup of this thread gave that pair (aiohttp looks the name up, then asks for the
    address it got)."""
    if not isinstance(port, int) or not _literal(host):
        return
    pair = (host, port)
    pending = _pending()
    if pair not in pending:
        if len(pending) >= _PENDING_MAX:
            pending.pop(next(iter(pending)))
        pending[pair] = _NO_NAME


def name_and_time(address: Any, mine: bool = True) -> tuple[str | None, float | None]:
    """A new client connection's (host, dns_time) for the (address, port) it goes to: see the
    module's docstring. dns_time is the seconds of this thread's lookup that gave the pair, for
    the first connection to one of its pairs (else None: a literal, another thread's lookup).
    `mine`: the connection is this thread's (not a uvloop or census thread's finding)."""
    if not isinstance(address, tuple) or len(address) < 2:
        return None, None
    pair = (address[0], address[1])
    if mine:
        pending = getattr(_lookups, "pending", None)
        if pending:
            lookup = pending.pop(pair, None)
            if lookup is not None:
                took, lookup.took = lookup.took, None
                return lookup.name, took
    entry = _names.get(pair)
    # Another thread's lookup; of this thread's own, only one delivered to it (aiohttp's later
    # connections to an address it looked up: from its cache, or a lookup they shared).
    if (
        entry is not None
        and (entry[3] or entry[2] != threading.get_ident())
        and time.monotonic() - entry[1] < _NAME_SECONDS
    ):
        return entry[0], None
    host = pair[0]
    if isinstance(host, str) and host and not _literal(host):  # a name the socket resolves itself
        return host, None
    return None, None


_literals: dict[str, bool] = {}  # host -> is_address(host), for the addresses connected to (bounded)


def _literal(host: str) -> bool:
    known = _literals.get(host)  # (two inet_pton calls per connection otherwise)
    if known is None:
        known = is_address(host)
        if len(_literals) < 1024:
            _literals[host] = known
    return known


def name_for(address: Any) -> str | None:
    """The name of a client connection that another thread's code made (the census, uvloop's
    C code): only other threads' lookups can have named it."""
    return name_and_time(address, mine=False)[0]


def is_address(host: str) -> bool:
    """An IPv4 or IPv6 literal (with or without a %scope)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.split("%", 1)[0])
            return True
        except (OSError, ValueError):
            pass
    return False
