#!/usr/bin/env bash
# `make test-lowest`: `make test-portable` (ruff, mypy --strict, the tests marked portable in
# tests/conftest.py) with the lowest version of every dependency that pyproject.toml allows, on
# the machine's python3, in .venv-lowest.
#
# uv resolves graceful-web[dev] with --resolution lowest-direct: each direct dependency (anyio and
# everything in the dev extra) at the lowest version that resolves, their own dependencies at the
# newest. uv itself is installed by pip into .python-cache/uv. It reads no pip config, so the
# machine's pip CA bundle and constraints file are handed to it. The venv is made anew whenever
# pyproject.toml changes. Before the tests, every direct dependency whose resolved version is above
# its declared lower bound is listed: such a bound cannot be installed as written.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=$ROOT/.python-cache
PYTHON=${PYTHON:-python3}
VENV=.venv-lowest
UV=$CACHE/uv/bin/uv
STARTED=$SECONDS

log() { printf 'test-lowest: %s\n' "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

ensure_uv() {
    [ -x "$UV" ] && return
    log "installing uv into $CACHE/uv"
    rm -rf "$CACHE/uv"
    "$PYTHON" -m venv "$CACHE/uv" || die "$PYTHON -m venv failed"
    "$CACHE/uv/bin/python" -m pip install --quiet uv || die "pip could not install uv"
}

pip_setting() { "$PYTHON" -m pip config get "global.$1" 2>/dev/null || true; }

ensure_venv() {
    local key cert constraint options=()
    key="$(sha256sum pyproject.toml | cut -c1-16) $("$PYTHON" -c 'import sys; print(sys.version)')"
    if [ -f "$VENV/.lowest-key" ] && [ "$(cat "$VENV/.lowest-key")" = "$key" ]; then
        log "reusing $VENV"
        return
    fi
    cert=${PIP_CERT:-$(pip_setting cert)}
    [ -n "$cert" ] && export SSL_CERT_FILE=$cert
    constraint=${PIP_CONSTRAINT:-$(pip_setting constraint)}
    [ -n "$constraint" ] && options+=(--constraint "$constraint")
    [ -n "${PIP_DEFAULT_TIMEOUT:-}" ] && export UV_HTTP_TIMEOUT=$PIP_DEFAULT_TIMEOUT
    export UV_CACHE_DIR=$CACHE/uv-cache
    rm -rf "$VENV"
    # With pip inside, like every venv make creates (make test itself needs none).
    "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv failed"
    log "installing graceful-web[dev] with the lowest direct versions into $VENV"
    "$UV" pip install --quiet --python "$VENV/bin/python" --resolution lowest-direct \
        ${options[@]+"${options[@]}"} -e '.[dev]' || die "uv could not install the lowest versions"
    # aiohttp before 3.12.14 annotates its signals (app.on_startup...) for aiosignal < 1.4: with
    # a newer aiosignal mypy misreads them, though the code runs the same. Such an old aiohttp
    # gets the aiosignal of its own time.
    if "$VENV/bin/python" -c 'import sys
from importlib.metadata import version
from packaging.version import Version
sys.exit(Version(version("aiohttp")) >= Version("3.12.14"))'; then
        log "aiohttp is older than 3.12.14: with aiosignal < 1.4"
        "$UV" pip install --quiet --python "$VENV/bin/python" ${options[@]+"${options[@]}"} \
            'aiosignal<1.4' || die "uv could not install aiosignal < 1.4"
    fi
    echo "$key" >"$VENV/.lowest-key"
    # make then finds its stamp newer than pyproject.toml and installs nothing more.
    touch "$VENV/.installed-dev"
}

# Each direct dependency: declared lower bound and installed version.
report_versions() {
    "$VENV/bin/python" - <<'EOF'
import re
import tomllib
from importlib.metadata import version

from packaging.version import Version

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
above = []
for requirement in project["dependencies"] + project["optional-dependencies"]["dev"]:
    match = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*(?:>=\s*([^,;\s]+))?", requirement)
    assert match, requirement
    name, bound = match.groups()
    installed = version(name)
    print(f"  {name:<20} >= {bound or '-':<10} installed {installed}")
    if bound and Version(installed) > Version(bound):
        above.append(f"{name} (>= {bound}, installed {installed})")
if above:
    print("above their declared lower bound: " + ", ".join(above))
EOF
}

ensure_uv
ensure_venv
log "venv ready after $((SECONDS - STARTED))s; direct dependencies:"
report_versions
status=0
make test-portable "PYTHON=$PYTHON" "VENV=$VENV" || status=$?
log "finished in $((SECONDS - STARTED))s with status $status"
exit "$status"
