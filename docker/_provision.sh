# Provisioning shared by docker/test-docker.sh and docker/test-swarm.sh, sourced by both (set
# PROVISION_NAME first: it prefixes the log lines). On a Debian machine, as root, it provides and
# reuses: the apt packages, a Docker engine (stopped by its PID at exit if started here), the local
# base image made by debootstrap and the offline wheelhouse. See DEVELOPERS.md.
# shellcheck shell=bash
PROVISION_NAME=${PROVISION_NAME:-provision}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
CACHE=$ROOT/.docker-cache
PY=${PY:-$ROOT/.venv/bin/python}
LOCAL_BASE_IMAGE=graceful-web-base:bookworm
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE_IMAGE}
SUITE=bookworm
DOCKERD_PID=""
STARTED=$SECONDS

log() { printf '%s: %s\n' "$PROVISION_NAME" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}
# shellcheck source=docker/debian_mirror.sh
source "$ROOT/docker/debian_mirror.sh"

elapsed() { printf '%ds' $((SECONDS - STARTED)); }

is_root() { [ "$(id -u)" = 0 ]; }

apt_install() {
    is_root && command -v apt-get >/dev/null ||
        die "missing $* and this is not a Debian machine with root: install $* by hand"
    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}

# How compose is called: the v2 plugin (`docker compose`) if present, else docker-compose v1.
compose_command() {
    if docker compose version >/dev/null 2>&1; then
        echo "docker compose"
    elif command -v docker-compose >/dev/null; then
        echo "docker-compose"
    else
        return 1
    fi
}

ensure_packages() {
    local missing=()
    command -v docker >/dev/null || missing+=(docker.io)
    docker info >/dev/null 2>&1 || command -v dockerd >/dev/null || missing+=(docker.io)
    compose_command >/dev/null || missing+=(docker-compose)
    if [ ${#missing[@]} -gt 0 ]; then
        # docker.io brings containerd, runc and tini (docker-init) along.
        mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
        apt_install "${missing[@]}"
    fi
    COMPOSE=$(compose_command) || die "neither 'docker compose' nor docker-compose works"
}

stop_dockerd() {
    [ -n "$DOCKERD_PID" ] || return 0
    log "stopping the dockerd started here (pid $DOCKERD_PID)"
    kill -TERM "$DOCKERD_PID" 2>/dev/null || return 0
    for _ in $(seq 1 60); do
        kill -0 "$DOCKERD_PID" 2>/dev/null || return 0
        sleep 0.5
    done
    log "dockerd (pid $DOCKERD_PID) still running after 30 s: killing it"
    kill -KILL "$DOCKERD_PID" 2>/dev/null || true
}

ensure_engine() {
    if docker info >/dev/null 2>&1; then
        log "using the Docker engine already running"
        return
    fi
    is_root || die "no Docker engine answers and only root can start dockerd"
    mkdir -p "$CACHE"
    log "starting dockerd (no bridge, no iptables: containers use host networking)"
    dockerd --bridge=none --iptables=false >"$CACHE/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    trap stop_dockerd EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && return 0
        kill -0 "$DOCKERD_PID" 2>/dev/null ||
            die "dockerd exited at start; its log ($CACHE/dockerd.log) ends with:
$(tail -n 20 "$CACHE/dockerd.log")"
        sleep 0.5
    done
    die "dockerd (pid $DOCKERD_PID) did not answer within 60 s; see $CACHE/dockerd.log"
}


ensure_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "reusing base image $BASE_IMAGE"
        return
    fi
    if [ "$BASE_IMAGE" != "$LOCAL_BASE_IMAGE" ]; then
        log "pulling base image $BASE_IMAGE"
        docker pull "$BASE_IMAGE" || die "cannot pull $BASE_IMAGE"
        return
    fi
    command -v debootstrap >/dev/null || apt_install debootstrap
    local mirror rootfs
    mirror=$(debian_mirror) ||
        die "no Debian archive found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
    rootfs=$CACHE/rootfs
    rm -rf "$rootfs"
    mkdir -p "$CACHE/debootstrap-debs"
    log "building base image $BASE_IMAGE with debootstrap ($SUITE, minbase + python3)"
    debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
        --cache-dir="$CACHE/debootstrap-debs" "$SUITE" "$rootfs" "$mirror" \
        >"$CACHE/debootstrap.log" 2>&1 ||
        die "debootstrap failed; its log ($CACHE/debootstrap.log) ends with:
$(tail -n 20 "$CACHE/debootstrap.log")"
    # The machine's CA bundle, so TLS inside the image trusts what the machine trusts.
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . |
        docker import --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
            --change 'ENV LANG=C.UTF-8' - "$BASE_IMAGE" >/dev/null ||
        die "docker import of $rootfs failed"
    rm -rf "$rootfs"
}

# Wheels for the image's own Python and the extras its Dockerfile installs, downloaded by this
# machine's pip (with however it is configured to reach its package index), so the build needs no
# index of its own.
ensure_wheelhouse() {
    [ -x "$PY" ] || die "$PY not found: run through 'make test-docker', which creates it"
    # The Dockerfile's EXTRAS: what the demo image installs.
    local extras=demo,postgres
    local pyver arch key wheels tmp platforms=()
    pyver=$(docker run --rm --network none "$BASE_IMAGE" python3 -c \
        'import sys; print("%d.%d" % sys.version_info[:2])') ||
        die "cannot run python3 in $BASE_IMAGE"
    arch=$(uname -m)
    key="$(sha256sum pyproject.toml | cut -c1-16) python$pyver $arch [$extras]"
    wheels=$CACHE/wheels
    if [ -f "$wheels/.key" ] && [ "$(cat "$wheels/.key")" = "$key" ]; then
        log "reusing wheelhouse for Python $pyver ($(ls "$wheels" | wc -l) wheels)"
        return
    fi
    log "downloading wheels for Python $pyver on $arch"
    rm -rf "$wheels"
    mkdir -p "$wheels"
    tmp=$(mktemp -d)
    "$PY" -m pip wheel -qq --no-deps -w "$tmp" . || die "cannot build the graceful-web wheel"
    # pip does not widen a manylinux_2_N platform to older glibc versions: list them all.
    for minor in $(seq 36 -1 17); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
    platforms+=(--platform "manylinux2014_$arch")
    "$PY" -m pip download -qq --only-binary=:all: --python-version "$pyver" \
        --implementation cp "${platforms[@]}" -d "$wheels" \
        "$(ls "$tmp"/graceful_web-*.whl)[$extras]" 'setuptools>=68' wheel ||
        die "pip could not download the wheels for Python $pyver"
    rm -rf "$tmp" "$wheels"/graceful_web-*.whl
    echo "$key" >"$wheels/.key"
}

