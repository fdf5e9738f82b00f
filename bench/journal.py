"""What the journal of `netstats run` costs: per connection, and per second.

Under `netstats run` every process writes each connection's final record to its journal as
the connection closes, and the figures of its open connections every INTERVAL (0.5 s) that
they changed (see src/netstats/_journal.py). Two figures:

- per connection: the raw loop of bench/connections.py (create_connection, a 64-byte round
  trip, close; the server a separate process pinned with the client to one CPU) captured
  with and without a journal, interleaved run by run, medians of the client's wall and CPU
  time; the difference per connection is the journal's (every captured run is checked against
  the server's own count, and the journal must hold a closed record per connection);
- per second: what one write of the open connections' figures costs with 0, 100 and 1,000
  idle open connections (nothing changed: what an idle service pays) and with all of them
  having moved bytes since the last one, timed directly; x 2 writes a second = share of a core.

    .venv/bin/python bench/journal.py             # 9 runs of 2,000 connections
    .venv/bin/python bench/journal.py --quick
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from connections import HOST, SERVER, raw_loop, server_totals  # bench/connections.py

import netstats
from netstats import _journal, _owned

VARIANTS = ("count", "journal")


def one_run(variant: str, port: int, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds of n raw connections under a capture, journalled or not."""
    server_totals(port)
    gc.collect()
    folder = _journal.Folder.make()
    cap = netstats.capture()
    journal = _journal.Journal(folder, cap, lambda: 0).start() if variant == "journal" else None
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        raw_loop(port, n)
    finally:
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if journal is not None:
            journal.end()
        cap.stop()
    rx, tx = server_totals(port)
    if (cap.tx, cap.rx) != (rx, tx):
        raise AssertionError(f"{variant}: capture tx/rx {cap.tx}/{cap.rx}, server rx/tx {rx}/{tx}")
    if journal is not None:
        closed = [json.loads(line) for line in folder.read(journal.name).splitlines()]
        if sum("closed" in entry for entry in closed) != n:
            raise AssertionError(f"journal: {sum('closed' in e for e in closed)} closed records for {n}")
    folder.delete()
    return elapsed, cpu


def per_connection(n: int, runs: int, cpu: int) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, "-I", "-c", SERVER, str(cpu)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        raw_loop(port, max(10, n // 10))  # warm up
        wall: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu_s: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for r in range(runs):
            for variant in VARIANTS[r % 2 :] + VARIANTS[: r % 2]:
                w, c = one_run(variant, port, n)
                wall[variant].append(w)
                cpu_s[variant].append(c)
    finally:
        server.kill()
        server.wait(10)
    out = {
        v: {"wall_us": statistics.median(wall[v]) / n * 1e6, "cpu_us": statistics.median(cpu_s[v]) / n * 1e6}
        for v in VARIANTS
    }
    out["extra"] = {k: out["journal"][k] - out["count"][k] for k in ("wall_us", "cpu_us")}
    return out


def per_second(sizes: tuple[int, ...], ticks: int) -> dict[int, dict[str, float]]:
    """Microseconds per journal write with `size` open connections, idle or all busy."""
    listener = socket.create_server((HOST, 0))
    port = listener.getsockname()[1]
    out = {}
    for size in sizes:
        folder = _journal.Folder.make()
        cap = netstats.capture()
        journal = _journal.Journal(folder, cap, lambda: 0)  # (its thread is not started: timed here)
        journal.name = "bench.journal"
        journal._fd = folder.create(journal.name)
        journal._identity = _owned.identity(journal._fd)
        pairs = []
        for _ in range(size):
            client = socket.create_connection((HOST, port))
            pairs.append((client, listener.accept()[0]))
        journal.flush()  # every connection written once
        idle, busy = [], []
        for _ in range(ticks):
            start = time.perf_counter()
            journal.flush()
            idle.append(time.perf_counter() - start)
            for client, server in pairs:
                client.sendall(b"x")
                server.recv(1)
            start = time.perf_counter()
            journal.flush()
            busy.append(time.perf_counter() - start)
        cap.stop()
        for client, server in pairs:
            client.close()
            server.close()
        folder.delete()
        out[size] = {"idle_us": statistics.median(idle) * 1e6, "busy_us": statistics.median(busy) * 1e6}
    listener.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="500 connections, 3 runs")
    parser.add_argument("--cpu", type=int, default=0, help="the CPU client and server are pinned to")
    args = parser.parse_args(argv)
    n, runs = (500, 3) if args.quick else (2000, 9)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.cpu})
    conn = per_connection(n, runs, args.cpu)
    print(f"per connection ({n:,} raw connections, median of {runs} interleaved runs, one CPU):")
    for variant in VARIANTS:
        wall_us, cpu_us = conn[variant]["wall_us"], conn[variant]["cpu_us"]
        print(f"  {variant:8} {wall_us:7.1f} us wall  {cpu_us:7.1f} us client CPU")
    extra = conn["extra"]
    print(f"  journal adds {extra['wall_us']:+.1f} us wall, {extra['cpu_us']:+.1f} us client CPU")
    interval = _journal.INTERVAL
    print(f"per second (a write every {interval} s of the open connections' figures that changed):")
    for size, t in per_second((0, 100, 1000), 5 if args.quick else 11).items():
        idle, busy = t["idle_us"], t["busy_us"]
        print(
            f"  {size:5} open: idle {idle:8.0f} us a write ({idle / interval / 1e4:.3f}% of a core),"
            f" all busy {busy:8.0f} us ({busy / interval / 1e4:.2f}% of a core)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
