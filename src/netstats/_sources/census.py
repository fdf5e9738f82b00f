"""The kernel census: TCP connections of this process that no Python socket call made (Linux).

C extensions do their I/O out of Python's sight (libpq for psycopg, grpcio, libcurl, librdkafka,
libzmq), and so does code holding the stock socket class. While a capture is active a thread
sweeps the process's descriptors (`/proc/self/fd`, one fstat each: the inode names the socket)
and makes a record, source "kernel", for each TCP connection that netstats does not already
count. Its figures come from the kernel only, through sock_diag (_diag.py): live when asked, final
from the kernel's destroy notification the moment the socket dies, else from the last reading when
its last descriptor is seen gone (and always so once the program has closed the feed's descriptor,
as daemonizing code closes every one: see _own_feed).

What a found connection gets: wire bytes, rtt, min_rtt, retransmissions (exact); rx, tx, reads,
writes and tls are None, since the application's bytes may be TLS plaintext that only the C code
saw; origin and caller are None (it was made where no Python frame shows). Sockets that existed
when the census started are not reported (like sockets made before a capture). A connection is
recorded when a second sweep in a row sees it connected and not Python's (an accepted one, its
local port being one this process listens on, only with servers=True), its `opened` being the
first sweep's time. A connection that lives less than two sweeps may be missed; one open for
0.5 s or more is always found while the process has no more than a few hundred descriptors
open (full sweeps of a larger table are spaced out: see below).

What a sweep costs (issue 27). Every INTERVAL seconds the thread looks again at the sockets it is
watching (connections waiting for their second sweep, DEFERRED ones), each by its own number: an
fstat to check the number still holds that socket, and its figures. The whole table is swept (a
listing, an fstat per descriptor) only when it may hold a connection not seen yet: when the number
of open descriptors changed or the network namespace opened a TCP connection since the last full
sweep (two figures the kernel keeps: `/proc/self/fd`'s size and TCP's ActiveOpens and
PassiveOpens), or FULL_EVERY seconds passed (a socket closed and another opened on its number
between two sweeps leaves the count as it was, and an accepted connection's count moves before
its accept()). Whatever triggers them, full sweeps take at most BUDGET of one core: one that cost
c seconds of the thread's CPU time is followed by the next no sooner than c / BUDGET seconds
later. With 5,000 descriptors (5-13 ms a full sweep on a small shared machine) a new connection
is then found within one to three seconds rather than 0.3 s; idle descriptors cost a sweep nothing.

It follows by cookie, too, a Python-seen connection whose descriptor C code closes before
netstats hears of its end (uvloop's TLS: `follow`), and ends it with the kernel's final figures.

A C driver netstats knows (_sources/drivers.py) tells of its connection at the Python call that
made it: `claim(fd)` knows it at once by its cookie and listens for its destroy notification,
so a connection closed a few milliseconds later still gets its final figures; `record(claim,
make)` makes its record (the driver's `make` gives origin, host, TLS...). While such a call is
under way (`calling`), a socket first seen after it began is not recorded by the sweep as a bare
kernel connection, only followed (DEFERRED): the call may be about to tell of it, with more to
say. Once no such call is left, the sweep records it (dead or alive) as usual. `catch(wanted,
make)` is a sweep at once for a driver that cannot tell its descriptor (grpc, at a channel's
close).

The census also follows Python's own connections whose kernel socket outlives their last
descriptor: a close() while another thread's call (a blocked recv) still holds the socket. The
kernel keeps it, unorphaned, until that call returns: the record goes on, counting what the call
moves, and ends once the kernel lets go of the socket (`close_held`).
"""

from __future__ import annotations

import _socket
import itertools
import logging
import os
import select
import stat
import threading
import time
import weakref
from collections.abc import Container
from typing import Any

from .. import _diag, _engine, _kernel
from .._owned import Socket

log = logging.getLogger("netstats")

INTERVAL = 0.15  # seconds between sweeps: a connection is recorded at its second
FULL_EVERY = 1.0  # seconds: the whole descriptor table is swept at least this often...
BUDGET = 0.005  # ...and its full sweeps take at most this share of one core (see the docstring)
DESTROY_WAIT = 1.0  # seconds a destroy notification may take once the descriptor is gone
GRACE = 1.0  # seconds a call that held its socket across close() gets to count its last bytes
supported = _diag.supported and _kernel.supported and os.path.isdir("/proc/self/fd")

