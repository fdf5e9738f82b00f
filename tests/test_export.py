"""Exporters: the real prometheus_client endpoint, the real OpenTelemetry SDK, a real Prometheus.

Every expected figure comes from the peers' own counts (tests/peers.py) or known payload sizes.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import urllib.parse
import urllib.request
from typing import Any

import pytest
from helpers import roundtrip
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import netstats
from netstats.export import MissingExtra, otel, prometheus

LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 only, never a proxy
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def parse(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def scrape(url: str) -> list[Sample]:
    """The samples the real HTTP endpoint serves."""
    with LOCAL.open(url, timeout=10) as response:
        return parse(response.read().decode())


def pick(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = pick(samples, name, **labels)
    assert found, f"no {name} sample with {labels}"
    return sum(s.value for s in found)


def otel_points(reader: InMemoryMetricReader) -> dict[str, tuple[str, list[Any]]]:
    """name -> (unit, data points) as the SDK's in-memory reader sees them now."""
    out: dict[str, tuple[str, list[Any]]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = (metric.unit or "", list(metric.data.data_points))
    return out


def opick(points: dict[str, tuple[str, list[Any]]], name: str, attrs: dict[str, Any]) -> list[Any]:
    return [p for p in points[name][1] if all(p.attributes.get(k) == v for k, v in attrs.items())]


def ovalue(points: dict[str, tuple[str, list[Any]]], name: str, attrs: dict[str, Any]) -> int:
    found = opick(points, name, attrs)
    assert found, f"no {name} point with {attrs}"
    return sum(p.value for p in found)


def open_counts(p: Any, rx: int, tx: int, timeout: float = 10.0) -> dict[str, Any]:
    """The peer's own counts of its one open connection, once they reach (rx, tx): it adds a
    send to its count after sendall() returns, so the echo may arrive here a moment before."""
    deadline = time.monotonic() + timeout
    while True:
        (record,) = p.counts()
        if (record["rx"], record["tx"]) == (rx, tx) or time.monotonic() > deadline:
            return record
        time.sleep(0.01)


def plain_labels(p: Any) -> dict[str, str]:
    """A plain TCP peer's series. Not its `host`: "127.0.0.1", or "localhost" once anything in
    the process resolved that name (netstats remembers which name gave which address)."""
    return {"port": str(p.port), "transport": "tcp", "tls": "none"}


# ---- Prometheus ---------------------------------------------------------------------------


def test_prometheus_endpoint_reports_every_figure(peer, client_context):
    plain, tls, udp = peer("echo"), peer("echo", tls=True), peer("udp")
    with netstats.capture() as cap:
        with socket.create_connection(plain.address) as s:  # closed before the exporter exists
            roundtrip(s, 1000)
        server = prometheus.serve(cap, 0, registry=CollectorRegistry())
        try:
            for size in (2000, 30000):
                with socket.create_connection(plain.address) as s:
                    roundtrip(s, size)
            for size in (500, 7000):
                with socket.create_connection(tls.address) as raw:
                    with client_context.wrap_socket(raw, server_hostname="localhost") as s:
                        roundtrip(s, size)
                        version = s.version()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect(udp.address)
                for size in (300, 40):
                    s.send(b"u" * size)
                    assert len(s.recv(65536)) == size
            samples = scrape(server.url)
        finally:
            server.stop()
    plain_rx, plain_tx = plain.totals(3)
    tls_rx, tls_tx = tls.totals(2)
    udp_record = open_counts(udp, 340, 340)
    assert (plain_rx, tls_rx, udp_record["rx"]) == (33000, 7500, 340)  # the payloads, as the peers saw

    p = plain_labels(plain)
    (host,) = {c.host or "127.0.0.1" for c in cap.connections if c.remote == plain.address}
    assert {s.labels["host"] for s in pick(samples, "netstats_bytes_total", **p)} == {host}
    assert value(samples, "netstats_bytes_total", direction="tx", **p) == plain_rx
    assert value(samples, "netstats_bytes_total", direction="rx", **p) == plain_tx
    assert value(samples, "netstats_wire_bytes_total", direction="tx", **p) == plain_rx  # plain: the same
    assert value(samples, "netstats_wire_bytes_total", direction="rx", **p) == plain_tx
    assert value(samples, "netstats_connections_total", **p) == 3

    t = {"host": "localhost", "port": str(tls.port), "transport": "tcp", "tls": version}
    assert value(samples, "netstats_bytes_total", direction="tx", **t) == tls_rx
    assert value(samples, "netstats_bytes_total", direction="rx", **t) == tls_tx
    tls_conns = [c for c in cap.connections if c.remote == tls.address]
    for direction in ("rx", "tx"):
        wire = value(samples, "netstats_wire_bytes_total", direction=direction, **t)
        assert wire == sum(getattr(c, "wire_" + direction) for c in tls_conns)
        assert wire > {"rx": tls_tx, "tx": tls_rx}[direction]  # ciphertext: records and handshakes
    assert value(samples, "netstats_connections_total", **t) == 2

    u = {"port": str(udp.port), "transport": "udp", "tls": "none"}
    assert value(samples, "netstats_bytes_total", direction="tx", **u) == udp_record["rx"]
    assert value(samples, "netstats_bytes_total", direction="rx", **u) == udp_record["tx"]
    assert pick(samples, "netstats_wire_bytes_total", **u) == []  # unknown for UDP: no series

    for labels, n, conns in ((p, 3, plain.address), (t, 2, tls.address)):
        durations = [c.duration for c in cap.connections if c.remote == conns]
        assert value(samples, "netstats_connection_duration_seconds_count", **labels) == n
        assert value(samples, "netstats_connection_duration_seconds_sum", **labels) == pytest.approx(
            sum(durations)
        )
        buckets = sorted(
            (float(s.labels["le"]), s.value)
            for s in pick(samples, "netstats_connection_duration_seconds_bucket", **labels)
        )
        counts = [c for _, c in buckets]
        assert counts == sorted(counts) and buckets[-1] == (float("inf"), n)
        for le, c in buckets:
            assert c == sum(d <= le for d in durations)


def test_prometheus_counts_are_live_monotonic_and_counted_once(peer):
    echo = peer("echo")
    p = plain_labels(echo)
    with netstats.capture(keep=False) as cap, prometheus.serve(cap, 0, registry=CollectorRegistry()) as srv:
        s = socket.create_connection(echo.address)
        roundtrip(s, 10000)
        record = open_counts(echo, 10000, 10000)  # the peer's own count of the open connection
        assert not record["closed"] and (record["rx"], record["tx"]) == (10000, 10000)
        samples = scrape(srv.url)
        assert value(samples, "netstats_bytes_total", direction="tx", **p) == record["rx"]
        assert value(samples, "netstats_bytes_total", direction="rx", **p) == record["tx"]
        assert value(samples, "netstats_connections_total", **p) == 1
        assert value(samples, "netstats_connection_duration_seconds_count", **p) == 0

        roundtrip(s, 5000)
        assert value(scrape(srv.url), "netstats_bytes_total", direction="tx", **p) == 15000

        netstats.reset(s)  # the user's view goes to zero, the counter does not
        assert netstats.stats(s, "tx") == 0
        assert value(scrape(srv.url), "netstats_bytes_total", direction="tx", **p) == 15000
        roundtrip(s, 100)
        assert value(scrape(srv.url), "netstats_bytes_total", direction="tx", **p) == 15100

        s.close()
        rx, tx = echo.totals(1)
        samples = scrape(srv.url)  # closed now: its final figures, once
        assert value(samples, "netstats_bytes_total", direction="tx", **p) == rx == 15100
        assert value(samples, "netstats_bytes_total", direction="rx", **p) == tx == 15100
        assert value(samples, "netstats_connections_total", **p) == 1
        assert value(samples, "netstats_connection_duration_seconds_count", **p) == 1


def test_collections_racing_closes_count_each_connection_once(peer):
    echo = peer("echo")
    n, size = 300, 1000
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    labels = {"direction": "tx", **plain_labels(echo)}

    def prom_tx() -> float:
        return sum(
            s.value for s in pick(parse(generate_latest(registry).decode()), "netstats_bytes_total", **labels)
        )

    attrs = {"network.peer.port": echo.port, "network.io.direction": "transmit"}
    seen: list[tuple[float, int]] = []
    done = threading.Event()

    def collect() -> None:
        while not done.is_set():
            prom = prom_tx()
            points = otel_points(reader)
            found = opick(points, "process.network.io", attrs) if "process.network.io" in points else []
            seen.append((prom, sum(p.value for p in found)))
            done.wait(0.002)  # as a scraper would: a tight loop starves the connecting thread of the GIL

    with netstats.capture(keep=False) as cap:
        prometheus.register(cap, registry)
        exporter = otel.register(cap, MeterProvider(metric_readers=[reader]))
        collector = threading.Thread(target=collect)
        collector.start()
        try:
            for _ in range(n):
                with socket.create_connection(echo.address) as s:
                    roundtrip(s, size)
        finally:
            done.set()
            collector.join(30)
        final = (
            prom_tx(),
            ovalue(otel_points(reader), "process.network.io", attrs),
        )
        exporter.close()
    assert echo.totals(n)[0] == n * size
    assert final == (n * size, n * size)
    assert len(seen) > 10
    for column in (0, 1):
        values = [v[column] for v in seen]
        assert values == sorted(values), "a counter went down"
        assert max(values) <= n * size, "a connection was counted twice"


def test_keep_false_many_connections_memory_stays_flat(peer):
    echo = peer("echo")
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])

    def burst(count: int) -> None:
        for i in range(count):
            with socket.create_connection(echo.address) as s:
                roundtrip(s, 100)
                if i % 50 == 0:  # collections while connections are open, as in a service
                    generate_latest(registry), otel_points(reader)

    with netstats.capture(keep=False) as cap:
        collector = prometheus.register(cap, registry)
        exporter = otel.register(cap, provider)
        burst(200)  # warm up: every series, cache and free list exists
        generate_latest(registry), otel_points(reader)
        gc.collect()
        tracemalloc.start()
        try:
            burst(2000)
            gc.collect()
            grown, _ = tracemalloc.get_traced_memory()  # still held, of what was allocated since
        finally:
            tracemalloc.stop()
        samples = parse(generate_latest(registry).decode())
        points = otel_points(reader)
        assert cap.connections == [] and collector._table._pins == {}
        exporter.close()
    rx, tx = echo.totals(2200)
    assert (rx, tx) == (220000, 220000)
    print(f"memory held after 2000 more connections: {grown} bytes")
    assert grown < 64 * 1024, f"{grown} bytes held after 2000 connections"
    p = plain_labels(echo)
    assert value(samples, "netstats_bytes_total", direction="tx", **p) == rx
    assert value(samples, "netstats_bytes_total", direction="rx", **p) == tx
    assert value(samples, "netstats_connections_total", **p) == 2200
    assert value(samples, "netstats_connection_duration_seconds_count", **p) == 2200
    attrs = {"network.peer.port": echo.port}
    assert ovalue(points, "process.network.io", {**attrs, "network.io.direction": "transmit"}) == rx
    assert ovalue(points, "netstats.connection.count", attrs) == 2200
    assert sum(pt.count for pt in opick(points, "netstats.connection.duration", attrs)) == 2200
    provider.shutdown()


