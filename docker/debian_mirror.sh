# shellcheck shell=bash
# Sourced by docker/_provision.sh and .ci/test-pythons.sh: one reading of the machine's mirror.
# The machine's main Debian archive, read from its own apt sources (deb822 or one-line form).
debian_mirror() {
    local mirror=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        # The first stanza whose suites include a plain release name (not -security/-updates).
        mirror=$(awk -v RS= '
            /(^|\n)Types:[^\n]*deb([ \t]|\n|$)/ &&
            match($0, /(^|\n)Suites:[^\n]*/) {
                suites = substr($0, RSTART, RLENGTH)
                n = split(suites, words, /[ \t\n]+/)
                plain = 0
                for (i = 1; i <= n; i++) if (words[i] ~ /^[a-z]+$/) plain = 1
                if (plain && match($0, /(^|\n)URIs:[ \t]*[^ \t\n]+/)) {
                    uri = substr($0, RSTART, RLENGTH)
                    sub(/^\n?URIs:[ \t]*/, "", uri)
                    print uri
                    exit
                }
            }' /etc/apt/sources.list.d/*.sources)
    fi
    if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
        mirror=$(awk '$1 == "deb" {
            for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { uri = $i; suite = $(i + 1); break }
            if (suite ~ /^[a-z]+$/) { print uri; exit }
        }' /etc/apt/sources.list)
    fi
    [ -n "$mirror" ] && echo "$mirror"
}
