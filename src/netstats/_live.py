"""The live views, redrawn every second on the terminal: `netstats run --live` and `netstats top`.

Drawn with rich, an optional extra (`pip install 'netstats[live]'`): it is imported here only,
when a live view starts. Like nethogs and tcptop, each refresh shows what every connection moved
in the interval (rx/s, tx/s: its bytes since the previous refresh over the interval's length)
beside what it moved in all; a connection that closed in the interval is listed too, marked
"closed" (with its final figures), and stays LINGER seconds; the title counts the connections
open, closed since the previous refresh and opened in all.

`run --live` reads captures through a `Sampler`, from a thread of netstats' own, never from the
program's threads: each sample holds the open connections and those closed since the previous
sample (a capture observer notes each as it closes: one append in the closing thread). Python
children of the run (_child.py) each write their samples to the run's folder every INTERVAL
(`PID.live`, a thread of their own, needing no rich), with the closed connections of their
last KEEP samples so that a sample the view did not read loses none; the view reads them
beside its own. The program's prints through sys.stdout/sys.stderr go above the table (rich
redirects them while the view is up, only where they are the terminal). `top` reads another
process through _top.snapshot, and the final figures of its closed sockets through _top.Ends.
A figure netstats cannot know shows as "?"; "+?" after a size says more may have moved that
nobody could count.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from . import _format, _journal, _top
from ._capture import Capture
from ._errors import NoSuchProcess
from ._journal import Folder
from ._record import Connection

log = logging.getLogger("netstats")

INTERVAL = 1.0  # seconds between redraws (and children's samples)
LINGER = 3.0  # seconds a closed connection stays in the table after the refresh that showed it closed
KEEP = 5  # a child's sample holds the connections closed in its last KEEP samples
MOST_CLOSED = 1000  # closed connections kept per sample (beyond: counted in the title, not listed)
ENV = "NETSTATS_LIVE"  # "1" in the children of `netstats run --live`: write samples
SNAPSHOT = ".live"  # a child's latest sample: PID.live in the run's folder
MISSING = "needs the rich package: pip install 'netstats[live]'"


def available() -> bool:
    """Whether rich can be imported (the `live` extra)."""
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class Row(NamedTuple):
    """One connection in a live table; None where not known."""

    remote: str
    host: str  # `run`: the name asked for (and the child's pid); `top`: ""
    state: str  # `run`: "open" or "closed"; `top`: the TCP state, or "closed"
    rx: int | None
    tx: int | None
    wire_rx: int | None
    wire_tx: int | None
    rx_rate: float | None  # bytes per second in the last interval
    tx_rate: float | None
    rtt: float | None
    retransmits: int | None
    more: bool = False  # the sizes are as last seen: more may have moved before it closed ("+?")


def _rate(value: float | None) -> str:
    return _format.UNKNOWN if value is None else f"{_format.size(value)}/s"


def _rate_total(rates: Iterable[float | None]) -> str:
    """The sum of rates, "+?" after it when some are not known."""
    known, unknown = _format.total(rates)
    return _rate(known) + ("+?" if unknown and known is not None else "")


def _order(row: Row) -> tuple[float, int]:
    moving = (row.rx_rate or 0) + (row.tx_rate or 0)
    sent = (row.rx or row.wire_rx or 0) + (row.tx or row.wire_tx or 0)
    return -moving, -sent


def table(title: str, rows: list[Row], limit: int, app_bytes: bool = True) -> Any:
    """A rich Table of the `limit` busiest rows (rate in the last interval first, then bytes).

    Every cell and the title are rich `Text`: names (hosts, argv) are never read as rich markup
    ("[/]", "[link=...]") or emoji codes; and `visible`: never control characters."""
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=Text(_format.visible(title)), title_justify="left", expand=False, pad_edge=False)
    head = ["remote", "host", "state"] if app_bytes else ["remote", "state"]
    head += ["rx/s", "tx/s"] + (["rx", "tx"] if app_bytes else [])
    head += ["wire rx", "wire tx", "rtt", "retrans"]
    for name in head:
        grid.add_column(
            name, justify="left" if name in ("remote", "host", "state") else "right", no_wrap=True
        )
    for row in sorted(rows, key=_order)[:limit]:

        def size(n: int | None, row: Row = row) -> str:
            return _format.size(n) + ("+?" if row.more and n is not None else "")

        cells = [row.remote, row.host or _format.NOT_APPLICABLE] if app_bytes else [row.remote]
        cells += [row.state, _rate(row.rx_rate), _rate(row.tx_rate)]
        cells += [size(row.rx), size(row.tx)] if app_bytes else []
        cells += [
            size(row.wire_rx),
            size(row.wire_tx),
            _top.rtt_text(row.rtt),
            _format.UNKNOWN if row.retransmits is None else str(row.retransmits),
        ]
        grid.add_row(*(Text(_format.visible(cell)) for cell in cells))
    if len(rows) > limit:
        grid.caption = f"{len(rows) - limit} more not shown"
    return grid


def _limit(console: Any) -> int:
    return max(3, int(console.size.height) - 10)


# ---- `netstats run --live`: samples of a capture, and rows per interval made of them ----------


def _row_of(conn: Connection) -> dict[str, Any]:
    """A connection's figures now (final once closed) as plain data; None where not known."""
    info = conn.tcp_info()
    rx, tx = conn.totals()
    return {
        "id": conn.id,
        "remote": _format.address(conn.remote),
        "host": conn.host or "",
        "opened": conn.opened,
        "rx": rx,
        "tx": tx,
        "wire_rx": info.wire_rx if info else None,
        "wire_tx": info.wire_tx if info else None,
        "rtt": info.rtt if info else None,
        "retransmits": info.retransmits if info else None,
    }


