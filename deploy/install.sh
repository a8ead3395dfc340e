#!/bin/sh
# Install energyd on a gateway: a built wheel into its own virtualenv, the systemd unit, a
# config from the example when none exists, and a system user. Running it again is safe:
# it upgrades the package and the unit and leaves the config, the data and the user alone.
#
#   deploy/install.sh [--wheel FILE] [--root DIR] [--python PY] [--uv UV] [--find-links DIR]
#   deploy/install.sh --uninstall [--purge] [--root DIR]
#
#   --wheel FILE      the energyd wheel (default: the newest dist/energyd-*.whl)
#   --root DIR        install under DIR instead of / (tests, staging); systemctl is not called
#   --python PY       interpreter for the virtualenv (default: python3, must be 3.11 or newer)
#   --uv UV           install with uv instead of pip; with the source tree's uv.lock at hand,
#                     the dependencies are the locked versions (those energyd was tested with)
#   --find-links DIR  a wheelhouse for gateways without access to a package index
#   --uninstall       remove the package and the unit; keeps config, data, credentials, user
#   --purge           with --uninstall: also remove /etc/energyd, /var/lib/energyd and
#                     /etc/credstore/energyd.* (the store with every reading goes too)
#
# Layout: /opt/energyd/venv (the package), /opt/energyd/share (examples, Grafana files),
# /etc/systemd/system/energyd.service, /etc/energyd/energyd.yaml, /var/lib/energyd (the
# store, created by systemd's StateDirectory=), /etc/credstore/energyd.NAME (secrets).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
root=
wheel=
python=python3
uv=
find_links=
action=install
purge=no

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "energyd: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --root) root=${2:?--root needs a directory}; shift 2 ;;
    --wheel) wheel=${2:?--wheel needs a file}; shift 2 ;;
    --python) python=${2:?--python needs an interpreter}; shift 2 ;;
    --uv) uv=${2:?--uv needs the uv binary}; shift 2 ;;
    --find-links) find_links=${2:?--find-links needs a directory}; shift 2 ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=yes; shift ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ "$purge" = no ] || [ "$action" = uninstall ] || die "--purge goes with --uninstall"

if [ -n "$root" ]; then
  mkdir -p "$root"
  root=$(cd "$root" && pwd)
  [ "$root" != / ] || root=
elif [ "$(id -u)" != 0 ]; then
  die "run as root (or give --root DIR to install under a directory)"
fi

prefix=$root/opt/energyd
venv=$prefix/venv
unit=$root/etc/systemd/system/energyd.service
sysusers=$root/usr/lib/sysusers.d/energyd.conf
confdir=$root/etc/energyd
credstore=$root/etc/credstore
statedir=$root/var/lib/energyd

# systemctl only acts on the running system, never on a --root tree
live_systemd() { [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

do_uninstall() {
  if live_systemd; then
    systemctl disable --now energyd.service >/dev/null 2>&1 || true
  fi
  rm -f "$unit" "$sysusers"
  rm -rf "$prefix"
  if live_systemd; then systemctl daemon-reload; fi
  if [ "$purge" = yes ]; then
    rm -rf "$confdir" "$statedir"
    rm -f "$credstore"/energyd.*
    say "removed, with its configuration, credentials and data"
  else
    say "removed; kept $confdir (config), $statedir (data) and $credstore/energyd.* (secrets)"
  fi
  say "the user energyd stays (files may still belong to it): userdel energyd removes it"
}

find_wheel() {
  if [ -z "$wheel" ]; then
    # the newest built wheel; `uv build --wheel` (or `python -m build`) puts it in dist/
    wheel=$(ls -t "$src"/dist/energyd-*.whl 2>/dev/null | head -n 1 || true)
    [ -n "$wheel" ] || die "no wheel given and none in $src/dist (build one: .uv/bin/uv build --wheel)"
  fi
  [ -f "$wheel" ] || die "wheel $wheel does not exist"
  case "$wheel" in *.whl) ;; *) die "$wheel is not a wheel (.whl)" ;; esac
}

