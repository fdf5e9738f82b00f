"""trio's sockets and TLS streams while a capture is active (anyio on trio goes through them).

trio builds its socket methods at import (trio/_socket.py): `_SocketType.recv` and the others
call the function `socket.socket.recv` held at that moment, kept in the method's closure.
Imported before a capture, that is the stock C method, and the counting socket's wrappers are
never called. While capturing, each such method is the same trio function calling the socket's
own method instead (`sock.recv(...)`), so it counts exactly as a stdlib call would; removing
the patch puts trio's function back. (Imported during a capture, trio keeps netstats' wrappers
for good: they count into nothing on a socket netstats does not count, see _patch.py.)

trio also wants exactly `socket.socket` under a trio socket; while capturing that name is
netstats' class, so `_SocketType.__init__` takes a stock socket and netstats' classes too.
`SSLStream.__init__` links its `ssl.SSLObject` to the socket under it: the TLS object counts the
plaintext, client and server side alike.
"""

from __future__ import annotations

import _socket
import sys
import types
from typing import Any

from .. import _engine
from .sockets import CountingSocket, KernelCountedSocket, _StockSocket

# trio's method -> the socket method it calls.
METHODS = {
    "_accept": "accept",
    "recv": "recv",
    "recv_into": "recv_into",
    "recvfrom": "recvfrom",
    "recvfrom_into": "recvfrom_into",
    "recvmsg": "recvmsg",
    "recvmsg_into": "recvmsg_into",
    "send": "send",
}
_PLAIN = (_StockSocket, CountingSocket, KernelCountedSocket)


def socket_class() -> Any:
    """trio's socket class if trio is imported, else None."""
    module = sys.modules.get("trio._socket")
    return getattr(module, "_SocketType", None)


def ssl_stream_class() -> Any:
    module = sys.modules.get("trio._ssl")
    return getattr(module, "SSLStream", None)


def _own(name: str) -> Any:
    def call(sock: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(sock, name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def calling_own(method: str) -> Any:
    """Make trio's `method` call the socket's own method, where its closure holds a socket class's."""
    name = METHODS[method]
    held = {getattr(cls, name, None) for cls in (_socket.socket, *_PLAIN)} - {None}

    def make(original: Any) -> Any:
        cells = original.__closure__ or ()
        replaced = tuple(
            types.CellType(_own(name)) if _contents(cell) in held else cell  # type: ignore[attr-defined]
            for cell in cells
        )
        if replaced == cells:
            return original  # not the shape this was written for: left as it is
        fn = types.FunctionType(
            original.__code__, original.__globals__, original.__name__, original.__defaults__, replaced
        )
        fn.__kwdefaults__ = original.__kwdefaults__
        fn.__dict__.update(original.__dict__)
        fn.__qualname__, fn.__doc__, fn.__module__ = (
            original.__qualname__,
            original.__doc__,
            original.__module__,
        )
        return fn

    return make


def _contents(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def socket_init(original: Any) -> Any:
    """trio's `_SocketType.__init__`, taking a stock socket and netstats' classes alike."""

    def __init__(self: Any, sock: Any) -> None:
        if type(sock) not in _PLAIN:
            return original(self, sock)  # type: ignore[no-any-return]  # trio's own TypeError
        # What trio's __init__ does once the type is right.
        self._sock = sock
        self._sock.setblocking(False)
        self._did_shutdown_SHUT_WR = False
        return None

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    return __init__


def ssl_stream_init(original: Any) -> Any:
    """trio's `SSLStream.__init__`, linking its TLS object to the socket under it."""

    def __init__(self: Any, transport_stream: Any, *args: Any, **kwargs: Any) -> None:
        original(self, transport_stream, *args, **kwargs)
        _link(self, transport_stream)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    return __init__


@_engine.guarded
def _link(stream: Any, transport_stream: Any) -> None:
    tls_obj = getattr(stream, "_ssl_object", None)
    if tls_obj is None or getattr(tls_obj, "_netstats_counts", 1) is not None:
        return  # not a counting TLS object, or already linked
    sock = getattr(getattr(transport_stream, "socket", None), "_sock", None)
    c = getattr(sock, "_netstats_counts", None)
    if c is None or c.conn is not c or c.closed is not None:
        return  # not a captured socket, or TLS already runs over it
    _engine.link_tls(c, sock, tls_obj)
