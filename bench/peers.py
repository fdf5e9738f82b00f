"""What netstats costs next to what a Python user would otherwise run to see their HTTP traffic.

Three workloads against a loopback HTTP/1.1 server in another process (bench/connections.py's
peer, which never imports netstats; a 64-byte body per request):

- `session`: a requests Session, keep-alive (one connection);
- `get`: `requests.get()`, a new connection for each request;
- `aiohttp`: an aiohttp ClientSession, keep-alive.

Each runs stock and under each tool:

- `netstats`: `netstats.capture()` around the loop;
- `tagged`: the same, each request under its own `netstats.tag(route=...)`;
- `otel`: OpenTelemetry's HTTP instrumentation (opentelemetry-instrumentation-requests and
  -urllib3 for requests, -aiohttp-client for aiohttp), spans exported to an in-memory exporter
  by a SimpleSpanProcessor;
- `sentry`: sentry-sdk with traces_sample_rate=1.0, each request in its own transaction (as a
  web handler's would be), its default integrations making the HTTP spans, and a transport that
  keeps the envelopes in memory.

Nothing is sent anywhere. The figure is the client's user-space instructions per request
(`valgrind --tool=callgrind`, which the machine's load does not move), each variant run at two
loop sizes and differenced, so start-up, imports and the tools' set-up cancel out (as
bench/instructions.py does); printed as extra instructions per request over stock and the ratio
to stock. Every run checks what it measured: netstats' counts equal the server's own (and the
tags' totals too), and the tracing tools made a span for each request. The kernel census's timed
sweeps are left out (they go by the clock: bench/census.py measures them).

A tool whose packages are not installed is skipped, and the table says so (they are the
optional `bench` extra: `pip install -e '.[bench]'`).

    .venv/bin/python bench/peers.py                      # 20 and 60 requests, 2 runs at a time
    .venv/bin/python bench/peers.py --n1 50 --n2 150 --jobs 1 --json
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import functools
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

WORKLOADS = {
    "session": "requests Session (keep-alive)",
    "get": "requests.get, new connection each",
    "aiohttp": "aiohttp keep-alive",
}
VARIANTS = {
    "netstats": "netstats capture()",
    "tagged": "netstats + a tag per request",
    "otel": "OpenTelemetry HTTP instrumentation",
    "sentry": "sentry-sdk, spans",
}
# What each needs, as import names (pip names in the message when one is missing).
NEEDS = {
    "session": {"requests": "requests"},
    "get": {"requests": "requests"},
    "aiohttp": {"aiohttp": "aiohttp"},
    "otel": {
        "opentelemetry.sdk": "opentelemetry-sdk",
        "opentelemetry.instrumentation.requests": "opentelemetry-instrumentation-requests",
        "opentelemetry.instrumentation.urllib3": "opentelemetry-instrumentation-urllib3",
        "opentelemetry.instrumentation.aiohttp_client": "opentelemetry-instrumentation-aiohttp-client",
    },
    "sentry": {"sentry_sdk": "sentry-sdk"},
}
BODY = 64  # bytes of each response's body (bench/connections.py's server)


def missing(name: str) -> list[str]:
    """The pip names of what `name` (a workload or variant) needs and is not installed."""
    out = []
    for module, package in NEEDS.get(name, {}).items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            out.append(package)
    return out


# ---- the measured process ------------------------------------------------------------------


def client(port: int, workload: str, variant: str, n: int) -> None:
    """n requests of the workload under the variant (after 5 to warm up), then the checks."""
    import asyncio

    import netstats
    from netstats._sources import census

    census.supported = False  # (its sweeps go by the clock: left out, as bench/instructions.py)
    url = f"http://127.0.0.1:{port}/"
    check = setup(variant, workload)
    cap = netstats.capture() if variant in ("netstats", "tagged") else None
    tagged = variant == "tagged"

    def one(get: Any, i: int) -> Any:
        if tagged:
            with netstats.tag(route=f"/r{i % 4}"):
                return get()
        return get()

    if workload in ("session", "get"):
        import requests

        session = requests.Session() if workload == "session" else None

        def get() -> bytes:
            r = (session.get if session is not None else requests.get)(url, timeout=30)
            return r.content  # type: ignore[no-any-return]

        if check.get("root"):  # sentry: a transaction per request
            inner, get = get, lambda: check["root"](inner)
        bodies = [one(get, i) for i in range(n + 5)]
        if session is not None:
            session.close()
    else:
        import aiohttp

        async def main() -> list[bytes]:
            async with aiohttp.ClientSession() as s:

                async def aget() -> bytes:
                    async with s.get(url) as r:
                        return await r.read()

                out = []
                for i in range(n + 5):
                    if tagged:
                        with netstats.tag(route=f"/r{i % 4}"):
                            out.append(await aget())
                    elif check.get("aroot"):
                        out.append(await check["aroot"](aget))
                    else:
                        out.append(await aget())
                return out

        bodies = asyncio.run(main())
    if any(len(b) != BODY for b in bodies):
        raise AssertionError(f"{workload}/{variant}: a body not of {BODY} bytes")
    if cap is not None:
        cap.stop()
    from connections import server_totals  # (bench/connections.py's peer; after the workload)

    rx, tx = server_totals(port)  # what the server moved (its own peer: this run's)
    if cap is not None:
        if (cap.rx, cap.tx) != (tx, rx):
            raise AssertionError(
                f"{workload}/{variant}: netstats counted {cap.rx}/{cap.tx}, server {tx}/{rx}"
            )
        if tagged:
            routes = cap.by_tag("route")
            got = sum(v["rx"] for k, v in routes.items() if k is not None)
            if got != tx:
                raise AssertionError(f"{workload}/{variant}: tags' rx {got}, server sent {tx}")
    if "spans" in check and check["spans"]() < (n + 5) * check.get("per_request", 1):
        raise AssertionError(f"{workload}/{variant}: {check['spans']()} spans for {n + 5} requests")


def setup(variant: str, workload: str) -> dict[str, Any]:
    """Install the variant's tool; what the checks need (`spans`: how many were recorded)."""
    if variant == "otel":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        if workload == "aiohttp":
            from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor

            AioHttpClientInstrumentor().instrument()
        else:
            from opentelemetry.instrumentation.requests import RequestsInstrumentor
            from opentelemetry.instrumentation.urllib3 import URLLib3Instrumentor

            RequestsInstrumentor().instrument()
            URLLib3Instrumentor().instrument()
        return {"spans": lambda: len(exporter.get_finished_spans())}
    if variant == "sentry":
        import sentry_sdk
        from sentry_sdk.transport import Transport

        envelopes: list[Any] = []

        class Memory(Transport):  # type: ignore[misc]
            """Keeps what sentry-sdk would send: nothing leaves the process."""

            def capture_envelope(self, envelope: Any) -> None:
                envelopes.append(envelope)

            def flush(self, *args: Any, **kwargs: Any) -> None:
                pass

        sentry_sdk.init(
            dsn="https://public@sentry.invalid/1",  # (never contacted: the transport keeps it)
            transport=Memory,
            traces_sample_rate=1.0,
        )
        if hasattr(sentry_sdk, "start_transaction"):  # sentry-sdk 2
            start = functools.partial(sentry_sdk.start_transaction, name="request", op="http.server")
        else:  # 3: a root span is the transaction
            start = functools.partial(sentry_sdk.start_span, name="request")

        def root(get: Any) -> Any:
            with start():
                return get()

        async def aroot(aget: Any) -> Any:
            with start():
                return await aget()

        def spans() -> int:
            sentry_sdk.flush()
            made = 0
            for envelope in envelopes:
                for item in envelope.items:
                    if item.type == "span":  # sentry-sdk 3: spans sent as such
                        made += item.headers.get("item_count", 1)
                    elif item.type == "transaction":  # 2: a transaction and its spans
                        made += 1 + len((item.get_transaction_event() or {}).get("spans", ()))
            return made

        # Each request's transaction and its HTTP span.
        return {"root": root, "aroot": aroot, "spans": spans, "per_request": 2}
    return {}


