"""What netstats costs per connection, in instructions and system calls: repeatable under load.

The raw loop of bench/connections.py (socket.create_connection(), a 64-byte round trip,
close()) N times, against the same echo server (a separate process that never imports
netstats), with the client run under a counter that the machine's other load does not move:

- instructions: `valgrind --tool=callgrind` counts the client's user-space instructions
  (the kernel's side of a system call is not in them);
- system calls: `strace -f -c` counts the client's system calls (the kernel's side).

Each variant ("stock", "count", "callback") runs at two loop sizes, N1 and N2, and the figure
per connection is the difference divided by N2 - N1: interpreter start-up, imports and the
capture's own start and stop cancel out. The kernel census's sweeps, which go by the clock
rather than by connection (bench/census.py measures them), are left out unless --census.
Every captured client run checks its own counts (64 bytes each way per connection, every
connection connected and closed) and fails otherwise.

    .venv/bin/python bench/instructions.py                 # 100 and 300 connections
    .venv/bin/python bench/instructions.py --n1 50 --n2 150 --json
    .venv/bin/python bench/instructions.py --src /path/to/other/src   # another checkout's netstats

`--src` measures another checkout's netstats with this script (before/after in one run).
Needs valgrind and strace (Debian's packages of those names); a missing one is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("stock", "count", "callback")
MSG = 64


def client(port: int, n: int, variant: str) -> None:
    """The measured process: n raw connections, under the variant's capture."""
    import netstats

    sys.path.insert(0, HERE)
    from connections import raw_loop  # bench/connections.py's raw loop, beside this script

    def loop(k: int) -> None:
        raw_loop(port, k)

    if not os.environ.get("BENCH_CENSUS"):
        # The census sweeps by the clock, not per connection (bench/census.py measures it):
        # under valgrind's slowdown its sweeps would blur the per-connection figure.
        from netstats._sources import census

        census.supported = False  # (not started: no thread, no sweeps)
    loop(5)  # warm: first-use imports and caches, the same in every variant and size
    if variant == "stock":
        loop(n)
        return
    cap = netstats.capture() if variant == "count" else netstats.capture(lambda event, conn, nbytes: None)
    try:
        loop(n)
    finally:
        cap.stop()
    conns = cap.connections
    if len(conns) != n or cap.rx != n * MSG or cap.tx != n * MSG:
        raise AssertionError(
            f"{variant}: {len(conns)} connections, rx {cap.rx}, tx {cap.tx}; expected {n} x {MSG}"
        )
    if any(c.connected is None or c.closed is None or c.error is not None for c in conns):
        raise AssertionError(f"{variant}: a connection not connected and closed")


