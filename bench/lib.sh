# Helpers for bench/run: server lifecycle (stopped by PID on exit), loopback routing, setup.
# Sourced by bench/run; expects ROOT, OUT, TMP and RESULTS to be set.

PGBIN=/usr/lib/postgresql/15/bin
export PATH="$HOME/.cargo/bin:$PGBIN:$PATH"
S3_KEY=AKIAWALKEEPERBENCH
S3_SECRET=walkeeper-bench-secret-key
S3_BUCKET=bench

SERVER_PIDS=()   # s3s-fs and stunnel, started here
MOUNTS=()        # loop mounts made here, unmounted on exit
PG_DIRS=()       # data directories of PostgreSQL servers started here
ROUTE_SAVED=""   # the loopback route as found, when quickack was changed

log() { printf '\n== %s\n' "$*" >&2; }
AS_PG=(setpriv --reuid=postgres --regid=postgres --init-groups)
as_pg() { "${AS_PG[@]}" "$@"; }

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() { # port, what
  local i
  for i in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not listen on port $1" >&2
  return 1
}

stop_server() { # pid
  local pid=$1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local keep=() p
  for p in "${SERVER_PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  SERVER_PIDS=("${keep[@]}")
}

pg_start() { # datadir logfile
  PG_DIRS+=("$1")
  : >>"$2"
  chown postgres: "$2"
  as_pg pg_ctl -D "$1" -l "$2" -w -t 120 start >/dev/null
}

# initdb a benchmark cluster in $1 listening only on the socket directory $2, port $3, archiving
# with the command $4; further postgresql.conf lines come from stdin.
bench_initdb() { # datadir socket-dir port archive_command
  as_pg initdb -D "$1" --auth=trust >/dev/null
  {
    cat <<CONF
port = $3
listen_addresses = ''
unix_socket_directories = '$2'
wal_level = replica
archive_mode = on
archive_command = '$4'
max_wal_size = 4GB
shared_buffers = 256MB
CONF
    cat
  } >>"$1/postgresql.conf"
}

# A pgBackRest configuration $1 for stanza "bench" (posix repository and its paths under $2,
# lz4, process-max=2) for the cluster $3 on socket directory $2, port $4; further [global]
# lines come from stdin.
bench_pgbr_conf() { # file dir datadir port
  {
    cat <<CONF
[global]
log-level-console=warn
log-level-file=off
log-path=$2/pgbr-log
lock-path=$2/pgbr-lock
spool-path=$2/pgbr-spool
repo1-path=$2/pgbr-repo
compress-type=lz4
process-max=2
CONF
    cat
    cat <<CONF
[bench]
pg1-path=$3
pg1-port=$4
pg1-socket-path=$2
CONF
  } | as_pg tee "$1" >/dev/null
}

# An XFS file system with reflink in the sparse image $1 (10 GiB), loop-mounted on $2 and
# owned by postgres; false when that cannot be done here.
xfs_mount() { # image dir
  rm -f "$1"; truncate -s 10G "$1"
  mkfs.xfs -q -m reflink=1 "$1" >/dev/null 2>&1 || return 1
  mkdir -p "$2"
  mount -o loop "$1" "$2" 2>/dev/null || return 1
  MOUNTS+=("$2")
  chown postgres: "$2"
}

xfs_umount() { # dir
  umount "$1" || umount -l "$1"
  local keep=() m
  for m in "${MOUNTS[@]}"; do [ "$m" = "$1" ] || keep+=("$m"); done
  MOUNTS=("${keep[@]}")
}

pg_stop() { # datadir
  as_pg pg_ctl -D "$1" -m fast -w stop >/dev/null 2>&1 || true
  local keep=() d
  for d in "${PG_DIRS[@]}"; do [ "$d" = "$1" ] || keep+=("$d"); done
  PG_DIRS=("${keep[@]}")
}

# s3s-fs on a free loopback port; sets S3_PORT and S3_PID.
start_s3() { # root directory
  mkdir -p "$1/$S3_BUCKET"
  S3_PORT=$(free_port)
  s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key "$S3_KEY" --secret-key "$S3_SECRET" \
    "$1" >"$OUT/logs/s3s-fs.log" 2>&1 &
  S3_PID=$!
  SERVER_PIDS+=("$S3_PID")
  wait_port "$S3_PORT" s3s-fs
}

# stunnel (TLS on loopback, local CA) in front of s3s-fs, for pgBackRest; sets TLS_PORT, TLS_CA.
start_stunnel() {
  local d=$TMP/tls
  mkdir -p "$d"
  if [ ! -f "$d/server.crt" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=walkeeper-bench-ca \
      -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
      -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:127.0.0.1,IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$d/ext"
    openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
      -days 2 -extfile "$d/ext" -out "$d/server.crt" 2>/dev/null
  fi
  TLS_PORT=$(free_port)
  TLS_CA=$d/ca.crt
  cat >"$d/stunnel.conf" <<CONF
foreground = yes
pid =
output = $OUT/logs/stunnel.log
[s3]
accept = 127.0.0.1:$TLS_PORT
connect = 127.0.0.1:$S3_PORT
cert = $d/server.crt
key = $d/server.key
CONF
  stunnel4 "$d/stunnel.conf" >/dev/null 2>&1 &
  TLS_PID=$!
  SERVER_PIDS+=("$TLS_PID")
  wait_port "$TLS_PORT" stunnel
}

# Loopback delayed-ACK setting: quickack on|off. The route as found is restored on exit.
quickack() {
  local cur
  cur=$(ip route show table local 127.0.0.0/8 | head -n1)
  [ -n "$ROUTE_SAVED" ] || ROUTE_SAVED=$cur
  local base=${ROUTE_SAVED% quickack*}
  if [ "$1" = on ]; then
    # shellcheck disable=SC2086
    ip route change $base table local quickack 1
  else
    # shellcheck disable=SC2086
    ip route change $base table local
  fi
}

quickack_state() {
  if ip route show table local 127.0.0.0/8 | grep -q 'quickack 1'; then echo on; else echo off; fi
}

cleanup() {
  local rc=$?
  set +e
  local d p
  for d in "${PG_DIRS[@]}"; do
    as_pg pg_ctl -D "$d" -m immediate -w stop >/dev/null 2>&1
  done
  for p in "${SERVER_PIDS[@]}"; do
    kill "$p" 2>/dev/null
    wait "$p" 2>/dev/null
  done
  for d in "${MOUNTS[@]}"; do
    umount "$d" 2>/dev/null || umount -l "$d" 2>/dev/null
  done
  if [ -n "$ROUTE_SAVED" ]; then
    # shellcheck disable=SC2086
    ip route change $ROUTE_SAVED table local
  fi
  exit $rc
}

# drive.py with the common arguments.
drive() { /usr/bin/python3 "$ROOT/bench/drive.py" --results "$RESULTS" "$@"; }
