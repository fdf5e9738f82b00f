#!/usr/bin/env bash
# Install Debian's chromium if missing: tests/test_timeline.py opens the --html page in it
# (driven by playwright, from the test extra, with executable_path=/usr/bin/chromium: no
# browser is downloaded at run time) with every request blocked.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium
