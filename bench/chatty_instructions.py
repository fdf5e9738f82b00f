"""What netstats costs per round trip on a chatty connection, in instructions: repeatable under load.

The chatty loop of bench/sockets.py (a blocking TCP_NODELAY socket: send 64 B, recv until 64 B
came back), N round trips on one connection against the same echo server (a separate process
that never imports netstats), with the client run under `valgrind --tool=callgrind`, which
counts its user-space instructions (the kernel's side of a system call is not in them) whatever
else the machine is doing.

Each variant runs at two loop sizes, N1 and N2, and the figure per round trip is the difference
divided by N2 - N1: interpreter start-up, imports, connect, close and the capture's start and
stop cancel out. Variants, as in bench/sockets.py: "stock" (no capture), "own" (no capture, the
loop calling the callback itself after each send and recv: the callback's own cost), "wrapped"
(netstats.capture() with the kernel's counters off, `_kernel.supported = False`: the per-call
wrappers count), "count" (netstats.capture(): the kernel counts plain TCP), "callback"
(netstats.capture(cb) for read/write events) and "tagged" (netstats.capture(), the loop inside
`netstats.tag(bench="chatty")`). Every captured run checks its counts against the bytes moved
(and "tagged" its tag's rx/tx, "callback" what its callback saw) and fails otherwise. The kernel
census is off (its sweeps go by the clock; bench/census.py measures them). With "own", "wrapped"
and "callback" measured, it prints the callback's dispatch per read or write (callback - wrapped
- (own - stock), halved) against issue 27's target.

    .venv/bin/python bench/chatty_instructions.py                  # 2000 and 6000 round trips
    .venv/bin/python bench/chatty_instructions.py --n1 1000 --n2 3000 --json
    .venv/bin/python bench/chatty_instructions.py --src /path/to/other/src   # another checkout

`--src` measures another checkout's netstats with this script (before/after in one sitting).
Needs valgrind (Debian's package of that name).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("stock", "own", "wrapped", "count", "callback", "tagged")
CALLBACK_TARGET = 3000  # issue 27: a callback's dispatch per read or write, over the wrappers
MSG = 64
WARM = 50  # round trips before the measured ones, in every variant and size


def client(port: int, n: int, variant: str) -> None:
    """The measured process: one connection, WARM + n round trips, under the variant's capture."""
    import netstats
    from netstats import _kernel
    from netstats._sources import census

    census.supported = False  # (not started: no thread, no sweeps)
    seen = {"read": 0, "write": 0}

    def on_io(event: str, conn: Any, nbytes: int | None) -> None:
        seen[event] += nbytes  # type: ignore[operator]

    def loop(sock: socket.socket, k: int) -> None:
        msg = b"m" * MSG
        own = variant == "own"  # stock, calling the callback itself: the callback's own cost
        for _ in range(k):
            if sock.send(msg) != MSG:
                raise RuntimeError("short send of 64 bytes on a blocking socket")
            if own:
                on_io("write", sock, MSG)
            data = sock.recv(MSG)
            if own:
                on_io("read", sock, len(data))
            while len(data) < MSG:
                more = sock.recv(MSG - len(data))
                if not more:
                    raise ConnectionError("server closed early")
                data += more

    def run() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.connect(("127.0.0.1", port))
            sock.sendall(struct.pack("!Q", WARM + n))
            loop(sock, WARM)
            loop(sock, n)

    cap = None
    if variant == "wrapped":
        _kernel.supported = False  # as on a platform without TCP_INFO: the wrappers count
    if variant == "callback":
        cap = netstats.capture(on_io, events={"read", "write"})
    elif variant not in ("stock", "own"):
        cap = netstats.capture()
    try:
        if variant == "tagged":
            with netstats.tag(bench="chatty"):
                run()
        else:
            run()
    finally:
        if cap is not None:
            cap.stop()
    if cap is None:
        return
    tx, rx = 8 + (WARM + n) * MSG, (WARM + n) * MSG
    conns = cap.connections
    if len(conns) != 1 or (conns[0].tx, conns[0].rx) != (tx, rx):
        raise AssertionError(f"{variant}: counted {[(c.tx, c.rx) for c in conns]}, moved tx={tx} rx={rx}")
    wrapped = conns[0].reads is not None
    if wrapped != (variant in ("wrapped", "callback", "tagged")):
        raise AssertionError(f"{variant}: counted by {'the wrappers' if wrapped else 'the kernel'}")
    if seen != ({"read": rx, "write": tx} if variant == "callback" else {"read": 0, "write": 0}):
        raise AssertionError(f"{variant}: the callback saw {seen}, moved tx={tx} rx={rx}")
    if variant == "tagged" and conns[0].tags != [{"labels": {"bench": "chatty"}, "rx": rx, "tx": tx}]:
        raise AssertionError(f"tagged: the tags counted {conns[0].tags}, moved tx={tx} rx={rx}")


