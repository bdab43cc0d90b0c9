#!/usr/bin/env bash
# `make test-pythons`: `make test-portable` (ruff, mypy --strict, the tests marked portable in
# tests/conftest.py) under each Python in PYTHONS (default "3.13 3.14"), next to the machine's own
# python3 on which `make test` runs everything.
#
# The interpreters come from Debian sid, in a chroot made by debootstrap from the machine's own
# apt mirror and kept in .python-cache/sid (rebuilt when the package list below changes; delete
# the folder to take newer sid packages). The checkout is bind-mounted at /src inside it and
# `make test-portable PYTHON=python3.X VENV=.venv-3.X` runs there, so each Python gets its own
# venv in the checkout (git-ignored) and runs exactly the commands of `make test-portable`. The
# chroot shares the machine's network (the tests use 127.0.0.1 only) and its pip configuration
# (CA bundle, config files, PIP_* variables, the local folders they name).
#
# Every Python runs even when an earlier one fails; the exit status is 1 if any failed. Anything
# that cannot be provisioned (not root, not Debian, debootstrap failing) is an error, never a skip.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.python-cache
ROOTFS=$CACHE/sid
SUITE=sid
PYTHONS=${PYTHONS:-3.13 3.14}
STARTED=$SECONDS

log() { printf 'test-pythons: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
elapsed() { printf '%ds' $((SECONDS - STARTED)); }

[ "$(id -u)" = 0 ] || die "debootstrap, mount and chroot need root"

# shellcheck source=docker/debian_mirror.sh
source "$ROOT/docker/debian_mirror.sh"

# Mount points under the rootfs, deepest first (also those left by an interrupted run).
mounts_under_rootfs() {
    awk -v root="$ROOTFS" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/self/mounts |
        sort -r
}

unmount_all() {
    local point
    for point in $(mounts_under_rootfs); do
        umount "$point" 2>/dev/null || umount -l "$point" 2>/dev/null ||
            log "cannot unmount $point"
    done
}

# postgresql and redis-server: the servers tests/support/stores.py starts (.ci/ensure_stores.sh
# finds them here and installs nothing). Their services never start in the chroot: nothing runs
# its init.
packages() {
    local p packages=(ca-certificates make postgresql redis-server)
    for p in $PYTHONS; do packages+=("python$p" "python$p-venv"); done
    local IFS=,
    echo "${packages[*]}"
}

ensure_rootfs() {
    local key include mirror
    include=$(packages)
    key="$SUITE $(uname -m) $include"
    if [ -f "$CACHE/sid.key" ] && [ "$(cat "$CACHE/sid.key")" = "$key" ] && [ -d "$ROOTFS/usr" ]; then
        log "reusing the $SUITE chroot in $ROOTFS"
        return
    fi
    if ! command -v debootstrap >/dev/null; then
        command -v apt-get >/dev/null || die "debootstrap is missing and this is not Debian"
        log "installing debootstrap with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends debootstrap >/dev/null ||
            die "apt-get install debootstrap failed"
    fi
    mirror=$(debian_mirror) ||
        die "no Debian archive found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
    # Never remove through a mount (the checkout is bind-mounted inside).
    [ -z "$(mounts_under_rootfs)" ] || die "mounts are still active under $ROOTFS"
    rm -rf --one-file-system "$ROOTFS" "$CACHE/sid.key"
    mkdir -p "$CACHE/debootstrap-debs"
    log "building the $SUITE chroot with debootstrap (minbase + $include)"
    debootstrap --variant=minbase --include="$include" --cache-dir="$CACHE/debootstrap-debs" \
        "$SUITE" "$ROOTFS" "$mirror" >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; its log ($CACHE/debootstrap.log) ends with:
$(tail -n 20 "$CACHE/debootstrap.log")"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    echo "$key" >"$CACHE/sid.key"
}

# What pip needs to reach its index as it does on the machine: the CA bundle, name resolution,
# the pip config files, and the local folders they name (bind-mounted read-only, same paths).
copy_machine_config() {
    local file value path
    cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
    for file in /etc/resolv.conf /etc/hosts; do
        [ -f "$file" ] && cp -L "$file" "$ROOTFS$file"
    done
    for file in /etc/pip.conf /etc/xdg/pip "$HOME/.config/pip" "$HOME/.pip" ${PIP_CONFIG_FILE:-}; do
        [ -e "$file" ] || continue
        path=$file
        [ "${file#"$HOME"/}" != "$file" ] && path=/root/${file#"$HOME"/}
        mkdir -p "$(dirname "$ROOTFS$path")"
        rm -rf "${ROOTFS:?}$path"
        cp -rL "$file" "$ROOTFS$path"
    done
    LOCAL_PIP_DIRS=()
    for value in $(python3 -m pip config list 2>/dev/null | sed -e "s/^[^=]*=//" -e "s/'//g"); do
        path=${value#file://}
        [ "${path#/}" != "$path" ] || continue
        # A local index (.../simple) links to its files beside it: mount the index's root.
        [ "$(basename "$path")" = simple ] && path=$(dirname "$path")
        if [ -d "$path" ]; then
            case " ${LOCAL_PIP_DIRS[*]-} " in *" $path "*) ;; *) LOCAL_PIP_DIRS+=("$path") ;; esac
        elif [ -f "$path" ] && [ ! -e "$ROOTFS$path" ]; then
            mkdir -p "$(dirname "$ROOTFS$path")"
            cp -L "$path" "$ROOTFS$path"
        fi
    done
}

mount_all() {
    local dir
    trap unmount_all EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    mount -t proc proc "$ROOTFS/proc"
    mount --rbind /dev "$ROOTFS/dev"
    mount --rbind /sys "$ROOTFS/sys"
    mkdir -p "$ROOTFS/src"
    mount --bind "$ROOT" "$ROOTFS/src"
    for dir in ${LOCAL_PIP_DIRS[@]+"${LOCAL_PIP_DIRS[@]}"}; do
        mkdir -p "$ROOTFS$dir"
        mount --bind "$dir" "$ROOTFS$dir"
        mount -o remount,bind,ro "$ROOTFS$dir" 2>/dev/null || true
    done
}

# A clean environment inside: the machine's PIP_* settings and the test knobs pass through. The
# caches are per Python so runs on the machine and in the chroot do not overwrite each other's.
run_in_chroot() {
    local version=$1
    shift
    local env=(HOME=/root LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        "MYPY_CACHE_DIR=/src/.python-cache/mypy-$version"
        "RUFF_CACHE_DIR=/src/.python-cache/ruff-$version"
        "PYTEST_ADDOPTS=-p no:cacheprovider ${PYTEST_ADDOPTS:-}")
    local name
    while IFS= read -r name; do
        env+=("$name=${!name}")
    done < <(compgen -e | grep -E '^(PIP_|GRACEFUL_|SOAK_|HYPOTHESIS_|CI$|TERM$)' || true)
    chroot "$ROOTFS" /usr/bin/env -i "${env[@]}" "$@"
}

ensure_rootfs
log "chroot ready after $(elapsed)"
copy_machine_config
mount_all

status=0
summary=()
for version in $PYTHONS; do
    begun=$SECONDS
    log "make test-portable under Python $version (venv .venv-$version)"
    result=passed
    run_in_chroot "$version" make -C /src test-portable "PYTHON=python$version" "VENV=.venv-$version" ||
        { result=failed; status=1; }
    summary+=("Python $version: $result in $((SECONDS - begun))s")
    log "${summary[-1]}"
done
for line in "${summary[@]}"; do log "$line"; done
log "finished in $(elapsed) with status $status"
exit "$status"
