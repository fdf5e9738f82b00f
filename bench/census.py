"""What the kernel census costs: CPU per second of capture with N sockets open, on loopback.

For each N (10 and 1,000 socket descriptors by default), the process opens N/2 loopback TCP
connections with the stock C socket type (as C code would: netstats cannot count them itself,
so the census finds every one), starts a capture, lets the census sweep for a few seconds
while the main thread sleeps, and reads the process's CPU time (everything but that sleep is
the census thread). Also timed: one sweep, called directly (median of many). Every connection
must have been found, with its wire bytes, or the benchmark stops with an error.

    .venv/bin/python bench/census.py              # 10 and 1,000 sockets, 5 s each
    .venv/bin/python bench/census.py --sockets 2000 --seconds 10
"""

from __future__ import annotations

import _socket
import argparse
import resource
import statistics
import sys
import time

import netstats
from netstats._sources import census


def open_pairs(n: int) -> tuple[list[object], list[object]]:
    """n connections, both ends in this process; the listener stays open (it is the last server)."""
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    address = listener.getsockname()
    clients, servers = [], []
    for _ in range(n):
        c = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        c.connect(address)
        fd, _ = listener._accept()
        servers.append(_socket.socket(fileno=fd))
        c.send(b"x" * 64)
        clients.append(c)
    servers.append(listener)
    return clients, servers


def measure(sockets: int, seconds: float) -> dict[str, float]:
    pairs = max(1, sockets // 2)
    with netstats.capture(servers=False) as cap:
        clients, servers = open_pairs(pairs)
        deadline = time.monotonic() + 30
        while len(cap.connections) < pairs and time.monotonic() < deadline:
            time.sleep(0.05)
        found = [c for c in cap.connections if c.source == "kernel"]
        if len(found) != pairs or any(c.wire_tx != 64 for c in found):
            raise SystemExit(f"census found {len(found)} of {pairs} connections, or wrong wire bytes")
        cpu0, wall0 = time.process_time(), time.monotonic()
        time.sleep(seconds)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        sweeps = []
        for _ in range(50):
            t0 = time.perf_counter()
            census.census.sweep()
            sweeps.append(time.perf_counter() - t0)
        for s in clients + servers:
            s.close()  # type: ignore[attr-defined]
    return {
        "sockets": pairs * 2,
        "cpu_share": cpu / wall,
        "sweep_ms": statistics.median(sweeps) * 1000,
        "sweeps_per_s": 1 / census.INTERVAL,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not census.supported:
        print("the kernel census runs on Linux only")
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max(args.sockets) + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    print(
        f"netstats {netstats.__version__}, Python {sys.version.split()[0]}, census every {census.INTERVAL}s"
    )
    print(f"{'sockets':>8} {'CPU of one core':>16} {'one sweep':>10}")
    for n in args.sockets:
        r = measure(n, args.seconds)
        print(f"{r['sockets']:>8} {r['cpu_share'] * 100:>15.2f}% {r['sweep_ms']:>8.2f}ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
