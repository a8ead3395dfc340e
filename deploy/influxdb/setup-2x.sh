#!/bin/sh
# InfluxDB 2.x for energyd: a bucket with a retention period, a write token for energyd, a
# read token for Grafana, and the DBRP mapping that lets InfluxQL dashboards query the bucket
# as database/retention policy. Needs the `influx` CLI (2.x) and an operator token.
#
#   INFLUX_HOST=http://127.0.0.1:8086 INFLUX_ORG=plant INFLUX_TOKEN_FILE=/root/influx-operator \
#   BUCKET=energy RETENTION=400d \
#   ENERGYD_TOKEN_FILE=/etc/credstore/energyd.influx-token \
#   GRAFANA_TOKEN_FILE=/root/grafana-influx-token \
#     deploy/influxdb/setup-2x.sh
#
# The new tokens are written to ENERGYD_TOKEN_FILE / GRAFANA_TOKEN_FILE (mode 0600), never
# printed. Existing bucket and mapping are kept (the retention is updated); tokens are
# created only when their file does not exist yet.
set -eu

: "${INFLUX_HOST:=http://127.0.0.1:8086}"
: "${INFLUX_ORG:?set INFLUX_ORG}"
: "${INFLUX_TOKEN_FILE:?set INFLUX_TOKEN_FILE (an operator or all-access token)}"
BUCKET=${BUCKET:-energy}
RETENTION=${RETENTION:-400d}
DATABASE=${DATABASE:-$BUCKET}   # the InfluxQL name Grafana uses (jsonData.dbName)
RP=${RP:-autogen}
ENERGYD_TOKEN_FILE=${ENERGYD_TOKEN_FILE:-energyd.influx-token}
GRAFANA_TOKEN_FILE=${GRAFANA_TOKEN_FILE:-grafana.influx-token}

die() { echo "setup-2x: $*" >&2; exit 1; }
command -v influx >/dev/null || die "the influx CLI (2.x) is not installed"
[ -r "$INFLUX_TOKEN_FILE" ] || die "$INFLUX_TOKEN_FILE is not readable"
INFLUX_TOKEN=$(head -n 1 "$INFLUX_TOKEN_FILE" | tr -d '\r\n')
export INFLUX_HOST INFLUX_ORG INFLUX_TOKEN  # read by the CLI; not on any command line

bucket_id() {
    influx bucket list --name "$BUCKET" --hide-headers 2>/dev/null | cut -f1 | head -n 1
}

id=$(bucket_id)
if [ -z "$id" ]; then
    influx bucket create --name "$BUCKET" --retention "$RETENTION" >/dev/null
    id=$(bucket_id)
    [ -n "$id" ] || die "bucket $BUCKET was not created"
else
    influx bucket update --id "$id" --retention "$RETENTION" >/dev/null
fi
echo "bucket $BUCKET ($id): retention $RETENTION"

if influx v1 dbrp list --bucket-id "$id" --hide-headers 2>/dev/null | grep -q .; then
    echo "DBRP mapping for bucket $BUCKET exists (influx v1 dbrp list --bucket-id $id)"
else
    influx v1 dbrp create --db "$DATABASE" --rp "$RP" --bucket-id "$id" --default >/dev/null
    echo "DBRP mapping: InfluxQL database $DATABASE, retention policy $RP -> bucket $BUCKET"
fi

token() {  # file, description, permission flag
    if [ -e "$1" ]; then
        echo "$1 exists: token kept"
        return
    fi
    umask 077
    influx auth create --description "$2" "$3" "$id" --json \
        | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' > "$1"
    [ -s "$1" ] || { rm -f "$1"; die "no token came back for $2"; }
    echo "$2: token written to $1"
}
token "$ENERGYD_TOKEN_FILE" "energyd writes $BUCKET" --write-bucket
token "$GRAFANA_TOKEN_FILE" "grafana reads $BUCKET" --read-bucket
