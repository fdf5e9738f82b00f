"""netstats: what a Python program does on the network, per connection, from the outside.

>>> import netstats, urllib.request
>>> with netstats.capture() as cap:
...     urllib.request.urlopen("http://127.0.0.1:8000/").read()
>>> for conn in cap.connections:
...     print(conn.host, conn.remote, conn.tx, conn.rx, conn.origin)
"""

from ._capture import (
    EVENTS,
    Capture,
    NetstatsError,
    NotCaptured,
    capture,
    mark,
    register,
    release,
    reset,
    stats,
)
from ._record import FIELDS, Connection

__all__ = [
    "EVENTS",
    "FIELDS",
    "Capture",
    "Connection",
    "NetstatsError",
    "NotCaptured",
    "capture",
    "mark",
    "register",
    "release",
    "reset",
    "stats",
]
__version__ = "0.1.0"
