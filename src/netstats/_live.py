"""The live views, redrawn every second on the terminal: `netstats run --live` and `netstats top`.

Drawn with rich, an optional extra (`pip install 'netstats[live]'`): it is imported here only,
when a live view starts. `run --live` reads the capture from a thread of netstats' own (open
connections, their totals and the kernel's figures, as the exporters do), never from the
program's threads; the program's prints through sys.stdout/sys.stderr go above the table (rich
redirects them while the view is up, only where they are the terminal). `top` reads another
process through _top.snapshot. A figure netstats cannot know shows as "?".
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _format, _top
from ._capture import Capture
from ._errors import NoSuchProcess

log = logging.getLogger("netstats")

INTERVAL = 1.0  # seconds between redraws
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
    """A rich Table of the `limit` busiest rows (current rate first, then bytes)."""
    from rich.table import Table

    grid = Table(title=title, title_justify="left", expand=False, pad_edge=False)
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
        grid.add_row(*cells)
    if len(rows) > limit:
        grid.caption = f"{len(rows) - limit} more not shown"
    return grid


def _limit(console: Any) -> int:
    return max(3, int(console.size.height) - 10)


class RunView:
    """`netstats run --live`: the capture's connections, redrawn every INTERVAL until stop()."""

    def __init__(self, cap: Capture, program: list[str]) -> None:
        self._cap = cap
        self._program = " ".join(program)
        self._rates = _top.Rates()
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
        conns = self._cap.open_connections()
        readings: dict[Any, tuple[int | None, int | None]] = {}
        rows = []
        for conn in conns:
            info = conn.tcp_info()
            rx, tx = conn.totals()
            if rx is None and info is not None:  # found by the census: the kernel's bytes only
                readings[conn] = (info.wire_rx, info.wire_tx)
            else:
                readings[conn] = (rx, tx)
            rows.append((conn, info, rx, tx))
        rates = self._rates.update(readings, now)
        shown = []
        for conn, info, rx, tx in rows:
            rx_rate, tx_rate = rates[conn]
            shown.append(
                Row(
                    _format.address(conn.remote),
                    conn.host or "",
                    rx,
                    tx,
                    info.wire_rx if info else None,
                    info.wire_tx if info else None,
                    rx_rate,
                    tx_rate,
                    info.rtt if info else None,
                    info.retransmits if info else None,
                )
            )
        total = self._cap.count
        self._counts = [(t, n) for t, n in self._counts if now - t <= 5.0] + [(now, total)]
        first_t, first_n = self._counts[0]
        per_second = (total - first_n) / (now - first_t) if now > first_t else None
        title = (
            f"netstats run --live   {now - self._started:.0f}s   "
            f"{len(conns)} open, {total} in all   "
            f"{'?' if per_second is None else f'{per_second:.1f}'} connections/s   "
            f"rx {_format.size(self._cap.rx)}  tx {_format.size(self._cap.tx)}   "
            f"{_format.clip(self._program, 40)}"
        )
        return table(title, shown, _limit(console))


def watch(cap: Capture, program: list[str]) -> Callable[[], None]:
    """For run_program: start the view on this capture; returns what stops it."""
    view = RunView(cap, program)
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
                title = f"netstats top {pid}: {len(sockets)} TCP connections (kernel figures; Ctrl-C to quit)"
                live.update(table(title, rows, _limit(console), app_bytes=False), refresh=True)
                time.sleep(interval)
        except KeyboardInterrupt:
            return 0
        except NoSuchProcess:
            pass
    print(f"netstats top: process {pid} ended", file=sys.stderr)
    return 0
