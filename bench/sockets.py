"""What netstats costs on plain sockets: stock sockets against captured ones, on loopback.

Three tests, each run with four variants:

- bulk send: the client sends 256 MiB with sendall() in 64 KiB chunks to a sink server;
- bulk recv: the server sends 256 MiB, the client recv_into()s a preallocated 64 KiB buffer;
- chatty: 20,000 round trips of 64 bytes (client send, server echo, client recv until it has
  64 B), client and server pinned to the same CPU.

Every connection is a blocking socket with TCP_NODELAY.

Variants: "stock" (no capture), "wrapped" (netstats.capture() with the kernel's counters
switched off, so the per-call wrappers count: the engine as it was before the kernel counted
plain TCP, and what every platform without TCP_INFO gets), "count" (netstats.capture(), no
callback), "callback" (netstats.capture(cb) with a trivial cb that receives the read/write
events) and "tagged" (netstats.capture(), the transfer inside `netstats.tag(bench=...)`: every
read and write attributed to its labels; tags are switched off again after each such run, so
the other variants run as in a program that never tagged), and "stock2", stock again: its ratio
to stock is the run's A/A noise.

The server is a separate process (`python -I -c SERVER`) that never imports netstats: one
per test, serving one connection per run. The variants are interleaved run by run (stock,
count, callback, stock, ...) because the machine is noisy; each figure is a median. A run is
timed from the client's first byte sent to its last byte received; socket creation, connect
and close are not timed. After each captured run the connection's counts (and, for "callback",
the bytes the callback saw) must equal the bytes transferred, or the benchmark stops with an
error. Besides wall time, each run's client thread CPU time (`time.thread_time()`, its system
calls' kernel side included) is kept: the "cpu" column is its median ratio to stock's, which
the machine's other load moves less than wall time. The client looks send/recv up on the socket
at every call, as most code does: netstats may change a captured socket's class at its first
write (plain TCP with nobody listening for read/write events is left to the kernel's counters),
which a bound method taken before that write would not follow. The "counted by" column says
which way each variant went.

Run it with `make bench`, or:

    .venv/bin/python bench/sockets.py             # full: 5 bulk runs, 9 chatty runs
    .venv/bin/python bench/sockets.py --quick     # smaller sizes, 3 runs each
    .venv/bin/python bench/sockets.py --only chatty --runs 15 --json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import netstats
from netstats import _kernel, _tags

HOST = "127.0.0.1"
CHUNK = 64 * 1024
MSG = 64
MiB = 1024 * 1024
VARIANTS = ("stock", "wrapped", "count", "callback", "tagged", "stock2")
RUN_TIMEOUT = 120  # seconds; SIGALRM ends a run that hangs
STOCK_SOCKET = socket.socket  # taken before any capture replaces it

FULL = {"bulk_bytes": 256 * MiB, "round_trips": 20_000, "bulk_runs": 5, "chatty_runs": 9}
QUICK = {"bulk_bytes": 32 * MiB, "round_trips": 2_000, "bulk_runs": 3, "chatty_runs": 3}

# Targets from the issue: the largest acceptable ratio variant/stock.
TARGETS = {
    ("bulk send", "count"): 1.01,
    ("bulk recv", "count"): 1.01,
    ("bulk send", "wrapped"): 1.01,
    ("bulk recv", "wrapped"): 1.01,
    ("chatty", "wrapped"): 1.03,
    ("chatty", "count"): 1.02,
    ("chatty", "callback"): 1.15,
    ("chatty", "tagged"): 1.05,
}

# The peer. Each connection starts with an 8-byte header (a byte count or a number of round
# trips); every loop is bounded by it, and accept() gives up after IDLE seconds.
SERVER = r"""
import os, socket, struct, sys

MODE, CPU = sys.argv[1], int(sys.argv[2])
CHUNK, MSG, IDLE, MAX_CONNECTIONS = 64 * 1024, 64, 120, 10_000


def recv_exact(sock, view):
    got = 0
    while got < len(view):  # each pass moves >= 1 byte or raises
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("client closed early")
        got += k


def sink(sock, size):
    view = memoryview(bytearray(1024 * 1024))
    got = 0
    while got < size:  # each pass moves >= 1 byte or raises
        k = sock.recv_into(view[: min(len(view), size - got)])
        if not k:
            raise ConnectionError("client closed early")
        got += k
    sock.sendall(struct.pack("!Q", got))


