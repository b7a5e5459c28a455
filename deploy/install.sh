#!/bin/sh
# Install (or remove) the shoal agent on this host.
#
#   sudo deploy/install.sh                        install into /opt/shoal, start the service
#   sudo deploy/install.sh --uninstall [--purge]  remove it (--purge: keys, config, state too)
#
# What an install does, each step skipped when already done, so running it again
# (to upgrade, or by mistake) changes nothing that matters:
#   1. a virtualenv at PREFIX (default /opt/shoal), with shoal pip-installed into it;
#   2. /etc/shoal, mode 0700;
#   3. /etc/shoal/admin.key from `shoal keygen`, unless a key file is already there
#      (or the one given with --key-file, replacing any there);
#   3b. with --tls-dir: its agent.pem, agent.key (0600) and ca.pem into /etc/shoal,
#      replacing any there, and a [tls] table naming them appended to an existing
#      agent.toml that has no TLS settings (an existing one is left as it is);
#   4. /etc/shoal/agent.toml with defaults, unless one exists (never overwritten),
#      then checked with `shoal-agent --check-config`;
#   5. /var/lib/shoal and /var/log/shoal;
#   6. the systemd unit in /etc/systemd/system, then daemon-reload and enable --now
#      (restart when it was already running, so an upgrade takes effect) - but only
#      on a host booted with systemd, without --destdir and without --no-systemd.
#
# Options:
#   --prefix DIR      where the virtualenv goes (default /opt/shoal)
#   --destdir DIR     staging root: every file goes under DIR and systemctl is never
#                     called. For tests and packaging. A virtualenv is not relocatable:
#                     its scripts name DIR/PREFIX/bin/python, so a package built this
#                     way must be unpacked where it was staged or rebuilt on the host.
#   --source PATH     shoal source tree, sdist or wheel to install (default: the tree
#                     this script is in). A tree is copied first so the build writes
#                     nothing into it.
#   --system-site-packages
#                     let the virtualenv use the system's psutil and cryptography
#                     (from distro packages, or on hosts without access to PyPI).
#   --key-file PATH   install this shoal key as /etc/shoal/admin.key (0600), so every
#                     host enrolled with it accepts the controllers holding it.
#   --tls-dir DIR     install DIR/agent.pem, DIR/agent.key and DIR/ca.pem (this host's
#                     certificate, its key and the fleet CA; see `shoal bootstrap
#                     --tls-ca-dir`) into /etc/shoal, so the agent requires mutual TLS.
#   --no-systemd      install the unit file but do not call systemctl.
#   --uninstall       stop and disable the service, remove the unit and virtualenv.
#   --purge           with --uninstall: also remove /etc/shoal (keys!), state and logs.
# Environment: PYTHON (default python3) is the interpreter the virtualenv is made from.

set -eu

PREFIX=/opt/shoal
DESTDIR=
SOURCE=
KEY_FILE=
TLS_DIR=
ACTION=install
USE_SYSTEMD=yes
PURGE=no
VENV_FLAGS=
PYTHON=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)

say() { echo "install.sh: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

usage() {
    sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
    exit "${1:-0}"
}

need_value() {
    [ "$2" -ge 2 ] || die "$1 needs a value"
}

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --prefix) need_value "$1" $#; PREFIX=$2; shift ;;
            --prefix=*) PREFIX=${1#*=} ;;
            --destdir) need_value "$1" $#; DESTDIR=$2; shift ;;
            --destdir=*) DESTDIR=${1#*=} ;;
            --source) need_value "$1" $#; SOURCE=$2; shift ;;
            --source=*) SOURCE=${1#*=} ;;
            --key-file) need_value "$1" $#; KEY_FILE=$2; shift ;;
            --key-file=*) KEY_FILE=${1#*=} ;;
            --tls-dir) need_value "$1" $#; TLS_DIR=$2; shift ;;
            --tls-dir=*) TLS_DIR=${1#*=} ;;
            --system-site-packages) VENV_FLAGS=--system-site-packages ;;
            --no-systemd) USE_SYSTEMD=no ;;
            --uninstall) ACTION=uninstall ;;
            --purge) PURGE=yes ;;
            -h|--help) usage 0 ;;
            *) echo "install.sh: unknown option: $1" >&2; usage 2 >&2 ;;
        esac
        shift
    done
}

