#!/usr/bin/env bash
# Install tmux (Debian's `tmux`) if missing: tests/test_live.py draws `netstats run --live` and
# `netstats top` in a tmux pane and reads it back with capture-pane.
set -euo pipefail
if command -v tmux >/dev/null 2>&1; then
    tmux -V
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends tmux
tmux -V
