# shellcheck shell=bash
# Shared set-up for scripts/test and scripts/run; source it, do not execute it.
#
#   pyngx_ensure_debian_packages  install $PYNGX_DEBIAN_PACKAGES that are missing (root only)
#   pyngx_ensure_venv             create $PYNGX_VENV and `pip install -e '.[test]'` when needed

PYNGX_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYNGX_VENV="$PYNGX_ROOT/.venv"

# Debian packages the test suite drives. Extend this list as tests need more programs;
# postfix is preseeded below ("No configuration"), and policy-rc.d keeps the packaged
# services (nginx, dovecot, postfix) from starting: tests run their own instances.
PYNGX_DEBIAN_PACKAGES="nginx libnginx-mod-stream curl openssl socat iproute2 dovecot-imapd postfix swaks"

pyngx_log() {
    echo "${0##*/}: $*" >&2
}

pyngx_missing_debian_packages() {
    local pkg
    for pkg in "$@"; do
        if ! dpkg -s "$pkg" 2>/dev/null | grep -q '^Status: install ok installed'; then
            echo "$pkg"
        fi
    done
}

# pyngx_apt_install PKG...: install the given packages that are missing; a no-op (no apt at all)
# when every one is installed already. Not root, or not Debian: warn and go on.
pyngx_apt_install() {
    local missing policy_rc_d=/usr/sbin/policy-rc.d created_policy=0 rc=0
    if ! command -v dpkg >/dev/null 2>&1; then
        pyngx_log "no dpkg: not a Debian system, not installing: $*"
        return 0
    fi
    missing=$(pyngx_missing_debian_packages "$@")
    [ -z "$missing" ] && return 0
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    missing=$(echo $missing)
    if [ "$(id -u)" -ne 0 ]; then
        pyngx_log "missing Debian packages (run as root to install them): $missing"
        return 0
    fi
    pyngx_log "installing Debian packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    # Keep the packages' own services (nginx on port 80, postfix, dovecot) from starting:
    # the tests start their own instances on free ports.
    if [ ! -e "$policy_rc_d" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy_rc_d" && chmod 755 "$policy_rc_d" && created_policy=1
    fi
    {
        apt-get update -q &&
            # shellcheck disable=SC2086
            apt-get install -y -q --no-install-recommends $missing
    } || rc=$?
    [ "$created_policy" -eq 1 ] && rm -f "$policy_rc_d"
    if [ "$rc" -ne 0 ]; then
        pyngx_log "apt-get failed (exit $rc)"
        return "$rc"
    fi
}

pyngx_ensure_debian_packages() {
    # shellcheck disable=SC2086
    pyngx_apt_install $PYNGX_DEBIAN_PACKAGES
}

# Print the interpreter to build the venv with: python3.11, else python3 if it is >= 3.11.
pyngx_find_python() {
    local py
    for py in python3.11 python3; do
        if command -v "$py" >/dev/null 2>&1 &&
            "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            command -v "$py"
            return 0
        fi
    done
    return 1
}

pyngx_ensure_venv() {
    local py stamp want
    if [ ! -x "$PYNGX_VENV/bin/python" ]; then
        if ! py=$(pyngx_find_python); then
            pyngx_log "need Python >= 3.11 (python3.11 or python3) on PATH"
            return 1
        fi
        # Debian splits venv/ensurepip into python3-venv (python3.11-venv).
        if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
            pyngx_apt_install python3-venv
        fi
        pyngx_log "creating $PYNGX_VENV with $py"
        "$py" -m venv "$PYNGX_VENV"
    fi
    # Reinstall only when pyproject.toml changed since the last successful install.
    stamp="$PYNGX_VENV/.pyngx-installed"
    want=$(sha256sum "$PYNGX_ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        pyngx_log "installing pyngx and its test dependencies into $PYNGX_VENV"
        "$PYNGX_VENV/bin/python" -m pip install -q --disable-pip-version-check \
            -e "$PYNGX_ROOT[test]"
        echo "$want" >"$stamp"
    fi
}
