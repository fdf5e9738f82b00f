"""The live views, redrawn every second on the terminal: `netstats run --live` and `netstats top`.

Drawn with rich, an optional extra (`pip install 'netstats[live]'`): it is imported here only,
when a live view starts. `run --live` reads the capture from a thread of netstats' own (open
connections, their totals and the kernel's figures, as the exporters do), never from the
program's threads; the program's prints through sys.stdout/sys.stderr go above the table (rich
redirects them while the view is up, only where they are the terminal). Python children of the
run (_child.py) each write a snapshot of their open connections to the run's folder every
INTERVAL (`PID.live`, a thread of their own, needing no rich), which the view reads beside its
own. `top` reads another
process through _top.snapshot. A figure netstats cannot know shows as "?".
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _format, _top
from ._capture import Capture
from ._errors import NoSuchProcess
from ._journal import Folder

log = logging.getLogger("netstats")

INTERVAL = 1.0  # seconds between redraws (and children's snapshots)
ENV = "NETSTATS_LIVE"  # "1" in the children of `netstats run --live`: write snapshots
SNAPSHOT = ".live"  # a child's snapshot file: PID.live in the run's folder
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
    what: str  # a host name, or a TCP state
    rx: int | None
    tx: int | None
    wire_rx: int | None
    wire_tx: int | None
    rx_rate: float | None
    tx_rate: float | None
    rtt: float | None
    retransmits: int | None


def _rate(value: float | None) -> str:
    return _format.UNKNOWN if value is None else f"{_format.size(value)}/s"


def _order(row: Row) -> tuple[float, int]:
    moving = (row.rx_rate or 0) + (row.tx_rate or 0)
    sent = (row.rx or row.wire_rx or 0) + (row.tx or row.wire_tx or 0)
    return -moving, -sent


def table(title: str, rows: list[Row], limit: int, app_bytes: bool = True) -> Any:
    """A rich Table of the `limit` busiest rows (current rate first, then bytes).

    Every cell and the title are rich `Text`: names (hosts, argv) are never read as rich markup
    ("[/]", "[link=...]") or emoji codes; and `visible`: never control characters."""
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=Text(_format.visible(title)), title_justify="left", expand=False, pad_edge=False)
    head = ["remote", "host" if app_bytes else "state", "rx/s", "tx/s"]
    head += ["rx", "tx"] if app_bytes else []
    head += ["wire rx", "wire tx", "rtt", "retrans"]
    for i, name in enumerate(head):
        grid.add_column(name, justify="left" if i < 2 else "right", no_wrap=True)
    for row in sorted(rows, key=_order)[:limit]:
        cells = [row.remote, row.what or _format.NOT_APPLICABLE, _rate(row.rx_rate), _rate(row.tx_rate)]
        cells += [_format.size(row.rx), _format.size(row.tx)] if app_bytes else []
        cells += [
            _format.size(row.wire_rx),
            _format.size(row.wire_tx),
            _top.rtt_text(row.rtt),
            _format.UNKNOWN if row.retransmits is None else str(row.retransmits),
        ]
        grid.add_row(*(Text(_format.visible(cell)) for cell in cells))
    if len(rows) > limit:
        grid.caption = f"{len(rows) - limit} more not shown"
    return grid


def _limit(console: Any) -> int:
    return max(3, int(console.size.height) - 10)


def _open_rows(cap: Capture) -> list[dict[str, Any]]:
    """The capture's open connections as plain data (application bytes None where unknown)."""
    rows = []
    for conn in cap.open_connections():
        info = conn.tcp_info()
        rx, tx = conn.totals()
        rows.append(
            {
                "id": conn.id,
                "remote": _format.address(conn.remote),
                "host": conn.host or "",
                "rx": rx,
                "tx": tx,
                "wire_rx": info.wire_rx if info else None,
                "wire_tx": info.wire_tx if info else None,
                "rtt": info.rtt if info else None,
                "retransmits": info.retransmits if info else None,
            }
        )
    return rows


