"""Pythons netstats does not know yet, and a capture that cannot install: never a broken program.

netstats relies on a few private internals of the standard library (listed in _patch.py). Each
test here runs a program in its own interpreter where one of them is gone the way a future
Python could lose it (renamed, or no longer set), while the standard library still works: the
program must run unchanged, netstats must count everything that does not depend on the missing
piece (the peer's own counts), and say once on the "netstats" logger what it cannot count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from netstats import _patch

# What each case takes away before netstats is imported, keeping the stdlib working without it.
LOSE = {
    "nothing": "",
    # close() no longer ends in socket.socket._real_close.
    "socket._real_close": """
import _socket
def close(self):
    self._closed = True
    if self._io_refs <= 0:
        _socket.socket.close(self)
def _decref_socketios(self):
    if self._io_refs > 0:
        self._io_refs -= 1
    if self._closed:
        _socket.socket.close(self)
socket.socket.close, socket.socket._decref_socketios = close, _decref_socketios
del socket.socket._real_close
""",
    # multiprocessing's socket reducer renamed (the stock socket class keeps its registration).
    "reduction._reduce_socket": """
from multiprocessing import reduction
del reduction._reduce_socket
""",
    # SSLContext.wrap_socket makes its socket through another classmethod than _create.
    "SSLSocket._create": """
ssl.SSLSocket._make = ssl.SSLSocket.__dict__["_create"]
del ssl.SSLSocket._create
def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                suppress_ragged_eofs=True, server_hostname=None, session=None):
    return self.sslsocket_class._make(
        sock=sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect,
        suppress_ragged_eofs=suppress_ragged_eofs, server_hostname=server_hostname,
        context=self, session=session)
ssl.SSLContext.wrap_socket = wrap_socket
""",
    # SSLSocket._create's own code no longer sets _sslobj (here: delegates to the old one).
    "SSLSocket._sslobj": """
_old_create = ssl.SSLSocket.__dict__["_create"].__func__
ssl.SSLSocket._create = classmethod(lambda cls, *args, **kwargs: _old_create(cls, *args, **kwargs))
""",
    # SSLContext.wrap_bio makes its object through another classmethod than _create.
    "SSLObject._create": """
ssl.SSLObject._make = ssl.SSLObject.__dict__["_create"]
del ssl.SSLObject._create
def wrap_bio(self, incoming, outgoing, server_side=False, server_hostname=None, session=None):
    return self.sslobject_class._make(
        incoming, outgoing, server_side=server_side,
        server_hostname=self._encode_hostname(server_hostname), session=session, context=self)
ssl.SSLContext.wrap_bio = wrap_bio
""",
    # asyncio's SSLProtocol no longer keeps its TLS object in _sslobj (here: set elsewhere).
    "SSLProtocol._sslobj": """
from asyncio import sslproto
_old_init = sslproto.SSLProtocol.__init__
sslproto.SSLProtocol.__init__ = lambda self, *args, **kwargs: _old_init(self, *args, **kwargs)
""",
}

# Talks to a plain echo peer, then a TLS one with ssl.wrap_socket, then with asyncio, in each of
# two captures (the warnings must not repeat), and prints what it saw as JSON.
PROGRAM = """
import asyncio, json, logging, socket, ssl, sys
lose, plain_port, tls_port, ca_file, mode = sys.argv[1:]
exec(LOSE[lose])
import netstats

warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("netstats").addHandler(Keep(logging.WARNING))

PAYLOAD = b"n" * 3000
context = ssl.create_default_context(cafile=ca_file)

def exchange(s):
    s.sendall(PAYLOAD)
    got = b""
    while len(got) < len(PAYLOAD):
        chunk = s.recv(65536)
        assert chunk, "the echo peer closed early"
        got += chunk
    assert got == PAYLOAD