check_args() {
    case $PREFIX in
        /*) ;;
        *) die "--prefix must be an absolute path, got '$PREFIX'" ;;
    esac
    # PREFIX is substituted into the unit file with sed and must stay one word there.
    case $PREFIX in
        *[!A-Za-z0-9/._+-]*) die "--prefix may only hold letters, digits and / . _ + -" ;;
    esac
    PREFIX=${PREFIX%/}
    [ -n "$PREFIX" ] || die "--prefix / would put the virtualenv over the whole system"
    if [ -n "$DESTDIR" ]; then
        mkdir -p "$DESTDIR"
        DESTDIR=$(cd "$DESTDIR" && pwd)
    elif [ "$(id -u)" -ne 0 ]; then
        die "run as root (or stage the files with --destdir DIR)"
    fi
    [ "$PURGE" = no ] || [ "$ACTION" = uninstall ] || die "--purge only goes with --uninstall"
    SOURCE=${SOURCE:-$HERE/..}
    [ -e "$SOURCE" ] || die "no such source: $SOURCE"
    if [ -n "$KEY_FILE" ]; then
        [ -f "$KEY_FILE" ] || die "no such key file: $KEY_FILE"
        # The agent refuses such a key; say so before anything is installed.
        [ -z "$(find "$KEY_FILE" -perm /0077)" ] ||
            die "key file $KEY_FILE is accessible by others; run chmod 600 $KEY_FILE"
    fi
    for name in $TLS_FILES; do
        [ -z "$TLS_DIR" ] || [ -f "$TLS_DIR/$name" ] || die "no $name in --tls-dir $TLS_DIR"
    done
    VENV=$DESTDIR$PREFIX
    ETC=$DESTDIR/etc/shoal
    UNIT=$DESTDIR/etc/systemd/system/shoal-agent.service
    STATE=$DESTDIR/var/lib/shoal
    LOGS=$DESTDIR/var/log/shoal
}

# systemctl only on the live system, and only when systemd is what booted it
# (/run/systemd/system is the test sd_booted(3) uses: PID 1 is systemd).
# What --tls-dir holds, installed under the same names next to admin.key.
TLS_FILES="agent.pem agent.key ca.pem"

systemd_live() {
    [ -z "$DESTDIR" ] && [ "$USE_SYSTEMD" = yes ] && [ -d /run/systemd/system ]
}

make_venv() {
    if [ -x "$VENV/bin/python" ] && [ -f "$VENV/pyvenv.cfg" ]; then
        say "virtualenv $VENV exists"
        return
    fi
    if [ -e "$VENV" ] && [ -n "$(ls -A "$VENV")" ]; then
        die "$VENV exists and is not a virtualenv; refusing to install over it"
    fi
    say "creating virtualenv $VENV"
    # shellcheck disable=SC2086  # VENV_FLAGS is empty or one flag
    "$PYTHON" -m venv $VENV_FLAGS "$VENV" ||
        die "'$PYTHON -m venv' failed (on Debian/Ubuntu: apt install python3-venv)"
}

install_package() {
    if [ -d "$SOURCE" ]; then
        mkdir "$WORK/src"
        # Build from a copy: pip builds in place and would leave build/ and
        # *.egg-info in the tree, which may be read-only or shared.
        (cd "$SOURCE" && tar -cf - --exclude=./.git --exclude=./build --exclude='*.egg-info' \
            --exclude=__pycache__ --exclude=./.venv .) | (cd "$WORK/src" && tar -xf -)
        target=$WORK/src
    else
        target=$SOURCE
    fi
    say "installing shoal from $SOURCE"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$target"
    [ -x "$VENV/bin/shoal-agent" ] || die "pip did not install $VENV/bin/shoal-agent"
}

make_dirs() {
    mkdir -p "$ETC" "$STATE" "$LOGS"
    # Keys live here: only root may even list them.
    chmod 0700 "$ETC" "$STATE"
    chmod 0750 "$LOGS"
}

make_key() {
    if [ -n "$KEY_FILE" ]; then
        install_key
        return
    fi
    if [ -e "$ETC/admin.key" ]; then
        say "keeping existing key $ETC/admin.key"
        return
    fi
    key_id=$("$VENV/bin/shoal" keygen "$ETC/admin.key")
    say "created $ETC/admin.key (key id $key_id); copy it to the controllers that manage this host"
}

# The given key replaces admin.key: checked first (format, and 0600 like the agent
# demands), then copied next to it and renamed, so the agent never reads half a key.
install_key() {
    "$VENV/bin/python" - "$KEY_FILE" <<'EOF' || exit 1
import sys
from shoal.hostio.keyfile import load_key_file
from shoal.protocol.errors import ConfigError
try:
    load_key_file(sys.argv[1])
except ConfigError as exc:
    sys.exit(f"install.sh: error: {exc}")
EOF
    if [ -f "$ETC/admin.key" ] && cmp -s "$KEY_FILE" "$ETC/admin.key"; then
        say "key $ETC/admin.key is up to date"
        return
    fi
    (umask 077 && cp "$KEY_FILE" "$ETC/admin.key.new")
    chmod 0600 "$ETC/admin.key.new"
    mv -f "$ETC/admin.key.new" "$ETC/admin.key"
    say "installed $KEY_FILE as $ETC/admin.key"
}

# The certificate and key are checked together first (the key must be the
# certificate's), then each is copied next to admin.key and renamed into place.
install_tls() {
    [ -n "$TLS_DIR" ] || return 0
    "$VENV/bin/python" - "$TLS_DIR" <<'EOF' || exit 1
import sys
from shoal.hostio.tls import server_context
from shoal.protocol.errors import ConfigError
tls_dir = sys.argv[1]
try:
    server_context(f"{tls_dir}/agent.pem", f"{tls_dir}/agent.key", f"{tls_dir}/ca.pem")
except ConfigError as exc:
    sys.exit(f"install.sh: error: {exc}")
EOF
    for name in $TLS_FILES; do
        mode=0644
        [ "$name" != agent.key ] || mode=0600
        (umask 077 && cp "$TLS_DIR/$name" "$ETC/$name.new")
        chmod "$mode" "$ETC/$name.new"
        mv -f "$ETC/$name.new" "$ETC/$name"
    done
    say "installed $ETC/agent.pem, agent.key and ca.pem from $TLS_DIR"
    if [ -e "$ETC/agent.toml" ]; then add_tls_config; fi
}

# An existing agent.toml gets the [tls] table unless it already sets TLS
# (a [tls] table or tls keys), which is the admin's choice and kept.
add_tls_config() {
    if grep -Eq '^[[:space:]]*(\[[[:space:]]*tls[[:space:]]*\]|tls[[:space:]]*[=.])' "$ETC/agent.toml"; then
        say "keeping the TLS settings in $ETC/agent.toml"
        return
    fi
    (umask 077 && { cat "$ETC/agent.toml"; tls_config; } > "$ETC/agent.toml.new")
    mv "$ETC/agent.toml.new" "$ETC/agent.toml"
    say "added [tls] to $ETC/agent.toml"
}

tls_config() {
    cat <<EOF

# Mutual TLS, from install.sh --tls-dir: the agent presents agent.pem and admits
# only controllers with a certificate from ca.pem.
[tls]
cert = "/etc/shoal/agent.pem"
key = "/etc/shoal/agent.key"
ca = "/etc/shoal/ca.pem"
EOF
}

write_config() {
    if [ -e "$ETC/agent.toml" ]; then
        say "keeping existing $ETC/agent.toml"
    else
        (umask 077 && default_config > "$ETC/agent.toml.new")
        mv "$ETC/agent.toml.new" "$ETC/agent.toml"
        say "wrote $ETC/agent.toml"
    fi
    check_config || die "$ETC/agent.toml is not valid; fix it and run this again"
}

# --check-config also loads the key and TLS files the configuration names. Under
# --destdir those are staged below DESTDIR, so check a copy whose /etc/shoal/
# paths point there (its errors name the copy, with the same line numbers).
check_config() {
    checked=$ETC/agent.toml
    if [ -n "$DESTDIR" ]; then
        checked=$WORK/agent.toml
        sed "s|\"/etc/shoal/|\"$ETC/|g" "$ETC/agent.toml" > "$checked"
    fi
    "$VENV/bin/shoal-agent" --config "$checked" --check-config > /dev/null
}

default_config() {
    cat <<EOF
# shoal agent settings; every option and its default: deploy/agent.toml in the
# shoal sources. Check after editing: $PREFIX/bin/shoal-agent --check-config
# then apply with: systemctl reload shoal-agent

# Reachable from the network, so the admin key below is required to connect.
# Keys authenticate frames but do not encrypt them; add [tls] to hide output.
listen = ["0.0.0.0:8470"]
log_level = "info"
audit_log = "/var/log/shoal/audit.jsonl"
state_dir = "/var/lib/shoal"

[[keys]]
name = "admin"
file = "/etc/shoal/admin.key"
allow = "all"
EOF
    if [ -n "$TLS_DIR" ]; then tls_config; fi
}

install_unit() {
    mkdir -p "$(dirname "$UNIT")"
    sed "s|/opt/shoal/|$PREFIX/|g" "$HERE/shoal-agent.service" > "$WORK/unit"
    if [ -f "$UNIT" ] && cmp -s "$WORK/unit" "$UNIT"; then
        say "unit $UNIT is up to date"
    else
        cp "$WORK/unit" "$UNIT.new" && chmod 0644 "$UNIT.new" && mv "$UNIT.new" "$UNIT"
        say "installed $UNIT"
    fi
}

start_service() {
    if ! systemd_live; then
        say "not starting the service (no systemd here, --destdir or --no-systemd);"
        say "start it with: systemctl daemon-reload && systemctl enable --now shoal-agent"
        return
    fi
    was_active=no
    if systemctl is-active --quiet shoal-agent; then was_active=yes; fi
    systemctl daemon-reload
    systemctl enable --now shoal-agent
    if [ "$was_active" = yes ]; then
        systemctl restart shoal-agent
        say "restarted shoal-agent on the new version"
    else
        say "shoal-agent enabled and started"
    fi
}

do_install() {
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    umask 022
    make_venv
    install_package
    make_dirs
    make_key
    install_tls
    write_config
    install_unit
    start_service
}

do_uninstall() {
    if systemd_live && [ -f "$UNIT" ]; then
        systemctl disable --now shoal-agent || true
    fi
    if [ -f "$UNIT" ]; then
        rm -f "$UNIT"
        say "removed $UNIT"
        if systemd_live; then systemctl daemon-reload; fi
    fi
    if [ -f "$VENV/pyvenv.cfg" ]; then
        rm -rf "$VENV"
        say "removed $VENV"
    elif [ -e "$VENV" ]; then
        die "$VENV is not a virtualenv; refusing to delete it"
    fi
    if [ "$PURGE" = yes ]; then
        rm -rf "$ETC" "$STATE" "$LOGS"
        say "removed $ETC, $STATE and $LOGS"
    elif [ -d "$ETC" ]; then
        say "kept $ETC (keys and settings); --purge removes it"
    fi
}

parse_args "$@"
check_args
if [ "$ACTION" = install ]; then do_install; else do_uninstall; fi
