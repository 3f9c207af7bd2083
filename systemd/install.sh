#!/usr/bin/env bash
# Install skyrelay as systemd services on one host (Debian 12). Idempotent: run it again after
# pulling a new version. It never starts, stops or enables skyrelay services, and never overwrites
# /etc/skyrelay/topology.toml or an edited broker config.
#
#   sudo systemd/install.sh            # install / upgrade
#   systemd/install.sh --dry-run       # print what it would do, change nothing
#
# Environment: PYTHON (default python3, must be >= 3.11), PREFIX (default /opt/skyrelay).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: install.sh [--dry-run] [--repo PATH]

  --dry-run    print what would be done; change nothing (no root needed)
  --repo PATH  the skyrelay source tree to install (default: the one this script is in)
EOF
}

DRY_RUN=0
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
while (($#)); do
    case "$1" in
        --dry-run | -n) DRY_RUN=1 ;;
        --repo)
            [[ $# -ge 2 ]] || { usage >&2; exit 2; }
            REPO="$(cd "$2" && pwd)"
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

PYTHON="${PYTHON:-python3}"
PREFIX="${PREFIX:-/opt/skyrelay}"
VENV="$PREFIX/venv"
ETC=/etc/skyrelay
UNIT_DIR=/etc/systemd/system
DATA=/srv/skyrelay
SRC="$REPO/systemd"
SITES=(summit base archive)

say() { printf '%s\n' "$*"; }
note() { printf '  - %s\n' "$*"; }
# Run a command, or only show it with --dry-run.
run() {
    if ((DRY_RUN)); then
        printf '  would run:'
    else
        printf '  +'
    fi
    printf ' %q' "$@"
    printf '\n'
    ((DRY_RUN)) || "$@"
}

[[ -f "$REPO/pyproject.toml" && -f "$SRC/skyrelay@.service" ]] || {
    echo "install.sh: $REPO does not look like the skyrelay source tree" >&2
    exit 2
}
if ((!DRY_RUN)) && [[ $EUID -ne 0 ]]; then
    echo "install.sh: run as root (or try --dry-run)" >&2
    exit 1
fi
((DRY_RUN)) && say "DRY RUN: nothing will be changed."

# Copy src to dest with owner/group/mode. policy=replace: ours, always refreshed (customise with
# drop-ins). policy=keep: the operator's once installed; a newer shipped version is put next to
# it as dest.dist for them to merge.
put() {
    local policy=$1 src=$2 dest=$3 mode=$4 owner=$5 group=$6
    if [[ ! -e "$dest" ]]; then
        run install -D -m "$mode" -o "$owner" -g "$group" "$src" "$dest"
    elif cmp -s "$src" "$dest"; then
        note "$dest is up to date"
    elif [[ $policy == replace ]]; then
        run install -m "$mode" -o "$owner" -g "$group" "$src" "$dest"
    else
        note "$dest exists and differs from the shipped version: kept; new version as $dest.dist"
        run install -m "$mode" -o "$owner" -g "$group" "$src" "$dest.dist"
    fi
}

say "== packages"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: $PYTHON is older than 3.11" >&2
    exit 1
}
missing=()
[[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
if ((${#missing[@]})); then
    run apt-get update -qq
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    if [[ " ${missing[*]} " == *" mosquitto "* ]]; then
        # The package starts its own default broker (mosquitto.service, port 1883). skyrelay runs
        # one broker per site (mosquitto-skyrelay@<site>) instead; switch the default one off.
        if [[ -d /run/systemd/system ]]; then
            note "disabling the packaged default broker (skyrelay uses mosquitto-skyrelay@<site>)"
            run systemctl disable --now mosquitto.service
        fi
    fi
else
    note "mosquitto and $PYTHON venv support are installed"
fi
if ! getent passwd mosquitto >/dev/null; then
    run useradd --system --user-group --home-dir /var/lib/mosquitto --no-create-home \
        --shell /usr/sbin/nologin mosquitto
fi

say "== user"
if getent passwd skyrelay >/dev/null; then
    note "user skyrelay exists"
else
    run useradd --system --user-group --home-dir /var/lib/skyrelay --no-create-home \
        --shell /usr/sbin/nologin --comment "skyrelay daemon" skyrelay
fi

say "== program ($VENV)"
if [[ -x "$VENV/bin/python" ]]; then
    note "virtualenv exists"
else
    run "$PYTHON" -m venv "$VENV"
fi
run "$VENV/bin/pip" install -q --disable-pip-version-check "$REPO"
put replace "$SRC/README.md" "$PREFIX/README.systemd.md" 0644 root root

say "== configuration ($ETC)"
for dir in "$ETC" "$ETC/corrections"; do
    [[ -d "$dir" ]] || run install -d -m 0755 -o root -g root "$dir"
done
put replace "$SRC/topology.example.toml" "$ETC/topology.example.toml" 0644 root root
if [[ -e "$ETC/topology.toml" ]]; then
    note "$ETC/topology.toml exists: left as it is"
else
    # Readable by the daemon's group only: it holds the MQTT password.
    run install -m 0640 -o root -g skyrelay "$SRC/topology.example.toml" "$ETC/topology.toml"
fi
for site in "${SITES[@]}"; do
    put keep "$SRC/mosquitto-$site.conf" "$ETC/mosquitto-$site.conf" 0644 root root
done
[[ -e "$ETC/mosquitto.passwd" ]] || note "$ETC/mosquitto.passwd is missing: the brokers will not start without it"
[[ -e "$ETC/token" ]] || note "$ETC/token is missing: the daemons will not start without it"

say "== data ($DATA)"
# The units make /var/lib/skyrelay/<site> and /var/lib/mosquitto-skyrelay/<site> themselves.
# /srv/skyrelay is the unit's ReadWritePaths for inboxes and the archive.
if [[ -d "$DATA" ]]; then
    note "$DATA exists"
else
    run install -d -m 0755 -o skyrelay -g skyrelay "$DATA"
fi

say "== systemd units ($UNIT_DIR)"
for unit in "skyrelay@.service" "mosquitto-skyrelay@.service"; do
    put replace "$SRC/$unit" "$UNIT_DIR/$unit" 0644 root root
done
if [[ -d /run/systemd/system ]]; then
    run systemctl daemon-reload
else
    note "systemd is not running here: skipped systemctl daemon-reload"
fi

if ((DRY_RUN)); then
    say ""
    say "Dry run: nothing was changed. After a real run:"
else
    say ""
    say "Installed. Nothing has been started."
fi
cat <<EOF
Next steps on this host (replace SITE with summit, base or archive):

  1. Edit $ETC/topology.toml (the same file on every host); keep data under $DATA or add
     ReadWritePaths with \`systemctl edit skyrelay@SITE\`.
  2. Pull token, once, then copy it to the other hosts:
       openssl rand -hex 32 | install -m 0640 -o root -g skyrelay /dev/stdin $ETC/token
  3. Broker accounts (the topology's mqtt_username / mqtt_password, plus any subscribers):
       mosquitto_passwd -c $ETC/mosquitto.passwd skyrelay
       chown root:mosquitto $ETC/mosquitto.passwd && chmod 0640 $ETC/mosquitto.passwd
  4. Check the topology:
       sudo -u skyrelay $VENV/bin/skyrelay check --topology $ETC/topology.toml --site SITE
     (each host's broker config and unit drop-in: skyrelay render --topology T --site SITE --out DIR)
  5. Start this host's site:
       systemctl enable --now mosquitto-skyrelay@SITE skyrelay@SITE
       journalctl -u skyrelay@SITE -o cat | jq

See $PREFIX/README.systemd.md.
EOF