async def exchange_asyncio():
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(tls_port), ssl=context, server_hostname="localhost")
    writer.write(PAYLOAD)
    assert await reader.readexactly(len(PAYLOAD)) == PAYLOAD
    local = writer.get_extra_info("sockname")
    writer.close()
    await writer.wait_closed()
    return local

callback = (lambda *event: None) if mode == "wrapped" else None  # read/write events: wrapped
seen, local = [], []
for _ in range(2):
    with netstats.capture(callback) as cap:
        with socket.create_connection(("127.0.0.1", int(plain_port))) as s:
            exchange(s)
            mine = {"plain": s.getsockname()}
        raw = socket.create_connection(("127.0.0.1", int(tls_port)))
        with context.wrap_socket(raw, server_hostname="localhost") as s:
            exchange(s)
            mine["tls"] = s.getsockname()
        mine["asyncio"] = asyncio.run(exchange_asyncio())
    seen.append([[c.local, c.transport, c.tls, c.tx, c.rx] for c in cap.connections])
    local.append(mine)
raw = socket.create_connection(("127.0.0.1", int(tls_port)))
with context.wrap_socket(raw, server_hostname="localhost") as s:
    try:
        conn = netstats.register(s, callback)
    except TypeError as exc:
        registered = str(exc)
    else:
        registered = None
    exchange(s)
if registered is None:
    registered = [conn.tls, conn.tx, conn.rx]
print(json.dumps({"warnings": warnings, "seen": seen, "local": local, "registered": registered}))
"""

# Which of each capture's three connections netstats still counts exactly once the piece is gone.
COUNTED = {
    "nothing": ("plain", "tls", "asyncio"),
    "socket._real_close": (),
    "reduction._reduce_socket": (),
    "SSLSocket._create": ("plain", "asyncio"),
    "SSLSocket._sslobj": ("plain", "asyncio"),
    "SSLObject._create": ("plain", "tls", "asyncio"),
    "SSLProtocol._sslobj": ("plain", "tls"),
}


def run(source: str, *args: str) -> dict[str, Any]:
    """Run source in a new interpreter (LOSE is defined for it); its last output line, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", f"LOSE = {LOSE!r}\n{source}", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["kernel", "wrapped"])
@pytest.mark.parametrize("lose", sorted(LOSE))
def test_a_python_without_an_internal_runs_the_program_counts_the_rest_and_says_so_once(
    peer, ca_file, lose, mode
):
    plain, tls = peer("echo"), peer("echo", tls=True)
    result = run(PROGRAM, lose, str(plain.port), str(tls.port), ca_file, mode)

    if lose == "nothing":
        assert result["warnings"] == []
    else:
        (warning,) = result["warnings"]  # once, though two captures started
        owner, name = lose.split(".")
        assert f"{owner}." in warning and name in warning and sys.version.split()[0] in warning
    plain_peer = plain.wait_closed(2)
    tls_peer = tls.wait_closed(5)
    for i, (records, mine) in enumerate(zip(result["seen"], result["local"], strict=True)):
        by_kind = {"plain": plain_peer[i], "tls": tls_peer[2 * i], "asyncio": tls_peer[2 * i + 1]}
        if not COUNTED[lose]:
            # no record, or none that claims a figure: nothing is known of these bytes
            assert [(tx, rx) for *_, tx, rx in records if (tx, rx) != (None, None)] == []
        for kind in COUNTED[lose]:
            # exactly one record of this socket counts its bytes (the peer's figures) and its TLS
            counting = [
                (transport, version is not None, tx, rx)
                for address, transport, version, tx, rx in records
                if address == mine[kind] and tx is not None
            ]
            assert counting == [("tcp", kind != "plain", by_kind[kind]["rx"], by_kind[kind]["tx"])], kind
    if lose.startswith("SSLSocket."):  # register() makes an SSLSocket a CountingSSLSocket
        assert result["registered"].startswith("register() cannot count an ssl.SSLSocket on this Python")
    else:
        version, tx, rx = result["registered"]
        assert version is not None and (tx, rx) == (tls_peer[4]["rx"], tls_peer[4]["tx"])


