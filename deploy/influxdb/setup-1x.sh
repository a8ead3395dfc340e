#!/bin/sh
# InfluxDB 1.x for energyd: the database, its retention policy, and two users
# (energyd writes, grafana reads). Idempotent: run it again to change the retention.
#
#   INFLUX_URL=http://127.0.0.1:8086 DATABASE=energy RETENTION=400d \
#   ADMIN_USER=admin ADMIN_PASSWORD_FILE=/root/influx-admin \
#   ENERGYD_PASSWORD_FILE=/etc/credstore/energyd.influx-password \
#   GRAFANA_PASSWORD_FILE=/root/grafana-influx-password \
#     deploy/influxdb/setup-1x.sh
#
# Passwords are read from files and sent in the POST body, never on a command line (where
# `ps` shows them). Without ADMIN_USER the server must run with auth-enabled = false (a
# fresh server: create the admin first, then enable auth). Without a *_PASSWORD_FILE the
# user is not created. RETENTION is an InfluxQL duration (400d, 52w, INF).
set -eu

INFLUX_URL=${INFLUX_URL:-http://127.0.0.1:8086}
DATABASE=${DATABASE:-energy}
RP=${RP:-energyd}
RETENTION=${RETENTION:-400d}
SHARD=${SHARD:-7d}

die() { echo "setup-1x: $*" >&2; exit 1; }

case $DATABASE$RP in *[!A-Za-z0-9_]*) die "DATABASE and RP take letters, digits and _ only";; esac
case $RETENTION$SHARD in *[!A-Za-z0-9]*) die "RETENTION and SHARD are durations such as 400d";; esac

auth=
if [ -n "${ADMIN_USER:-}" ]; then
    [ -r "${ADMIN_PASSWORD_FILE:-}" ] || die "ADMIN_USER needs a readable ADMIN_PASSWORD_FILE"
    auth=$(mktemp)
    trap 'rm -f "$auth"' EXIT
    chmod 600 "$auth"
    printf 'user = "%s:%s"\n' "$ADMIN_USER" "$(cat "$ADMIN_PASSWORD_FILE")" > "$auth"
fi

# q STATEMENT: POST one InfluxQL statement (through stdin: printf is a shell builtin, so no
# password shows in `ps`); fails on an HTTP error or an error in the answer
q() {
    answer=$(printf '%s' "$1" | curl --silent --show-error --fail-with-body --noproxy '*' \
        ${auth:+--config "$auth"} -X POST "$INFLUX_URL/query" --data-urlencode "q@-") \
        || die "query failed: $(printf '%s' "$answer" | sed "s/'[^']*'/'***'/g")"
    case $answer in *'"error"'*) die "query failed: $(printf '%s' "$answer" | sed "s/'[^']*'/'***'/g")";; esac
}

password() {  # the file's first line, quotes escaped for an InfluxQL string
    head -n 1 "$1" | tr -d '\r\n' | sed "s/'/\\\\'/g"
}

q "CREATE DATABASE \"$DATABASE\""
q "SHOW RETENTION POLICIES ON \"$DATABASE\""
case $answer in
    *"[\"$RP\","*) verb=ALTER; replication= ;;
    *) verb=CREATE; replication="REPLICATION 1" ;;
esac
q "$verb RETENTION POLICY \"$RP\" ON \"$DATABASE\" DURATION $RETENTION $replication SHARD DURATION $SHARD DEFAULT"
echo "database $DATABASE: default retention policy $RP ($RETENTION, shards of $SHARD)"

user() {  # name, password file, privilege
    [ -n "${2:-}" ] || return 0
    [ -r "$2" ] || die "$2 is not readable"
    q "SHOW USERS"
    case $answer in
        *"[\"$1\","*) q "SET PASSWORD FOR \"$1\" = '$(password "$2")'" ;;
        *) q "CREATE USER \"$1\" WITH PASSWORD '$(password "$2")'" ;;
    esac
    q "GRANT $3 ON \"$DATABASE\" TO \"$1\""
    echo "user $1: $3 on $DATABASE"
}
user energyd "${ENERGYD_PASSWORD_FILE:-}" WRITE
user grafana "${GRAFANA_PASSWORD_FILE:-}" READ
