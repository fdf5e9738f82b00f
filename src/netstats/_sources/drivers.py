"""C drivers' connections, told of by the Python call that makes them (Linux, with the census).

libpq (psycopg2, psycopg 3), libmariadb / libmysqlclient (mysqlclient's MySQLdb), libcurl
(pycurl) and gRPC's core connect and move their bytes in C. The kernel census alone records such
a connection once two sweeps 0.15 s apart have seen it: a Django request's connect, one query
and close (a few milliseconds) is over before that. Here the Python call that makes the
connection tells the census its descriptor at once (`census.claim`): from then on the census
follows it by its cookie, so its final figures come from the kernel's destroy notification
however soon it closes. The record gets what only the Python side knows: `origin` and `caller`
(the frames that called the driver), `host` (the name in the DSN or URL; an address literal
names none, as for Python's own connections) and `tls` where the driver says.

Where the driver says the connection is plain TCP, the stream's bytes are the application's:
`rx`/`tx` are the kernel's counts (source "python", kernel-counted, like uvloop's plain TCP).
Where it is TLS, or the driver cannot tell, they stay None (source "kernel"), and `tls` is the
version where the driver gives it, "TLS" where it only says TLS is in use.

- psycopg2: `psycopg2.connect` (the module's function): `conn.info.socket`, `.host`,
  `.ssl_in_use` and `.ssl_attribute("protocol")`. psycopg2 cannot say whether libpq encrypted
  with GSSAPI: that is taken as off when `gssencmode` is "disable" or no Kerberos credential
  cache is visible (KRB5CCNAME, /tmp/krb5cc_UID), which libpq needs to try it.
- psycopg 3: `Connection.connect`, `AsyncConnection.connect` (classmethods; pools call them)
  and `psycopg.connect` (the same, bound at import): `pgconn.socket`, `info.host`,
  `pgconn.ssl_in_use`, `pgconn.used_gssapi`.
- MySQLdb: `connections.Connection.__init__`: `fileno()`, the host of `get_host_info()`; plain
  where the server offers no TLS (`server_capabilities`) or `ssl_mode` is "DISABLED", else
  not known (MySQLdb does not say whether TLS was negotiated).
- pycurl: `pycurl.Curl` is a subclass while capturing (its type is immutable), made with
  libcurl's CLOSESOCKETFUNCTION: a connection libcurl closes during `perform()` is claimed as
  it closes and recorded when perform returns (libcurl answers getinfo only then: the scheme,
  a proxy, redirects), the one it keeps (ACTIVESOCKET) too. Plain for an "http" transfer with
  no proxy and no redirect. A Curl made before the capture, or whose program sets its own
  CLOSESOCKETFUNCTION, is left to the census.
- grpc: `grpc._channel.Channel` (insecure and secure channels): its target (host, port) and the
  frames that made it; its core connects lazily on its own threads, so a sweep at `close()`
  records the connections to that target at once.

Each is patched once its module is in sys.modules (by _patch.py, at a capture's start or as the
module is imported during one); nothing here imports a driver.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from .. import _engine, _origin, _state
from . import census

_CLIENT_SSL = 2048  # the MySQL protocol's CLIENT_SSL capability flag


# ---- what every driver does: claim the descriptor, then record it with what the call knows ----


class _Call:
    """A driver's call that may make a connection: when it began, the frames that made it, and
    (for a connecting call) the census told to leave what appears meanwhile to it."""

    __slots__ = ("began", "origin", "census_call")

    def __init__(self, connecting: bool) -> None:
        self.began = time.time()
        self.origin = _origin.where()
        self.census_call = census.calling() if connecting and census.supported else None

    def done(self) -> None:
        if self.census_call is not None:
            census.called(self.census_call)


def _maker(call: _Call, host: str | None, tls: str | None, plain: bool) -> Callable[..., Any]:
    def make(local: Any, remote: Any, probe: Any) -> Any:
        return _engine.told_by_driver(local, remote, probe, call.began, call.origin, host, tls, plain)

    return make


def _record(seen: Any, call: _Call, host: str | None, tls: str | None, plain: bool) -> None:
    conn = census.record(seen, _maker(call, host, tls, plain))
    if conn is not None and conn.origin is None:  # found by a sweep before the call returned
        conn.origin, conn.caller = call.origin
        conn.host = conn.host or host
        conn.tls = conn.tls or tls


@_engine.guarded
def _tell(fd: Any, call: _Call, host: str | None, tls: str | None, plain: bool) -> None:
    """The driver's connection on descriptor fd, made by call."""
    if isinstance(fd, int) and fd >= 0:
        seen = census.claim(fd)
        if seen is not None:
            _record(seen, call, host, tls, plain)


