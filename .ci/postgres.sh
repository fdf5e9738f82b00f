#!/usr/bin/env bash
# PostgreSQL's server binaries (Debian's `postgresql`), installed if missing: tests/test_census.py
# starts its own server on 127.0.0.1 (initdb in a temporary folder, run as the `postgres` user
# when the tests run as root) to check what the kernel census sees of libpq's connections.
set -euo pipefail
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || bash "$(dirname "$0")/apt.sh" postgresql
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
# The package may start the Debian cluster: the tests run their own, so stop it where it runs.
if command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters --no-header 2>/dev/null | while read -r version cluster _ status _; do
        if [ "$status" = "online" ]; then
            $SUDO pg_ctlcluster "$version" "$cluster" stop || true
        fi
    done
fi
ls /usr/lib/postgresql/*/bin/initdb | head -n 1
