"""The Connection record: plain data shared by every consumer (reports, plugin, exporters).

Units are bytes and seconds everywhere. Counters that the per-call wrappers bump are private
(`_rx`, `_tx`, `_reads`, `_writes`: totals since open, never reset); the public `rx`, `tx`,
`reads`, `writes` subtract the baseline that `reset()` sets, so totals for exporters stay
monotonic while users can zero what they see.

netstats' own consumers (the pytest plugin, the exporters) read a record through
`Connection.totals()` and `Connection.tcp_info()`, never through its private slots.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from . import _exchanges, _kernel, _tags

FIELDS = (
    "id",
    "pid",
    "side",
    "transport",
    "source",
    "local",
    "remote",
    "host",
    "tls",
    "rx",
    "tx",
    "wire_rx",
    "wire_tx",
    "rtt",
    "min_rtt",
    "retransmits",
    "retrans_bytes",
    "reads",
    "writes",
    "opened",
    "connected",
    "closed",
    "duration",
    "dns_time",
    "connect_time",
    "tls_time",
    "tls_resumed",
    "ttfb",
    "tls_started",
    "first_write",
    "marks",
    "tags",
    "exchanges",
    "origin",
    "caller",
    "error",
)


_pid = os.getpid()  # a syscall per record otherwise; a forked child takes its own


def forked() -> None:
    """In a forked child (see _lifecycle): its records carry its own pid."""
    global _pid
    _pid = os.getpid()


_COMPUTED = frozenset(
    {
        "rx",
        "tx",
        "reads",
        "writes",
        "duration",
        "tags",
        "connect_time",
        "tls_time",
        "tls_resumed",
        "tls_started",
        "marks",
        "exchanges",
        *(set(_kernel.TcpInfo._fields) & set(FIELDS)),
    }
)


_attribute, _scope_now = _tags.attribute, _tags.current.get  # (see Counts.add_read)


def _kernel_field(name: str) -> Any:
    def get(self: Connection) -> Any:
        info = self.tcp_info()
        return getattr(info, name) if info is not None else None

    return property(get, doc=f"The kernel's {name} (Linux TCP), else None.")


class Counts:
    """What a socket or TLS object counts into: byte and call totals, and who hears of each.

    A Connection, or a StreamCounts while a TLS object counts the plaintext. The per-call
    wrappers add to these through `add_read` and `add_write`, the one place that does it.
    """

    __slots__ = ("_rx", "_tx", "_reads", "_writes", "_on_io")

    def __init__(self) -> None:
        self._rx = self._tx = self._reads = self._writes = 0
        # Called with ("read" | "write", connection, nbytes) per read and write, or None when
        # nobody listens (the usual case: then counting is four integer additions at most).
        self._on_io: Callable[[str, Any, int], None] | None = None

    @property
    def conn(self) -> Connection:
        raise NotImplementedError

    # The count-and-tell step of every per-call wrapper, written once (see _sources/__init__.py).
    # With tags' listener alone (the usual case once a tag was set), their usual case (the scope
    # in force owns the connection's turn: nothing to do but count) is decided here, a call less.
    def add_read(self, n: int) -> None:
        self._rx += n
        self._reads += 1
        if self._on_io is not None:
            if self._on_io is _attribute:
                turn = self._turn  # type: ignore[attr-defined]  # (tags listen to Connections only)
                if turn is not None and turn.scope is _scope_now():  # the turn's: see _tags.py
                    return
            self._on_io("read", self, n)

    def add_write(self, n: int) -> None:
        self._tx += n
        self._writes += 1
        if self._on_io is not None:
            if self._on_io is _attribute:
                turn = self._turn  # type: ignore[attr-defined]  # (tags listen to Connections only)
                if turn is not None and turn.scope is _scope_now():  # the turn's: see _tags.py
                    return
            self._on_io("write", self, n)


class Connection(Counts):
    """One connection (or connect attempt) seen by netstats; readable after close.

    Fields: ``id`` (unique in the process, never reused), ``pid``, ``side`` ("client" or
    "server"), ``transport`` ("tcp", "udp", "unix"), ``source`` ("python": netstats saw the
    application's socket calls; "kernel": found among the process's descriptors, figures from the
    kernel only), ``local``, ``remote``, ``host`` (the name the caller asked for, else None),
    ``tls`` (negotiated version; None for plain, or unknown when source is "kernel"),
    ``rx``/``tx`` (application bytes read/written, the plaintext for TLS; None where netstats
    cannot know them), ``wire_rx``/``wire_tx`` (bytes of the TCP stream, the ciphertext for TLS),
    ``rtt``/``min_rtt``, ``retransmits``/``retrans_bytes``
    (from the kernel: None where it cannot tell), ``reads``/``writes`` (calls that moved data;
    None when the kernel counts), ``opened``/``connected``/``closed`` (wall-clock seconds),
    ``duration``, ``marks``, ``tags`` (bytes per `netstats.tag()` label set), ``exchanges``
    (request/response timing, when recorded), ``origin``,
    ``caller``, ``error`` (exception name of a failed connect).
    Phases, in seconds, None where not observed (set by _engine.py): ``dns_time``, ``connect_time``,
    ``tls_time``, ``tls_resumed`` (bool), ``ttfb``; and where they sit on the clock (wall-clock
    seconds, None where not observed): ``tls_started``, ``first_write`` (the first write's end).
    """

    __slots__ = (
        # the fields of FIELDS that are stored; the others are computed from what follows
        *(name for name in FIELDS if name not in _COMPUTED),
        # baselines set by reset() and mark(); the marks, made at the first (most records have none)
        "_base",
        "_mark",
        "_marks",
        # rx/tx come from the kernel's counters (no wrappers); the kernel's figures frozen at close
        "_kernel_counted",
        # the kernel counted for a while (reads and writes no wrapper saw): reads/writes unknown
        "_calls_unseen",
        "_final_info",
        # the socket's kernel identity (a reused descriptor number is not this connection), and
        # what the kernel had counted before the record began (a register()ed socket)
        "_ident",
        "_kernel_base",
        # a reading saw the peer's FIN (which a later CLOSE state no longer shows)
        "_peer_fin",
        # engine bookkeeping: the socket object read from, and any others on the same kernel
        # socket (dup, fromfd): the connection ends when the last of them closes
        "_sock",
        "_others",
        # what reads the kernel's figures where no socket object of ours holds the descriptor
        # (a connection the census found; a uvloop transport's, which also sets rx/tx)
        "_probe",
        "_watchers",
        # netstats.tag(): the bytes per label set, and the scope of the last write (_tags.py)
        "_tagged",
        "_turn",
        # (when the TLS handshake began, its seconds, whether it resumed a session) or None:
        # one slot for three fields that plain connections lack (a kept record stays under 1 KB)
        "_tls_phase",
        # request/response exchanges, flat (see _exchanges.py), when a capture records them
        "_exchanges",
        "__weakref__",
    )

    def __init__(self, id: int, side: str, transport: str) -> None:
        self._rx = self._tx = self._reads = self._writes = 0  # (Counts.__init__, inlined: one per connection)
        self._on_io = None
        self.id = id
        self.pid = _pid
        self.side = side
        self.transport = transport
        self.source = "python"
        self.local: Any = None
        self.remote: Any = None
        self.host: str | None = None
        self.tls: str | None = None
        self.opened = time.time()
        self.connected: float | None = None
        self.closed: float | None = None
        self._marks: list[dict[str, Any]] | None = None
        self.origin: str | None = None
        self.caller: str | None = None
        self.error: str | None = None
        self._base = (0, 0, 0, 0)
        self._mark = (time.monotonic(), 0, 0)
        self._kernel_counted = self._calls_unseen = False
        self._final_info: _kernel.TcpInfo | None = None
        self._ident: Any = None
        self._kernel_base = (0, 0)
        self._peer_fin = False
        self._sock: Any = None
        self._others: list[Any] | None = None
        self._probe: Callable[[], _kernel.TcpInfo | None] | None = None
        self._watchers: tuple[Any, ...] = ()
        self._tagged: dict[_tags.LabelSet, list[int]] | None = None
        self._turn: _tags.Turn | None = None
        self.dns_time: float | None = None
        self.ttfb: float | None = None
        self.first_write: float | None = None
        self._tls_phase: tuple[float, float | None, bool | None] | None = None
        self._exchanges: list[float | None] | None = None

    @property
    def conn(self) -> Connection:
        # Sockets and TLS objects hold a Counts: a Connection, or a StreamCounts that knows its own.
        return self

    @property
    def marks(self) -> list[dict[str, Any]]:
        """The marks set by `netstats.mark()` since open (or the last reset), oldest first."""
        if self._marks is None:
            self._marks = []
        return self._marks

    def tcp_info(self, final: bool = False) -> _kernel.TcpInfo | None:
        """The kernel's figures (Linux TCP): fresh while open, as frozen at close after; else None.

        `final`: netstats' own last reading, as the last descriptor closes."""
        if self.closed is not None or self.transport != "tcp":
            return self._final_info
        if self._probe is not None:  # found by the census, or its descriptor handed on (detach())
            info = self._probe()
            if info is not None and info.peer_fin:
                self._peer_fin = True
        else:
            ref = self._sock
            if ref is None:
                return self._final_info
            sock = ref()
            if sock is None:
                return None
            # (the bytes not yet read matter only to kernel-counted rx: one system call less else)
            info = self.read_through(sock, final, self._kernel_counted)
        if info is not None and self._kernel_counted:
            self._rx = info.consumed - self._kernel_base[0]
            self._tx = info.wire_tx - self._kernel_base[1]
            if self.ttfb is None and self.first_write is not None:
                self.ttfb = _kernel.first_byte_after(info, self.first_write)
        return info

    def read_through(self, sock: Any, final: bool = False, unread: bool = True) -> _kernel.TcpInfo | None:
        """The kernel's figures through sock (one of this connection's descriptors), with what
        tells the peer's FIN in the CLOSE state (see _kernel.read); `unread`: the bytes not yet
        read too. Nothing is stored but that the peer's FIN was seen."""
        addresses = (self.local, self.remote) if self.local and self.remote else None
        info = _kernel.read(
            sock, self.side == "client", self._ident, self._peer_fin, addresses, final, unread
        )
        if info is not None and info.peer_fin:
            self._peer_fin = True
        return info

    def totals(self) -> tuple[int, int] | tuple[None, None]:
        """(rx, tx) since open, never reset by `reset()`: what capture totals, marks and exporters
        add up. (None, None) where netstats cannot know the application's bytes (source "kernel")."""
        if self.source != "python":
            return None, None
        if self._kernel_counted and self.closed is None:
            self.tcp_info()
        return self._rx, self._tx

    @property
    def rx(self) -> int | None:
        rx = self.totals()[0]
        return None if rx is None else rx - self._base[0]

    @property
    def tx(self) -> int | None:
        tx = self.totals()[1]
        return None if tx is None else tx - self._base[1]

    @property
    def reads(self) -> int | None:
        return self._reads - self._base[2] if self._calls_known() else None

    @property
    def writes(self) -> int | None:
        return self._writes - self._base[3] if self._calls_known() else None

    def _calls_known(self) -> bool:
        """Whether the wrappers saw every read and write: not while the kernel counts, nor ever
        after it did (a connection handed back by shutdown() or TLS), nor for the census's."""
        return not (self._kernel_counted or self._calls_unseen or self.source != "python")

    # Kernel figures (see _kernel.TcpInfo): fresh while open, frozen at close, None where unknown.
    wire_rx = _kernel_field("wire_rx")
    wire_tx = _kernel_field("wire_tx")
    rtt = _kernel_field("rtt")
    min_rtt = _kernel_field("min_rtt")
    retransmits = _kernel_field("retransmits")
    retrans_bytes = _kernel_field("retrans_bytes")

    @property
    def tags(self) -> list[dict[str, Any]] | None:
        """The bytes moved under each set of `netstats.tag()` labels, since open (not reset):
        ``[{"labels": {"route": "/users"}, "rx": 5123, "tx": 312}, ...]``; bytes moved under no
        tag are the connection's totals less these. None where they cannot be split by tag (a
        connection counted only by the kernel while tags were in use)."""
        if not _tags.splittable(self):
            return None
        return [{"labels": dict(labels), "rx": rx, "tx": tx} for labels, rx, tx in _tags.tallies(self)]

    @property
    def exchanges(self) -> list[list[float | None]] | None:
        """The request/response exchanges seen on this connection, oldest first, as
        ``[sent, first_byte, last_byte]`` (wall-clock seconds; the last two None while
        unanswered); None where none were recorded (a capture made with exchanges=True
        records them: see _exchanges.py)."""
        return _exchanges.of(self)

    @property
    def connect_time(self) -> float | None:
        """Seconds from connect start to established: a client's (not UDP's: its connect() sends
        nothing); None for a record that began connected (register(), the census)."""
        connected = self.connected
        if connected is None or self.side != "client" or self.transport == "udp" or connected == self.opened:
            return None
        return max(0.0, connected - self.opened)

    @property
    def tls_started(self) -> float | None:
        return self._tls_phase[0] if self._tls_phase is not None else None

    @property
    def tls_time(self) -> float | None:
        return self._tls_phase[1] if self._tls_phase is not None else None

    @property
    def tls_resumed(self) -> bool | None:
        return self._tls_phase[2] if self._tls_phase is not None else None

    @property
    def duration(self) -> float:
        end = self.closed if self.closed is not None else time.time()
        return max(0.0, end - self.opened)

    def as_dict(self) -> dict[str, Any]:
        """Every field as plain data (tuples become lists), ready for JSON."""
        info = self.tcp_info()  # one kernel read: its fields, and rx/tx when the kernel counts them
        known = self.source == "python"
        counts = {
            "rx": self._rx - self._base[0] if known else None,
            "tx": self._tx - self._base[1] if known else None,
        }
        out: dict[str, Any] = {}
        for name in FIELDS:
            value: Any
            if name in counts:
                value = counts[name]
            elif name in _KERNEL_FIELDS:
                value = getattr(info, name) if info is not None else None
            else:
                value = getattr(self, name)
            if name == "marks":
                value = [dict(m) for m in value]
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, bytes):  # a Unix socket's abstract address, b"\0name"
                value = value.decode("utf-8", "backslashreplace")
            out[name] = value
        return out

    def __repr__(self) -> str:
        state = "closed" if self.closed is not None else "open"
        peer = self.host or self.remote
        return f"<Connection #{self.id} {self.transport} {peer!r} {state} tx={self.tx} rx={self.rx}>"


_KERNEL_FIELDS = frozenset(_kernel.TcpInfo._fields) & frozenset(FIELDS)


class StreamCounts(Counts):
    """A TCP stream's own counts once a TLS object counts the plaintext (asyncio-style TLS).

    The socket under the TLS object moves ciphertext: it counts here, apart, so the
    connection's rx/tx stay the application's bytes.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._rx = self._tx = self._reads = self._writes = 0  # (Counts.__init__, inlined)
        self._on_io = None
        self._conn = conn

    @property
    def conn(self) -> Connection:
        return self._conn
