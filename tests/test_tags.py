"""netstats.tag(): bytes per request, task and tenant, equal to what the server counted for the
requests made under each tag (the http peer's own per-request count, by its X-Tag header)."""

from __future__ import annotations

import asyncio
import contextvars
import csv
import gc
import http.client
import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
import requests
import requests.adapters
from helpers import MODES, capture_in, tag_counts_of
from peers import Peer

import netstats
from netstats import _tags

PeerFactory = Callable[..., Peer]
TIMEOUT = 10.0
SIZES = {"a": 0, "b": 1, "c": 5_000, "d": 300_000}  # response body per tag value


pytestmark = pytest.mark.usefixtures("tags_off_after")


def tagged_rows(cap: netstats.Capture, key: str) -> dict[Any, Any]:
    return {value: row for value, row in cap.by_tag(key).items() if value is not None}


def conn_tag_totals(cap: netstats.Capture, key: str) -> dict[str, dict[str, int]]:
    """The same figures from conn.tags of every connection: the two views agree."""
    out: dict[str, dict[str, int]] = {}
    for conn in cap.connections:
        for entry in conn.tags:
            value = entry["labels"].get(key)
            if value is not None:
                row = out.setdefault(value, {"rx": 0, "tx": 0})
                row["rx"] += entry["rx"]
                row["tx"] += entry["tx"]
    return out


def test_tag_rejects_what_is_not_a_label() -> None:
    with pytest.raises(TypeError, match="at least one label"):
        netstats.tag()
    with pytest.raises(TypeError, match="'route' must be a str, not int"):
        netstats.tag(route=3)  # type: ignore[arg-type]
    with netstats.capture() as cap:
        with pytest.raises(TypeError, match="label name"):
            cap.by_tag(1)  # type: ignore[arg-type]
    with netstats.capture(keep=False) as cap:
        with pytest.raises(netstats.NetstatsError, match="keep=True"):
            cap.by_tag("route")

    def chunks() -> Iterator[bytes]:
        yield b""

    with pytest.raises(TypeError, match="cannot decorate the generator function"):
        netstats.tag(job="x")(chunks)
    with pytest.raises(TypeError, match="decorates a function, not int"):
        netstats.tag(job="x")(3)  # type: ignore[type-var]


def test_nested_tags_merge_the_inner_one_winning_per_key() -> None:
    seen = []
    with netstats.tag(route="/outer", tenant="acme"):
        with netstats.tag(route="/inner"):
            scope = _tags.current.get()
            assert scope is not None
            seen.append(dict(scope.key.labels))
        scope = _tags.current.get()
        assert scope is not None
        seen.append(dict(scope.key.labels))
    assert _tags.current.get() is None
    assert seen == [{"route": "/inner", "tenant": "acme"}, {"route": "/outer", "tenant": "acme"}]


@pytest.mark.parametrize("mode", MODES)
def test_threads_sharing_one_pooled_connection_get_each_their_own_requests_bytes(
    peer: PeerFactory, mode: str
) -> None:
    http = peer("http")
    url = f"http://127.0.0.1:{http.port}"
    session = requests.Session()
    session.trust_env = False
    session.mount(
        "http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, pool_block=True)
    )
    errors: list[BaseException] = []

    def worker(value: str) -> None:
        try:
            with netstats.tag(route=value):
                for _ in range(5):
                    with session.get(
                        f"{url}/bytes/{SIZES[value]}", headers={"X-Tag": value}, timeout=TIMEOUT
                    ) as r:
                        assert len(r.content) == SIZES[value]
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    with capture_in(mode) as cap:
        with session:
            # one untagged request first: the connection exists (kernel-counted, in that mode)
            # before the first tag is ever set
            with session.get(f"{url}/bytes/10", timeout=TIMEOUT) as r:
                assert r.content == b"b" * 10
            threads = [threading.Thread(target=worker, args=(v,)) for v in SIZES]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert len([c for c in cap.connections if c.error is None]) == 1  # one connection, shared
    truth = tag_counts_of(http)
    assert set(truth) == set(SIZES)
    assert tagged_rows(cap, "route") == truth
    assert conn_tag_totals(cap, "route") == truth
    (rx, tx) = (cap.rx, cap.tx)
    untagged = cap.by_tag("route")[None]
    assert untagged["rx"] == rx - sum(r["rx"] for r in truth.values())
    assert untagged["tx"] == tx - sum(r["tx"] for r in truth.values())
    assert untagged["rx"] > 10 and untagged["tx"] > 0  # the first request's


