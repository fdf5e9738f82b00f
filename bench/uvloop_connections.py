"""What netstats costs per uvloop connection: stock against captured, on loopback.

One loop, timed whole: `asyncio.open_connection()` on uvloop, a 64-byte round trip with an echo
server (a separate process, `python -I -c SERVER`, that never imports netstats), close -- N times.

Variants: "stock" and "stock2" (no capture: their ratio is the A/A noise figure), "count"
(netstats.capture(), no callback) and "callback" (a capture with a read/write callback; a
plain uvloop connection gets no per-call events either way, see README "uvloop"). Interleaved
run by run in a rotating order; each figure is a median of wall time. After each captured run
the capture's totals must be 64 bytes each way per connection, or the benchmark stops.

    .venv/bin/python bench/uvloop_connections.py              # 7 runs of each variant
    .venv/bin/python bench/uvloop_connections.py --quick      # fewer connections, 3 runs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time

import uvloop

import netstats

SERVER = r"""
import socket, threading
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
def serve(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
while True:
    conn, _ = srv.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


async def connections(port: int, n: int) -> None:
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"x" * 64)
        await reader.readexactly(64)
        writer.close()
        await writer.wait_closed()


def one(variant: str, port: int, n: int) -> float:
    start = time.perf_counter()
    if variant.startswith("stock"):
        uvloop.run(connections(port, n))
        return time.perf_counter() - start
    callback = (lambda event, conn, nbytes: None) if variant == "callback" else None
    with netstats.capture(callback) as cap:
        uvloop.run(connections(port, n))
    elapsed = time.perf_counter() - start
    done = [c for c in cap.connections if c.error is None]
    if len(done) != n or any((c.rx, c.tx) != (64, 64) or c.closed is None for c in done):
        raise SystemExit(f"{variant}: counts wrong: {done[:3]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=None)
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    runs = args.runs or (3 if args.quick else 7)
    server = subprocess.Popen([sys.executable, "-I", "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        variants = ["stock", "count", "callback", "stock2"]
        times: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(runs):
            for v in variants[r % 4 :] + variants[: r % 4]:
                times[v].append(one(v, port, n))
    finally:
        server.kill()
        server.wait()
    stock = statistics.median(times["stock"])
    result = {
        v: {"median_s": round(statistics.median(t), 4), "ratio": round(statistics.median(t) / stock, 3)}
        for v, t in times.items()
    }
    print(json.dumps({"connections": n, "runs": runs, "variants": result}, indent=2))


if __name__ == "__main__":
    main()
