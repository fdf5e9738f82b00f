"""Prometheus exporter (`pip install netstats[prometheus]`): a prometheus_client collector.

Metrics, each with the labels `host` (the name asked for where known, else the peer's address),
`port` (the peer's; our own for connections accepted with `servers=True`), `transport` ("tcp",
"udp", "unix") and `tls` (the version, or "none"):

- `netstats_bytes_total{direction="rx"|"tx"}`: application bytes (the plaintext for TLS)
- `netstats_wire_bytes_total{direction=...}`: bytes of the TCP stream, where the kernel tells
- `netstats_connections_total`: connections opened, connect attempts included
- `netstats_connection_duration_seconds`: histogram of the durations of closed connections

With `tag_labels=("route",)`, `netstats_bytes_total` also has a label per `netstats.tag()` key
named: the bytes moved under each value of it ("" for bytes moved without it).

Figures are live (open connections count what they moved so far) and never go down. At most
`max_series` label sets (1000 by default) are reported; connections beyond are counted in one
series whose labels are all "other".

>>> import netstats
>>> from netstats.export import prometheus
>>> cap = netstats.capture(keep=False)
>>> server = prometheus.serve(cap, 9464)     # scrape http://127.0.0.1:9464/metrics
>>> ...
>>> server.stop()

A pre-fork server (gunicorn -w 4, uvicorn --workers 4) runs one capture per worker, and a scrape
reaches one worker. There, each worker `publish()`es its figures to prometheus_client's
multiprocess directory as they change, and one process serves them all, summed (`serve_all()`).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._capture import Capture
from .._errors import NetstatsError
from .._record import Connection
from . import MissingExtra
from ._increments import Increments
from ._series import DURATION_BUCKETS, MAX_SERIES, Key, SeriesTable, peer_labels
from ._tagged import TagTable, checked

if TYPE_CHECKING:
    import threading
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import CollectorRegistry

__all__ = ["NetstatsCollector", "Publisher", "Server", "publish", "register", "serve", "serve_all"]

LABELS = ("host", "port", "transport", "tls")
HELP = {
    "bytes": "Application bytes read (rx) and written (tx).",
    "wire_bytes": "Bytes of the TCP stream, where the kernel tells.",
    "connections": "Connections opened, connect attempts included.",
    "durations": "Durations of closed connections.",
}


def _client() -> ModuleType:
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.multiprocess
        import prometheus_client.utils
        import prometheus_client.values
    except ImportError as exc:
        raise MissingExtra("prometheus", "prometheus_client") from exc
    return prometheus_client


def labels(conn: Connection) -> Key:
    """The values of LABELS for a connection."""
    address, port = peer_labels(conn)
    return (conn.host or address, port, conn.transport, conn.tls or "none")


class NetstatsCollector:
    """A prometheus_client collector of one capture's connections. Made by `register()`."""

    def __init__(
        self,
        capture: Capture,
        *,
        max_series: int = MAX_SERIES,
        buckets: Sequence[float] = DURATION_BUCKETS,
        tag_labels: Sequence[str] = (),
    ) -> None:
        self._tag_labels = checked(tag_labels, ("direction", *LABELS))
        client = _client()
        self._counter = client.core.CounterMetricFamily
        self._histogram = client.core.HistogramMetricFamily
        self._table = SeriesTable(
            capture, labels, ("other",) * len(LABELS), max_series=max_series, buckets=buckets
        )
        self._le = [client.utils.floatToGoString(b) for b in (*self._table.bounds, math.inf)]
        self._tagged: TagTable | None = None
        if self._tag_labels:
            other = ("other",) * (len(LABELS) + len(self._tag_labels))
            self._tagged = TagTable(capture, labels, self._tag_labels, other, max_series=max_series)

    def close(self) -> None:
        """Stop following the capture; unregister it from its registry too (`Server.stop()` does both)."""
        self._table.close()
        if self._tagged is not None:
            self._tagged.close()

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> list[Metric]:
        app, wire, opened, durations = self._families()
        if self._tagged is not None:
            for key, (rx, tx) in self._tagged.snapshot().items():
                app.add_metric(["rx", *key], rx)
                app.add_metric(["tx", *key], tx)
        for key, fig in self._table.snapshot().items():
            if self._tagged is None:
                app.add_metric(["rx", *key], fig.rx)
                app.add_metric(["tx", *key], fig.tx)
            if fig.wire_rx is not None:
                wire.add_metric(["rx", *key], fig.wire_rx)
            if fig.wire_tx is not None:
                wire.add_metric(["tx", *key], fig.wire_tx)
            opened.add_metric(key, fig.count)
            cumulative = itertools.accumulate(fig.durations)
            durations.add_metric(
                key, buckets=list(zip(self._le, cumulative, strict=True)), sum_value=fig.duration_sum
            )
        return [app, wire, opened, durations]

    def _families(
        self,
    ) -> tuple[CounterMetricFamily, CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        counter, direction = self._counter, ("direction", *LABELS)
        return (
            counter("netstats_bytes", HELP["bytes"], labels=(*direction, *self._tag_labels)),
            counter("netstats_wire_bytes", HELP["wire_bytes"], labels=direction),
            counter("netstats_connections", HELP["connections"], labels=LABELS),
            self._histogram("netstats_connection_duration_seconds", HELP["durations"], labels=LABELS),
        )


def register(
    capture: Capture,
    registry: CollectorRegistry | None = None,
    *,
    max_series: int = MAX_SERIES,
    buckets: Sequence[float] = DURATION_BUCKETS,
    tag_labels: Sequence[str] = (),
) -> NetstatsCollector:
    """Register a collector of `capture` in `registry` (prometheus_client's default one when None).

    `max_series` caps the label sets reported (per metric); `buckets` are the duration
    histogram's bounds; `tag_labels` are netstats.tag() keys to split the byte counts by.

    >>> cap = netstats.capture(keep=False)
    >>> collector = prometheus.register(cap)
    >>> prometheus_client.start_http_server(9464)
    """
    client = _client()
    target = client.REGISTRY if registry is None else registry
    collector = NetstatsCollector(capture, max_series=max_series, buckets=buckets, tag_labels=tag_labels)
    try:
        target.register(collector)
    except BaseException:
        collector.close()
        raise
    return collector


class Server:
    """A running HTTP endpoint made by `serve()` or `serve_all()`: `.port`, `.url`, `.stop()`; a
    context manager."""

    def __init__(
        self, httpd: WSGIServer, thread: threading.Thread, registry: Any, collector: NetstatsCollector | None
    ) -> None:
        self.httpd, self.thread, self.registry, self.collector = httpd, thread, registry, collector
        self.port: int = httpd.server_port
        host = str(httpd.server_address[0])
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{self.port}/metrics"
        self._stopped = False

    def stop(self) -> None:
        """Stop serving and unregister the collector. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)
        if self.collector is not None:
            self.registry.unregister(self.collector)
            self.collector.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    capture: Capture,
    port: int,
    addr: str = "127.0.0.1",
    *,
    registry: CollectorRegistry | None = None,
    max_series: int = MAX_SERIES,
    buckets: Sequence[float] = DURATION_BUCKETS,
    tag_labels: Sequence[str] = (),
) -> Server:
    """`register()` the capture, then serve the registry over HTTP on addr:port (0: any free port).

    Returns the Server: `.port` is the port bound, `.stop()` ends it. Only 127.0.0.1 by default;
    pass addr="0.0.0.0" for a Prometheus on another machine.

    >>> server = prometheus.serve(netstats.capture(keep=False), 9464)
    >>> server.url
    'http://127.0.0.1:9464/metrics'
    """
    client = _client()
    target = client.REGISTRY if registry is None else registry
    collector = register(capture, target, max_series=max_series, buckets=buckets, tag_labels=tag_labels)
    try:
        httpd, thread = client.start_http_server(port, addr, registry=target)
    except BaseException:
        target.unregister(collector)
        collector.close()
        raise
    return Server(httpd, thread, target, collector)


# ---- pre-fork servers: every worker writes, one process serves them all ---------------------


class Publisher:
    """One process's figures, written to prometheus_client's multiprocess directory as they
    change. Made by `publish()`; `close()` writes what is pending and stops."""

    def __init__(
        self,
        capture: Capture,
        *,
        max_series: int = MAX_SERIES,
        buckets: Sequence[float] = DURATION_BUCKETS,
        tag_labels: Sequence[str] = (),
        interval: float = 1.0,
    ) -> None:
        tags = checked(tag_labels, ("direction", *LABELS))
        client = _client()
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
        # prometheus_client picks its mode once, at import: figures written in the other mode
        # would stay in this process, and the scrape would show none of them.
        if not getattr(client.values.ValueClass, "_multiprocess", False) or not os.path.isdir(folder):
            raise NetstatsError(
                "publish() needs prometheus_client's multiprocess mode: PROMETHEUS_MULTIPROC_DIR set to "
                f"a directory before prometheus_client is first imported (it is {folder!r})"
            )
        direction = ("direction", *LABELS)
        # In no registry: the files are what the serving process reads (MultiProcessCollector).
        self._counters = {
            "bytes": client.Counter("netstats_bytes", HELP["bytes"], (*direction, *tags), registry=None),
            "wire_bytes": client.Counter("netstats_wire_bytes", HELP["wire_bytes"], direction, registry=None),
            "connections": client.Counter("netstats_connections", HELP["connections"], LABELS, registry=None),
        }
        self._durations = client.Histogram(
            "netstats_connection_duration_seconds",
            HELP["durations"],
            LABELS,
            buckets=sorted(float(b) for b in buckets),
            registry=None,
        )
        self._increments = Increments(
            capture,
            labels,
            ("other",) * len(LABELS),
            self._add,
            on_close=self._closed,
            tag_labels=tags,
            max_series=max_series,
            interval=interval,
        )

    def close(self) -> None:
        """Write the pending figures, then stop following the capture (what was written stays)."""
        self._increments.close()

    def _add(self, name: str, key: Key, amount: float) -> None:
        self._counters[name].labels(*key).inc(amount)
        if name == "connections":  # (once per connection) its histogram series shows, at 0 until a close
            self._durations.labels(*key)

    def _closed(self, key: Key, conn: Connection) -> None:
        self._durations.labels(*key).observe(conn.duration)


def publish(
    capture: Capture,
    *,
    max_series: int = MAX_SERIES,
    buckets: Sequence[float] = DURATION_BUCKETS,
    tag_labels: Sequence[str] = (),
    interval: float = 1.0,
) -> Publisher:
    """Write `capture`'s figures where prometheus_client's multiprocess mode sums every process's.

    For each worker of a pre-fork server: its capture's metrics (the same as `register()`'s) go
    to PROMETHEUS_MULTIPROC_DIR (set, to an empty directory, before the server starts). A closed
    connection's figures are written a moment after its close, open ones' every `interval`
    seconds; a worker that dies, even by SIGKILL, keeps what it wrote, so the sums never go down
    when workers are replaced. Start it in each worker, after the fork; serve with `serve_all()`.

    >>> # gunicorn.conf.py
    >>> def post_fork(server, worker):
    ...     prometheus.publish(netstats.capture(keep=False))
    """
    return Publisher(
        capture, max_series=max_series, buckets=buckets, tag_labels=tag_labels, interval=interval
    )


def serve_all(port: int, addr: str = "127.0.0.1", *, path: str | None = None) -> Server:
    """Serve the figures every process `publish()`ed, summed, over HTTP on addr:port (0: any).

    prometheus_client's `MultiProcessCollector` over `path` (PROMETHEUS_MULTIPROC_DIR when None):
    the workers' netstats metrics and any other multiprocess metrics there. Run it in one process
    only, e.g. gunicorn's master; a worker's app can serve the same with MultiProcessCollector.

    >>> # gunicorn.conf.py
    >>> def when_ready(server):
    ...     prometheus.serve_all(9464)                # http://127.0.0.1:9464/metrics
    """
    client = _client()
    registry = client.CollectorRegistry()
    client.multiprocess.MultiProcessCollector(registry, path)
    httpd, thread = client.start_http_server(port, addr, registry=registry)
    return Server(httpd, thread, registry, None)
