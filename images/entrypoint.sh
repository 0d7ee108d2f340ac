#!/usr/bin/env bash
# Entrypoint of the walkeeper Patroni image, run by tini (PID 1, which reaps orphans and hands
# SIGTERM to this script). It:
#   1. renders /etc/patroni/patroni.yml from config/patroni.yml.in and the environment, and
#      writes walkeeper's settings and secrets to an envdir only the postgres user can read;
#   2. starts the walkeeper agent and waits until its GET /health answers 200 (its startup check
#      writes the `initialize` key when the cluster must come back from the archive);
#   3. starts Patroni;
#   4. on SIGTERM/SIGINT stops Patroni first (Patroni stops PostgreSQL and releases the leader
#      key, so a replica takes over at once), then the agent. If either process dies on its own
#      the other is stopped too and the container exits, for the restart policy to act.
# Both processes run as postgres with a minimal environment; no secret ever goes on a command
# line.
set -euo pipefail

log() { printf 'walkeeper-entrypoint: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

TEMPLATE=${WALKEEPER_PATRONI_TEMPLATE:-/etc/walkeeper/patroni.yml.in}
PATRONI_CONFIG=/etc/patroni/patroni.yml
WALKEEPER_ENVDIR=/run/walkeeper/env
PG_HOME=/var/lib/postgresql

# Secrets may come as files (Docker/Kubernetes secrets): NAME_FILE names a file holding NAME.
SECRETS=(PATRONI_SUPERUSER_PASSWORD PATRONI_REPLICATION_PASSWORD WALKEEPER_API_TOKEN
  AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN WABS_ACCESS_KEY WABS_SAS_TOKEN
  AZURE_STORAGE_ACCESS_KEY AZURE_STORAGE_SAS_TOKEN)
for name in "${SECRETS[@]}"; do
  file_var=${name}_FILE
  if [ -n "${!file_var:-}" ]; then
    [ -r "${!file_var}" ] || die "$file_var names ${!file_var}, which is not readable"
    export "$name=$(<"${!file_var}")"
    unset "$file_var"
  fi
done

valid_name='^[A-Za-z0-9][A-Za-z0-9._-]*$'
number='^[0-9]+$'

SCOPE=${PATRONI_SCOPE:-${WALKEEPER_SCOPE:-}}
[ -n "$SCOPE" ] || die "PATRONI_SCOPE (the cluster's name) is not set"
[[ $SCOPE =~ $valid_name ]] || die "PATRONI_SCOPE=$SCOPE: use letters, digits, '.', '_' and '-'"
MEMBER_NAME=${PATRONI_NAME:-${WALKEEPER_NAME:-$(hostname)}}
[[ $MEMBER_NAME =~ $valid_name ]] || die "PATRONI_NAME=$MEMBER_NAME: use letters, digits, '.', '_' and '-'"
CONNECT_HOST=${CONNECT_HOST:-$(hostname)}
ETCD_HOSTS=${ETCD_HOSTS:-${PATRONI_ETCD3_HOSTS:-${WALKEEPER_ETCD_HOSTS:-etcd:2379}}}
NAMESPACE=${PATRONI_NAMESPACE:-${WALKEEPER_NAMESPACE:-/service}}
PGDATA=${PGDATA:-$PG_HOME/data/pgdata}
PG_BIN_DIR=${WALKEEPER_PG_BIN_DIR:-/usr/lib/postgresql/15/bin}
SUPERUSER=postgres
REPLICATION_USER=${PATRONI_REPLICATION_USERNAME:-replicator}
PATRONI_TTL=${PATRONI_TTL:-30}
PATRONI_LOOP_WAIT=${PATRONI_LOOP_WAIT:-10}
PATRONI_RETRY_TIMEOUT=${PATRONI_RETRY_TIMEOUT:-10}
PATRONI_LOG_LEVEL=${PATRONI_LOG_LEVEL:-INFO}
ARCHIVE_MODE=${ARCHIVE_MODE:-on}
ARCHIVE_TIMEOUT=${ARCHIVE_TIMEOUT:-60}
for v in PATRONI_TTL PATRONI_LOOP_WAIT PATRONI_RETRY_TIMEOUT ARCHIVE_TIMEOUT; do
  [[ ${!v} =~ $number ]] || die "$v=${!v} is not a whole number of seconds"
done
case "$ARCHIVE_MODE" in on | always) ;; *) die "ARCHIVE_MODE=$ARCHIVE_MODE: use on or always" ;; esac
[[ $REPLICATION_USER =~ $valid_name ]] || die "PATRONI_REPLICATION_USERNAME=$REPLICATION_USER is not a plain name"
[ -n "${PATRONI_SUPERUSER_PASSWORD:-}" ] || die "PATRONI_SUPERUSER_PASSWORD (or _FILE) is not set"
[ -n "${PATRONI_REPLICATION_PASSWORD:-}" ] || die "PATRONI_REPLICATION_PASSWORD (or _FILE) is not set"