def _name(host: Any) -> str | None:
    """The name a connection was asked for, if a name: not an address literal, nor a path (a
    Unix socket's directory), nor several hosts."""
    if not isinstance(host, str) or not host or host.startswith("/") or "," in host:
        return None
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    return None


def _connecting(learn: Callable[[Any, _Call], None]) -> Callable[[Any], Any]:
    """A patch maker for a function that returns a new connection: learn(result, call) after."""

    def make(original: Any) -> Any:
        @functools.wraps(original)
        def connect(*args: Any, **kwargs: Any) -> Any:
            if not _state.active:
                return original(*args, **kwargs)
            call = _Call(connecting=True)
            try:
                result = original(*args, **kwargs)
                learn(result, call)
            finally:
                call.done()
            return result

        return connect

    return make


def _connecting_classmethod(learn: Callable[[Any, _Call], None], awaited: bool) -> Callable[[Any], Any]:
    """The same for a classmethod (psycopg's connect), a coroutine if `awaited`."""

    def make(original: Any) -> Any:
        function = original.__func__

        def connect(cls: Any, *args: Any, **kwargs: Any) -> Any:
            if not _state.active:
                return function(cls, *args, **kwargs)
            call = _Call(connecting=True)
            try:
                result = function(cls, *args, **kwargs)
                learn(result, call)
            finally:
                call.done()
            return result

        async def connect_async(cls: Any, *args: Any, **kwargs: Any) -> Any:
            if not _state.active:
                return await function(cls, *args, **kwargs)
            call = _Call(connecting=True)
            try:
                result = await function(cls, *args, **kwargs)
                learn(result, call)
            finally:
                call.done()
            return result

        replacement = connect_async if awaited else connect
        functools.update_wrapper(replacement, function)
        return classmethod(replacement)

    return make


# ---- psycopg2 and psycopg 3 (libpq) -----------------------------------------------------------


def _kerberos_visible() -> bool:
    return "KRB5CCNAME" in os.environ or os.path.exists(f"/tmp/krb5cc_{os.getuid()}")


@_engine.guarded
def _learn_psycopg2(conn: Any, call: _Call) -> None:
    if getattr(conn, "async_", False):  # connecting yet (the program polls it): the census's
        return
    info = conn.info
    tls = None
    if info.ssl_in_use:
        tls = info.ssl_attribute("protocol") or "TLS"
    gss_off = info.dsn_parameters.get("gssencmode", "disable") == "disable" or not _kerberos_visible()
    _tell(info.socket, call, _name(info.host), tls, tls is None and gss_off)


@_engine.guarded
def _learn_psycopg(conn: Any, call: _Call) -> None:
    pgconn = conn.pgconn
    tls = "TLS" if pgconn.ssl_in_use else None
    plain = tls is None and not getattr(pgconn, "used_gssapi", True)
    _tell(pgconn.socket, call, _name(conn.info.host), tls, plain)


psycopg2_connect = _connecting(_learn_psycopg2)
psycopg_connect = _connecting_classmethod(_learn_psycopg, awaited=False)
psycopg_connect_async = _connecting_classmethod(_learn_psycopg, awaited=True)


# ---- MySQLdb (mysqlclient) ----------------------------------------------------------------


