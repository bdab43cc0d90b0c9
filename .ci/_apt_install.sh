# Sourced by .ci/ensure_*.sh. apt_install TARGET PACKAGE...: as root on Debian, installs the
# packages with apt-get without letting any of them start its service (the tests start the
# servers themselves, as their own processes); elsewhere it fails, saying what to do. TARGET is
# the make target that needs them, named in the messages. The caller defines log and die.

apt_install() {
    local target=$1
    shift
    [ -f /etc/debian_version ] && command -v apt-get >/dev/null ||
        die "missing $* and this is not Debian: install them by hand (the tests never skip)"
    [ "$(id -u)" = 0 ] ||
        die "missing $*: run make $target as root to install them, or apt-get install them"

    # invoke-rc.d asks policy-rc.d whether a service may start; 101 says no. Ours only while we
    # install.
    local policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        trap "rm -f '$policy'" EXIT
        printf '#!/bin/sh\n# .ci/_apt_install.sh: no service starts while it installs.\nexit 101\n' \
            >"$policy"
        chmod 755 "$policy"
    fi

    log "installing $* with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
}
