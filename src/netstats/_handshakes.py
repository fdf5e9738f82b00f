"""TLS objects waiting for their socket: the first handshake flight of a bare ssl.SSLObject.

Libraries that drive ssl.SSLObject themselves (anyio, hence httpx async) give no link
between the TLS object and the socket under it. Their first handshake flight (the
ClientHello) is written at once, whole, on the thread that made it: the engine matches a
new TCP client's first write to a waiting flight by thread and exact size, oldest first.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from typing import Any

# (TLS object, thread, size of its first flight, when): at most 256, for at most 30 s.
_waiting: deque[tuple[weakref.ref[Any], int, int, float]] = deque(maxlen=256)
_WAIT_SECONDS = 30.0


def waiting(tls_obj: Any, size: int) -> None:
    """tls_obj has made its first handshake flight, `size` bytes, for someone to send."""
    _waiting.append((weakref.ref(tls_obj), threading.get_ident(), size, time.monotonic()))


def any_waiting() -> bool:
    return bool(_waiting)


def claim(nbytes: int, linked: Any) -> Any:
    """The TLS object whose first flight is this thread's write of `nbytes`, or None.

    `linked(tls_obj)` says whether an object already has its connection (it is then dropped).
    """
    me = threading.get_ident()
    now = time.monotonic()
    for entry in list(_waiting):
        ref, thread, size, when = entry
        tls_obj = ref()
        if tls_obj is None or now - when > _WAIT_SECONDS or linked(tls_obj):
            _waiting.remove(entry)
            continue
        if thread == me and size == nbytes:
            _waiting.remove(entry)
            return tls_obj
    return None