class Sampler:
    """A capture read every INTERVAL: its open connections now, and those that closed since the
    previous sample (the closed ones of the last `keep` samples, numbered by sample)."""

    def __init__(self, cap: Capture, keep: int = 1) -> None:
        self._cap = cap
        self._started = time.time()
        self._seq = 0
        # Closed connections noted in the closing thread (deque: appends and pops are atomic).
        self._closing: collections.deque[Connection] = collections.deque(maxlen=MOST_CLOSED)
        self._recent: collections.deque[list[tuple[int, dict[str, Any]]]] = collections.deque(maxlen=keep)
        cap.add_observer(self._closing.append)

    def close(self) -> None:
        self._cap.remove_observer(self._closing.append)

    def sample(self, ended: bool = False) -> dict[str, Any]:
        """{"time", "started", "seq", "count", "rx", "tx", "open": [row], "closed": [[seq, row]],
        "ended"}; a row is _row_of's. `ended`: the process ends (its open connections with it)."""
        self._seq += 1
        now = time.time()
        closed = [(self._seq, _row_of(self._closing.popleft())) for _ in range(len(self._closing))]
        self._recent.append(closed)
        cap = self._cap
        return {
            "time": now,
            "started": self._started,
            "seq": self._seq,
            "count": cap.count,
            "rx": cap.rx,
            "tx": cap.tx,
            "open": [] if ended else [_row_of(c) for c in cap.open_connections()],
            "closed": [entry for batch in self._recent for entry in batch],
            "ended": ended,
        }


def _figures(row: dict[str, Any]) -> tuple[int, int] | None:
    """The bytes a row's rates are made of: the application's, else (found by the census) the
    wire's; None if neither is known."""
    rx, tx = (row["rx"], row["tx"]) if row["rx"] is not None else (row["wire_rx"], row["wire_tx"])
    return None if rx is None or tx is None else (rx, tx)