def _server(cpu: int) -> tuple[subprocess.Popen[str], int]:
    sys.path.insert(0, HERE)
    from connections import SERVER  # the same peer as bench/connections.py

    server = subprocess.Popen(
        [sys.executable, "-I", "-c", SERVER, str(cpu)], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    return server, int(server.stdout.readline())


CENSUS = {"on": False}  # --census: the census's timed sweeps in the measured runs


def _client_command(src: str | None, port: int, n: int, variant: str) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in every run
    if CENSUS["on"]:
        env["BENCH_CENSUS"] = "1"
    if src:
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return [sys.executable, os.path.abspath(__file__), "--client", str(port), str(n), variant], env


def instructions(src: str | None, port: int, n: int, variant: str) -> int:
    command, env = _client_command(src, port, n, variant)
    return callgrind_total(command, env, f"{variant}, {n} connections")


def callgrind_total(command: list[str], env: dict[str, str], what: str) -> int:
    """The user-space instructions valgrind's callgrind counts in command, run to its end
    (bench/chatty_instructions.py uses it too). `what`: the run, named in an error."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *command],
            env=env,
            timeout=1800,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{what}: the client failed:\n{done.stderr[-2000:]}")
        with open(out) as f:
            for line in f:
                if line.startswith(("summary:", "totals:")):
                    return int(line.split()[1])
    raise RuntimeError("no totals in callgrind's output")


def syscalls(src: str | None, port: int, n: int, variant: str) -> tuple[int, dict[str, int]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "strace.out")
        command, env = _client_command(src, port, n, variant)
        subprocess.run(
            ["strace", "-f", "-c", "-o", out, *command],
            env=env,
            check=True,
            timeout=1800,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        by_name: dict[str, int] = {}
        with open(out) as f:
            for line in f:
                # % time, seconds, usecs/call, calls, [errors,] syscall
                m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
                if m and m.group(2) != "total":
                    by_name[m.group(2)] = int(m.group(1))
    return sum(by_name.values()), by_name


def measure(src: str | None, n1: int, n2: int, cpu: int, tools: list[str]) -> dict[str, Any]:
    server, port = _server(cpu)
    try:
        out: dict[str, Any] = {}
        for variant in VARIANTS:
            row: dict[str, Any] = {}
            if "valgrind" in tools:
                a, b = instructions(src, port, n1, variant), instructions(src, port, n2, variant)
                row["instructions_per_connection"] = round((b - a) / (n2 - n1))
            if "strace" in tools:
                (a, by_a), (b, by_b) = syscalls(src, port, n1, variant), syscalls(src, port, n2, variant)
                row["syscalls_per_connection"] = round((b - a) / (n2 - n1), 2)
                per = {k: round((by_b.get(k, 0) - by_a.get(k, 0)) / (n2 - n1), 2) for k in by_b}
                row["syscalls_by_name"] = {k: v for k, v in sorted(per.items()) if v}
            out[variant] = row
    finally:
        server.kill()
        server.wait(10)
    stock = out["stock"]
    for variant in VARIANTS[1:]:
        row = out[variant]
        if "instructions_per_connection" in row:
            extra = row["instructions_per_connection"] - stock["instructions_per_connection"]
            row["extra_instructions"] = extra
            row["instruction_ratio"] = round(
                row["instructions_per_connection"] / stock["instructions_per_connection"], 3
            )
        if "syscalls_per_connection" in row:
            row["extra_syscalls"] = round(
                row["syscalls_per_connection"] - stock["syscalls_per_connection"], 2
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n1", type=int, default=100, help="connections in the smaller run (default 100)")
    parser.add_argument("--n2", type=int, default=300, help="connections in the larger run (default 300)")
    parser.add_argument("--src", help="measure the netstats package under this folder instead")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument(
        "--census", action="store_true", help="keep the kernel census's timed sweeps (left out by default)"
    )
    parser.add_argument("--client", nargs=3, metavar=("PORT", "N", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        port, n, variant = args.client
        client(int(port), int(n), variant)
        return 0
    if not 1 <= args.n1 < args.n2 <= 100_000:
        parser.error("need 1 <= --n1 < --n2 <= 100000")
    CENSUS["on"] = args.census
    tools = [t for t in ("valgrind", "strace") if shutil.which(t)]
    if not tools:
        parser.error("needs valgrind or strace (apt-get install valgrind strace)")
    cpu = max(os.sched_getaffinity(0))
    result = measure(args.src, args.n1, args.n2, cpu, tools)
    if args.json:
        print(json.dumps({"n1": args.n1, "n2": args.n2, "src": args.src, "variants": result}, indent=2))
        return 0
    print(
        "per connection (create_connection + 64 B round trip + close),"
        f" from {args.n2} - {args.n1} connections"
    )
    print(f"  {'variant':<9} {'instructions':>12} {'extra':>9} {'ratio':>6} {'syscalls':>8} {'extra':>6}")
    for variant, row in result.items():
        print(
            f"  {variant:<9} {row.get('instructions_per_connection', '-'):>12}"
            f" {row.get('extra_instructions', '-'):>9}"
            f" {row.get('instruction_ratio', '-'):>6} {row.get('syscalls_per_connection', '-'):>8}"
            f" {row.get('extra_syscalls', '-'):>6}"
        )
    for variant, row in result.items():
        if "syscalls_by_name" in row:
            print(
                f"  {variant} syscalls: "
                + ", ".join(f"{k} {v:g}" for k, v in row["syscalls_by_name"].items())
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
