"""What close() costs under a capture, with and without other threads running (Linux, loopback).

With other threads running, a close of a plain TCP connection asks sock_diag once whether a call
of another thread still holds the kernel socket (a recv blocked across close()); a process with
one thread never asks. Per round, for each variant, N connected pairs are made (the client end
stock, or made during a capture), then the N client ends are closed and timed; the server ends
are the test's own. Variants are interleaved round by round, each figure is the median over
rounds of the mean close time, `ratio` is against `stock` of the same thread setting, and
`stock2` (stock again) gives the A/A noise. Every captured connection must have ended at its
close with its bytes (1 written, 1 read) or the benchmark stops with an error.

    .venv/bin/python bench/close.py                 # 200 connections, 9 rounds
    .venv/bin/python bench/close.py --rounds 21 --connections 500
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time

import netstats

VARIANTS = ("stock", "stock2", "captured")


def close_time(listener: socket.socket, n: int, captured: bool) -> float:
    """Mean seconds per close() of n connected client sockets."""
    cap = netstats.capture() if captured else None
    pairs = []
    for _ in range(n):
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
        client.sendall(b"x")
        server.recv(1)
        server.sendall(b"y")
        client.recv(1)
        pairs.append((client, server))
    start = time.perf_counter()
    for client, _ in pairs:
        client.close()
    elapsed = time.perf_counter() - start
    for _, server in pairs:
        server.close()
    if cap is not None:
        cap.stop()
        conns = cap.connections
        if len(conns) != n or any(c.closed is None or (c.rx, c.tx) != (1, 1) for c in conns):
            raise SystemExit("a captured connection did not end at its close with its bytes")
    return elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one CPU, as for chatty
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(args.connections)
    for threads in (False, True):
        idle = threading.Event()
        if threads:  # another thread, idle: what a thread pool or a server thread looks like
            threading.Thread(target=idle.wait, daemon=True).start()
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for variant in VARIANTS:
                times[variant].append(close_time(listener, args.connections, variant == "captured"))
        idle.set()
        stock = statistics.median(times["stock"])
        print(f"{'with another thread' if threads else 'one thread'}:")
        for variant in VARIANTS:
            median = statistics.median(times[variant])
            print(f"  {variant:9} {median * 1e6:7.1f} us per close   ratio {median / stock:.2f}")


if __name__ == "__main__":
    main()
