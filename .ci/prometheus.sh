#!/usr/bin/env bash
# A Prometheus server (Debian's `prometheus` package, /usr/bin/prometheus), installed if missing:
# tests/test_export.py starts its own on 127.0.0.1 to scrape an instrumented process.
# Recommends are left out (node exporter, SNMP, IPMI tools...); a service the package may
# have started is stopped, since the test runs its own instance with a temporary config.
set -euo pipefail
[ -x /usr/bin/prometheus ] || bash "$(dirname "$0")/apt.sh" prometheus
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $SUDO systemctl disable --now prometheus || true
fi
/usr/bin/prometheus --version | head -n 1
