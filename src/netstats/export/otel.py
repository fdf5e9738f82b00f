"""OpenTelemetry exporter (`pip install netstats[otel]`): metrics through the OpenTelemetry API.

Instruments, following the semantic conventions (names outside `process.` are netstats' own):

- `process.network.io` (observable counter, unit `By`): application bytes (the plaintext for
  TLS), with `network.io.direction` = "receive" | "transmit"
- `netstats.wire.io` (observable counter, `By`): bytes of the TCP stream, where the kernel tells
- `netstats.connection.count` (observable counter, `{connection}`): connections opened,
  connect attempts included
- `netstats.connection.duration` (histogram, `s`): durations of connections as they close

Attributes: `network.peer.address`, `network.peer.port`, `network.transport` ("tcp", "udp",
"unix"), `server.address` (the name asked for where known, else the peer's address), and for
TLS `tls.protocol.name` / `tls.protocol.version`. A connection accepted with `servers=True`
has `server.port` (ours) instead of the peer's ephemeral port and no `server.address`.

With `tag_labels=("route",)`, `process.network.io` also has an attribute per `netstats.tag()`
key named: the bytes moved under each value of it (left out for bytes moved without it).

Counters are live (open connections report what they moved so far) and never go down. At most
`max_series` attribute sets (1000 by default) are reported; the rest are counted in one series
whose attributes are "other".

>>> import netstats
>>> from netstats.export import otel
>>> cap = netstats.capture(keep=False)
>>> exporter = otel.register(cap)           # the global MeterProvider; or meter_provider=...
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from .._capture import Capture
from .._record import Connection
from . import MissingExtra
from ._series import DURATION_BUCKETS, MAX_SERIES, Figures, Key, SeriesTable, peer_labels
from ._tagged import TagTable, checked

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

Attributes = dict[str, str | int]
OTHER: Key = ("other",) * 6


__all__ = ["OtelExporter", "register"]


def _api() -> ModuleType:
    try:
        from opentelemetry import metrics
    except ImportError as exc:
        raise MissingExtra("otel", "opentelemetry-api") from exc
    return metrics


def key(conn: Connection) -> Key:
    """(side, peer address, port, server name, transport, tls version) as strings."""
    address, port = peer_labels(conn)
    server = "" if conn.side == "server" else conn.host or address
    return (conn.side, address, port, server, conn.transport, conn.tls or "")


def attributes(key: Key) -> Attributes:
    """The OpenTelemetry attributes of a key; empty values are left out."""
    if key == OTHER:
        return {"network.peer.address": "other", "server.address": "other", "network.transport": "other"}
    side, address, port, server, transport, tls = key
    out: Attributes = {"network.transport": transport}
    if address:
        out["network.peer.address"] = address
    if port:
        out["server.port" if side == "server" else "network.peer.port"] = (
            int(port) if port.isdigit() else port
        )
    if server:
        out["server.address"] = server
    if tls:
        name, _, version = tls.partition("v")  # "TLSv1.3" -> tls, 1.3
        out["tls.protocol.name"] = name.lower()
        out["tls.protocol.version"] = version
    return out


class OtelExporter:
    """The instruments reporting one capture. Made by `register()`; `close()` stops it."""

    def __init__(
        self,
        capture: Capture,
        meter_provider: MeterProvider | None = None,
        *,
        max_series: int = MAX_SERIES,
        buckets: Sequence[float] = DURATION_BUCKETS,
        tag_labels: Sequence[str] = (),
    ) -> None:
        self._tag_labels = checked(tag_labels, ())
        metrics = _api()
        from .. import __version__

        provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
        meter = provider.get_meter("netstats", __version__)
        self._observation = metrics.Observation
        self._duration: Histogram = meter.create_histogram(
            "netstats.connection.duration",
            unit="s",
            description="Duration of connections, from the connect to the close.",
            explicit_bucket_boundaries_advisory=sorted(buckets),
        )
        self._table = SeriesTable(
            capture, key, OTHER, max_series=max_series, buckets=(), on_close=self._closed
        )
        self._tagged: TagTable | None = None
        if self._tag_labels:
            other = (*OTHER, *("other",) * len(self._tag_labels))
            self._tagged = TagTable(capture, key, self._tag_labels, other, max_series=max_series)
        self._stopped = False
        meter.create_observable_counter(
            "process.network.io", [self._io], unit="By", description="Network bytes transferred."
        )
        meter.create_observable_counter(
            "netstats.wire.io", [self._wire], unit="By", description="Bytes of the TCP stream, where known."
        )
        meter.create_observable_counter(
            "netstats.connection.count",
            [self._count],
            unit="{connection}",
            description="Connections opened, connect attempts included.",
        )

    def close(self) -> None:
        """Stop reporting: the observable counters report nothing more, closes are not recorded."""
        self._stopped = True
        self._table.close()
        if self._tagged is not None:
            self._tagged.close()

    def _closed(self, key: Key, conn: Connection) -> None:
        self._duration.record(conn.duration, attributes(key))

    def _io(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        if self._tagged is not None:
            n = len(self._tag_labels)
            for tagged_key, (rx, tx) in [] if self._stopped else self._tagged.snapshot().items():
                own, values = tagged_key[:-n], tagged_key[-n:]
                attrs = attributes(own)
                attrs.update((k, v) for k, v in zip(self._tag_labels, values, strict=True) if v)
                out.append(self._observation(rx, {**attrs, "network.io.direction": "receive"}))
                out.append(self._observation(tx, {**attrs, "network.io.direction": "transmit"}))
            return out
        for key, fig in self._series():
            attrs = attributes(key)
            out.append(self._observation(fig.rx, {**attrs, "network.io.direction": "receive"}))
            out.append(self._observation(fig.tx, {**attrs, "network.io.direction": "transmit"}))
        return out

    def _wire(self, options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for key, fig in self._series():
            attrs = attributes(key)
            if fig.wire_rx is not None:
                out.append(self._observation(fig.wire_rx, {**attrs, "network.io.direction": "receive"}))
            if fig.wire_tx is not None:
                out.append(self._observation(fig.wire_tx, {**attrs, "network.io.direction": "transmit"}))
        return out

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        return [self._observation(fig.count, attributes(key)) for key, fig in self._series()]

    def _series(self) -> list[tuple[Key, Figures]]:
        return [] if self._stopped else list(self._table.snapshot().items())


def register(
    capture: Capture,
    meter_provider: MeterProvider | None = None,
    *,
    max_series: int = MAX_SERIES,
    buckets: Sequence[float] = DURATION_BUCKETS,
    tag_labels: Sequence[str] = (),
) -> OtelExporter:
    """Report `capture` through OpenTelemetry (the global MeterProvider when None is given).

    `max_series` caps the attribute sets reported (per instrument); `buckets` are the duration
    histogram's boundaries, in seconds (an advisory the SDK's views may override); `tag_labels`
    are netstats.tag() keys to split `process.network.io` by.

    >>> from opentelemetry.sdk.metrics import MeterProvider
    >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    >>> reader = InMemoryMetricReader()
    >>> exporter = otel.register(netstats.capture(keep=False), MeterProvider(metric_readers=[reader]))
    >>> reader.get_metrics_data()
    """
    return OtelExporter(
        capture, meter_provider, max_series=max_series, buckets=buckets, tag_labels=tag_labels
    )
