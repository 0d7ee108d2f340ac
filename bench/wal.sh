# Part A: WAL archiving, one process per segment (archive_command style), on real pgbench WAL.
# Sourced by bench/run.

NSEG=${BENCH_SEGMENTS:-128}
NBURST=${BENCH_BURST:-64}
LOOKAHEAD=${BENCH_LOOKAHEAD:-8}
REPEAT=${BENCH_REPEAT:-2}
WALCACHE=$CACHE/wal-v2-$NSEG

# Real segments from PostgreSQL 15 running pgbench (TPC-B-like), made once and kept. Checkpoints
# every 30 s, so the segments mix full-page images and plain records as a busy server's do.
gen_wal() {
  if [ -f "$WALCACHE/segments.txt" ] && [ "$(wc -l <"$WALCACHE/segments.txt")" -ge "$NSEG" ]; then
    return 0
  fi
  log "generating $NSEG WAL segments with PostgreSQL 15 + pgbench (once; kept in $WALCACHE)"
  rm -rf "$WALCACHE" "$TMP/walgen"
  mkdir -p "$WALCACHE/segs" "$WALCACHE/template/global" "$TMP/walgen"
  chown -R postgres: "$WALCACHE" "$TMP/walgen"
  local data=$TMP/walgen/data port
  port=$(free_port)
  as_pg initdb -D "$data" --auth=trust >/dev/null
  cat >>"$data/postgresql.conf" <<CONF
port = $port
listen_addresses = ''
unix_socket_directories = '$TMP/walgen'
wal_level = replica
archive_mode = on
archive_command = 'test ! -f $WALCACHE/segs/%f && cp %p $WALCACHE/segs/%f'
max_wal_size = 4GB
checkpoint_timeout = 30s
synchronous_commit = off
shared_buffers = 256MB
CONF
  pg_start "$data" "$OUT/logs/walgen.log"
  local psql=(as_pg psql -h "$TMP/walgen" -p "$port" -d postgres -qAt)
  as_pg pgbench -h "$TMP/walgen" -p "$port" -i -s 20 -q postgres >/dev/null 2>&1
  "${psql[@]}" -c "CHECKPOINT" >/dev/null
  local first last need
  first=$("${psql[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
  # The OLTP segments start after the one the checkpoint is in.
  need=$(( 0x${first:16:8} + NSEG + 1 ))
  local t0=$SECONDS
  while :; do
    as_pg pgbench -h "$TMP/walgen" -p "$port" -c 4 -j 2 -M prepared -T 10 postgres >/dev/null 2>&1
    last=$("${psql[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
    [ $(( 0x${last:16:8} )) -ge "$need" ] && break
    [ $(( SECONDS - t0 )) -lt 900 ] || { echo "pgbench made too little WAL" >&2; return 1; }
  done
  "${psql[@]}" -c "SELECT pg_switch_wal()" >/dev/null
  local want
  want=$(printf '%s%08X' "${first:0:16}" "$need")
  until [ -f "$WALCACHE/segs/$want" ]; do sleep 0.2; done
  pg_stop "$data"
  cp "$data/global/pg_control" "$WALCACHE/template/global/"
  cp "$data/PG_VERSION" "$WALCACHE/template/"
  local n=$(( 0x${first:16:8} + 1 )) i
  for ((i = 0; i < NSEG; i++)); do
    printf '%s%08X\n' "${first:0:16}" $(( n + i ))
  done >"$WALCACHE/segments.txt.new"
  mv "$WALCACHE/segments.txt.new" "$WALCACHE/segments.txt"
  rm -rf "$TMP/walgen"
}

# A data directory as archive_command sees it: the segments (hard links to the kept copies),
# archive_status/ (with .ready files when $2 is "ready"), pg_control and PG_VERSION.
fake_pgdata() { # dir ready|none segments-file
  rm -rf "$1"
  mkdir -p "$1/pg_wal/archive_status" "$1/global"
  cp "$WALCACHE/template/PG_VERSION" "$1/"
  cp "$WALCACHE/template/global/pg_control" "$1/global/"
  local s
  while read -r s; do
    ln "$WALCACHE/segs/$s" "$1/pg_wal/$s"
    [ "$2" != ready ] || : >"$1/pg_wal/archive_status/$s.ready"
  done <"$3"
}

wk_env_file() { # prefix → env for walkeeper on file://
  echo "WALG_FILE_PREFIX=file://$1"
}

# Runs one per-segment row once, on a fresh data dir and destination (round $ROUND).
#   row LABEL STORE SEGFILE ready|none EXTRA_JSON -- command...
# In the command, @DEST@ is a fresh empty directory and @RUN@ a fresh id (for S3 key prefixes).
# PRE_ROW names a function run after both exist; FSYNC_OUT is passed to drive.py --fsync-out.
row() {
  local label=$1 store=$2 segs=$3 ready=$4 extra=$5; shift 6
  local r=$ROUND i
  {
    local fake=$TMP/pgdata
    fake_pgdata "$fake" "$ready" "$segs"
    RUN_ID=$r$RANDOM
    DEST=$TMP/dest/$RUN_ID
    rm -rf "$TMP/dest"; mkdir -p "$DEST"
    if [ -n "${PRE_ROW:-}" ]; then "$PRE_ROW"; fi
    local argv=() a
    for a in "$@"; do argv+=("${a//@DEST@/$DEST}"); done
    for ((i = 0; i < ${#argv[@]}; i++)); do argv[i]=${argv[i]//@RUN@/$RUN_ID}; done
    local fs=()
    [ -z "${FSYNC_OUT:-}" ] || fs=(--fsync-out "${FSYNC_OUT//@DEST@/$DEST}")
    local arch=()
    [ "$ready" != ready ] || arch=(--archiver)
    sync
    drive per-seg --label "$label" --segs "$segs" --cwd "$fake" --log "$OUT/logs/wal.log" \
      "${fs[@]}" "${arch[@]}" \
      --extra "{\"part\":\"${ROW_PART:-wal}\",\"store\":\"$store\",\"quickack\":\"$(quickack_state)\",\"rep\":$r$extra}" \
      -- "${argv[@]}" || { echo "row $label failed; see $OUT/logs/wal.log" >&2; return 1; }
  }
}

pgbr_conf() { # file repo-kind(posix|s3) path
  {
    echo "[global]"
    echo "log-level-console=warn"
    echo "log-level-file=off"
    echo "log-path=$TMP/pgbr-log"
    echo "lock-path=$TMP/pgbr-lock"
    echo "spool-path=$TMP/pgbr-spool"
    echo "compress-type=lz4"
    echo "archive-async=n"
    echo "repo1-path=$3"
    if [ "$2" = s3 ]; then
      echo "repo1-type=s3"
      echo "repo1-s3-endpoint=127.0.0.1"
      echo "repo1-storage-port=$TLS_PORT"
      echo "repo1-storage-ca-file=$TLS_CA"
      echo "repo1-s3-bucket=$S3_BUCKET"
      echo "repo1-s3-region=us-east-1"
      echo "repo1-s3-key=$S3_KEY"
      echo "repo1-s3-key-secret=$S3_SECRET"
      echo "repo1-s3-uri-style=path"
    else
      echo "repo1-type=posix"
    fi
    echo "[bench]"
    echo "pg1-path=$TMP/pgdata"
  } >"$1"
}

pgbr_stanza_posix() {
  pgbr_conf "$TMP/pgbr.conf" posix "$DEST"
  pgbackrest --config="$TMP/pgbr.conf" --stanza=bench --no-online stanza-create \
    >>"$OUT/logs/wal.log" 2>&1
}
pgbr_stanza_s3() {
  pgbr_conf "$TMP/pgbr.conf" s3 "/pgbr-$RUN_ID"
  pgbackrest --config="$TMP/pgbr.conf" --stanza=bench --no-online stanza-create \
    >>"$OUT/logs/wal.log" 2>&1
}

# One round of every row; rounds interleave the tools so that load from elsewhere on the machine
# falls on all of them alike.
wal_round() {
  local segs=$1 burst=$2 bytes=$3
  local WK=("$BIN" wal-push "{rel}")
  local x=",\"bytes\":$bytes" xb=",\"bytes\":$((NBURST * 16777216))"
  quickack off
  log "round $ROUND: lz4 -1 CLI per segment (spawn, read, compress, write, fsync file + dir)"
  FSYNC_OUT="@DEST@/{seg}.lz4" row lz4-cli file "$segs" none "$x" -- \
    lz4 -1 -q -f "{path}" "@DEST@/{seg}.lz4"
  log "round $ROUND: walkeeper wal-push, file://"
  row walkeeper-file file "$segs" none "$x" -- env "WALG_FILE_PREFIX=file://@DEST@" "${WK[@]}"
  if [ -n "${BASELINE:-}" ]; then
    log "round $ROUND: baseline walkeeper ($BASELINE_DESC) wal-push, file://"
    row walkeeper-file-baseline file "$segs" none "$x" -- \
      env "WALG_FILE_PREFIX=file://@DEST@" "$BASELINE" wal-push "{rel}"
  fi
  log "round $ROUND: pgBackRest 2.45 archive-push (synchronous, lz4), posix repo"
  PRE_ROW=pgbr_stanza_posix row pgbackrest-posix file "$segs" none "$x" -- \
    pgbackrest --config="$TMP/pgbr.conf" --stanza=bench archive-push "{path}"
  log "round $ROUND: WAL-E 1.1.1 wal-push (lzop), file://"
  row wal-e-file file "$segs" none "$x" -- env WALE_LOG_DESTINATION=stderr \
    "WALE_FILE_PREFIX=file://localhost@DEST@" "$OUT/venv-wale/bin/wal-e" wal-push --pool-size 1 "{path}"
  log "round $ROUND: look-ahead burst: $NBURST .ready segments drained by successive calls, file://"
  row burst-lookahead-0 file "$burst" ready "$xb" -- \
    env "WALG_FILE_PREFIX=file://@DEST@" WALKEEPER_PUSH_LOOKAHEAD=0 "${WK[@]}"
  row "burst-lookahead-$LOOKAHEAD" file "$burst" ready "$xb,\"lookahead\":$LOOKAHEAD" -- \
    env "WALG_FILE_PREFIX=file://@DEST@" WALKEEPER_PUSH_LOOKAHEAD="$LOOKAHEAD" "${WK[@]}"
  if [ -n "${BASELINE:-}" ]; then
    row "burst-baseline-lookahead-$LOOKAHEAD" file "$burst" ready "$xb,\"lookahead\":$LOOKAHEAD" -- \
      env "WALG_FILE_PREFIX=file://@DEST@" WALKEEPER_PUSH_LOOKAHEAD="$LOOKAHEAD" "$BASELINE" wal-push "{rel}"
  fi
  [ "${BENCH_S3:-1}" = 1 ] || return 0
  local s3=(env "AWS_ENDPOINT=http://127.0.0.1:$S3_PORT" "AWS_ACCESS_KEY_ID=$S3_KEY"
    "AWS_SECRET_ACCESS_KEY=$S3_SECRET" AWS_REGION=us-east-1 AWS_S3_FORCE_PATH_STYLE=true)
  log "round $ROUND: walkeeper wal-push, S3 (s3s-fs on loopback), quickack off"
  row walkeeper-s3 s3 "$segs" none "$x" -- "${s3[@]}" "WALG_S3_PREFIX=s3://$S3_BUCKET/wk-@RUN@" "${WK[@]}"
  quickack on
  log "round $ROUND: walkeeper wal-push, S3, quickack on"
  row walkeeper-s3 s3 "$segs" none "$x" -- "${s3[@]}" "WALG_S3_PREFIX=s3://$S3_BUCKET/wk-@RUN@" "${WK[@]}"
  log "round $ROUND: pgBackRest archive-push, S3 through stunnel (TLS), quickack on"
  PRE_ROW=pgbr_stanza_s3 row pgbackrest-s3 s3 "$segs" none "$x" -- \
    pgbackrest --config="$TMP/pgbr.conf" --stanza=bench archive-push "{path}"
  log "round $ROUND: WAL-E wal-push, S3, quickack on"
  row wal-e-s3 s3 "$segs" none "$x" -- env WALE_LOG_DESTINATION=stderr \
    "WALE_S3_PREFIX=s3://$S3_BUCKET/wale-@RUN@" "WALE_S3_ENDPOINT=http+path://127.0.0.1:$S3_PORT" \
    "AWS_ACCESS_KEY_ID=$S3_KEY" "AWS_SECRET_ACCESS_KEY=$S3_SECRET" AWS_REGION=us-east-1 \
    "$OUT/venv-wale/bin/wal-e" wal-push --pool-size 1 "{path}"
  log "round $ROUND: look-ahead burst, S3, quickack on"
  row burst-s3-lookahead-0 s3 "$burst" ready "$xb" -- \
    "${s3[@]}" "WALG_S3_PREFIX=s3://$S3_BUCKET/wkb-@RUN@" WALKEEPER_PUSH_LOOKAHEAD=0 "${WK[@]}"
  row "burst-s3-lookahead-$LOOKAHEAD" s3 "$burst" ready "$xb,\"lookahead\":$LOOKAHEAD" -- \
    "${s3[@]}" "WALG_S3_PREFIX=s3://$S3_BUCKET/wkb-@RUN@" WALKEEPER_PUSH_LOOKAHEAD="$LOOKAHEAD" "${WK[@]}"
  quickack off
}

bench_wal() {
  gen_wal
  local segs=$WALCACHE/segments.txt burst=$TMP/burst.txt
  head -n "$NBURST" "$segs" >"$burst"
  cat "$WALCACHE/segs/"* >/dev/null # page cache warm for every row alike
  if [ "${BENCH_S3:-1}" = 1 ]; then
    start_s3 "$TMP/s3"
    start_stunnel
  fi
  for ((ROUND = 1; ROUND <= REPEAT; ROUND++)); do
    wal_round "$segs" "$burst" $(( $(wc -l <"$segs") * 16777216 ))
    rm -rf "$TMP/s3/$S3_BUCKET/"*
  done
  if [ "${BENCH_S3:-1}" = 1 ]; then
    stop_server "$TLS_PID"
    stop_server "$S3_PID"
    rm -rf "$TMP/s3"
  fi
  rm -rf "$TMP/pgdata" "$TMP/dest"
}