class Tracker:
    """One process's samples made into rows: what each connection moved since the previous
    sample taken in, the connections that closed meanwhile shown LINGER seconds."""

    def __init__(self, suffix: str = "") -> None:
        self.suffix = suffix  # after each host: "(pid N)" for a child's
        self.seq = 0  # the last sample taken in
        self.count = 0
        self.rx: int | None = 0
        self.tx: int | None = 0
        self.open = 0
        self.closed_now = 0  # connections closed between the last two samples taken in
        self.ended = False  # the process has ended (its last sample said so)
        self._time: float | None = None
        self._last: dict[int, tuple[int, int] | None] = {}  # open connection id -> its figures then
        self._open_rows: list[Row] = []
        self._closed_rows: list[tuple[float, Row]] = []  # (shown until, monotonic; the row)

    def rows(self, now: float) -> list[Row]:
        """The rows to show at `now` (monotonic): the open connections, the recently closed."""
        self._closed_rows = [(until, row) for until, row in self._closed_rows if until > now]
        return self._open_rows + [row for _, row in self._closed_rows]

    def take(self, sample: dict[str, Any], now: float) -> None:
        """A sample of the process (a Sampler's), once; `now` is the view's monotonic time."""
        if sample["seq"] == self.seq:
            self.closed_now = 0
            return
        since = self._time if self._time is not None else sample["started"]
        span = sample["time"] - since
        last = self._last

        def row(c: dict[str, Any], state: str) -> Row:
            figures, before = _figures(c), last.get(c["id"])
            if before is None and c["opened"] >= since:
                before = (0, 0)  # opened since the previous sample: all it moved is in this interval
            rates: tuple[float | None, float | None] = (None, None)
            if figures is not None and before is not None and span > 0:
                rates = (max(0, figures[0] - before[0]) / span, max(0, figures[1] - before[1]) / span)
            host = f"{c['host'] or '-'} {self.suffix}" if self.suffix else c["host"]
            return Row(
                c["remote"], host, state, c["rx"], c["tx"], c["wire_rx"], c["wire_tx"], *rates,
                c["rtt"], c["retransmits"],
            )  # fmt: skip

        closed = [c for seq, c in sample["closed"] if seq > self.seq]
        gone = {c["id"] for c in closed}
        opened = [c for c in sample["open"] if c["id"] not in gone]
        self._closed_rows = [
            (until, old._replace(state="closed", rx_rate=0.0, tx_rate=0.0))
            for until, old in self._closed_rows
        ]  # (nothing moves on a closed connection)
        self._closed_rows += [(now + LINGER, row(c, "closed")) for c in closed]
        self._open_rows = [row(c, "open") for c in opened]
        self._last = {c["id"]: _figures(c) for c in opened}
        self._time = sample["time"]
        ended_before = self.count - self.open
        self.seq, self.count, self.rx, self.tx = sample["seq"], sample["count"], sample["rx"], sample["tx"]
        self.open = len(opened)
        self.closed_now = max(0, self.count - self.open - ended_before)
        self.ended = bool(sample.get("ended"))