# The archive prefix: walkeeper's own, WAL-G's or WAL-E's names as they are; dingo's
# WAL_S3_BUCKET becomes WAL-E's prefix under dingo's layout, s3://BUCKET/backups/SCOPE/wal.
prefix_set=
for v in WALKEEPER_PREFIX WALG_FILE_PREFIX WALE_FILE_PREFIX WALG_S3_PREFIX WALE_S3_PREFIX \
  WALG_GS_PREFIX WALE_GS_PREFIX WALG_AZ_PREFIX WALE_WABS_PREFIX; do
  [ -z "${!v:-}" ] || prefix_set=$v
done
if [ -z "$prefix_set" ]; then
  [ -n "${WAL_S3_BUCKET:-}" ] || die "no archive: set WAL_S3_BUCKET, WALG_S3_PREFIX, WALE_S3_PREFIX, WALKEEPER_PREFIX or another *_PREFIX"
  export WALE_S3_PREFIX="s3://$WAL_S3_BUCKET/backups/$SCOPE/wal"
fi

# Replica creation thresholds: passed on Patroni's method line only when set, so that unset
# ones fall back to walkeeper's defaults.
WALKEEPER_METHOD_THRESHOLDS=
if [ -n "${WALE_BACKUP_THRESHOLD_MEGABYTES:-}" ]; then
  [[ $WALE_BACKUP_THRESHOLD_MEGABYTES =~ $number ]] || die "WALE_BACKUP_THRESHOLD_MEGABYTES is not a number"
  WALKEEPER_METHOD_THRESHOLDS+="    threshold_megabytes: $WALE_BACKUP_THRESHOLD_MEGABYTES"$'\n'
fi
if [ -n "${WALE_BACKUP_THRESHOLD_PERCENTAGE:-}" ]; then
  [[ $WALE_BACKUP_THRESHOLD_PERCENTAGE =~ $number ]] || die "WALE_BACKUP_THRESHOLD_PERCENTAGE is not a number"
  WALKEEPER_METHOD_THRESHOLDS+="    threshold_backup_size_percentage: $WALE_BACKUP_THRESHOLD_PERCENTAGE"$'\n'
fi

# Spilo's names for the backup schedule and retention, where walkeeper's are not set.
if [ -n "${BACKUP_SCHEDULE:-}" ] && [ -z "${WALKEEPER_BACKUP_SCHEDULE:-}" ]; then
  export WALKEEPER_BACKUP_SCHEDULE=$BACKUP_SCHEDULE
fi
if [ -n "${BACKUP_NUM_TO_RETAIN:-}" ] && [ -z "${WALKEEPER_RETAIN:-}" ]; then
  export WALKEEPER_RETAIN=$BACKUP_NUM_TO_RETAIN
fi
# The agent's API: beyond loopback only with a token.
if [ -z "${WALKEEPER_API_LISTEN:-}" ]; then
  if [ -n "${WALKEEPER_API_TOKEN:-}" ]; then
    export WALKEEPER_API_LISTEN=0.0.0.0:8432
  else
    export WALKEEPER_API_LISTEN=127.0.0.1:8432
  fi
fi
AGENT_PORT=${WALKEEPER_API_LISTEN##*:}

export WALKEEPER_SCOPE=$SCOPE WALKEEPER_NAME=$MEMBER_NAME WALKEEPER_ETCD_HOSTS=$ETCD_HOSTS \
  WALKEEPER_NAMESPACE=$NAMESPACE WALKEEPER_PGDATA=$PGDATA WALKEEPER_PG_BIN_DIR=$PG_BIN_DIR \
  WALKEEPER_PATRONI_URL=http://127.0.0.1:8008 \
  WALKEEPER_CONNSTRING="host=/var/run/postgresql port=5432 user=$SUPERUSER dbname=postgres"

# walkeeper's envdir: every storage and walkeeper variable, for the agent, wal-push, wal-fetch
# and create-replica alike. Readable by postgres only.
rm -rf "$WALKEEPER_ENVDIR"
install -d -o postgres -g postgres -m 0700 "$(dirname "$WALKEEPER_ENVDIR")" "$WALKEEPER_ENVDIR"
while IFS= read -r name; do
  case "$name" in
    WALKEEPER_* | WALG_* | WALE_* | AWS_* | GOOGLE_* | GCS_* | AZURE_* | WABS_* | \
      PATRONI_ETCD3_PROTOCOL | PATRONI_ETCD3_CACERT | PATRONI_ETCD3_CERT | PATRONI_ETCD3_KEY)
      (umask 077 && printf '%s\n' "${!name}" >"$WALKEEPER_ENVDIR/$name")
      ;;
  esac
done < <(compgen -e)
chown -R postgres:postgres "$WALKEEPER_ENVDIR"

install -d -o postgres -g postgres -m 2775 /var/run/postgresql
install -d -o postgres -g postgres -m 0700 "$(dirname "$PGDATA")" "$PGDATA"
install -d -m 0755 "$(dirname "$PATRONI_CONFIG")"
export SCOPE NAMESPACE MEMBER_NAME CONNECT_HOST ETCD_HOSTS PGDATA PG_BIN_DIR SUPERUSER \
  REPLICATION_USER PATRONI_TTL PATRONI_LOOP_WAIT PATRONI_RETRY_TIMEOUT PATRONI_LOG_LEVEL \
  ARCHIVE_MODE ARCHIVE_TIMEOUT WALKEEPER_ENVDIR WALKEEPER_METHOD_THRESHOLDS