@pytest.mark.parametrize("mode", MODES)
def test_asyncio_tasks_sharing_an_aiohttp_connection_get_each_their_own_requests_bytes(
    peer: PeerFactory, mode: str
) -> None:
    """aiohttp reads in its protocol's data_received, in the context of the task that opened the
    connection: the response goes to the task that wrote the request (turn ownership)."""
    http = peer("http")
    url = f"http://127.0.0.1:{http.port}"

    async def one(session: aiohttp.ClientSession, value: str) -> None:
        with netstats.tag(route=value):
            for _ in range(5):
                async with session.get(f"{url}/bytes/{SIZES[value]}", headers={"X-Tag": value}) as r:
                    assert len(await r.read()) == SIZES[value]

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            # the connection is opened under a tag of its own: its reads run in that context
            with netstats.tag(route="opener"):
                async with session.get(f"{url}/bytes/3", headers={"X-Tag": "opener"}) as r:
                    assert await r.read() == b"bbb"
            await asyncio.wait_for(asyncio.gather(*(one(session, v) for v in SIZES)), 60)

    with capture_in(mode) as cap:
        asyncio.run(main())
    assert len([c for c in cap.connections if c.error is None]) == 1
    truth = tag_counts_of(http)
    assert set(truth) == {*SIZES, "opener"}
    assert tagged_rows(cap, "route") == truth
    assert conn_tag_totals(cap, "route") == truth
    assert cap.by_tag("route")[None] == {"rx": 0, "tx": 0}


@pytest.mark.parametrize("mode", MODES)
def test_a_decorated_function_and_coroutine_tag_what_they_move(peer: PeerFactory, mode: str) -> None:
    http = peer("http")
    url = f"http://127.0.0.1:{http.port}"
    session = requests.Session()
    session.trust_env = False

    @netstats.tag(job="sync")
    def job(n: int) -> int:
        with session.get(f"{url}/bytes/{n}", headers={"X-Tag": "sync"}, timeout=TIMEOUT) as r:
            return len(r.content)

    @netstats.tag(job="async")
    async def ajob(n: int) -> int:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as s:
            async with s.get(f"{url}/bytes/{n}", headers={"X-Tag": "async"}) as r:
                return len(await r.read())

    with capture_in(mode) as cap:
        with session:
            assert job(1000) == 1000
            assert job(7) == 7
        assert asyncio.run(ajob(2000)) == 2000
    truth = tag_counts_of(http)
    assert tagged_rows(cap, "job") == truth
    assert job.__name__ == "job" and ajob.__name__ == "ajob"


def test_a_tag_object_totals_its_own_bytes_and_threads_inherit_through_copy_context(
    peer: PeerFactory,
) -> None:
    http = peer("http")
    url = f"http://127.0.0.1:{http.port}"

    def get(n: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            with session.get(f"{url}/bytes/{n}", headers={"X-Tag": "copied"}, timeout=TIMEOUT) as r:
                assert len(r.content) == n

    with netstats.capture() as cap:
        with netstats.tag(tenant="copied") as t:
            context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(get, 4321))
        thread.start()
        thread.join(30)
    (rx, tx) = http.tags()["copied"]
    assert cap.by_tag("tenant")["copied"] == {"rx": tx, "tx": rx}
    assert (t.rx, t.tx) == (tx, rx)