def snapshots(cap: Capture, folder: Folder) -> Callable[[], None]:
    """In a child of `run --live`: write a sample to PID.live in the run's folder every INTERVAL
    until the returned function is called (then a last one, marked ended)."""
    stopping = threading.Event()
    name = f"{os.getpid()}{SNAPSHOT}"
    sampler = Sampler(cap, keep=KEEP)
    lock = threading.Lock()  # the thread's samples and the last one, never at once

    def write(ended: bool = False) -> None:
        try:
            with lock:
                folder.write(name, json.dumps(sampler.sample(ended)).encode())
        except Exception:  # never into the program: the parent's view just lacks this child
            log.exception("netstats: a live snapshot failed (the program is unaffected)")

    def run() -> None:
        while not stopping.wait(INTERVAL):
            write()

    thread = threading.Thread(target=run, name="netstats-live-snapshots", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(INTERVAL * 5)
        write(ended=True)
        sampler.close()

    return stop


def _children(folder: Folder | None) -> dict[int, dict[str, Any]]:
    """{pid: its latest sample} of the children writing them."""
    out: dict[int, dict[str, Any]] = {}
    if folder is None:
        return out
    try:
        names = folder.names()
    except OSError:
        return out
    for name in names:
        if name.endswith(SNAPSHOT) and name[: -len(SNAPSHOT)].isdigit():
            try:
                out[int(name[: -len(SNAPSHOT)])] = json.loads(folder.read(name))
            except (OSError, ValueError):
                continue  # being replaced (read next time)
    return out


class RunView:
    """`netstats run --live`: the capture's connections, and its children's, redrawn every
    INTERVAL until stop()."""

    def __init__(self, cap: Capture, program: list[str], folder: Folder | None = None) -> None:
        self._cap = cap
        self._program = " ".join(program)
        self._folder = folder
        self._sampler = Sampler(cap)
        self._own = Tracker()
        self._children: dict[tuple[int, float], Tracker] = {}  # (pid, its sampler's start) -> ...
        self._started = time.monotonic()
        self._counts: list[tuple[float, int]] = []  # (when, connections so far), the last few seconds
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None

    def start(self) -> bool:
        """Draw on stderr if it is a terminal; False (one line said) if it is not."""
        from rich.console import Console
        from rich.live import Live

        console = Console(stderr=True)
        if not console.is_terminal:
            self._sampler.close()
            print(
                "netstats run: --live draws on a terminal and stderr is not one; running without it",
                file=sys.stderr,
            )
            return False
        self._live = Live(
            self.render(console),
            console=console,
            auto_refresh=False,
            transient=True,
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=True,
        )
        self._live.start()
        self._thread = threading.Thread(target=self._run, name="netstats-live", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        """Take the table off the terminal (the report follows)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        thread.join(INTERVAL * 5)
        self._sampler.close()
        self._live.stop()

    def _run(self) -> None:
        while not self._stopping.wait(INTERVAL):
            try:
                self._live.update(self.render(self._live.console), refresh=True)
            except Exception:  # never into the program: the view just stops changing
                log.exception("netstats: the live view failed (the program is unaffected)")

    def render(self, console: Any) -> Any:
        now = time.monotonic()
        self._own.take(self._sampler.sample(), now)
        samples = _children(self._folder)
        for tracker in self._children.values():
            tracker.closed_now = 0  # (those with a new sample say again)
        for pid, sample in samples.items():
            if not sample.get("ended") and not _journal.running(pid, None):
                # killed: its connections went with it (one sample more, its last, says so)
                sample = {**sample, "seq": sample["seq"] + 1, "open": [], "closed": [], "ended": True}
            key = (pid, sample["started"])  # (a pid used again is another process)
            self._children.setdefault(key, Tracker(f"(pid {pid})")).take(sample, now)
            if sample.get("ended") and self._folder is not None:
                self._folder.remove(f"{pid}{SNAPSHOT}")  # taken in: its tracker keeps its totals
        trackers = [self._own, *self._children.values()]
        shown = [row for tracker in trackers for row in tracker.rows(now)]
        total = sum(t.count for t in trackers)
        self._counts = [(t, n) for t, n in self._counts if now - t <= 5.0] + [(now, total)]
        first_t, first_n = self._counts[0]
        per_second = (total - first_n) / (now - first_t) if now > first_t else None
        running = 1 + sum(1 for t in self._children.values() if not t.ended)
        processes = f" in {running} processes" if running > 1 else ""
        title = (
            f"netstats run --live   {now - self._started:.0f}s   "
            f"{sum(t.open for t in trackers)} open{processes}, {total} in all, "
            f"{sum(t.closed_now for t in trackers)} closed since the last refresh   "
            f"{'?' if per_second is None else f'{per_second:.1f}'} connections/s   "
            f"rx {_format.size_total(t.rx for t in trackers)}  "
            f"tx {_format.size_total(t.tx for t in trackers)}   "
            f"{_format.clip(self._program, 40)}"
        )
        return table(title, shown, _limit(console))


def watch(cap: Capture, program: list[str], folder: Folder) -> Callable[[], None]:
    """For run_program: start the view on this capture and the children's samples in the
    run's folder; returns what stops it."""
    view = RunView(cap, program, folder)
    try:
        view.start()
    except Exception:
        log.exception("netstats: the live view could not start (the program is unaffected)")
    return view.stop


# ---- `netstats top PID` --------------------------------------------------------------------


def _socket_row(sock: _top.Socket, rates: tuple[float | None, float | None]) -> Row:
    info = sock.info
    return Row(
        _format.address(sock.remote),
        "",
        sock.state,
        None,
        None,
        info.wire_rx if info else None,
        info.wire_tx if info else None,
        *rates,
        info.rtt if info else None,
        info.retransmits if info else None,
    )


def _ended(row: Row, final: Any, span: float | None) -> Row:
    """A closed socket's row with its final figures; its rates over the interval it closed in
    (span: the interval's length, None when that was not the last one)."""
    rates: tuple[float | None, float | None] = (0.0, 0.0)  # (nothing moves on a socket that is gone)
    if span is not None:
        known = span > 0 and row.wire_rx is not None and row.wire_tx is not None
        rates = (
            ((final.wire_rx - row.wire_rx) / span, (final.wire_tx - row.wire_tx) / span)
            if known
            else (None, None)
        )
    return row._replace(
        state="closed", wire_rx=final.wire_rx, wire_tx=final.wire_tx, rx_rate=rates[0], tx_rate=rates[1],
        rtt=final.rtt, retransmits=final.retransmits, more=False,
    )  # fmt: skip


def top(pid: int, interval: float = INTERVAL) -> int:
    """`netstats top PID`: redraw until the process ends or Ctrl-C; the exit code.

    Each socket's rx/s and tx/s are its wire bytes since the previous reading over the
    interval. A socket gone from the process since then is listed LINGER seconds as "closed":
    with its final figures once the kernel tells them as it destroys the socket (_top.Ends),
    until then its sizes as last seen with "+?" and its rates "?". A connection that opened and
    closed between two readings is never seen: without privileges nothing tells which process
    a socket that is gone belonged to."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    rates = _top.Rates()
    ends = _top.Ends()
    seen: dict[int, tuple[_top.Socket, Row]] = {}  # cookie -> the socket and its row at the last reading
    closed: dict[int, tuple[float, Row]] = {}  # cookie -> (shown until, monotonic; its row)
    waiting: dict[int, _top.Socket] = {}  # closed and shown, their final figures not yet told
    finals: dict[int, Any] = {}  # cookie -> final figures told before the socket was seen gone
    before: float | None = None
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:  # until the process ends (NoSuchProcess), or Ctrl-C
                sockets = _top.snapshot(pid)
                now = time.monotonic()
                finals.update(ends.take({**{c: sock for c, (sock, _) in seen.items()}, **waiting}))
                moved = rates.update(
                    {s.cookie: (s.info.wire_rx, s.info.wire_tx) if s.info else (None, None) for s in sockets},
                    now,
                )
                rows = {s.cookie: _socket_row(s, moved[s.cookie]) for s in sockets}
                closed = {
                    c: (until, row if row.more else row._replace(rx_rate=0.0, tx_rate=0.0))
                    for c, (until, row) in closed.items()
                    if until > now
                }
                for cookie in [c for c in waiting if c in finals]:  # told since: final figures
                    del waiting[cookie]
                    if cookie in closed:
                        until, row = closed[cookie]
                        closed[cookie] = (until, _ended(row, finals.pop(cookie), None))
                gone = [(cookie, sock, row) for cookie, (sock, row) in seen.items() if cookie not in rows]
                for cookie, sock, row in gone:
                    final = finals.pop(cookie, None)
                    if final is not None:
                        closed[cookie] = (
                            now + LINGER,
                            _ended(row, final, None if before is None else now - before),
                        )
                    else:
                        waiting[cookie] = sock
                        closed[cookie] = (
                            now + LINGER,
                            row._replace(state="closed", rx_rate=None, tx_rate=None, more=True),
                        )
                waiting = {c: sock for c, sock in waiting.items() if c in closed}  # (no longer shown)
                finals = {c: f for c, f in finals.items() if c in rows}  # (closed after the reading)
                seen = {s.cookie: (s, rows[s.cookie]) for s in sockets}
                before = now
                n = len(rows)
                title = (
                    f"netstats top {pid}: {n} TCP connection{'s' * (n != 1)}, "
                    f"{len(gone)} closed since the last refresh   "
                    f"rx {_rate_total(r.rx_rate for r in rows.values())}  "
                    f"tx {_rate_total(r.tx_rate for r in rows.values())}   (kernel figures; Ctrl-C to quit)"
                )
                shown = list(rows.values()) + [row for _, row in closed.values()]
                live.update(table(title, shown, _limit(console), app_bytes=False), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return 0
    except NoSuchProcess:
        pass
    finally:
        ends.close()
    print(f"netstats top: process {pid} ended", file=sys.stderr)
    return 0