# TCP states (linux/tcp_states.h)
_ESTABLISHED, _SYN_SENT, _SYN_RECV, _CLOSE, _LISTEN = 1, 2, 3, 7, 10
_OPENING = frozenset({_SYN_SENT, _SYN_RECV})
_FIN_RECEIVED = frozenset({6, 8, 9, 11})  # TIME_WAIT, CLOSE_WAIT, LAST_ACK, CLOSING
_TCP_FAMILIES = (_socket.AF_INET, _socket.AF_INET6)
_FD_DIR = "/proc/self/fd"
_SNMP = "/proc/self/net/snmp"
_family_of = _socket.socket.family.__get__  # (a plain int)


class _Seen:
    """One socket inode the census knows, and what it decided about it."""

    __slots__ = (
        "kind", "family", "local", "remote", "cookie", "side", "conn", "last", "sweeps", "fin_seen", "first",
        "inode", "dead", "fd",
    )  # fmt: skip

    IGNORED, LISTENER, WAITING, FOUND = "ignored", "listener", "waiting", "found"
    # Followed by its cookie, not recorded yet: told of by a driver whose record is to come
    # (CLAIMED), or seen by the sweep while a driver's call that may tell of it is under way.
    CLAIMED, DEFERRED = "claimed", "deferred"

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.family = 0
        self.local: Any = None
        self.remote: Any = None
        self.cookie: int | None = None
        self.side = "client"
        self.conn: Any = None
        self.last: _kernel.TcpInfo | None = None
        self.sweeps = 0
        self.fin_seen = False  # a live reading showed the peer's FIN had arrived
        self.first = time.time()  # when a sweep first saw it
        self.inode = 0
        self.dead = False  # CLAIMED or DEFERRED, and destroyed: `last` is final
        self.fd = -1  # the number a sweep last saw it on (WAITING and DEFERRED: looked at there)

    def figures(self, fresh_only: bool = False) -> _kernel.TcpInfo | None:
        """The kernel's figures now, or the last ones read once the socket is gone (or None
        then, with `fresh_only`)."""
        if self.cookie is not None:
            diag = _diag.query(self.family, self.local, self.remote, self.cookie)
            info = _figures(diag, self.side == "client") if diag is not None else None
            if diag is not None and info is not None:
                self.last = info
                self.fin_seen = self.fin_seen or diag.state in _FIN_RECEIVED
                return info
        return None if fresh_only else self.last


def _figures(diag: _diag.Diag, client: bool, fin: int | None = None) -> _kernel.TcpInfo | None:
    fields = _kernel.unpack(diag.info) if diag.info is not None else None
    if fields is None:
        return None
    info = _kernel.decode(fields, diag.unread, client, fin)
    # sock_diag's unread is rcv_nxt - copied_seq: a FIN received and not read (as EOF) is in it.
    return info._replace(unread=max(0, diag.unread - 1)) if info.peer_fin else info


class _Held:
    """A connection closed while a call of another thread held its kernel socket, followed by its
    cookie until the kernel lets go of the socket (orphans it, or destroys it)."""

    __slots__ = (
        "conn", "sock", "family", "local", "remote", "cookie", "last", "fin_seen", "final", "gone", "done"
    )  # fmt: skip

    def __init__(self, conn: Any, sock: Any, cookie: int) -> None:
        self.conn = conn
        self.sock = weakref.ref(sock)  # (a count after the end goes nowhere: _engine.held_ended)
        self.family = _family_of(sock)
        self.local, self.remote, self.cookie = conn.local, conn.remote, cookie
        self.last: _kernel.TcpInfo | None = conn.tcp_info()  # the reading taken at close
        self.fin_seen = self.last is not None and self.last.peer_fin
        self.final: _kernel.TcpInfo | None = None
        self.gone: float | None = None  # when it was seen destroyed: its notification is on its way
        self.done: float | None = None  # when its final figures were known

    def look(self) -> bool:
        """Ask the kernel: True while a descriptor or a call still holds the socket."""
        diag = _diag.query(self.family, self.local, self.remote, self.cookie)
        info = _figures(diag, self.conn.side == "client") if diag is not None else None
        if diag is None or info is None:  # destroyed (a time-wait entry has no tcp_info)
            if self.gone is None:
                self.gone = time.monotonic()
            return False
        self.last = info
        self.fin_seen = self.fin_seen or diag.state in _FIN_RECEIVED
        if diag.inode == 0:  # orphaned: nothing can read or write it any more
            self.settle(info)
        return diag.inode != 0

    def settle(self, final: _kernel.TcpInfo | None) -> None:
        if self.done is None:
            self.final, self.done = final, time.monotonic()

    def reading(self, until: float = float("inf")) -> _kernel.TcpInfo | None:
        """The kernel's figures now (conn's probe), final once the socket is let go."""
        if self.done is None and not self.look() and self.done is None:
            census.await_destroy(self, until)
        return self.final if self.done is not None else self.last