@pytest.mark.parametrize("mode", MODES)
def test_totals_read_mid_turn_and_reads_outside_the_writers_tag_are_exact(
    peer: PeerFactory, mode: str
) -> None:
    """The turn's bytes are settled when read: a tag's totals and conn.tags right after its
    request (the turn still open), a response read under no tag (nobody's) or under another tag
    (that one's), and a tag's totals after its connection's record is gone (keep=False)."""
    server = peer("http")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)

    def request(path: str, tag: str) -> None:
        conn.request("GET", path, headers={"X-Tag": tag})

    def response(size: int) -> None:
        with conn.getresponse() as r:
            assert len(r.read()) == size

    with capture_in(mode) as cap:
        request("/bytes/10", "first")  # untagged, before any tag (kernel-counted, in that mode)
        response(10)
        a, b, c = netstats.tag(route="a"), netstats.tag(route="b"), netstats.tag(route="c")
        with a:
            request("/bytes/3000", "a")
            response(3000)
        (rx, tx) = server.tags()["a"]
        # the turn is still a's, unsettled: settled when read
        assert cap.connections[0].tags == [{"labels": {"route": "a"}, "rx": tx, "tx": rx}]
        assert (a.rx, a.tx) == (tx, rx)
        with b:
            request("/bytes/700", "b")
        response(700)  # read under no tag: nobody's
        with c:
            request("/bytes/50", "c")
        with a:
            response(50)  # read under another tag than the writer's: that tag's
        conn.close()
    truth = server.tags()
    assert (b.rx, b.tx) == (0, truth["b"][0])
    assert (c.rx, c.tx) == (0, truth["c"][0])
    assert (a.rx, a.tx) == (truth["a"][1] + truth["c"][1], truth["a"][0])
    rows = tagged_rows(cap, "route")
    assert rows == {"a": {"rx": a.rx, "tx": a.tx}, "b": {"rx": 0, "tx": b.tx}, "c": {"rx": 0, "tx": c.tx}}
    assert cap.by_tag("route")[None] == {"rx": truth["first"][1] + truth["b"][1], "tx": truth["first"][0]}

    with capture_in(mode, keep=False):  # its records go at close: the tag's totals stay whole
        other = http.client.HTTPConnection("127.0.0.1", server.port, timeout=TIMEOUT)
        with netstats.tag(route="d") as d:
            other.request("GET", "/bytes/900", headers={"X-Tag": "d"})
            with other.getresponse() as r:
                assert len(r.read()) == 900
        other.close()
        del other, r
    gc.collect()
    (rx, tx) = server.tags()["d"]
    assert (d.rx, d.tx) == (tx, rx)


# ---- the command line: --by tag:KEY in every format -------------------------------------------

SCRIPT = """
import http.client, sys
import netstats

port = int(sys.argv[1])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)


def get(path, tag=None):
    conn.request("GET", path, headers={"X-Tag": tag} if tag else {})
    response = conn.getresponse()
    response.read()


get("/bytes/100")  # untagged
for route, size in (("/users", 5000), ("/items", 20), ("/users", 7)):
    with netstats.tag(route=route, tenant="acme"):
        get(f"/bytes/{size}", route)
conn.close()
"""


def cli(*args: str, cwd: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "netstats", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done


def test_the_cli_groups_a_runs_bytes_by_a_tag_label_in_every_format(peer: PeerFactory, tmp_path: Any) -> None:
    http = peer("http")
    (tmp_path / "app.py").write_text(SCRIPT, encoding="utf-8")
    cli("run", "--format", "json", "-o", "run.json", "app.py", str(http.port), cwd=tmp_path)
    truth = tag_counts_of(http)
    assert set(truth) == {"/users", "/items"}
    saved = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    (conn,) = [c for c in saved["connections"] if c["remote"] == ["127.0.0.1", http.port]]
    untagged = {"rx": conn["rx"] - sum(t["rx"] for t in truth.values())}
    untagged["tx"] = conn["tx"] - sum(t["tx"] for t in truth.values())
    assert untagged["rx"] > 100 and untagged["tx"] > 0

    rows = json.loads(cli("report", "run.json", "--by", "tag:route", "--format", "json", cwd=tmp_path).stdout)
    assert rows["groups"]["by"] == "tag:route"
    got = {g["tag:route"]: {"rx": g["rx"], "tx": g["tx"]} for g in rows["groups"]["rows"]}
    assert got == {**truth, None: untagged}

    text = cli("report", "run.json", "--by", "tag:route", cwd=tmp_path).stdout
    assert "TAG:ROUTE" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}
    for value in ("/users", "/items", "(untagged)"):
        assert value in lines, text

    table = list(
        csv.DictReader(
            io.StringIO(
                cli("report", "run.json", "--by", "tag:route", "--format", "csv", cwd=tmp_path).stdout
            )
        )
    )
    got = {r["tag:route"] or None: {"rx": int(r["rx"]), "tx": int(r["tx"])} for r in table}
    assert got == {**truth, None: untagged}

    tenant = json.loads(
        cli("report", "run.json", "--by", "tag:tenant", "--format", "json", cwd=tmp_path).stdout
    )
    acme = {g["tag:tenant"]: g for g in tenant["groups"]["rows"]}["acme"]
    assert (acme["rx"], acme["tx"]) == (
        sum(t["rx"] for t in truth.values()),
        sum(t["tx"] for t in truth.values()),
    )


