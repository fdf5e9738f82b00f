#!/usr/bin/env bash
# Install PostgreSQL's server binaries (Debian's `postgresql`) if missing: tests/test_census.py
# starts its own server on 127.0.0.1 (initdb in a temporary folder, run as the `postgres` user
# when the tests run as root) to check what the kernel census sees of libpq's connections.
set -euo pipefail
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    ls /usr/lib/postgresql/*/bin/initdb | head -n 1
    exit 0
fi
bash "$(dirname "$0")/apt.sh" postgresql
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
# The package may start the Debian cluster: the tests run their own, so stop it.
if command -v pg_ctlcluster >/dev/null 2>&1; then
    for cluster in /etc/postgresql/*/*; do
        [ -d "$cluster" ] || continue
        $SUDO pg_ctlcluster "$(basename "$(dirname "$cluster")")" "$(basename "$cluster")" stop || true
    done
fi
ls /usr/lib/postgresql/*/bin/initdb | head -n 1