def test_label_sets_beyond_the_cap_fold_into_other(peer):
    echoes = [peer("echo") for _ in range(5)]
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    with netstats.capture(keep=False) as cap:
        prometheus.register(cap, registry, max_series=2)
        exporter = otel.register(cap, MeterProvider(metric_readers=[reader]), max_series=2)
        for i, echo in enumerate(echoes):
            with socket.create_connection(echo.address) as s:
                roundtrip(s, 100 * (i + 1))
        samples = parse(generate_latest(registry).decode())  # no HTTP: its connection would be a series
        points = otel_points(reader)
        exporter.close()
    totals = [echo.totals(1) for echo in echoes]
    assert [rx for rx, _ in totals] == [100, 200, 300, 400, 500]
    label_sets = {tuple(sorted(s.labels.items())) for s in pick(samples, "netstats_connections_total")}
    assert len(label_sets) == 3
    for echo, (rx, tx) in zip(echoes[:2], totals[:2], strict=True):
        assert value(samples, "netstats_bytes_total", direction="tx", **plain_labels(echo)) == rx
        assert value(samples, "netstats_bytes_total", direction="rx", **plain_labels(echo)) == tx
    other = {"host": "other", "port": "other", "transport": "other", "tls": "other"}
    assert value(samples, "netstats_bytes_total", direction="tx", **other) == sum(rx for rx, _ in totals[2:])
    assert value(samples, "netstats_bytes_total", direction="rx", **other) == sum(tx for _, tx in totals[2:])
    assert value(samples, "netstats_connections_total", **other) == 3
    assert value(samples, "netstats_connection_duration_seconds_count", **other) == 3

    io = points["process.network.io"][1]
    assert (
        len({frozenset((k, v) for k, v in pt.attributes.items() if k != "network.io.direction") for pt in io})
        == 3
    )
    o = {"network.peer.address": "other", "server.address": "other", "network.transport": "other"}
    assert ovalue(points, "process.network.io", {**o, "network.io.direction": "transmit"}) == 1200
    assert ovalue(points, "netstats.connection.count", o) == 3


def test_serve_stops_and_the_default_registry_works(peer):
    import prometheus_client

    echo = peer("echo")
    with netstats.capture(keep=False) as cap:
        server = prometheus.serve(cap, 0, registry=CollectorRegistry())
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        assert scrape(server.url)
        server.stop()
        server.stop()  # idempotent
        assert cap._observers == []
        with pytest.raises(OSError):
            LOCAL.open(server.url, timeout=5)

        collector = prometheus.register(cap)  # prometheus_client's default registry
        try:
            with socket.create_connection(echo.address) as s:
                roundtrip(s, 321)
            text = prometheus_client.generate_latest().decode()
        finally:
            prometheus_client.REGISTRY.unregister(collector)
            collector.close()
    assert (
        value(parse(text), "netstats_bytes_total", direction="tx", **plain_labels(echo)) == echo.totals(1)[0]
    )


# ---- OpenTelemetry ------------------------------------------------------------------------


def test_otel_sdk_reads_every_figure(peer, client_context):
    plain, tls = peer("echo"), peer("echo", tls=True)
    reader = InMemoryMetricReader()
    with netstats.capture() as cap:
        exporter = otel.register(cap, MeterProvider(metric_readers=[reader]))
        for size in (1500, 25000):
            with socket.create_connection(plain.address) as s:
                roundtrip(s, size)
        with socket.create_connection(tls.address) as raw:
            with client_context.wrap_socket(raw, server_hostname="localhost") as s:
                roundtrip(s, 4096)
                version = s.version()
        points = otel_points(reader)
        exporter.close()
    plain_rx, plain_tx = plain.totals(2)
    tls_rx, tls_tx = tls.totals(1)
    assert (plain_rx, tls_rx) == (26500, 4096)
    assert {name: unit for name, (unit, _) in points.items()} == {
        "process.network.io": "By",
        "netstats.wire.io": "By",
        "netstats.connection.count": "{connection}",
        "netstats.connection.duration": "s",
    }
    (host,) = {c.host or "127.0.0.1" for c in cap.connections if c.remote == plain.address}
    p = {
        "network.peer.address": "127.0.0.1",
        "network.peer.port": plain.port,
        "network.transport": "tcp",
        "server.address": host,  # the name asked for, else the address (see plain_labels)
    }
    (point,) = opick(points, "process.network.io", {**p, "network.io.direction": "transmit"})
    assert dict(point.attributes) == {**p, "network.io.direction": "transmit"}  # nothing else: no TLS
    assert point.value == plain_rx
    assert ovalue(points, "process.network.io", {**p, "network.io.direction": "receive"}) == plain_tx
    assert ovalue(points, "netstats.wire.io", {**p, "network.io.direction": "transmit"}) == plain_rx
    assert ovalue(points, "netstats.wire.io", {**p, "network.io.direction": "receive"}) == plain_tx
    assert ovalue(points, "netstats.connection.count", p) == 2

    name, _, number = version.partition("v")
    t = {
        "network.peer.address": "127.0.0.1",
        "network.peer.port": tls.port,
        "server.address": "localhost",
        "tls.protocol.name": name.lower(),
        "tls.protocol.version": number,
    }
    assert ovalue(points, "process.network.io", {**t, "network.io.direction": "transmit"}) == tls_rx
    assert ovalue(points, "process.network.io", {**t, "network.io.direction": "receive"}) == tls_tx
    assert ovalue(points, "netstats.wire.io", {**t, "network.io.direction": "transmit"}) > tls_rx
    assert ovalue(points, "netstats.connection.count", t) == 1

    for attrs, address in ((p, plain.address), (t, tls.address)):
        durations = [c.duration for c in cap.connections if c.remote == address]
        (hist,) = opick(points, "netstats.connection.duration", attrs)
        assert hist.count == len(durations) and hist.sum == pytest.approx(sum(durations))


