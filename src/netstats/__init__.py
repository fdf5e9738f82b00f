"""netstats: what a Python program does on the network, per connection, from the outside.

>>> import netstats, urllib.request
>>> with netstats.capture() as cap:
...     urllib.request.urlopen("http://127.0.0.1:8000/").read()
>>> for conn in cap.connections:
...     print(conn.host, conn.remote, conn.tx, conn.rx, conn.origin)
"""

import logging

from . import _lifecycle  # noqa: F401  (what runs at fork: registered once, as netstats is imported)
from ._api import mark, register, reset, stats
from ._capture import EVENTS, Capture, capture, release
from ._errors import NetstatsError, NotCaptured
from ._record import FIELDS, Connection
from ._tagging import tag
from ._version import __version__

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
    "tag",
    "__version__",
]

logging.getLogger("netstats").addHandler(logging.NullHandler())
