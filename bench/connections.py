"""What netstats costs per connection: stock against captured, on loopback.

Two loops, each timed whole:

- raw: socket.create_connection(), a 64-byte round trip, close() -- N times;
- requests: requests.get() without a Session (a new Session, connection and close per call)
  of a 64-byte body -- N times.

Variants: "stock" and "stock2" (no capture, both: their ratio is the A/A noise figure, what
two identical runs differ by on this machine now), "count" (netstats.capture(), no callback:
plain TCP is counted by the kernel) and "callback" (a capture whose callback hears reads and
writes: the wrapped mode); for the raw loop on Linux also "floor": the stock loop plus the
five system calls netstats makes per connection and nothing else, the share of the cost that
reading the kernel's figures for every connection takes by itself (no Python record at all).
The variants are interleaved run by run, in a rotating order;
each figure is a median, of wall time and of the client's own CPU time (which the machine's
other load moves least). Client and server are pinned to one CPU (the server is a separate
process, `python -I -c SERVER`, that never imports netstats; a thread per connection). After
each captured run the capture's totals must equal what the server counted (it reports its own
totals on a side connection), and every connection must be connected and closed, or the
benchmark stops with an error.

    .venv/bin/python bench/connections.py              # 9 runs of each variant
    .venv/bin/python bench/connections.py --quick      # fewer connections, 3 runs
    .venv/bin/python bench/connections.py --only raw --runs 15 --json
"""

from __future__ import annotations

import _socket
import argparse
import gc
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import requests
from sockets import show  # bench/sockets.py, beside this script

import netstats

HOST = "127.0.0.1"
MSG = 64
VARIANTS = ("stock", "count", "stock2", "callback")
STOCK_SOCKET = socket.socket  # taken before any capture replaces it
FULL = {"raw": 2000, "requests": 300, "runs": 9}
QUICK = {"raw": 500, "requests": 100, "runs": 3}
TARGETS = {("raw", "count"): 1.05, ("requests", "count"): 1.02}

# The peer: a thread per connection. A connection starting with b"STAT" gets the bytes
# received and sent since the previous STAT (16 bytes) and is not counted; one starting with
# b"GET " is HTTP/1.1 (a 64-byte body per request, keep-alive until the client closes); any
# other is echoed 64 bytes at a time until the client closes. accept() gives up after IDLE s
# (60, or argv[2]).
SERVER = r"""
import os, socket, struct, sys, threading

CPU, MSG, MAX_CONNECTIONS = int(sys.argv[1]), 64, 1_000_000
IDLE = int(sys.argv[2]) if len(sys.argv) > 2 else 60  # (bench/peers.py: its clients start slowly)
BODY = b"b" * MSG
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 64\r\n\r\n" + BODY
totals = [0, 0]
lock = threading.Lock()


def count(rx, tx):
    with lock:
        totals[0] += rx
        totals[1] += tx


def serve(sock):
    data = sock.recv(65536)
    if data.startswith(b"STAT"):
        with lock:
            sock.sendall(struct.pack("!QQ", *totals))
            totals[:] = [0, 0]
        return
    while data:
        if data.startswith(b"GET "):
            while not data.endswith(b"\r\n\r\n"):
                more = sock.recv(65536)
                if not more:
                    return
                data += more
            count(len(data), len(RESPONSE))  # before the reply: counted by the time it arrives
            sock.sendall(RESPONSE)
        else:
            count(len(data), len(data))
            sock.sendall(data)
        data = sock.recv(65536)


def main():
    os.sched_setaffinity(0, {CPU})
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(IDLE)
        print(listener.getsockname()[1], flush=True)
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                break
            threading.Thread(target=handle, args=(sock,), daemon=True).start()


def handle(sock):
    with sock:
        sock.settimeout(IDLE)
        try:
            serve(sock)
        except OSError:
            pass


main()
"""


_TCP_INFO = getattr(socket, "TCP_INFO", 11)
_SO_COOKIE = getattr(socket, "SO_COOKIE", 57)


def raw_loop(port: int, n: int, kernel_calls: bool = False) -> None:
    """n x (connect, 64 B each way, close). `kernel_calls`: also make the system calls netstats
    makes per connection (its identity and local address once connected; at close, the identity
    again and TCP_INFO twice), and nothing else: the "floor" variant."""
    payload = b"r" * MSG
    for _ in range(n):
        s = socket.create_connection((HOST, port))
        if kernel_calls:
            s.getsockopt(socket.SOL_SOCKET, _SO_COOKIE, 8)
            s.getsockname()
        s.sendall(payload)
        got = 0
        while got < MSG:
            chunk = s.recv(MSG - got)
            if not chunk:
                raise ConnectionError("server closed early")
            got += len(chunk)
        if kernel_calls:
            s.getsockopt(socket.SOL_SOCKET, _SO_COOKIE, 8)
            s.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 232)
            s.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 232)
        s.close()


def floor_loop(port: int, n: int) -> None:
    """The raw loop, stock, with netstats' per-connection system calls: what reading the
    kernel's figures for every connection costs by itself."""
    raw_loop(port, n, kernel_calls=True)


def requests_loop(port: int, n: int) -> None:
    url = f"http://{HOST}:{port}/"
    for _ in range(n):
        r = requests.get(url, timeout=30)
        if len(r.content) != MSG:
            raise ValueError(f"body of {len(r.content)} bytes")