def _inspect(fd: int) -> _Seen:
    """What the socket on descriptor fd is, read through a socket object that is then let go."""
    try:
        sock = _socket.socket(fileno=fd)
    except OSError:
        return _Seen(_Seen.IGNORED)
    try:
        if sock.family not in _TCP_FAMILIES or sock.type != _socket.SOCK_STREAM:
            return _Seen(_Seen.IGNORED)
        raw = _kernel.unpack(sock.getsockopt(_socket.IPPROTO_TCP, _kernel.TCP_INFO or 11, 232))
        if raw is None:
            return _Seen(_Seen.IGNORED)
        state = raw[0]
        seen = _Seen(_Seen.LISTENER if state == _LISTEN else _Seen.WAITING)
        seen.family = sock.family
        seen.local = sock.getsockname()
        if state in (_LISTEN, _CLOSE) or state in _OPENING:
            return seen  # a listener, or not connected yet: looked at again next sweep
        seen.remote = sock.getpeername()
        seen.cookie = _diag.cookie_of(sock)
        return seen
    except OSError:
        return _Seen(_Seen.WAITING)
    finally:
        sock.detach()  # the descriptor stays the program's: never closed here


def _hint() -> tuple[int, bytes]:
    """What moves when the descriptor table may hold a TCP connection not seen yet: the number of
    open descriptors (the size Linux 6.2 and later gives /proc/self/fd; before, the listing's
    length) and the TCP connections the network namespace opened (ActiveOpens, PassiveOpens)."""
    try:
        count = os.stat(_FD_DIR).st_size or len(os.listdir(_FD_DIR))
        with open(_SNMP, "rb") as f:
            head, values = (line.split() for line in f.read().split(b"\n") if line.startswith(b"Tcp:"))
        opens = b" ".join(values[head.index(name)] for name in (b"ActiveOpens", b"PassiveOpens"))
    except (OSError, ValueError):
        return -1, b""  # (unknown: every sweep a full one, within the budget)
    return count, opens


