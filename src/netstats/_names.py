"""Which name a connection's address came from (its `host`), learned from getaddrinfo().

Exact: the last lookup on the connecting thread (a lookup of an address literal says "no
name"). Else, for lookups done on another thread (asyncio resolves in an executor): a name
resolved to that address in the last minute. Bounded: the oldest names go first.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

_lookups = threading.local()  # .last: (name or None, list of addresses) of this thread
# .took: [seconds] that lookup took, emptied once a connection to one of its addresses has it
_names: dict[str, tuple[str, float]] = {}  # address -> (name, when)
_NAMES_MAX = 4096
_NAME_SECONDS = 60.0


def resolved(host: Any, results: Any, seconds: float | None = None) -> None:
    """getaddrinfo(host, ...) returned results in `seconds`: remember which name gave which addresses."""
    if isinstance(host, bytes):
        host = host.decode("idna")
    addresses = [result[4][0] for result in results]  # (family, type, proto, name, sockaddr)
    # A host that is one of its own results is an address literal (the usual case, and cheap).
    literal = host in addresses or not isinstance(host, str) or not host or is_address(host)
    name = None if literal else host
    _lookups.last = (name, addresses)
    _lookups.took = [seconds] if name is not None and seconds is not None else []
    if name is None:
        return
    now = time.monotonic()
    for address in addresses:
        _names.pop(address, None)  # re-inserted last: the oldest go first when full
        if len(_names) >= _NAMES_MAX:
            _names.pop(next(iter(_names)))
        _names[address] = (name, now)


def name_for(address: Any) -> str | None:
    """The name the caller asked for to reach this (address, port), or None."""
    if not isinstance(address, tuple) or not address:
        return None
    last = getattr(_lookups, "last", None)
    if last is not None and address[0] in last[1]:
        return last[0]  # type: ignore[no-any-return]
    entry = _names.get(address[0])
    if entry is not None and time.monotonic() - entry[1] < _NAME_SECONDS:
        return entry[0]
    return None


def name_and_time(address: Any) -> tuple[str | None, float | None]:
    """A new connection's (host, dns_time): name_for(address), and the seconds of this thread's
    last lookup of a name if it gave address and no connection has had them yet (else None: a
    literal, another thread's lookup)."""
    if not isinstance(address, tuple) or not address:
        return None, None
    last = getattr(_lookups, "last", None)
    if last is not None and address[0] in last[1]:  # this thread's last lookup gave it
        took = getattr(_lookups, "took", None)
        return last[0], (took.pop() if took else None)
    return name_for(address), None


def is_address(host: str) -> bool:
    """An IPv4 or IPv6 literal (with or without a %scope)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host.split("%", 1)[0])
            return True
        except (OSError, ValueError):
            pass
    return False
