#!/usr/bin/env bash
# make bench loads the servers with wrk, a load generator in a process of its own. Installed
# from Debian's packages when missing and running as root; otherwise say what to do.
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "make bench: installing wrk with apt-get"
    if ! log=$(apt-get update -qq 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk 2>&1); then
        echo "$log" >&2
    fi
    command -v wrk >/dev/null 2>&1 && exit 0
fi
echo "make bench needs wrk, the HTTP load generator, and cannot install it here." >&2
echo "Install it (Debian/Ubuntu: sudo apt-get install wrk; macOS: brew install wrk), then run make bench again." >&2
exit 1
