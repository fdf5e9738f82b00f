"""Exporters to the metrics systems services already run: Prometheus and OpenTelemetry.

Each lives in its own module and needs its extra, imported only when an exporter is asked for:

>>> import netstats
>>> from netstats.export import prometheus    # pip install netstats[prometheus]
>>> cap = netstats.capture(keep=False)
>>> server = prometheus.serve(cap, 9464)      # http://127.0.0.1:9464/metrics

>>> from netstats.export import otel          # pip install netstats[otel]
>>> otel.register(cap)                        # the global MeterProvider, or pass one
"""

from __future__ import annotations

from .._errors import MissingExtra

__all__ = ["MissingExtra"]