# ---- the parent: runs, differences, the table ------------------------------------------------


def server() -> tuple[subprocess.Popen[str], int]:
    """bench/connections.py's peer (its SERVER source, read without importing that script, which
    needs requests), pinned to the last CPU, waiting an hour for its first client (one started
    under valgrind takes minutes to import); and its port."""
    with open(os.path.join(HERE, "connections.py")) as f:
        tree = ast.parse(f.read())
    (source,) = (
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["SERVER"]
        and isinstance(node.value, ast.Constant)
    )
    cpu = max(os.sched_getaffinity(0))
    peer = subprocess.Popen(
        [sys.executable, "-I", "-c", source, str(cpu), "3600"], stdout=subprocess.PIPE, text=True
    )
    assert peer.stdout is not None
    return peer, int(peer.stdout.readline())


def measure(workload: str, variant: str, n: int) -> int:
    """The client's instructions for n requests, against a server of its own (its counts are this
    run's: runs go in parallel)."""
    from instructions import callgrind_total  # bench/instructions.py

    peer, port = server()
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same dict layouts in every run
    command = [sys.executable, os.path.abspath(__file__), "--client", str(port), workload, variant, str(n)]
    try:
        return callgrind_total(command, env, f"{workload}/{variant}, {n} requests")
    finally:
        peer.kill()
        peer.wait(10)


