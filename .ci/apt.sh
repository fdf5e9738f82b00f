#!/usr/bin/env bash
# Install Debian packages for the tests: `bash .ci/apt.sh PACKAGE...`. Packages already installed
# are skipped; the package index is refreshed only when something is missing. Recommends are left
# out. Uses sudo when not run as root.
set -euo pipefail
missing=()
for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