python3 - "$TEMPLATE" "$PATRONI_CONFIG" <<'PY'
import os, string, sys
names = ("SCOPE NAMESPACE MEMBER_NAME CONNECT_HOST ETCD_HOSTS PGDATA PG_BIN_DIR SUPERUSER "
         "REPLICATION_USER PATRONI_TTL PATRONI_LOOP_WAIT PATRONI_RETRY_TIMEOUT PATRONI_LOG_LEVEL "
         "ARCHIVE_MODE ARCHIVE_TIMEOUT WALKEEPER_ENVDIR WALKEEPER_METHOD_THRESHOLDS").split()
with open(sys.argv[1]) as f:
    text = string.Template(f.read()).substitute({n: os.environ[n] for n in names})
with open(sys.argv[2], "w") as f:
    f.write(text)
PY
chmod 0644 "$PATRONI_CONFIG"
log "scope $SCOPE, member $MEMBER_NAME, etcd $ETCD_HOSTS${PATRONI_ETCD3_PROTOCOL:+ ($PATRONI_ETCD3_PROTOCOL)}, agent API $WALKEEPER_API_LISTEN"

# Runs "$@" as postgres with only the variables it needs (the passwords only for Patroni).
as_postgres() {
  local keep=" PATH HOME LANG $KEEP_VARS "
  local name
  while IFS= read -r name; do
    case "$keep" in *" $name "*) ;; *) unset "$name" 2>/dev/null || true ;; esac
  done < <(compgen -e)
  export HOME=$PG_HOME LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  cd "$PG_HOME"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$@"
}

agent_pid=
patroni_pid=
terminating=
on_signal() {
  terminating=1
  if [ -n "$patroni_pid" ]; then
    log "stopping: Patroni first (it stops PostgreSQL and releases the leader key)"
    kill -TERM "$patroni_pid" 2>/dev/null || true
  elif [ -n "$agent_pid" ]; then
    kill -TERM "$agent_pid" 2>/dev/null || true
  fi
}
trap on_signal TERM INT

KEEP_VARS="" as_postgres walkeeper --envdir "$WALKEEPER_ENVDIR" agent &
agent_pid=$!
health=http://127.0.0.1:$AGENT_PORT/health
until python3 -c 'import sys, urllib.request
sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=2).status == 200 else 1)' "$health" 2>/dev/null; do
  if [ -n "$terminating" ]; then
    while kill -0 "$agent_pid" 2>/dev/null; do wait "$agent_pid" || true; done
    log "stopped before Patroni started"
    exit 0
  fi
  if ! kill -0 "$agent_pid" 2>/dev/null; then
    wait "$agent_pid" && status=0 || status=$?
    log "the agent stopped before it was ready (exit $status)"
    exit $((status == 0 ? 1 : status))
  fi
  sleep 0.5
done
log "agent ready; starting Patroni"

export PATRONI_REWIND_PASSWORD=$PATRONI_SUPERUSER_PASSWORD
# etcd over TLS (images/compose.tls.yml): Patroni reads the same variables as walkeeper.
patroni_etcd_tls=
for v in PATRONI_ETCD3_PROTOCOL PATRONI_ETCD3_CACERT PATRONI_ETCD3_CERT PATRONI_ETCD3_KEY; do
  [ -z "${!v:-}" ] || patroni_etcd_tls+=" $v"
done
KEEP_VARS="PATRONI_SUPERUSER_PASSWORD PATRONI_REPLICATION_PASSWORD PATRONI_REWIND_PASSWORD$patroni_etcd_tls" \
  as_postgres patroni "$PATRONI_CONFIG" &
patroni_pid=$!
unset PATRONI_SUPERUSER_PASSWORD PATRONI_REPLICATION_PASSWORD PATRONI_REWIND_PASSWORD

status=0
while :; do
  wait -n "$agent_pid" "$patroni_pid" || true
  [ -z "$terminating" ] || break
  if ! kill -0 "$patroni_pid" 2>/dev/null; then
    log "Patroni exited; stopping the agent"
    status=1
    break
  fi
  if ! kill -0 "$agent_pid" 2>/dev/null; then
    log "the agent exited; stopping Patroni"
    status=1
    kill -TERM "$patroni_pid" 2>/dev/null || true
    break
  fi
done
# Patroni first, then the agent (wal-push asks the agent during PostgreSQL's shutdown).
while kill -0 "$patroni_pid" 2>/dev/null; do wait "$patroni_pid" || true; done
wait "$patroni_pid" 2>/dev/null || true
kill -TERM "$agent_pid" 2>/dev/null || true
while kill -0 "$agent_pid" 2>/dev/null; do wait "$agent_pid" || true; done
log "stopped"
exit "$status"