def _server() -> tuple[subprocess.Popen[str], int]:
    sys.path.insert(0, HERE)
    from sockets import SERVER  # the same peer as bench/sockets.py's chatty test

    server = subprocess.Popen(
        [sys.executable, "-I", "-c", SERVER, "echo", "-1"], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, int(server.stdout.readline())


def instructions(src: str | None, port: int, n: int, variant: str) -> int:
    sys.path.insert(0, HERE)
    from instructions import callgrind_total  # bench/instructions.py, beside this script

    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in every run
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, os.path.abspath(__file__), "--client", str(port), str(n), variant]
    return callgrind_total(command, env, f"{variant}, {n} round trips")


def measure(src: str | None, n1: int, n2: int, variants: tuple[str, ...]) -> dict[str, Any]:
    server, port = _server()
    try:
        out: dict[str, Any] = {}
        for variant in variants:
            a, b = instructions(src, port, n1, variant), instructions(src, port, n2, variant)
            out[variant] = {"instructions_per_round_trip": round((b - a) / (n2 - n1))}
    finally:
        server.kill()
        server.wait(10)
    if "stock" in out:
        stock = out["stock"]["instructions_per_round_trip"]
        for row in out.values():
            row["extra_instructions"] = row["instructions_per_round_trip"] - stock
            row["instruction_ratio"] = round(row["instructions_per_round_trip"] / stock, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n1", type=int, default=2000, help="round trips in the smaller run (default 2000)")
    parser.add_argument("--n2", type=int, default=6000, help="round trips in the larger run (default 6000)")
    parser.add_argument("--src", help="measure the netstats package under this folder instead")
    parser.add_argument("--only", nargs="+", choices=VARIANTS, help="these variants only (stock always runs)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument("--client", nargs=3, metavar=("PORT", "N", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        port, n, variant = args.client
        client(int(port), int(n), variant)
        return 0
    if not 1 <= args.n1 < args.n2 <= 1_000_000:
        parser.error("need 1 <= --n1 < --n2 <= 1000000")
    if not shutil.which("valgrind"):
        parser.error("needs valgrind (apt-get install valgrind)")
    variants = tuple(v for v in VARIANTS if v == "stock" or not args.only or v in args.only)
    result = measure(args.src, args.n1, args.n2, variants)
    if args.json:
        print(json.dumps({"n1": args.n1, "n2": args.n2, "src": args.src, "variants": result}, indent=2))
        return 0
    print(f"per round trip (send 64 B + recv 64 B, one connection), from {args.n2} - {args.n1} round trips")
    print(f"  {'variant':<9} {'instructions':>12} {'extra':>7} {'ratio':>6}")
    for variant, row in result.items():
        print(
            f"  {variant:<9} {row['instructions_per_round_trip']:>12} {row['extra_instructions']:>7}"
            f" {row['instruction_ratio']:>6}"
        )
    if {"own", "wrapped", "callback"} <= set(result):
        per_call = {
            v: result[v]["instructions_per_round_trip"] / 2 for v in ("stock", "own", "wrapped", "callback")
        }
        dispatch = per_call["callback"] - per_call["wrapped"] - (per_call["own"] - per_call["stock"])
        print(
            f"callback dispatch: {dispatch:,.0f} instructions per read or write over the wrappers, besides"
            f" the callback's own {per_call['own'] - per_call['stock']:,.0f} (target <= {CALLBACK_TARGET:,}):"
            f" {'met' if dispatch <= CALLBACK_TARGET else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