def versions() -> dict[str, str]:
    """The measured packages' versions (those installed)."""
    out = {}
    for package in (
        "netstats",
        "requests",
        "aiohttp",
        "opentelemetry-instrumentation-requests",
        "sentry-sdk",
    ):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n1", type=int, default=20, help="requests in the smaller run (default 20)")
    parser.add_argument("--n2", type=int, default=60, help="requests in the larger run (default 60)")
    parser.add_argument("--jobs", type=int, default=2, help="valgrind runs at a time (default 2)")
    parser.add_argument("--only", nargs="+", choices=list(WORKLOADS), help="these workloads only")
    parser.add_argument("--json", action="store_true", help="print the results as JSON only")
    parser.add_argument(
        "--client", nargs=4, metavar=("PORT", "WORKLOAD", "VARIANT", "N"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.client:
        port, workload, variant, n = args.client
        client(int(port), workload, variant, int(n))
        return 0
    if not 1 <= args.n1 < args.n2:
        parser.error("need 1 <= --n1 < --n2")
    if not shutil.which("valgrind"):
        parser.error("needs valgrind (apt-get install valgrind)")
    skipped = {name: missing(name) for name in [*WORKLOADS, *VARIANTS] if missing(name)}
    workloads = [w for w in (args.only or WORKLOADS) if w not in skipped]
    variants = [v for v in VARIANTS if v not in skipped]
    for name, packages in skipped.items():
        what = WORKLOADS.get(name) or VARIANTS[name]
        print(f"skipped: {what} ({', '.join(packages)} not installed: pip install -e '.[bench]')")

    runs = [(w, v, n) for w in workloads for v in ("stock", *variants) for n in (args.n1, args.n2)]
    with concurrent.futures.ThreadPoolExecutor(max(1, args.jobs)) as pool:
        totals = dict(zip(runs, pool.map(lambda r: measure(*r), runs), strict=True))
    result: dict[str, dict[str, Any]] = {}
    for w in workloads:
        per = {
            v: (totals[w, v, args.n2] - totals[w, v, args.n1]) / (args.n2 - args.n1)
            for v in ("stock", *variants)
        }
        result[w] = {"stock": round(per["stock"])}
        for v in variants:
            result[w][v] = {"extra": round(per[v] - per["stock"]), "ratio": round(per[v] / per["stock"], 3)}
    if args.json:
        out = {"n1": args.n1, "n2": args.n2, "versions": versions(), "skipped": skipped, "workloads": result}
        print(json.dumps(out, indent=2))
        return 0
    print(
        f"\nextra client instructions per request (callgrind, {args.n2} - {args.n1} requests), ratio to stock"
    )
    print("; ".join(f"{p} {v}" for p, v in versions().items()))
    print()
    print("| extra client instructions per request | " + " | ".join(WORKLOADS[w] for w in workloads) + " |")
    print("|---" * (len(workloads) + 1) + "|")
    print(
        "| stock (instructions per request) | "
        + " | ".join(f"{result[w]['stock']:,}" for w in workloads)
        + " |"
    )
    for v in variants:
        cells = [f"{result[w][v]['extra']:+,} (×{result[w][v]['ratio']:.3f})" for w in workloads]
        print(f"| {VARIANTS[v]} | " + " | ".join(cells) + " |")
    for name in skipped:
        if name in VARIANTS:
            print(f"| {VARIANTS[name]} | " + " | ".join("skipped (not installed)" for _ in workloads) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
