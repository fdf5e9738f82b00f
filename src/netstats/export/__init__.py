"""Exporters to the metrics systems services already run: Prometheus and OpenTelemetry."""