def source(sock, size):
    chunk = b"s" * CHUNK
    for _ in range(size // CHUNK):
        sock.sendall(chunk)
    sock.sendall(chunk[: size % CHUNK])


def echo(sock, rounds):
    view = memoryview(bytearray(MSG))
    for _ in range(rounds):
        recv_exact(sock, view)
        sock.sendall(view)


def main():
    if CPU >= 0:
        os.sched_setaffinity(0, {CPU})
    serve = {"sink": sink, "source": source, "echo": echo}[MODE]
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(IDLE)
        print(listener.getsockname()[1], flush=True)
        for _ in range(MAX_CONNECTIONS):
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                break
            with sock:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                header = bytearray(8)
                try:
                    recv_exact(sock, memoryview(header))
                    serve(sock, struct.unpack("!Q", header)[0])
                except OSError as exc:
                    print("server:", MODE, repr(exc), file=sys.stderr)
    if "netstats" in sys.modules:
        raise SystemExit("the server imported netstats")


main()
"""


# ---- the peer ---------------------------------------------------------------------------


class Server:
    """One server process for one test; its port is read from its first line of output."""

    def __init__(self, mode: str, cpu: int) -> None:
        argv = [sys.executable, "-I", "-c", SERVER, mode, str(cpu)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the {mode} server did not start (said {line!r})")
        self.port = int(line)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


# ---- the client side of each test: returns (seconds, bytes sent, bytes received) ---------


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):  # each pass moves >= 1 byte or raises
        k = sock.recv_into(view[got:])
        if not k:
            raise ConnectionError("server closed early")
        got += k


def bulk_send(sock: socket.socket, size: int) -> tuple[float, int, int]:
    chunk = b"c" * CHUNK
    ack = bytearray(8)
    start = time.perf_counter()
    sock.sendall(struct.pack("!Q", size))
    for _ in range(size // CHUNK):
        sock.sendall(chunk)
    recv_exact(sock, memoryview(ack))  # the sink's count: everything has arrived
    seconds = time.perf_counter() - start
    if struct.unpack("!Q", ack)[0] != size:
        raise RuntimeError(f"the sink received {struct.unpack('!Q', ack)[0]} bytes, not {size}")
    return seconds, 8 + size, 8


def bulk_recv(sock: socket.socket, size: int) -> tuple[float, int, int]:
    buf = bytearray(CHUNK)
    got = 0
    start = time.perf_counter()
    sock.sendall(struct.pack("!Q", size))
    while got < size:  # each pass moves >= 1 byte or raises
        k = sock.recv_into(buf)
        if not k:
            raise ConnectionError("server closed early")
        got += k
    seconds = time.perf_counter() - start
    if got != size:
        raise RuntimeError(f"received {got} bytes, expected {size}")
    return seconds, 8, size


def chatty(sock: socket.socket, rounds: int) -> tuple[float, int, int]:
    msg = b"m" * MSG
    start = time.perf_counter()
    sock.sendall(struct.pack("!Q", rounds))
    for _ in range(rounds):
        if sock.send(msg) != MSG:
            raise RuntimeError("short send of 64 bytes on a blocking socket")
        data = sock.recv(MSG)
        if len(data) != MSG:
            data += recv_rest(sock, MSG - len(data))
    seconds = time.perf_counter() - start
    return seconds, 8 + rounds * MSG, rounds * MSG


def recv_rest(sock: socket.socket, missing: int) -> bytes:
    view = memoryview(bytearray(missing))
    recv_exact(sock, view)
    return bytes(view)


# ---- one run ----------------------------------------------------------------------------


def on_timeout(signum: int, frame: Any) -> None:
    raise TimeoutError(f"a run took more than {RUN_TIMEOUT} s")


def run_once(
    variant: str, client: Callable[..., tuple[float, int, int]], port: int, size: int
) -> tuple[float, str, float]:
    """One connection, one transfer; returns its seconds, who counted, and the client thread's CPU
    seconds for the transfer (which the machine's other load moves less), after checking the counts."""
    seen = {"read": 0, "write": 0}
    gc.collect()

    def on_io(event: str, conn: netstats.Connection, nbytes: int | None) -> None:
        seen[event] += nbytes  # type: ignore[operator]

    cap = None
    kernel_counting = _kernel.supported
    if variant == "wrapped":
        _kernel.supported = False  # as on a platform without TCP_INFO: the wrappers count
        cap = netstats.capture()
    elif variant == "count":
        cap = netstats.capture()
    elif variant == "callback":
        cap = netstats.capture(on_io, events={"read", "write"})
    elif variant == "tagged":
        cap = netstats.capture()
    signal.alarm(RUN_TIMEOUT)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # created during the capture
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect((HOST, port))
            cpu = time.thread_time()
            if variant == "tagged":
                with netstats.tag(bench=client.__name__):
                    seconds, tx, rx = client(sock, size)
            else:
                seconds, tx, rx = client(sock, size)
            cpu = time.thread_time() - cpu
            captured = type(sock) is not STOCK_SOCKET
    finally:
        signal.alarm(0)
        if cap is not None:
            cap.stop()
        _kernel.supported = kernel_counting
        _tags.end()  # the next run starts as in a program that never tagged
    how = check(variant, cap, captured, tx, rx, seen)
    if variant == "tagged" and cap is not None:
        tags = cap.connections[0].tags
        if tags != [{"labels": {"bench": client.__name__}, "rx": rx, "tx": tx}]:
            raise RuntimeError(f"tagged: the tags counted {tags}, transferred tx={tx} rx={rx}")
    return seconds, how, cpu


def check(variant: str, cap: Any, captured: bool, tx: int, rx: int, seen: dict[str, int]) -> str:
    """Refuse a run whose counts differ from the bytes transferred; say who counted them.

    netstats leaves plain TCP to the kernel (TCP_INFO) when nobody listens for read/write
    events; such a connection has reads == None. Otherwise its per-call wrappers count.
    """
    if captured != (cap is not None):
        raise RuntimeError(f"{variant}: the client socket was {'' if captured else 'not '}a counting socket")
    if cap is None:
        return "-"
    conns = cap.connections
    if len(conns) != 1:
        raise RuntimeError(f"{variant}: {len(conns)} connections captured, expected 1")
    conn = conns[0]
    if (conn.tx, conn.rx) != (tx, rx):
        raise RuntimeError(f"{variant}: counted tx={conn.tx} rx={conn.rx}, transferred tx={tx} rx={rx}")
    expected = {"read": rx, "write": tx} if variant == "callback" else {"read": 0, "write": 0}
    if seen != expected:
        raise RuntimeError(f"{variant}: the callback saw {seen}, expected {expected}")
    return "kernel" if conn.reads is None else "wrappers"


# ---- one test ---------------------------------------------------------------------------


def measure(
    name: str, mode: str, client: Callable[..., Any], size: int, runs: int, cpu: int
) -> dict[str, Any]:
    """Runs the variants interleaved, after one untimed warm-up run of each."""
    server = Server(mode, cpu)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu_times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    counted_by: dict[str, set[str]] = {v: set() for v in VARIANTS}
    try:
        for variant in VARIANTS:
            run_once(variant, client, server.port, size)
        for i in range(runs):
            for variant in VARIANTS:
                seconds, how, cpu = run_once(variant, client, server.port, size)
                times[variant].append(seconds)
                cpu_times[variant].append(cpu)
                counted_by[variant].add(how)
            print(f"  {name}: run {i + 1}/{runs} done", file=sys.stderr)
    finally:
        server.close()
    result = summarize(name, size, runs, times, counted_by)
    for variant, row in result["variants"].items():  # the client's CPU: the same two ratios
        row["cpu_ratio"] = statistics.median(cpu_times[variant]) / statistics.median(cpu_times["stock"])
        row["cpu_paired_ratio"] = statistics.median(
            v / s for v, s in zip(cpu_times[variant], cpu_times["stock"], strict=True)
        )
    return result


def summarize(
    name: str, size: int, runs: int, times: dict[str, list[float]], counted_by: dict[str, set[str]]
) -> dict[str, Any]:
    """Medians, and two ratios: of the medians, and the median of each run's ratio to its stock run."""
    stock = statistics.median(times["stock"])
    variants = {}
    for variant, values in times.items():
        median = statistics.median(values)
        variants[variant] = {
            "median_s": median,
            "min_s": min(values),
            "max_s": max(values),
            "times_s": values,
            "ratio": median / stock,
            "paired_ratio": statistics.median(v / s for v, s in zip(values, times["stock"], strict=True)),
            "target": TARGETS.get((name, variant)),
            "counted_by": "+".join(sorted(counted_by[variant])),
        }
        if name == "chatty":
            variants[variant]["us_per_round_trip"] = median / size * 1e6
    return {"size": size, "runs": runs, "variants": variants}


def chatty_test(size: int, runs: int, cpu: int) -> dict[str, Any]:
    """Pins this thread to `cpu` (the server pins itself there too) for the test's duration."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        return measure("chatty", "echo", chatty, size, runs, cpu)
    finally:
        os.sched_setaffinity(0, before)


# ---- output -----------------------------------------------------------------------------


def describe(name: str, result: dict[str, Any], cpu: int) -> str:
    size, runs = result["size"], result["runs"]
    if name == "bulk send":
        what = f"{size // MiB} MiB, client sendall() in 64 KiB chunks to a sink"
    elif name == "bulk recv":
        what = f"{size // MiB} MiB, server sends, client recv_into() a 64 KiB buffer"
    else:
        what = f"{size:,} round trips of 64 B, TCP_NODELAY, client and server pinned to CPU {cpu}"
    return f"{name}: {what}; median of {runs} interleaved runs"


def show(
    results: dict[str, Any], args: argparse.Namespace, table: Callable[[str, Any, int], str], cpu: int
) -> None:
    """The results as JSON (--json) or as one table each; shared with bench/connections.py."""
    if args.json:
        info = {"python": platform.python_version(), "cpus": os.cpu_count(), "quick": args.quick}
        print(json.dumps({**info, "tests": results}, indent=2))
        return
    print(f"netstats {netstats.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    for name, result in results.items():
        print()
        print(table(name, result, cpu))


def table(name: str, result: dict[str, Any], cpu: int) -> str:
    is_chatty = name == "chatty"
    lines = [describe(name, result, cpu)]
    head = f"  {'variant':<9} {'median s':>9} {'min s':>9} {'max s':>9}"
    lines.append(
        head
        + (f" {'us/RTT':>7} {'cpu':>6}" if is_chatty else "")
        + f" {'ratio':>6} {'paired':>6}  counted by  target"
    )
    for variant, v in result["variants"].items():
        row = f"  {variant:<9} {v['median_s']:9.4f} {v['min_s']:9.4f} {v['max_s']:9.4f}"
        if is_chatty:
            row += f" {v['us_per_round_trip']:7.2f} {v['cpu_ratio']:6.3f}"
        if variant == "stock":
            row += f" {'-':>6} {'-':>6}  -"
        else:
            row += f" {v['ratio']:6.3f} {v['paired_ratio']:6.3f}  {v['counted_by']:<10}"
        target = v["target"]
        if target is not None:
            row += f"  <= {target:.2f} {'ok' if v['ratio'] <= target else 'OVER'}"
        lines.append(row.rstrip())
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes and 3 runs per test")
    parser.add_argument("--runs", type=int, help="runs per variant for every test (default 5 bulk, 9 chatty)")
    parser.add_argument("--only", choices=("bulk", "chatty"), help="run only these tests")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    args = parser.parse_args(argv)
    if args.runs is not None and not 1 <= args.runs <= 1000:
        parser.error("--runs must be between 1 and 1000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    conf = QUICK if args.quick else FULL
    bulk_runs = args.runs or conf["bulk_runs"]
    chatty_runs = args.runs or conf["chatty_runs"]
    cpu = max(os.sched_getaffinity(0))
    signal.signal(signal.SIGALRM, on_timeout)
    results: dict[str, Any] = {}
    if args.only in (None, "bulk"):
        results["bulk send"] = measure("bulk send", "sink", bulk_send, conf["bulk_bytes"], bulk_runs, -1)
        results["bulk recv"] = measure("bulk recv", "source", bulk_recv, conf["bulk_bytes"], bulk_runs, -1)
    if args.only in (None, "chatty"):
        results["chatty"] = chatty_test(conf["round_trips"], chatty_runs, cpu)
    show(results, args, table, cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