def test_every_internal_netstats_relies_on_is_there_on_this_python():
    """The supported Pythons (CI runs each) have every piece: nothing is left out."""
    assert [(p.owner, p.name, p.lacking) for p in _patch._patches() if p.lacking] == []
    assert _patch.tls_socket_lacks() == []


# A patch that fails half-way: the first attributes netstats replaces are already in place.
FAIL = {
    # A module that refuses one name: socket.socket comes after getaddrinfo and sslobject_class.
    # (A subclass standing in for ssl.SSLContext, gevent's way, is captured: test_gevent.py.)
    "socket": """
import types
class ReadOnlySocket(types.ModuleType):
    def __setattr__(self, name, value):
        if name == "socket":
            raise TypeError("socket.socket is read-only")
        super().__setattr__(name, value)
socket.__class__ = ReadOnlySocket
""",
    # The last patch: a class that refuses new attributes.
    "SSLProtocol": """
class ReadOnly(type):
    def __setattr__(cls, name, value):
        raise TypeError(f"{cls.__name__} is read-only")
class SSLProtocol(sslproto.SSLProtocol, metaclass=ReadOnly):
    __init__ = sslproto.SSLProtocol.__init__
    connection_made = sslproto.SSLProtocol.connection_made
sslproto.SSLProtocol = SSLProtocol
""",
}

ROLLBACK = """
import json, logging, os, socket, ssl, sys
from asyncio import sslproto
fail, port = sys.argv[1:]
stock = {
    "socket.socket": socket.socket,
    "socket.getaddrinfo": socket.getaddrinfo,
    "os.sendfile": os.sendfile,
    "SSLContext.sslsocket_class": vars(ssl.SSLContext)["sslsocket_class"],
    "SSLContext.sslobject_class": vars(ssl.SSLContext)["sslobject_class"],
    "SSLProtocol.connection_made": vars(sslproto.SSLProtocol)["connection_made"],
}
stock_context, stock_protocol = ssl.SSLContext, sslproto.SSLProtocol
exec(FAIL[fail])
import netstats

def now():
    return {
        "socket.socket": socket.socket,
        "socket.getaddrinfo": socket.getaddrinfo,
        "os.sendfile": os.sendfile,
        "SSLContext.sslsocket_class": vars(stock_context)["sslsocket_class"],
        "SSLContext.sslobject_class": vars(stock_context)["sslobject_class"],
        "SSLProtocol.connection_made": vars(stock_protocol)["connection_made"],
    }

warnings = []
class Keep(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger("netstats").addHandler(Keep(logging.WARNING))

changed = []
echoed = 0
for _ in range(2):
    with netstats.capture() as cap:
        changed += [name for name, obj in now().items() if obj is not stock[name]]
        with socket.create_connection(("127.0.0.1", int(port))) as s:
            s.sendall(b"r" * 500)
            while echoed < 500 * (_ + 1):
                chunk = s.recv(65536)
                assert chunk
                echoed += len(chunk)
    changed += [name for name, obj in now().items() if obj is not stock[name]]
figures = [[c.tx, c.rx] for c in cap.connections]
print(json.dumps({"warnings": warnings, "changed": changed, "echoed": echoed, "figures": figures}))
"""


@pytest.mark.parametrize("fail", sorted(FAIL))
def test_a_patch_that_fails_half_way_takes_every_other_back_out_and_says_so_once(peer, fail):
    echo = peer("echo")
    result = run(f"FAIL = {FAIL!r}\n{ROLLBACK}", fail, str(echo.port))

    (warning,) = result["warnings"]
    assert "nothing is captured" in warning
    assert result["changed"] == []  # every original in place, during each capture and after
    assert result["echoed"] == sum(record["tx"] for record in echo.wait_closed(2)) == 1000
    assert all(figures == [None, None] for figures in result["figures"])  # nothing claimed
