#!/usr/bin/env bash
# `make test-docker`: the drain tests against a real Docker engine (tests/docker).
#
# On a Debian machine, as root, it provisions what it needs and reuses what is already there:
#   - apt packages: docker.io, docker-compose (unless `docker compose` works), debootstrap;
#   - a Docker engine: a running one is used and left alone; otherwise dockerd is started with
#     host-only networking (no bridge, no iptables) and stopped by its PID when this ends;
#   - a local base image (no registry needed): Debian with python3, made by debootstrap from the
#     machine's own apt mirror and imported with `docker import`;
#   - a wheelhouse (.docker-cache/wheels) so the image build installs offline.
# Anything missing that cannot be provisioned is an error (exit 1), never a skip.
set -euo pipefail

# The functions below (ensure_packages ... ensure_wheelhouse) are in docker/_provision.sh.
PROVISION_NAME=test-docker
# shellcheck source=docker/_provision.sh
source "$(dirname "$0")/_provision.sh"

ensure_packages
ensure_engine
log "engine ready after $(elapsed)"
ensure_base_image
log "base image ready after $(elapsed)"
ensure_wheelhouse
log "wheelhouse ready after $(elapsed)"

export GRACEFUL_DOCKER_TESTS=1
export GRACEFUL_COMPOSE=$COMPOSE
export BASE_IMAGE NGINX_BASE_IMAGE=${NGINX_BASE_IMAGE:-$BASE_IMAGE}
# The wheelhouse is inside the build context (see .dockerignore).
export PIP_INSTALL_OPTIONS="--no-index --find-links=/src/.docker-cache/wheels"
status=0
"$PY" -m pytest -q -s -p no:cacheprovider tests/docker || status=$?
# Older builds of the demo images, left untagged by this one (only images this project labels).
docker image prune -f --filter label=graceful-web.demo >/dev/null || true
log "finished in $(elapsed) with status $status"
exit "$status"
