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

[ -f /etc/debian_version ] && command -v apt-get >/dev/null ||
    die "nginx is missing and this is not Debian: install it by hand (the tests never skip)"
[ "$(id -u)" = 0 ] || die "nginx is missing: run make test-reload as root, or apt-get install nginx"

# invoke-rc.d asks policy-rc.d whether a service may start; 101 says no. Ours only while we install.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    trap 'rm -f "$POLICY"' EXIT
    printf '#!/bin/sh\n# ensure_nginx.sh: no service starts while it installs.\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
fi

log "installing nginx with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || die "apt-get update failed"
apt-get install -y -q --no-install-recommends nginx >/dev/null || die "apt-get install nginx failed"
installed || die "nginx is installed but not on PATH nor at /usr/sbin/nginx"
log "installed nginx"
