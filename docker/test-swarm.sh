#!/usr/bin/env bash
# `make test-swarm`: rolling updates driven by Docker Swarm (tests/swarm, docker-stack.yml), and
# durable jobs handed over through one, with a PostgreSQL store on this machine.
#
# Provisions the engine, the base image and the wheelhouse as `make test-docker` does, reusing
# what is there (docker/_provision.sh: in CI, test-docker has stopped its engine but left the
# images and the caches behind). The tests make the engine a one-node swarm and leave it at the
# end; should they be cut short, the swarm is left here too, if it was not there before.
# Anything missing that cannot be provisioned is an error (exit 1), never a skip.
set -euo pipefail

PROVISION_NAME=test-swarm
# shellcheck source=docker/_provision.sh
source "$(dirname "$0")/_provision.sh"

ensure_packages
ensure_engine
log "engine ready after $(elapsed)"
ensure_base_image
log "base image ready after $(elapsed)"
ensure_wheelhouse
log "wheelhouse ready after $(elapsed)"
# The durable-jobs scenario (tests/swarm/test_swarm_durable.py) runs a PostgreSQL server on this
# machine (tests/support/stores.py), which the replicas reach at 127.0.0.1 through host networking.
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || apt_install postgresql

SWARM_BEFORE=$(docker info --format '{{.Swarm.LocalNodeState}}')
leave_swarm() {
    if [ "$SWARM_BEFORE" = inactive ] &&
        [ "$(docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null)" = active ]; then
        log "leaving the swarm the tests made"
        docker swarm leave --force >/dev/null || true
    fi
}
# ensure_engine may have set an EXIT trap that stops the dockerd it started: leave first.
trap 'leave_swarm; stop_dockerd' EXIT

export GRACEFUL_SWARM_TESTS=1
export BASE_IMAGE NGINX_BASE_IMAGE=${NGINX_BASE_IMAGE:-$BASE_IMAGE}
# The wheelhouse is inside the build context (see .dockerignore).
export PIP_INSTALL_OPTIONS="--no-index --find-links=/src/.docker-cache/wheels"
status=0
"$PY" -m pytest -q -s -p no:cacheprovider tests/swarm || status=$?
docker image prune -f --filter label=graceful-web.demo >/dev/null || true
log "finished in $(elapsed) with status $status"
exit "$status"
