#!/usr/bin/env bash
# Run by `make test` first: the PostgreSQL and Redis servers that tests/support/stores.py starts
# (as their own processes, on 127.0.0.1) must be installed. When /usr/lib/postgresql/*/bin/postgres and
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

source "$(dirname "$0")/_apt_install.sh"
apt_install test "${missing[@]}"
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null ||
    die "postgresql is installed but /usr/lib/postgresql/*/bin/postgres is not there"
log "installed ${missing[*]}"