def test_the_cli_refuses_a_tag_grouping_without_a_label_name(tmp_path: Any) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "netstats", "report", "run.json", "--by", "tag:"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "cannot group by 'tag:'" in done.stderr


# ---- exporters: tag_labels= -----------------------------------------------------------------


def fetch(session: requests.Session, url: str, tag: str | None = None) -> bytes:
    """One GET's body (only the body leaves: a live Response keeps its socket open)."""
    with session.get(url, headers={"X-Tag": tag} if tag else {}, timeout=TIMEOUT) as r:
        return r.content


def test_exporters_split_the_byte_counts_by_the_tag_labels_asked_for(peer: PeerFactory) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry

    from netstats.export import otel, prometheus

    http = peer("http")
    url = f"http://127.0.0.1:{http.port}"
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    with netstats.capture(keep=False) as cap:
        collector = prometheus.register(cap, registry, tag_labels=("route",))
        exporter = otel.register(cap, MeterProvider(metric_readers=[reader]), tag_labels=("route",))
        with requests.Session() as session:
            session.trust_env = False
            assert len(fetch(session, f"{url}/bytes/50")) == 50  # untagged
            for value, size in SIZES.items():
                with netstats.tag(route=value, tenant="t"):
                    assert len(fetch(session, f"{url}/bytes/{size}", value)) == size
        peer_rx, peer_tx = http.totals(1)
        data = reader.get_metrics_data()
        collector.close()
        exporter.close()
    truth = tag_counts_of(http)

    def prom(direction: str, route: str) -> float | None:
        labels = {"direction": direction, "host": "127.0.0.1", "port": str(http.port), "transport": "tcp"}
        return registry.get_sample_value("netstats_bytes_total", {**labels, "tls": "none", "route": route})

    for value, row in truth.items():
        assert (prom("rx", value), prom("tx", value)) == (row["rx"], row["tx"])
    assert prom("rx", "") == peer_tx - sum(r["rx"] for r in truth.values())
    assert prom("tx", "") == peer_rx - sum(r["tx"] for r in truth.values())
    assert (
        registry.get_sample_value(
            "netstats_connections_total",
            {"host": "127.0.0.1", "port": str(http.port), "transport": "tcp", "tls": "none"},
        )
        == 1
    )

    points: dict[tuple[str | None, str], int] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == "process.network.io":
                    for pt in metric.data.data_points:
                        if pt.attributes.get("network.peer.port") == http.port:
                            key = (pt.attributes.get("route"), pt.attributes["network.io.direction"])
                            points[key] = pt.value
    for value, row in truth.items():
        assert (points[(value, "receive")], points[(value, "transmit")]) == (row["rx"], row["tx"])
    assert points[(None, "receive")] == peer_tx - sum(r["rx"] for r in truth.values())


def test_tag_labels_stay_within_max_series_and_are_checked(peer: PeerFactory) -> None:
    from prometheus_client import CollectorRegistry

    from netstats.export import prometheus

    http = peer("http")
    url = f"http://127.0.0.1:{http.port}"
    registry = CollectorRegistry()
    with pytest.raises(TypeError, match="not a string"):
        prometheus.register(netstats.Capture(), registry, tag_labels="route")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'host' is already"):
        prometheus.register(netstats.Capture(), registry, tag_labels=("host",))
    with netstats.capture() as cap:
        collector = prometheus.register(cap, registry, max_series=2, tag_labels=("route",))
        with requests.Session() as session:
            session.trust_env = False
            for value, size in SIZES.items():
                with netstats.tag(route=value):
                    assert len(fetch(session, f"{url}/bytes/{size}", value)) == size
        peer_rx, peer_tx = http.totals(1)
        series = [
            s
            for m in registry.collect()
            if m.name == "netstats_bytes"
            for s in m.samples
            if s.labels["direction"] == "rx"
        ]
        collector.close()
    assert len(series) == 3  # two label sets, and "other"
    assert sum(s.value for s in series) == peer_tx
    other = [s for s in series if s.labels["route"] == "other"]
    assert len(other) == 1 and other[0].labels["host"] == "other"