def test_otel_counts_are_live_and_counted_once(peer):
    echo = peer("echo")
    reader = InMemoryMetricReader()
    tx_attrs = {"network.peer.port": echo.port, "network.io.direction": "transmit"}
    with netstats.capture(keep=False) as cap:
        exporter = otel.register(cap, MeterProvider(metric_readers=[reader]))
        with socket.create_connection(echo.address) as s:
            roundtrip(s, 8000)
            record = open_counts(echo, 8000, 8000)
            assert not record["closed"]
            points = otel_points(reader)
            assert ovalue(points, "process.network.io", tx_attrs) == record["rx"] == 8000
            assert ovalue(points, "netstats.connection.count", {"network.peer.port": echo.port}) == 1
            assert "netstats.connection.duration" not in points  # nothing has closed yet
            netstats.reset(s)
            roundtrip(s, 2000)
            assert ovalue(otel_points(reader), "process.network.io", tx_attrs) == 10000
        rx, tx = echo.totals(1)
        points = otel_points(reader)
        exporter.close()
    assert ovalue(points, "process.network.io", tx_attrs) == rx == 10000
    assert ovalue(points, "netstats.connection.count", {"network.peer.port": echo.port}) == 1
    (hist,) = opick(points, "netstats.connection.duration", {"network.peer.port": echo.port})
    assert hist.count == 1


