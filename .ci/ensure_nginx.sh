#!/usr/bin/env bash
# Run by `make test-reload` first: tests/reload/test_behind_nginx.py starts nginx itself (a
# non-daemon process with its own configuration, pid, logs and temp paths in a temporary folder,
# on a free port of 127.0.0.1), so the binary must be installed. When it is, this does nothing.
# Else, as root on Debian, it installs the package with apt-get without letting it start its
# service: Debian's own nginx (port 80, /etc/nginx) is never used by the tests.
set -euo pipefail

log() { printf 'ensure_nginx: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

installed() { command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; }
installed && exit 0

source "$(dirname "$0")/_apt_install.sh"
apt_install test-reload nginx
installed || die "nginx is installed but not on PATH nor at /usr/sbin/nginx"
log "installed nginx"
