"""What the kernel census costs: the share of one core its thread takes with N descriptors open.

For each N (0, 1,000 and 5,000 descriptors by default), the process opens N/2 loopback TCP
connections with the stock C socket type, both ends in this process (as C code would: netstats
cannot count them itself, so the census finds every one), starts a capture, waits until every
connection is found with its wire bytes (or stops with an error), and then lets them sit idle for
a few seconds while the main thread sleeps. The figure is the census thread's own CPU time over
that wall time (its thread clock: what the machine's other load moves least), against the
target of issue 27: at most 1% of a core with 5,000 descriptors. Also shown: what one full
sweep of the descriptor table costs, called directly (median CPU time of 20), and one sweep of a
table as it was (the census's watched sockets only; none before issue 27: every sweep was full).

    .venv/bin/python bench/census.py                       # 0, 1,000 and 5,000, 10 s each
    .venv/bin/python bench/census.py --sockets 2000 --seconds 20
    PYTHONPATH=/path/to/other/src .venv/bin/python bench/census.py   # another checkout
    .venv/bin/python bench/census.py --instructions [--src /path/to/other/src]

`--instructions` counts instead, in what the machine's load does not move, the user-space
instructions (valgrind's callgrind) of one sweep with N descriptors open and their connections
found: the sweep the thread makes when the table is as it was (before issue 27 every sweep was
a full one) and a full sweep, each run K1 and K2 times and differenced (SWEEPS). The thread's
destroy feed, which wakes for every TCP socket that dies in the network namespace, runs
meanwhile: on a busy machine that is the noise of these figures. The kernel's side of the
listing and of each fstat is not in these figures: the CPU share above has it.
"""

from __future__ import annotations

import _socket
import argparse
import gc
import json
import resource
import statistics
import sys
import time

import netstats
from netstats._sources import census

TARGET = 0.01  # issue 27: at most 1% of one core, with 5,000 descriptors open


def open_pairs(n: int) -> list[object]:
    """n connections, both ends in this process, 64 bytes sent by each client."""
    listener = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    address = listener.getsockname()
    out: list[object] = []
    for _ in range(n):
        c = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        c.connect(address)
        fd, _ = listener._accept()
        out.append(_socket.socket(fileno=fd))
        c.send(b"x" * 64)
        out.append(c)
    out.append(listener)  # (kept open: the accepted ends are a server's, which servers=False leaves out)
    return out


def thread_cpu(thread: object) -> float:
    """CPU seconds the thread has used (its POSIX thread clock)."""
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))  # type: ignore[attr-defined]


def measure(descriptors: int, seconds: float) -> dict[str, float]:
    pairs = descriptors // 2
    with netstats.capture(servers=False) as cap:
        sockets = open_pairs(pairs)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = [c for c in cap.connections if c.source == "kernel"]
            if len(found) == pairs and all(c.wire_tx == 64 for c in found):
                break
            time.sleep(0.05)
        else:
            raise SystemExit(f"census found {len(found)} of {pairs} connections, or wrong wire bytes")
        thread = census.census._thread
        assert thread is not None
        time.sleep(2.5)  # past the finding: what is measured is the idle descriptors' cost
        cpu0, wall0 = thread_cpu(thread), time.monotonic()
        time.sleep(seconds)
        share = (thread_cpu(thread) - cpu0) / (time.monotonic() - wall0)
        sweeps, idle = [], []
        # A sweep when the table is as it was (the watched sockets only); before issue 27, none.
        quick = getattr(census.census, "_look_again", None)
        for _ in range(20):
            t0 = time.thread_time()
            census.census.sweep()
            t1 = time.thread_time()
            if quick is not None:
                quick()
            sweeps.append(t1 - t0)
            idle.append(time.thread_time() - t1)
        for s in sockets:
            s.close()  # type: ignore[attr-defined]
    return {
        "descriptors": pairs * 2 + (pairs > 0),
        "core_share": share,
        "full_sweep_ms": statistics.median(sweeps) * 1e3,
        "idle_sweep_ms": statistics.median(idle) * 1e3 if quick is not None else None,
    }