# ---- extras -------------------------------------------------------------------------------


def test_an_exporter_without_its_extra_names_the_extra(monkeypatch):
    cap = netstats.Capture()  # never started
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    for call in (lambda: prometheus.register(cap), lambda: prometheus.serve(cap, 0)):
        with pytest.raises(ImportError, match=r"pip install netstats\[prometheus\]") as info:
            call()
        assert isinstance(info.value, MissingExtra) and isinstance(info.value, netstats.NetstatsError)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.setitem(sys.modules, "opentelemetry.metrics", None)
    with pytest.raises(MissingExtra, match=r"pip install netstats\[otel\]"):
        otel.register(cap)
    assert cap._observers == []


def test_the_core_imports_without_the_extras():
    script = textwrap.dedent(
        """
        import sys
        blocked = ("prometheus_client", "opentelemetry")
        for name in blocked:
            sys.modules[name] = None
        import netstats, netstats.export, netstats.export.prometheus, netstats.export.otel
        with netstats.capture() as cap:
            try:
                netstats.export.prometheus.serve(cap, 0)
            except ImportError as exc:
                print(exc)
        """
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "pip install netstats[prometheus]" in out.stdout
    probe = "import sys, netstats; print([m for m in sys.modules if m.startswith(('prometheus', 'opentel'))])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == "[]", "importing netstats loaded an exporter's dependency"


# ---- a real Prometheus --------------------------------------------------------------------

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"

INSTRUMENTED = """
import json, socket, sys
import netstats
from netstats.export import prometheus

host, port, sizes = sys.argv[1], int(sys.argv[2]), [int(n) for n in sys.argv[3].split(",")]
cap = netstats.capture(keep=False)
server = prometheus.serve(cap, 0)  # prometheus_client's default registry, on 127.0.0.1
for size in sizes:
    with socket.create_connection((host, port)) as s:
        s.sendall(b"p" * size)
        got = 0
        while got < size:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("peer closed early")
            got += len(chunk)
print(json.dumps({"port": server.port}), flush=True)
sys.stdin.read()  # stay up for the scrapes until the test closes our stdin
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def promql(port: int, query: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    try:
        with LOCAL.open(url, timeout=5) as response:
            answer = json.load(response)
    except OSError:
        return None  # not up yet
    result = answer["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK),
    reason="no Prometheus server (Debian package 'prometheus'; CI installs it)",
)
def test_a_real_prometheus_scrapes_the_totals(peer, tmp_path):
    echo = peer("echo")
    sizes = [1000, 20000, 300]
    script = tmp_path / "instrumented.py"
    script.write_text(INSTRUMENTED)
    env = {**os.environ, "PYTHONPATH": SRC}
    app = subprocess.Popen(
        [sys.executable, str(script), "127.0.0.1", str(echo.port), ",".join(map(str, sizes))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    prom: subprocess.Popen[bytes] | None = None
    try:
        assert app.stdout is not None
        line = app.stdout.readline()
        assert line, "the instrumented process did not start"
        target = json.loads(line)["port"]
        assert echo.totals(len(sizes)) == (sum(sizes), sum(sizes))  # the peer saw the known payloads
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: netstats\n"
            f"    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
        )
        web = free_port()
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed with the process
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()
        queries = {
            'sum(netstats_bytes_total{direction="tx"})': float(sum(sizes)),
            'sum(netstats_bytes_total{direction="rx"})': float(sum(sizes)),
            "sum(netstats_connections_total)": float(len(sizes)),
            "sum(netstats_connection_duration_seconds_count)": float(len(sizes)),
        }
        answers: dict[str, float | None] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and prom.poll() is None:
            answers = {q: promql(web, q) for q in queries}
            if answers == queries:
                break
            time.sleep(0.5)
        log_text = (tmp_path / "prometheus.log").read_text(errors="replace")[-2000:]
        assert answers == queries, f"Prometheus answered {answers}; its log ends:\n{log_text}"
    finally:
        for proc in (prom, app):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if app.stdin is not None:
            app.stdin.close()
        if app.stdout is not None:
            app.stdout.close()