def snapshots(cap: Capture, folder: Folder) -> Callable[[], None]:
    """In a child of `run --live`: write PID.live to the run's folder every INTERVAL until the
    returned function is called (then the file goes: the child's journal has the rest)."""
    stopping = threading.Event()
    name = f"{os.getpid()}{SNAPSHOT}"

    def write() -> None:
        while not stopping.wait(INTERVAL):
            try:
                data = {
                    "time": time.time(),
                    "count": cap.count,
                    "rx": cap.rx,
                    "tx": cap.tx,
                    "connections": _open_rows(cap),
                }
                folder.write(name, json.dumps(data).encode())
            except Exception:  # never into the program: the parent's view just lacks this child
                log.exception("netstats: a live snapshot failed (the program is unaffected)")

    thread = threading.Thread(target=write, name="netstats-live-snapshots", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(INTERVAL * 5)
        folder.remove(name)

    return stop


def _children(folder: Folder | None) -> dict[int, dict[str, Any]]:
    """{pid: its latest snapshot} of the children writing them."""
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
                continue  # gone meanwhile (the child ended)
    return out


class RunView:
    """`netstats run --live`: the capture's connections, and its children's, redrawn every
    INTERVAL until stop()."""

    def __init__(self, cap: Capture, program: list[str], folder: Folder | None = None) -> None:
        self._cap = cap
        self._program = " ".join(program)
        self._folder = folder
        self._rates = _top.Rates()
        self._child_rates: dict[int, _top.Rates] = {}
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
        self._live.stop()

    def _run(self) -> None:
        while not self._stopping.wait(INTERVAL):
            try:
                self._live.update(self.render(self._live.console), refresh=True)
            except Exception:  # never into the program: the view just stops changing
                log.exception("netstats: the live view failed (the program is unaffected)")

    def render(self, console: Any) -> Any:
        now = time.monotonic()
        shown = self._rows(os.getpid(), _open_rows(self._cap), self._rates, now)
        total = self._cap.count
        rx, tx = [self._cap.rx], [self._cap.tx]
        children = _children(self._folder)
        for pid, snap in children.items():
            rates = self._child_rates.setdefault(pid, _top.Rates())
            shown += self._rows(pid, snap.get("connections", []), rates, float(snap.get("time", 0.0)))
            total += int(snap.get("count", 0))
            rx.append(snap.get("rx"))
            tx.append(snap.get("tx"))
        self._child_rates = {pid: r for pid, r in self._child_rates.items() if pid in children}
        self._counts = [(t, n) for t, n in self._counts if now - t <= 5.0] + [(now, total)]
        first_t, first_n = self._counts[0]
        per_second = (total - first_n) / (now - first_t) if now > first_t else None
        processes = f" in {1 + len(children)} processes" if children else ""
        title = (
            f"netstats run --live   {now - self._started:.0f}s   "
            f"{len(shown)} open{processes}, {total} in all   "
            f"{'?' if per_second is None else f'{per_second:.1f}'} connections/s   "
            f"rx {_format.size_total(rx)}  tx {_format.size_total(tx)}   "
            f"{_format.clip(self._program, 40)}"
        )
        return table(title, shown, _limit(console))

    @staticmethod
    def _rows(pid: int, conns: list[dict[str, Any]], rates: _top.Rates, when: float) -> list[Row]:
        """Rows of one process's open connections, rates from its previous snapshot."""
        readings: dict[Any, tuple[int | None, int | None]] = {}
        for c in conns:  # found by the census (rx None): the kernel's bytes only
            readings[c["id"]] = (c["rx"], c["tx"]) if c["rx"] is not None else (c["wire_rx"], c["wire_tx"])
        moved = rates.update(readings, when)
        rows = []
        for c in conns:
            rx_rate, tx_rate = moved[c["id"]]
            rows.append(
                Row(
                    c["remote"],
                    c["host"] if pid == os.getpid() else f"{c['host'] or '-'} (pid {pid})",
                    c["rx"],
                    c["tx"],
                    c["wire_rx"],
                    c["wire_tx"],
                    rx_rate,
                    tx_rate,
                    c["rtt"],
                    c["retransmits"],
                )
            )
        return rows


def watch(cap: Capture, program: list[str], folder: Folder) -> Callable[[], None]:
    """For run_program: start the view on this capture and the children's snapshots in the
    run's folder; returns what stops it."""
    view = RunView(cap, program, folder)
    try:
        view.start()
    except Exception:
        log.exception("netstats: the live view could not start (the program is unaffected)")
    return view.stop


def top(pid: int, interval: float = INTERVAL) -> int:
    """`netstats top PID`: redraw until the process ends or Ctrl-C; the exit code."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    rates = _top.Rates()
    with Live(console=console, auto_refresh=False, transient=False) as live:
        try:
            while True:
                sockets = _top.snapshot(pid)
                now = time.monotonic()
                moved = rates.update(
                    {s.cookie: (s.info.wire_rx, s.info.wire_tx) if s.info else (None, None) for s in sockets},
                    now,
                )
                rows = []
                for sock in sockets:
                    info = sock.info
                    rx_rate, tx_rate = moved[sock.cookie]
                    rows.append(
                        Row(
                            _format.address(sock.remote),
                            sock.state,
                            None,
                            None,
                            info.wire_rx if info else None,
                            info.wire_tx if info else None,
                            rx_rate,
                            tx_rate,
                            info.rtt if info else None,
                            info.retransmits if info else None,
                        )
                    )
                n = len(sockets)
                title = (
                    f"netstats top {pid}: {n} TCP connection{'s' * (n != 1)} (kernel figures; Ctrl-C to quit)"
                )
                live.update(table(title, rows, _limit(console), app_bytes=False), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return 0
        except NoSuchProcess:
            pass
    print(f"netstats top: process {pid} ended", file=sys.stderr)
    return 0