def mysqldb_init(original: Any) -> Any:
    """MySQLdb's Connection.__init__ connects (its C base's): learn from the connection after."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if not _state.active:
            return original(self, *args, **kwargs)  # type: ignore[no-any-return]
        call = _Call(connecting=True)
        try:
            original(self, *args, **kwargs)
            _learn_mysqldb(self, call, kwargs)
        finally:
            call.done()

    return __init__


@_engine.guarded
def _learn_mysqldb(conn: Any, call: _Call, kwargs: dict[str, Any]) -> None:
    host, _, how = conn.get_host_info().rpartition(" via ")
    if how != "TCP/IP":
        return  # a Unix socket: the kernel counts no bytes for it
    disabled = str(kwargs.get("ssl_mode", "")).upper() == "DISABLED"
    plain = disabled or not conn.server_capabilities & _CLIENT_SSL
    _tell(conn.fileno(), call, _name(host), None, plain)


# ---- pycurl (libcurl) ----------------------------------------------------------------------

_performing = threading.local()  # .claims: the connections libcurl closed in this thread's perform()


def curl_class(stock: Any) -> Any:
    """pycurl.Curl while capturing: a subclass whose handles tell of their connections."""
    pycurl = sys.modules["pycurl"]

    class Curl(stock):  # type: ignore[misc, valid-type]
        __doc__ = stock.__doc__

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            _watch_closes(self, pycurl)

        def reset(self) -> None:
            super().reset()
            _watch_closes(self, pycurl)

        def perform(self) -> None:
            _perform(self, pycurl, stock.perform)

        def perform_rb(self) -> Any:
            return _perform(self, pycurl, stock.perform_rb)

        def perform_rs(self) -> Any:
            return _perform(self, pycurl, stock.perform_rs)

    Curl.__module__ = stock.__module__
    Curl.__qualname__ = stock.__qualname__
    return Curl


@_engine.guarded
def _watch_closes(curl: Any, pycurl: Any) -> None:
    curl.setopt(pycurl.CLOSESOCKETFUNCTION, _close_socket)


def _close_socket(fd: int) -> int:
    """libcurl closes a connection (its CLOSESOCKETFUNCTION; the callback closes it): claimed
    first, recorded when the perform() it happens in returns (or at once, outside one)."""
    try:
        _closing(fd)
    finally:
        try:
            os.close(fd)  # what libcurl does without a callback; the descriptor is libcurl's
        except OSError:
            return 1
    return 0


@_engine.guarded
def _closing(fd: int) -> None:
    if not _state.active:
        return
    seen = census.claim(fd)
    if seen is None:
        return
    claims = getattr(_performing, "claims", None)
    if claims is not None:
        claims.append(seen)
    else:  # a connection cache emptied (close(), a multi handle): nothing more to ask libcurl
        _record(seen, _Call(connecting=False), None, None, False)


def _perform(curl: Any, pycurl: Any, method: Any) -> Any:
    if not _state.active:
        return method(curl)
    call = _Call(connecting=False)
    claims: list[Any] = []
    outer, _performing.claims = getattr(_performing, "claims", None), claims
    try:
        return method(curl)
    finally:
        _performing.claims = outer
        _performed(curl, pycurl, call, claims)


@_engine.guarded
def _performed(curl: Any, pycurl: Any, call: _Call, claims: list[Any]) -> None:
    """After perform(): what libcurl says of the transfer, for the connections it made."""
    active = curl.getinfo(pycurl.ACTIVESOCKET)
    if isinstance(active, int) and active >= 0:
        seen = census.claim(active)
        if seen is not None:
            claims.append(seen)
    if not claims:
        return
    url = urllib.parse.urlsplit(curl.getinfo(pycurl.EFFECTIVE_URL) or "")
    scheme = (curl.getinfo(pycurl.SCHEME) or url.scheme or "").lower()
    proxied = curl.getinfo(pycurl.USED_PROXY) if hasattr(pycurl, "USED_PROXY") else None
    direct = proxied == 0 and curl.getinfo(pycurl.REDIRECT_COUNT) == 0  # one peer: the URL's host
    host = _name(url.hostname) if direct else None
    tls = "TLS" if direct and scheme in ("https", "wss", "ftps", "imaps", "pop3s", "smtps", "ldaps") else None
    for seen in claims:
        _record(seen, call, host, tls, direct and scheme == "http")


# ---- grpc --------------------------------------------------------------------------------


def grpc_channel_init(original: Any) -> Any:
    """grpc._channel.Channel.__init__: the channel remembers its target and who made it."""

    @functools.wraps(original)
    def __init__(self: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        original(self, target, *args, **kwargs)
        if _state.active:
            credentials = args[1] if len(args) > 1 else kwargs.get("credentials")
            _remember_target(self, target, credentials is None)

    return __init__


@_engine.guarded
def _remember_target(channel: Any, target: Any, insecure: bool) -> None:
    if not isinstance(target, str):
        return
    address = target.split(":///", 1)[-1] if target.startswith("dns:") else target
    if address.startswith(("ipv4:", "ipv6:")):
        address = address.split(":", 1)[1].split(",")[0]
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not host:
        return  # unix:, a name resolver netstats does not know, or no port
    host = host.strip("[]")
    channel._netstats_target = (host, int(port), insecure, _Call(connecting=False))


def grpc_channel_close(original: Any) -> Any:
    """grpc._channel.Channel._close (close() and the with block's end): a sweep first, for
    this channel's connections however short they were."""

    @functools.wraps(original)
    def _close(self: Any) -> None:
        _catch_channel(self)
        original(self)

    return _close


@_engine.guarded
def _catch_channel(channel: Any) -> None:
    target = getattr(channel, "_netstats_target", None)
    if target is None or not _state.active:
        return
    host, port, insecure, call = target
    literal = _name(host) is None

    def wanted(remote: Any) -> bool:
        # (an IPv4 peer of an IPv6 socket reads ::ffff:a.b.c.d)
        return bool(remote[1] == port and (not literal or remote[0] in (host, f"::ffff:{host}")))

    for conn in census.catch(wanted, _maker(call, _name(host), None, insecure)):
        if conn.origin is None:  # found by a sweep before the close
            conn.origin, conn.caller = call.origin
            conn.host = conn.host or _name(host)


# ---- what _patch.py asks --------------------------------------------------------------------


def module(name: str) -> Any:
    """The driver's module if the program has imported it (never imported here), else None."""
    return sys.modules.get(name) if census.supported else None
