"""gevent's sockets while a capture is active (with or without `monkey.patch_all()`).

gevent's socket class wraps a C socket (`self._sock`, of the class its `_gevent_sock_class`
names) and calls that object's methods for every connect, read, write and close. gevent's
class stays in place (its I/O is cooperative); while capturing, the C socket's class is one of
netstats': the per-call wrappers of sockets.py and the same two counting modes, with the C
socket's own close and detach. gevent accepts a bare descriptor (`_accept()`) and wraps it in a
new socket at once (its accept(), its StreamServer): the C socket made for that descriptor on
the same thread is the accepted connection.

gevent's TLS (gevent.ssl.SSLSocket) takes the descriptor over with detach(), which ends the
record of the TCP connection under it as detach() always does (sockets.py); OpenSSL then does
the I/O in C and the kernel census records the connection (wire bytes, application bytes None).
"""

from __future__ import annotations

import _socket
import sys
import threading
from typing import Any

from .. import _engine
from .sockets import _Counting, _Lifecycle

_C: Any = _socket.socket
_close, _detach, _stock_accept, stock_del = _C.close, _C.detach, _C._accept, _C.__del__
_accepting = threading.local()  # .fd: the descriptor this thread's last _accept() returned


def socket_class() -> Any:
    """gevent's socket class if gevent's socket module is imported, else None."""
    module = sys.modules.get("gevent._socket3")
    return getattr(module, "socket", None)


class _CLifecycle:
    """Close and detach of a C socket object (gevent's), ahead of _Lifecycle's (socket.py's)."""

    __slots__ = ()
    _netstats_counts: Any

    def _accept(self) -> tuple[int, Any]:
        fd, address = _stock_accept(self)
        _accepting.fd = fd
        return fd, address

    def close(self) -> None:
        c = self._netstats_counts
        if c is not None and c.conn.closed is None:
            _engine.finish(c.conn, self, True)
        _close(self)

    def detach(self) -> int:
        c = self._netstats_counts
        if c is not None:
            _engine.finish(c.conn, self)  # the descriptor leaves this object: its record ends
        return _detach(self)  # type: ignore[no-any-return]

    def __del__(self) -> None:
        c = self._netstats_counts
        if c is not None and c.conn.closed is None:
            _engine.finish(c.conn, self, True)
        stock_del(self)


_made: dict[Any, Any] = {}


def counting_class(original: Any) -> Any:
    """The class of gevent's C sockets while capturing: counts like socket.socket (made once)."""
    if original in _made:
        return _made[original]

    class KernelCounted(_CLifecycle, _Lifecycle, original):  # type: ignore[misc,valid-type]
        __slots__ = ("_netstats_counts",)
        _kernel_twin: Any = None
        _python_twin: Any = None

        def __init__(self, family: int = -1, type: int = -1, proto: int = -1, fileno: Any = None) -> None:
            self._netstats_counts = None
            original.__init__(self, family, type, proto, fileno)
            if fileno is None:
                return
            if fileno == getattr(_accepting, "fd", None):
                _accepting.fd = None
                _engine.accepted(self)  # recorded if a capture wants accepted connections
            elif _engine.any_shared():
                _engine.another_descriptor(self)

    class Counting(_Counting, KernelCounted):
        __slots__ = ()
        _kernel_twin = KernelCounted
        _python_twin = None

    KernelCounted._python_twin = Counting
    for cls in (KernelCounted, Counting):
        cls.__module__, cls.__qualname__, cls.__name__ = (
            original.__module__,
            original.__qualname__,
            original.__name__,
        )
    _made[original] = Counting
    _made[Counting] = Counting
    return Counting