class Census:
    """The sweeping thread and what it knows; one per process while any capture is active."""

    def __init__(self) -> None:
        self._known: dict[int, _Seen] = {}  # socket inode -> what it is
        self._watched: dict[int, _Seen] = {}  # the WAITING and DEFERRED ones: looked at every sweep
        self._hint: tuple[int, bytes] | None = None  # _hint() at the last full sweep
        self._full_at = 0.0  # when the last full sweep was (monotonic)
        self._next_full = 0.0  # the next full sweep's earliest time (the budget)
        self._by_cookie: dict[int, _Seen] = {}  # found connections, for the destroy feed
        self._closing: dict[int, float] = {}  # cookie -> until when its destroy notification may come
        self._listened: set[int] = set()  # local ports of the listeners seen (65,536 at most)
        self._held: dict[int, _Held] = {}  # cookie -> a connection whose socket a call holds
        self._calls: dict[int, float] = {}  # a driver's connecting call under way -> when it began
        self._call_ids = itertools.count()
        # One sweep at a time (the thread's, or stop()'s last one); reentrant: a connection's end
        # calls its capture's callback, whose own close may be one to follow (close_held).
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._feed: Socket | None = None
        self._listening = False  # the feed is joined to the destroy groups (see _hear_destroys)
        self.dropped = False  # the kernel dropped destroy notifications (figures from last reads)
        self.before: set[int] | None = None  # if set: the only sockets the next start leaves out

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._feed = _diag.destroy_feed()
        if self._feed is None:
            log.info("netstats: no sock_diag destroy feed; found connections end at the next sweep")
        self.sweep(baseline=True)
        self.before = None
        self._thread = threading.Thread(target=self._run, name="netstats-census", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread; what closed meanwhile gets its final figures. Every wait here shares
        one deadline (DESTROY_WAIT): a notification that does not come leaves the last reading."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        deadline = time.monotonic() + DESTROY_WAIT
        thread.join(DESTROY_WAIT)  # (it wakes every INTERVAL at most)
        self.sweep()  # what closed since the last sweep gets its final figures now
        while self._closing and time.monotonic() < deadline:
            time.sleep(0.01)
            with self._lock:
                self._destroyed()
        for held in list(self._held.values()):
            held.reading(deadline)  # (a destroyed one's notification may still be on its way)
        with self._lock:
            self._expire(float("inf"))
            for held in self._held.values():
                held.settle(held.last)
            self._end_held(float("inf"))
            if self._feed is not None:
                self._feed.close()  # (only if its number is still its own)
                self._feed = None
                self._listening = False
            self._known.clear()
            self._watched.clear()
            self._hint = None
            self._by_cookie.clear()
            self._closing.clear()
            self._listened.clear()
            self._held.clear()
        _diag.close_query_socket()

    def forget_after_fork(self) -> None:
        """In a forked child: the thread did not follow, and the parent's sockets are the parent's."""
        self._thread = None
        self._feed = None
        self._listening = False
        # Made anew: the parent's thread may have held either at the fork (a C fork() runs no
        # hook of Python's own either), and the child would wait for it forever.
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._known.clear()
        self._watched.clear()
        self._hint, self._next_full = None, 0.0
        self._by_cookie.clear()
        self._closing.clear()
        self._held.clear()
        self._calls.clear()  # (the calling threads stayed in the parent)

    def _run(self) -> None:
        """Sweep every INTERVAL; in between, take destroy notifications as they come."""
        next_sweep = time.monotonic() + INTERVAL
        while not self._stopping.is_set():
            try:
                wait = max(0.0, next_sweep - time.monotonic())
                feed = self._own_feed()  # (never a select on a number that is not its own)
                if feed is not None:
                    try:
                        ready, _, _ = select.select([feed], [], [], wait)
                    except OSError:  # its number closed by the program since the check (the next says so)
                        ready = []
                        self._stopping.wait(wait)
                    if ready:
                        with self._lock:
                            self._destroyed()
                            self._end_held(time.monotonic())
                else:
                    self._stopping.wait(wait)
                if not self._stopping.is_set() and time.monotonic() >= next_sweep:
                    self._tick()
                    next_sweep = time.monotonic() + INTERVAL
            except Exception:
                log.exception("netstats: census sweep failed (the observed code is unaffected)")
                self._stopping.wait(INTERVAL)
                next_sweep = time.monotonic() + INTERVAL

    def _tick(self) -> None:
        """The thread's sweep: a full one if the table may hold a connection not seen yet (or
        FULL_EVERY seconds passed) and the budget allows it, else the watched sockets only."""
        now = time.monotonic()
        hint = _hint()
        if (hint != self._hint or now >= self._full_at + FULL_EVERY) and now >= self._next_full:
            cpu = time.thread_time()
            self.sweep()
            self._hint, self._full_at = hint, now
            self._next_full = now + (time.thread_time() - cpu) / BUDGET
        else:
            self._look_again()

    def sweep(self, baseline: bool = False) -> None:
        """Look at every descriptor once; record what is new, finish what is gone."""
        with self._lock:
            self._destroyed()
            self._expire(time.monotonic())
            self._end_held(time.monotonic())
            try:
                names = os.listdir(_FD_DIR)
            except OSError:
                return
            known, watched = self._known, self._watched
            present: set[int] = set()
            for name in names:
                try:
                    fd = int(name)
                    st = os.fstat(fd)
                except (ValueError, OSError):
                    continue
                if not stat.S_ISSOCK(st.st_mode):
                    continue
                inode = st.st_ino
                present.add(inode)
                seen = known.get(inode)
                if seen is None or seen.kind == _Seen.WAITING:
                    old = baseline and (self.before is None or inode in self.before)
                    seen = known[inode] = self._classify(fd, seen, old)
                    if seen.kind == _Seen.WAITING:
                        watched[inode] = seen
                    elif seen.kind == _Seen.LISTENER:
                        # A local port this process listens on, or did while the census ran (a
                        # server may stop listening and keep its accepted connections).
                        self._listened.add(seen.local[1])
            for inode in known.keys() - present:
                seen = known.pop(inode)
                watched.pop(inode, None)
                if seen.kind == _Seen.DEFERRED:
                    self._record(seen)  # no driver told of it: a bare kernel connection after all
                if seen.kind == _Seen.FOUND and seen.conn.closed is None:
                    self._gone(seen)
            self._advance(())

    def _look_again(self) -> None:
        """A sweep of the watched sockets only, each on the number it was seen on: a number that
        holds another socket now asks for a full sweep (which tells where it went)."""
        with self._lock:
            self._destroyed()
            self._expire(time.monotonic())
            self._end_held(time.monotonic())
            moved = []
            for inode, seen in list(self._watched.items()):
                try:
                    st = os.fstat(seen.fd)
                    same = st.st_ino == inode and stat.S_ISSOCK(st.st_mode)
                except OSError:
                    same = False
                if not same:
                    moved.append(inode)
                    self._hint = None
                elif seen.kind == _Seen.WAITING and self._known.get(inode) is seen:
                    seen = self._known[inode] = self._watched[inode] = self._classify(seen.fd, seen, False)
                    if seen.kind == _Seen.LISTENER:
                        self._listened.add(seen.local[1])
            self._advance(moved)

    def _advance(self, moved: Container[int]) -> None:
        """The watched sockets, looked at again: a connection seen twice is recorded, a DEFERRED
        one whose driver's call ended too (`moved`: not seen on their number this time)."""
        known, watched, listening = self._known, self._watched, self._listened
        for inode, seen in list(watched.items()):
            if known.get(inode) is not seen or seen.kind not in (_Seen.WAITING, _Seen.DEFERRED):
                del watched[inode]  # (claimed or caught since, or gone)
                continue
            if inode in moved:
                continue
            if seen.kind == _Seen.DEFERRED and not self._calling_since(seen):
                self._record(seen)  # no driver told of it: a bare kernel connection after all
            elif seen.kind == _Seen.WAITING and seen.remote is not None:
                self._settle(seen, listening)
            if seen.kind not in (_Seen.WAITING, _Seen.DEFERRED):
                del watched[inode]
        self._hear_destroys(bool(self._by_cookie or self._held))

    def _hear_destroys(self, on: bool) -> None:
        """Take the kernel's destroy notifications only while a found connection awaits its
        own: while joined, every TCP socket that dies in the namespace costs a wake-up here."""
        feed = self._own_feed()
        if feed is not None and on != self._listening and _diag.listen(feed, on):
            self._listening = on

    def _own_feed(self) -> Socket | None:
        """The destroy feed, if its number is still its own. Once the program has closed it (as
        daemonizing code closes every descriptor), the census goes on without a feed, as where
        there is none: found connections end at the sweep that sees them gone. (Not made again:
        a program that closes what it did not open may do so again, and a new number taken from
        this thread at any moment may be one the program is about to open and count on.)"""
        feed = self._feed
        if feed is not None and not feed.ours():  # (one log line, by _owned)
            self._feed, self._listening = None, False
            return None
        return feed

    def hand_on(self, conn: Any, sock: Any) -> bool:
        """sock's descriptor leaves it (detach()) with conn live on it: the census follows the
        kernel socket from here, conn's figures are its readings, and conn ends when the last
        descriptor closes (or the kernel destroys it). False if the census cannot (not running)."""
        if self._thread is None:
            return False
        fd = sock.fileno()
        with self._lock:
            try:
                inode = os.fstat(fd).st_ino
            except OSError:
                return False
            seen = _inspect(fd)
            if seen.kind != _Seen.WAITING:
                return False
            cookie, reading = seen.cookie, None
            closed = cookie is None  # CLOSE: both ends done, its queue may still be read
            if cookie is None:  # (sock_diag cannot look it up: its final figures come when it is destroyed)
                cookie, seen.remote = _diag.cookie_of(sock), conn.remote
                if cookie is None or seen.remote is None:
                    return False
                self._hear_destroys(True)
                reading = conn.read_through(sock)  # while sock still holds the descriptor
            if not _engine.handed_on(conn, sock):
                return False
            seen.kind, seen.conn, seen.side, seen.cookie = _Seen.FOUND, conn, conn.side, cookie
            self._hear_destroys(True)  # before the reading: a socket that dies after it is heard of
            seen.last = reading if closed else seen.figures()
            seen.fin_seen = seen.fin_seen or bool(closed and conn._peer_fin)
            _engine.probe_from(conn, seen.figures)
            self._known[inode] = seen
            self._by_cookie[cookie] = seen
        return True

    def follow(self, conn: Any, fd: int) -> bool:
        """conn is live on descriptor fd, which C code holds and closes before netstats hears of
        the end (uvloop's TLS: the program's protocol is told a loop turn after the close): the
        census follows the kernel socket by its cookie from now on, and conn ends with the
        kernel's final figures, from the destroy feed or the lingering socket (as a found
        connection's). False if it cannot (not running, no feed): conn ends as it would have."""
        if self._thread is None or self._feed is None:
            return False
        with self._lock:
            try:
                inode = os.fstat(fd).st_ino
            except OSError:
                return False
            seen = _inspect(fd)
            if seen.kind != _Seen.WAITING or seen.cookie is None:
                return False
            seen.kind, seen.conn, seen.side = _Seen.FOUND, conn, conn.side
            self._hear_destroys(True)  # before the reading: a socket that dies after it is heard of
            seen.last = seen.figures()
            _engine.followed(conn)
            self._known[inode] = seen
            self._by_cookie[seen.cookie] = seen
        return True

    def following(self, conn: Any, cookie: int) -> bool:
        """Whether the census follows conn (see follow()) and will end it."""
        seen = self._by_cookie.get(cookie)
        return self._thread is not None and seen is not None and seen.conn is conn

    def close_held(self, conn: Any, sock: Any, close: Any, ss: Any) -> bool:
        """Close sock (close(sock, ss), its error the caller's) while other threads run: if one
        of them is inside a call on it (a recv blocked across close()), the kernel socket lives
        on, unorphaned, and conn goes on until the kernel lets go of it. False (nothing done) if
        conn cannot be followed so (see _engine.holdable): close it as usual."""
        try:
            cookie = _engine.holdable(conn, sock) if self._thread is not None else None
            if cookie is None or not _engine.release(conn, sock, True):
                return False
        except Exception:
            log.exception("netstats: internal error at close (the observed code is unaffected)")
            return False
        try:
            close(sock, ss)
        finally:
            self._follow(conn, sock, cookie)
        return True

    def _follow(self, conn: Any, sock: Any, cookie: int) -> None:
        """After the close: follow conn while a call holds its socket, else it ends now."""
        try:
            inode = _diag.holder(_family_of(sock), conn.local, conn.remote, cookie)  # (the usual cost)
            if inode:  # not orphaned: a call holds it
                held = _Held(conn, sock, cookie)
                with self._lock:
                    self._hear_destroys(True)  # before the next look: a destruction is heard of
                    self._held[cookie] = held
                    _engine.hold(conn, held.reading)
                    held.look()
                return
        except Exception:
            log.exception("netstats: internal error at close (the observed code is unaffected)")
        try:
            _engine.end(conn, sock)
        except Exception:
            log.exception("netstats: internal error at close (the observed code is unaffected)")

    def await_destroy(self, held: _Held, until: float = float("inf")) -> None:
        """A held socket was destroyed: take its notification (final figures), which the kernel
        sends from a work queue, waiting DESTROY_WAIT seconds at most (and not past `until`);
        else the last reading stands."""
        deadline = min(time.monotonic() + DESTROY_WAIT, until)
        while held.done is None and self._feed is not None:
            with self._lock:
                self._destroyed()
            if held.done is not None or time.monotonic() >= deadline:
                break
            time.sleep(0.002)
        held.settle(held.last)

    def settle(self) -> None:
        """A capture stops: held connections whose socket the kernel let go of end now (the
        capture hears their end)."""
        if not self._held:
            return
        for held in list(self._held.values()):
            if held.done is None:
                held.reading()
        with self._lock:
            self._end_held(time.monotonic())

    def _end_held(self, now: float) -> None:
        """End the held connections whose socket the kernel let go of, once every byte the kernel
        says moved is counted (the call in flight counts as it returns: GRACE seconds at most)."""
        for cookie, held in list(self._held.items()):
            conn = held.conn
            if held.done is None and conn.closed is None:
                if held.gone is None:
                    held.look()
                if held.done is None and (held.gone is None or now < held.gone + DESTROY_WAIT):
                    continue
                held.settle(held.last)  # the notification never came: the last reading stands
            final = held.final
            behind = conn.closed is None and final is not None and not _engine.counted_all(conn, final)
            if behind and now < (held.done or 0.0) + GRACE:
                continue
            del self._held[cookie]
            _engine.held_ended(conn, held.sock(), final)

    def _classify(self, fd: int, before: _Seen | None, baseline: bool) -> _Seen:
        if _engine.claims_descriptor(fd):
            return _Seen(_Seen.IGNORED)
        seen = _inspect(fd)
        if baseline and seen.kind != _Seen.LISTENER:
            seen.kind = _Seen.IGNORED  # there before the capture: like a socket made before it
        if before is not None and seen.kind == _Seen.WAITING:
            seen.sweeps, seen.first = before.sweeps, before.first
        seen.fd = fd
        return seen

    def _settle(self, seen: _Seen, listening: set[int]) -> None:
        """A connected socket Python does not count, seen by two sweeps in a row: record it.

        One sweep is not enough: Python's record of a socket begins a moment after its descriptor
        (accept() wraps it) and ends a moment before (close() finishes the record, then closes).
        """
        seen.sweeps += 1
        if isinstance(seen.local, tuple) and seen.local[1] in listening:
            seen.side = "server"
        if seen.sweeps < 2 or time.time() - seen.first < INTERVAL / 2:
            return
        if seen.cookie is None:
            seen.kind = _Seen.IGNORED
            return
        self._hear_destroys(True)  # before the reading: a socket that dies after it is heard of
        seen.last = seen.figures()
        self._by_cookie[seen.cookie] = seen
        if self._calling_since(seen):
            seen.kind = _Seen.DEFERRED
            return
        self._record(seen)

    def _record(self, seen: _Seen) -> None:
        """A connection followed by its cookie (in _by_cookie) becomes a found record."""
        seen.kind = _Seen.FOUND
        seen.conn = _engine.found(seen.side, seen.local, seen.remote, seen.figures, seen.first)
        if seen.conn is None:
            seen.kind = _Seen.IGNORED  # nobody captures this side (accepted, without servers=True)
            self._by_cookie.pop(seen.cookie or 0, None)
        elif seen.dead:
            _engine.found_closed(seen.conn, seen.last)

    def _calling_since(self, seen: _Seen) -> bool:
        """Whether a driver's connecting call that began before seen was first swept is under way."""
        return any(began <= seen.first for began in list(self._calls.values()))

    # ---- connections a C driver tells of (_sources/drivers.py) ---------------------------

    def calling(self) -> int:
        """A driver's connecting call begins (its end: `called`); see the module's docstring."""
        call = next(self._call_ids)
        self._calls[call] = time.time()
        return call

    def called(self, call: int) -> None:
        self._calls.pop(call, None)

    def claim(self, fd: int) -> _Seen | None:
        """The TCP connection on descriptor fd, which a C driver has just told of: followed by its
        cookie from now on (its final figures are heard however soon it ends). None if there is
        nothing to record: not a connected TCP socket, Python's own, there before the capture, or
        the census is not running. The one a sweep found or deferred already is that one."""
        if self._thread is None or _engine.claims_descriptor(fd):
            return None
        with self._lock:
            try:
                inode = os.fstat(fd).st_ino
            except OSError:
                return None
            known = self._known.get(inode)
            if known is not None and known.kind in (_Seen.FOUND, _Seen.CLAIMED, _Seen.DEFERRED):
                if known.kind == _Seen.DEFERRED:
                    known.kind = _Seen.CLAIMED
                return known
            if known is not None and known.kind != _Seen.WAITING:
                return None  # there before the capture, a listener, not TCP
            seen = _inspect(fd)
            if seen.kind != _Seen.WAITING or seen.cookie is None or seen.remote is None:
                return None
            seen.kind, seen.inode = _Seen.CLAIMED, inode
            # No reading now (one netlink round trip less per connect): should its destroy
            # notification be lost, its end figures are its last live reading, or unknown.
            self._hear_destroys(True)
            self._known[inode] = seen
            self._by_cookie[seen.cookie] = seen
            return seen

    def record(self, seen: _Seen, make: Any) -> Any:
        """The record of a claimed connection: make(local, remote, probe) gives it (None: not
        recorded). One the sweep found before the driver told of it keeps its record."""
        with self._lock:
            if seen.kind != _Seen.CLAIMED:
                return seen.conn
            seen.conn = make(seen.local, seen.remote, seen.figures)
            if seen.conn is None:
                seen.kind = _Seen.IGNORED
                self._by_cookie.pop(seen.cookie or 0, None)
                return None
            seen.kind = _Seen.FOUND
            if seen.dead:  # it died meanwhile: its final figures came
                _engine.found_closed(seen.conn, seen.last)
            elif self._known.get(seen.inode) is not seen:  # its descriptor closed meanwhile
                self._gone(seen)
            return seen.conn

    def catch(self, wanted: Any, make: Any) -> list[Any]:
        """A sweep now, for C code that cannot tell its descriptor (grpc's channels): each
        connection whose remote address `wanted` accepts, seen now for the first time or not
        recorded yet, is recorded at once by make(local, remote, probe); those found before are
        returned too (the caller may fill in what they lack)."""
        if self._thread is None:
            return []
        with self._lock:
            self.sweep()
            out = []
            for inode, seen in list(self._known.items()):
                if seen.remote is None or not wanted(seen.remote):
                    continue
                if seen.kind == _Seen.WAITING and seen.cookie is not None:
                    seen.kind, seen.inode = _Seen.CLAIMED, inode
                    self._hear_destroys(True)
                    self._by_cookie[seen.cookie] = seen
                elif seen.kind == _Seen.DEFERRED:
                    seen.kind = _Seen.CLAIMED
                if seen.kind in (_Seen.CLAIMED, _Seen.FOUND):
                    conn = self.record(seen, make)
                    if conn is not None:
                        out.append(conn)
            return out

    def _gone(self, seen: _Seen) -> None:
        """Its last descriptor closed: the socket lingers (FIN_WAIT, unsent data) and its figures
        are final now, or it was destroyed and its notification is on its way (the kernel sends
        it from a work queue): it gets DESTROY_WAIT seconds before the last reading stands."""
        lingering = seen.figures(fresh_only=True)
        if lingering is None and seen.cookie is not None and self._feed is not None:
            self._closing[seen.cookie] = time.monotonic() + DESTROY_WAIT
            return
        if seen.conn is not None and seen.conn.closed is None:
            _engine.found_closed(seen.conn, lingering or seen.last)
        if seen.cookie is not None:
            self._by_cookie.pop(seen.cookie, None)

    def _expire(self, now: float) -> None:
        """Connections whose destroy notification did not come (dropped): the last reading stands."""
        for cookie, deadline in list(self._closing.items()):
            if now >= deadline:
                del self._closing[cookie]
                seen = self._by_cookie.pop(cookie, None)
                if seen is not None and seen.conn is not None:
                    _engine.found_closed(seen.conn, seen.last)

    def _destroyed(self) -> None:
        """Final figures from the kernel's destroy notifications, for the connections found."""
        feed = self._own_feed()
        if feed is None:
            return
        wanted = self._by_cookie.keys() | self._held.keys() if self._held else self._by_cookie
        dead, dropped = _diag.drain(feed, wanted)
        if dropped and not self.dropped:
            self.dropped = True
            log.warning(
                "netstats: the kernel dropped socket-destroy notifications; final figures "
                "of connections found by the census may be their last live reading"
            )
        for diag in dead:
            held = self._held.get(diag.cookie)
            if held is not None:
                fin = _diag.fin_at_destroy(diag, held.fin_seen)
                held.settle(_figures(diag, held.conn.side == "client", fin) or held.last)
                continue
            seen = self._by_cookie.pop(diag.cookie, None)
            self._closing.pop(diag.cookie, None)
            if seen is None:
                continue
            final = _figures(diag, seen.side == "client", _diag.fin_at_destroy(diag, seen.fin_seen))
            if final is not None:
                seen.last = final
            if seen.conn is None:  # CLAIMED or DEFERRED: its record, when made, ends at once
                seen.dead = True
                continue
            _engine.found_closed(seen.conn, seen.last)


census = Census()


def start() -> None:
    """Start sweeping (the first capture started); a no-op where the census cannot run."""
    if supported:
        census.start()


def forget_after_fork() -> None:
    """In a forked child: see Census.forget_after_fork."""
    census.forget_after_fork()


def known_sockets() -> set[int]:
    """The socket inodes the census knows (in a child forked unseen: the parent's, at the fork)."""
    return set(census._known)


def baseline(before: set[int]) -> None:
    """In a child noticed late: the census's next start takes only these sockets as ones that
    were there before it (every other connection is the child's own), not all it sees then."""
    census.before = before


def close_held(conn: Any, sock: Any, close: Any, ss: Any) -> bool:
    """See Census.close_held; False where the census does not run."""
    return supported and census.close_held(conn, sock, close, ss)


def settle() -> None:
    """A capture stops: see Census.settle."""
    if supported:
        census.settle()


@_engine.guarded
def hand_on(conn: Any, sock: Any) -> bool:
    """See Census.hand_on; False where the census does not run."""
    return supported and census.hand_on(conn, sock)


def claim(fd: int) -> _Seen | None:
    """See Census.claim; None where the census does not run."""
    return census.claim(fd) if supported else None


def record(seen: _Seen, make: Any) -> Any:
    """See Census.record."""
    return census.record(seen, make)


def catch(wanted: Any, make: Any) -> list[Any]:
    """See Census.catch; nothing where the census does not run."""
    return census.catch(wanted, make) if supported else []


def calling() -> int:
    """See Census.calling."""
    return census.calling()


def called(call: int) -> None:
    census.called(call)


def follow(conn: Any, fd: int) -> bool:
    """See Census.follow; False where the census does not run."""
    return supported and census.follow(conn, fd)


def following(conn: Any, cookie: int) -> bool:
    return supported and census.following(conn, cookie)


def stop() -> None:
    """Stop sweeping (the last capture stopped): what closed meanwhile gets its final figures."""
    census.stop()
