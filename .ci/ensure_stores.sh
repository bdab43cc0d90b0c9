#!/usr/bin/env bash
# Run by `make test` first: the PostgreSQL and Redis servers that tests/_stores.py starts (as
# their own processes, on 127.0.0.1) must be installed. When /usr/lib/postgresql/*/bin/postgres and
# redis-server are there (always in the chroot of `make test-pythons`) it does nothing. Else, as
# root on Debian, it installs the missing ones with apt-get, without letting their packages start
# a service: Debian's own cluster (port 5432) and redis (port 6379) are never used by the tests.
set -euo pipefail

log() { printf 'ensure_stores: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

missing=()
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
[ ${#missing[@]} = 0 ] && exit 0

[ -f /etc/debian_version ] && command -v apt-get >/dev/null ||
    die "missing ${missing[*]} and this is not Debian: install them by hand (the tests never skip)"
[ "$(id -u)" = 0 ] ||
    die "missing ${missing[*]}: run make test as root to install them, or apt-get install them"

# invoke-rc.d asks policy-rc.d whether a service may start; 101 says no. Ours only while we install.
POLICY=/usr/sbin/policy-rc.d
if [ ! -e "$POLICY" ]; then
    trap 'rm -f "$POLICY"' EXIT
    printf '#!/bin/sh\n# ensure_stores.sh: no service starts while it installs.\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
fi

log "installing ${missing[*]} with apt-get"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null || die "apt-get update failed"
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
    die "apt-get install ${missing[*]} failed"
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null ||
    die "postgresql is installed but /usr/lib/postgresql/*/bin/postgres is not there"
log "installed ${missing[*]}"
