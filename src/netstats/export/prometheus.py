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
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._capture import Capture
from .._record import Connection
from . import MissingExtra
from ._series import DURATION_BUCKETS, MAX_SERIES, Key, SeriesTable, peer_labels
from ._tagged import TagTable, checked

if TYPE_CHECKING:
    import threading
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import CollectorRegistry

LABELS = ("host", "port", "transport", "tls")


def _client() -> ModuleType:
    try:
        import prometheus_client
        import prometheus_client.core
        import prometheus_client.utils
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
            counter(
                "netstats_bytes",
                "Application bytes read (rx) and written (tx).",
                labels=(*direction, *self._tag_labels),
            ),
            counter(
                "netstats_wire_bytes", "Bytes of the TCP stream, where the kernel tells.", labels=direction
            ),
            counter("netstats_connections", "Connections opened, connect attempts included.", labels=LABELS),
            self._histogram(
                "netstats_connection_duration_seconds", "Durations of closed connections.", labels=LABELS
            ),
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
    """A running HTTP endpoint made by `serve()`: `.port`, `.url`, `.stop()`; a context manager."""

    def __init__(
        self, httpd: WSGIServer, thread: threading.Thread, registry: Any, collector: NetstatsCollector
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