LOOPS: dict[str, Callable[[int, int], None]] = {"raw": raw_loop, "requests": requests_loop}


def server_totals(port: int) -> tuple[int, int]:
    """(rx, tx) the server counted since the last call, asked on the C socket type (no capture
    sees it, whatever is installed when this runs: bench/peers.py asks after its workloads)."""
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        s.connect((HOST, port))
        s.sendall(b"STAT")
        data = b""
        while len(data) < 16:
            chunk = s.recv(16 - len(data))
            if not chunk:
                raise ConnectionError("no STAT reply")
            data += chunk
    finally:
        s.close()
    rx, tx = struct.unpack("!QQ", data)
    return rx, tx


def one_run(name: str, variant: str, port: int, n: int) -> tuple[float, float]:
    """(wall seconds, this process's CPU seconds) for n connections."""
    server_totals(port)  # zero the server's count
    gc.collect()
    cap = None
    if variant == "count":
        cap = netstats.capture()
    elif variant == "callback":
        cap = netstats.capture(lambda event, conn, nbytes: None)
    loop = floor_loop if variant == "floor" else LOOPS[name]
    start, start_cpu = time.perf_counter(), time.process_time()
    try:
        loop(port, n)
    finally:
        elapsed, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        if cap is not None:
            cap.stop()
    if cap is not None:
        rx, tx = server_totals(port)
        conns = [c for c in cap.connections if c.error is None]
        if len(conns) != n or (cap.tx, cap.rx) != (rx, tx):
            raise AssertionError(
                f"{name}/{variant}: {len(conns)} connections, capture tx/rx {cap.tx}/{cap.rx},"
                f" server rx/tx {rx}/{tx}"
            )
        if any(c.closed is None or c.connected is None for c in conns):
            raise AssertionError(f"{name}/{variant}: a connection not marked connected and closed")
    return elapsed, cpu


def measure(name: str, n: int, runs: int, cpu: int) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, "-I", "-c", SERVER, str(cpu)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        LOOPS[name](port, max(10, n // 10))  # warm up: imports, caches, the server's page cache
        variants = (*VARIANTS, "floor") if name == "raw" and sys.platform.startswith("linux") else VARIANTS
        times: dict[str, list[float]] = {v: [] for v in variants}
        cpu_times: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(runs):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for variant in order:
                wall, cpu = one_run(name, variant, port, n)
                times[variant].append(wall)
                cpu_times[variant].append(cpu)
    finally:
        server.kill()
        server.wait(10)
    stock = statistics.median(times["stock"])
    out: dict[str, Any] = {"connections": n, "runs": runs, "variants": {}}
    for variant, values in times.items():
        median = statistics.median(values)
        out["variants"][variant] = {
            "median_s": median,
            "us_per_connection": median / n * 1e6,
            "ratio": median / stock,
            "paired_ratio": statistics.median(v / s for v, s in zip(values, times["stock"], strict=True)),
            "target": TARGETS.get((name, variant)),
            "times_s": values,
            # the client's own CPU time (user + system): what the machine's other load moves least
            "cpu_us_per_connection": statistics.median(cpu_times[variant]) / n * 1e6,
            "cpu_ratio": statistics.median(cpu_times[variant]) / statistics.median(cpu_times["stock"]),
        }
    return out


def table(name: str, result: dict[str, Any], cpu: int) -> str:
    what = {
        "raw": "create_connection + 64 B round trip + close",
        "requests": "requests.get() without a Session, 64 B body",
    }[name]
    lines = [
        f"{name}: {result['connections']:,} x {what}; client and server on CPU {cpu};"
        f" median of {result['runs']} interleaved runs",
        f"  {'variant':<9} {'median s':>9} {'us/conn':>8} {'ratio':>6} {'paired':>6}"
        f" {'cpu us/conn':>11} {'cpu ratio':>9}  target",
    ]
    for variant, v in result["variants"].items():
        row = f"  {variant:<9} {v['median_s']:9.4f} {v['us_per_connection']:8.1f}"
        row += f" {'-':>6} {'-':>6}" if variant == "stock" else f" {v['ratio']:6.3f} {v['paired_ratio']:6.3f}"
        row += f" {v['cpu_us_per_connection']:11.1f} {v['cpu_ratio']:9.3f}"
        if v["target"] is not None:
            row += f"  <= {v['target']:.2f} {'ok' if v['ratio'] <= v['target'] else 'OVER'}"
        lines.append(row.rstrip())
    noise = abs(result["variants"]["stock2"]["ratio"] - 1)
    cpu_noise = abs(result["variants"]["stock2"]["cpu_ratio"] - 1)
    lines.append(f"  A/A noise (stock2 against stock): {noise * 100:.1f}% wall, {cpu_noise * 100:.1f}% cpu")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer connections and 3 runs")
    parser.add_argument("--runs", type=int, help="runs per variant (default 9)")
    parser.add_argument("--only", choices=tuple(LOOPS), help="run only this loop")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args(argv)
    if args.runs is not None and not 1 <= args.runs <= 1000:
        parser.error("--runs must be between 1 and 1000")
    conf = QUICK if args.quick else FULL
    runs = args.runs or conf["runs"]
    cpu = max(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        results = {name: measure(name, conf[name], runs, cpu) for name in LOOPS if args.only in (None, name)}
    finally:
        os.sched_setaffinity(0, before)
    show(results, args, table, cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