def sweeps_client(descriptors: int, k: int, kind: str) -> None:
    """The measured process (--instructions): descriptors open, their connections found, then k
    sweeps of the kind, called directly (the thread's own come an hour later)."""
    census.INTERVAL = 3600.0  # (read when the thread starts: it never sweeps here)
    with netstats.capture():
        sockets = open_pairs(descriptors // 2)
        census.INTERVAL = 0.0  # (a connection is recorded at its second sweep, any time after)
        census.census.sweep()
        census.census.sweep()
        census.INTERVAL = 3600.0
        quick = getattr(census.census, "_look_again", census.census.sweep)
        sweep = census.census.sweep if kind == "full" else quick
        gc.collect()
        gc.freeze()  # (a collection of the set-up's objects would land in one run, not the other)
        for _ in range(k):
            sweep()
        for s in sockets:
            s.close()  # type: ignore[attr-defined]


SWEEPS = {"idle": (10, 110), "full": (5, 15)}  # K1, K2 of each kind (an idle sweep is small)


def instructions(descriptors: list[int], src: str | None) -> dict[str, dict[int, int]]:
    """Instructions per sweep, {kind: {descriptors: instructions}}."""
    import concurrent.futures
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from instructions import callgrind_total  # bench/instructions.py

    env = dict(os.environ, PYTHONHASHSEED="0")
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    runs = [(kind, n, k) for kind, ks in SWEEPS.items() for n in descriptors for k in ks]

    def run(r: tuple[str, int, int]) -> int:
        kind, n, k = r
        command = [sys.executable, os.path.abspath(__file__), "--client", str(n), str(k), kind]
        return callgrind_total(command, env, f"{kind} sweeps, {n} descriptors")

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        totals = dict(zip(runs, pool.map(run, runs), strict=True))
    return {
        kind: {n: round((totals[kind, n, k2] - totals[kind, n, k1]) / (k2 - k1)) for n in descriptors}
        for kind, (k1, k2) in SWEEPS.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sockets", type=int, nargs="+", default=[0, 1000, 5000])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--instructions", action="store_true", help="count instructions per sweep")
    parser.add_argument("--src", help="--instructions: measure the netstats package under this folder")
    parser.add_argument("--client", nargs=3, metavar=("N", "K", "KIND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not census.supported:
        print("the kernel census runs on Linux only")
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max([*args.sockets, int(args.client[0]) if args.client else 0]) + 64
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    if args.client:
        sweeps_client(int(args.client[0]), int(args.client[1]), args.client[2])
        return 0
    if args.instructions:
        per = instructions(args.sockets, args.src)
        if args.json:
            print(json.dumps(per, indent=2))
            return 0
        print(
            "user-space instructions per sweep (callgrind, 110 - 10 idle sweeps, 15 - 5 full ones)"
            + (f" of {args.src}" if args.src else "")
        )
        print(f"{'descriptors':>11} {'table as it was':>16} {'full sweep':>12}")
        for n in args.sockets:
            print(f"{n:>11} {per['idle'][n]:>16,} {per['full'][n]:>12,}")
        return 0
    results = [measure(n, args.seconds) for n in args.sockets]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"netstats {netstats.__version__} ({netstats.__file__}), Python {sys.version.split()[0]}")
    print(f"census thread, {args.seconds:g} s idle; target: at most {TARGET:.0%} of a core at 5,000")
    print(
        f"{'descriptors':>11} {'census, % of a core':>20} {'one full sweep':>15} {'idle sweep':>15}  target"
    )
    for r in results:
        verdict = ""
        if r["descriptors"] >= 5000:
            verdict = "met" if r["core_share"] <= TARGET else "NOT MET"
        share, sweep = r["core_share"] * 100, r["full_sweep_ms"]
        idle = "-" if r["idle_sweep_ms"] is None else f"{r['idle_sweep_ms']:.3f} ms"
        print(f"{r['descriptors']:>11} {share:>19.3f}% {sweep:>12.3f} ms {idle:>15}  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