def test_asyncio_tasks_and_to_thread_inherit_the_tag_of_the_code_that_started_them(peer: PeerFactory) -> None:
    http = peer("http")
    url = f"http://127.0.0.1:{http.port}"

    async def child(session: aiohttp.ClientSession, size: int) -> int:
        async with session.get(f"{url}/bytes/{size}", headers={"X-Tag": "parent"}) as r:
            return len(await r.read())

    def in_thread(size: int) -> int:
        with requests.Session() as session:
            session.trust_env = False
            return len(fetch(session, f"{url}/bytes/{size}", "parent"))

    async def main() -> list[int]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as session:
            with netstats.tag(job="parent"):
                tasks = [asyncio.create_task(child(session, n)) for n in (10, 2000)]
                threaded = asyncio.to_thread(in_thread, 333)  # to_thread copies the context
                return list(await asyncio.wait_for(asyncio.gather(*tasks, threaded), 30))

    with netstats.capture() as cap:
        assert asyncio.run(main()) == [10, 2000, 333]
    (rx, tx) = http.tags()["parent"]
    assert cap.by_tag("job") == {"parent": {"rx": tx, "tx": rx}, None: {"rx": 0, "tx": 0}}


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("mode", MODES)
def test_uvloop_tags_its_tls_plaintext_and_says_plain_tcp_cannot_be_split(
    peer: PeerFactory, client_context: Any, mode: str, tls: bool
) -> None:
    """Under uvloop, TLS plaintext goes through netstats' SSLObject: split by tag exactly. Plain
    TCP is counted by the kernel alone (libuv's I/O runs no Python code): no byte can be said to
    be a tag's, so conn.tags and every by_tag row are None, never a guess or a 0."""
    uvloop = pytest.importorskip("uvloop")
    http = peer("http", tls=tls)
    url = f"{'https' if tls else 'http'}://localhost:{http.port}"
    values = ("a", "c")

    async def one(session: aiohttp.ClientSession, value: str) -> None:
        with netstats.tag(route=value):
            for _ in range(3):
                headers = {"X-Tag": value}
                async with session.get(
                    f"{url}/bytes/{SIZES[value]}", headers=headers, ssl=client_context
                ) as r:
                    assert len(await r.read()) == SIZES[value]

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=1)
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.wait_for(asyncio.gather(*(one(session, v) for v in values)), 60)

    with capture_in(mode) as cap:
        uvloop.run(main())
    (conn,) = [c for c in cap.connections if c.error is None]
    truth = tag_counts_of(http)
    assert set(truth) == set(values)
    if tls:
        assert tagged_rows(cap, "route") == truth
        assert conn_tag_totals(cap, "route") == truth
    else:
        assert conn.tags is None
        assert cap.by_tag("route") == {v: {"rx": None, "tx": None} for v in (None,)}
        assert conn.as_dict()["tags"] is None


# ---- tag cardinality: distinct values on one connection cost bounded memory ------------------


def test_distinct_tag_values_on_one_open_connection_are_folded_and_the_totals_stay_exact(
    peer: PeerFactory,
) -> None:
    import socket
    import tracemalloc

    echo = peer("echo")
    many = 200_000
    with netstats.capture(keep=False) as cap, socket.create_connection(echo.address) as s:

        def tagged(values: range) -> None:  # a byte written under each value (a request id)
            for i in values:
                with netstats.tag(request=f"id-{i}"):
                    s.sendall(b"x")

        traced = 50_000  # the last ones: what they leave behind is what each new value costs
        tagged(range(many - traced))
        tracemalloc.start()
        try:
            tagged(range(many - traced, many))
            grown = tracemalloc.get_traced_memory()[0]  # allocated since start, still held
        finally:
            tracemalloc.stop()
        got = 0
        while got < many:  # the echo, read under no tag
            got += len(s.recv(65536))
        (conn,) = cap.open_connections()
        entries, (rx, tx) = conn.tags, conn.totals()
    assert grown < 1_000_000, f"{grown} bytes held for {traced} more tag values"  # (was 39 MB)
    (counts,) = echo.counts()
    assert (rx, tx) == (counts["tx"], counts["rx"]) == (many, many)  # the peer's own counts
    by_value = {e["labels"]["request"]: (e["rx"], e["tx"]) for e in entries}
    assert len(by_value) == len(entries) == _tags.MAX_TALLIES + 1  # the first values, then "other"
    assert by_value["id-0"] == (0, 1)
    assert by_value["other"] == (0, many - _tags.MAX_TALLIES)
    assert sum(tx for _, tx in by_value.values()) == many  # folded, and still exact
    assert sum(rx for rx, _ in by_value.values()) == 0  # the echo was read under no tag
