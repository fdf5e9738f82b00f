"""What netstats costs per connection of a C driver (psycopg2 or psycopg 3), on loopback.

One loop, timed whole: the Django shape with CONN_MAX_AGE=0 -- connect, `SELECT 1`, close -- N
times against a PostgreSQL server of the benchmark's own (initdb in a temporary folder, trust
auth, plain TCP on 127.0.0.1; as the `postgres` user when run as root), which never imports
netstats.

Variants: "stock" and "stock2" (no capture: their ratio is the A/A noise figure), "count"
(netstats.capture(): each connection told by the driver at connect and followed by the census
by its cookie). Interleaved run by run in a rotating order; each figure is a median, of wall
time and of the process's CPU time (every thread's: the census's too) per connection. After
each captured run every connection must be recorded, closed, with rx/tx equal to its wire
bytes (plain TCP), or the benchmark stops.

    .venv/bin/python bench/drivers.py               # psycopg2, 300 connections, 7 runs
    .venv/bin/python bench/drivers.py --driver psycopg --quick
"""

from __future__ import annotations

import argparse
import glob
import importlib
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import netstats


@contextmanager
def postgres() -> Iterator[int]:
    """A throwaway PostgreSQL server on 127.0.0.1; its port."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not initdb:
        raise SystemExit("PostgreSQL server binaries not found (Debian 'postgresql': .ci/postgres.sh)")
    bindir = os.path.dirname(initdb[-1])
    base = tempfile.mkdtemp(prefix="netstats-bench-pg-")
    data = os.path.join(base, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    quiet: dict[str, Any] = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.STDOUT}
    subprocess.run([*as_user, f"{bindir}/initdb", "-D", data, "-U", "bench", "--auth=trust"], **quiet)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with open(os.path.join(data, "postgresql.conf"), "a", encoding="utf-8") as conf:
        conf.write(
            f"listen_addresses = '127.0.0.1'\nport = {port}\nunix_socket_directories = '{base}'\n"
            "fsync = off\nmax_connections = 50\n"
        )
    log = os.path.join(base, "log")
    subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-l", log, "-w", "start"], **quiet)
    try:
        yield port
    finally:
        subprocess.run([*as_user, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"], **quiet)
        shutil.rmtree(base, ignore_errors=True)


def connections(driver: Any, port: int, n: int) -> None:
    for _ in range(n):
        db = driver.connect(host="localhost", port=port, user="bench", dbname="postgres", sslmode="disable")
        cur = db.cursor()
        cur.execute("SELECT 1")
        cur.fetchone()
        db.close()


def one(variant: str, driver: Any, port: int, n: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of n connections."""
    start, cpu = time.perf_counter(), time.process_time()
    if variant.startswith("stock"):
        connections(driver, port, n)
        return time.perf_counter() - start, time.process_time() - cpu
    with netstats.capture() as cap:
        connections(driver, port, n)
        elapsed = time.perf_counter() - start, time.process_time() - cpu
        deadline = time.monotonic() + 10  # (the census hears each end on its own thread: the
        while any(c.closed is None for c in cap.connections) and time.monotonic() < deadline:
            time.sleep(0.01)  # last one's is left out of the figures, 1/n of the census's part)
    conns = cap.connections
    if len(conns) != n or any(c.closed is None or (c.rx, c.tx) != (c.wire_rx, c.wire_tx) for c in conns):
        raise SystemExit(f"{variant}: counts wrong: {len(conns)} recorded, {conns[:3]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--driver", choices=["psycopg2", "psycopg"], default="psycopg2")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    n = 100 if args.quick else 300
    runs = args.runs or (3 if args.quick else 7)
    driver = importlib.import_module(args.driver)  # before any capture, as a service does
    with postgres() as port:
        one("stock", driver, port, 5)  # warm: the server's first backends, the driver's caches
        variants = ["stock", "count", "stock2"]
        times: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        for r in range(runs):
            for v in variants[r % 3 :] + variants[: r % 3]:
                times[v].append(one(v, driver, port, n))
    wall = {v: statistics.median(w for w, _ in t) for v, t in times.items()}
    cpu = {v: statistics.median(c for _, c in t) for v, t in times.items()}
    result = {
        v: {
            "wall_ms_per_connect": round(wall[v] / n * 1000, 3),
            "wall_ratio": round(wall[v] / wall["stock"], 3),
            "cpu_ms_per_connect": round(cpu[v] / n * 1000, 3),
            "cpu_ratio": round(cpu[v] / cpu["stock"], 3),
        }
        for v in variants
    }
    print(json.dumps({"driver": args.driver, "connections": n, "runs": runs, "variants": result}, indent=2))


if __name__ == "__main__":
    main()