make_user() {
  mkdir -p "$(dirname "$sysusers")"
  install -m 0644 "$here/systemd/energyd.sysusers" "$sysusers"
  if command -v systemd-sysusers >/dev/null; then
    if [ -n "$root" ]; then
      mkdir -p "$root/etc"
      systemd-sysusers --root="$root" "$sysusers"
    else
      systemd-sysusers "$sysusers"
    fi
  elif [ -z "$root" ] && ! id energyd >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/energyd --no-create-home \
      --shell /usr/sbin/nologin --user-group energyd
  fi
}

make_venv() {
  "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$python is older than Python 3.11"
  mkdir -p "$prefix"
  if [ -n "$uv" ]; then
    [ -x "$venv/bin/python" ] || "$uv" venv --quiet --python "$python" "$venv"
    if [ -f "$src/uv.lock" ] && [ -z "$find_links" ]; then
      # the dependencies exactly as uv.lock pins them: the versions energyd was tested with
      UV_PROJECT_ENVIRONMENT=$venv "$uv" sync --quiet --frozen --no-dev --no-install-project \
        --project "$src" --python "$venv/bin/python"
      set -- --no-deps
    else
      set --
      [ -z "$find_links" ] || set -- --find-links "$find_links"
    fi
    # --reinstall-package: a rebuilt wheel of the same version still replaces the old code
    "$uv" pip install --quiet --python "$venv/bin/python" --reinstall-package energyd "$@" \
      "$wheel"
  else
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    set -- --quiet --disable-pip-version-check
    [ -z "$find_links" ] || set -- "$@" --no-index --find-links "$find_links"
    "$venv/bin/pip" install "$@" "$wheel"
    "$venv/bin/pip" install "$@" --force-reinstall --no-deps "$wheel"
  fi
  "$venv/bin/energyd" --version >/dev/null || die "the installed energyd does not start"
}

install_files() {
  mkdir -p "$prefix/share" "$(dirname "$unit")" "$confdir"
  rm -rf "$prefix/share/grafana" "$prefix/share/config"
  [ ! -d "$here/grafana" ] || cp -R "$here/grafana" "$prefix/share/grafana"
  rm -rf "$prefix/share/influxdb"
  [ ! -d "$here/influxdb" ] || cp -R "$here/influxdb" "$prefix/share/influxdb"
  mkdir -p "$prefix/share/config"
  cp "$src"/config/*.yaml "$prefix/share/config/"
  [ ! -f "$src/README.md" ] || install -m 0644 "$src/README.md" "$prefix/README.md"
  install -m 0644 "$here/systemd/energyd.service" "$unit"
  if [ ! -e "$confdir/energyd.yaml" ]; then
    install -m 0644 "$src/config/plant-example.yaml" "$confdir/energyd.yaml"
    say "wrote $confdir/energyd.yaml from the plant example: edit it for this gateway"
  else
    say "kept the existing $confdir/energyd.yaml"
  fi
  # systemd's credential store: root only; LoadCredential= copies what energyd needs
  mkdir -p "$credstore"
  chmod 0700 "$credstore"
}

do_install() {
  find_wheel
  make_user
  make_venv
  install_files
  version=$("$venv/bin/energyd" --version | awk '{print $NF}')
  if live_systemd; then
    systemctl daemon-reload
    systemctl enable energyd.service >/dev/null 2>&1
    # an upgrade restarts a running daemon, but only into a config the new version accepts;
    # a first install waits for the config to be edited
    if CREDENTIALS_DIRECTORY=$credstore "$venv/bin/energyd" check-config \
        -c "$confdir/energyd.yaml" >/dev/null 2>&1; then
      systemctl try-restart energyd.service
    elif systemctl is-active --quiet energyd.service; then
      say "the config does not validate with $version: not restarted, the old process runs on"
      say "see: CREDENTIALS_DIRECTORY=/etc/credstore $venv/bin/energyd check-config -c /etc/energyd/energyd.yaml"
    fi
  fi
  say "$version installed in $venv"
  if [ -z "$root" ]; then
    cat <<EOT
next: edit /etc/energyd/energyd.yaml; put each secret the config names (energyd.influx-password...)
      in /etc/credstore/ (mode 0600)
      check it:  CREDENTIALS_DIRECTORY=/etc/credstore /opt/energyd/venv/bin/energyd check-config -c /etc/energyd/energyd.yaml
      start it:  systemctl start energyd && journalctl -fu energyd
EOT
  fi
}

"do_$action"
