# Part B: base backups of a pgbench cluster: walkeeper backup-push / backup-fetch to file:// and
# (unless BENCH_S3=0) to S3 (s3s-fs on loopback), pgBackRest full backup / restore
# (process-max=2, lz4), and the machine's limits on the same data. Sourced by bench/run.

SCALES=${BENCH_SCALES:-25 50}

bench_backup() {
  local d=$TMP/pgB port
  rm -rf "$d"; mkdir -p "$d"
  chown postgres: "$d"
  port=$(free_port)
  local data=$d/data
  as_pg mkdir -p "$d/wkenv" "$d/wk-archive" "$d/pgbr-repo" "$d/pgbr-log" "$d/pgbr-lock" "$d/pgbr-spool"
  echo "file://$d/wk-archive" | as_pg tee "$d/wkenv/WALG_FILE_PREFIX" >/dev/null
  local s3=0
  if [ "${BENCH_S3:-1}" != 0 ]; then
    s3=1
    start_s3 "$d/s3"
    as_pg mkdir -p "$d/wkenv-s3"
    local kv
    for kv in "WALE_S3_PREFIX=s3://$S3_BUCKET/backup" "AWS_ENDPOINT=http://127.0.0.1:$S3_PORT" \
      "AWS_ACCESS_KEY_ID=$S3_KEY" "AWS_SECRET_ACCESS_KEY=$S3_SECRET" AWS_REGION=us-east-1 \
      AWS_S3_FORCE_PATH_STYLE=true; do
      echo "${kv#*=}" | as_pg sh -c "umask 077; cat >'$d/wkenv-s3/${kv%%=*}'"
    done
  fi
  bench_initdb "$data" "$d" "$port" "$BIN --envdir $d/wkenv wal-push %p" </dev/null
  bench_pgbr_conf "$d/pgbr.conf" "$d" "$data" "$port" <<CONF
start-fast=y
archive-async=n
CONF
  pg_start "$data" "$OUT/logs/backup-pg.log"
  local psql=(as_pg psql -h "$d" -p "$port" -d postgres -qAt)
  local WK_ENV=(env WALKEEPER_LOG=info)
  local conn="host=$d port=$port user=postgres dbname=postgres"
  local pgbr=(pgbackrest --config="$d/pgbr.conf" --stanza=bench)
  set_archive() {
    "${psql[@]}" -c "ALTER SYSTEM SET archive_command = '$1'" -c "SELECT pg_reload_conf()" >/dev/null
    sleep 0.5
  }
  # A backup-push, then a backup-fetch of it: labels wk-backup-push$1 / wk-backup-fetch$1,
  # store $2, binary $3, envdir $4, log names suffixed with $5.
  wk_pair() {
    "${psql[@]}" -c "CHECKPOINT" >/dev/null
    sync
    drive once --label "wk-backup-push$1" --log "$OUT/logs/backup-wk-push$5-$scale.log" \
      --extra "{$x,\"store\":\"$2\"}" -- \
      "${AS_PG[@]}" "${WK_ENV[@]}" "$3" --envdir "$4" backup-push "$data" --connstring "$conn"
    rm -rf "$d/restore-wk"
    sync
    drive once --label "wk-backup-fetch$1" --log "$OUT/logs/backup-wk-fetch$5-$scale.log" \
      --extra "{$x,\"store\":\"$2\"}" -- \
      "${AS_PG[@]}" "${WK_ENV[@]}" "$3" --envdir "$4" backup-fetch "$d/restore-wk" LATEST
    rm -rf "$d/restore-wk"
  }
  local first=1 scale
  for scale in $SCALES; do
    log "B: pgbench -i -s $scale"
    as_pg pgbench -h "$d" -p "$port" -i -s "$scale" -q postgres >/dev/null 2>&1
    "${psql[@]}" -c "CHECKPOINT" >/dev/null
    local bytes
    bytes=$(( $(du -sb "$data" | cut -f1) - $(du -sb "$data/pg_wal" | cut -f1) ))
    local x="\"part\":\"backup\",\"scale\":$scale,\"bytes\":$bytes"

    log "B1: walkeeper backup-push, file:// (scale $scale)"
    set_archive "$BIN --envdir $d/wkenv wal-push %p"
    "${psql[@]}" -c "CHECKPOINT" >/dev/null
    sync
    drive once --label wk-backup-push --log "$OUT/logs/backup-wk-push-$scale.log" \
      --extra "{$x,\"store\":\"file\"}" -- \
      "${AS_PG[@]}" "${WK_ENV[@]}" "$BIN" --envdir "$d/wkenv" backup-push "$data" --connstring "$conn"
    # The data phase alone (walkeeper logs it): reading, compressing and writing the partitions.
    local phase
    phase=$(grep 'data directory uploaded' "$OUT/logs/backup-wk-push-$scale.log" | tail -n1 |
      sed -n 's/.*seconds="\([0-9.]*\)".*/\1/p')
    [ -z "$phase" ] || echo "{\"label\":\"wk-backup-data-phase\",$x,\"seconds\":$phase}" >>"$RESULTS"
    local name
    name=$(ls -t "$d/wk-archive/basebackups_005/" | grep _backup_stop_sentinel.json | head -n1)
    local stored
    stored=$(du -sb "$d/wk-archive/basebackups_005/${name%_backup_stop_sentinel.json}" | cut -f1)
    echo "{\"label\":\"wk-backup-size\",$x,\"stored\":$stored}" >>"$RESULTS"

    log "B2: walkeeper backup-fetch, file:// (scale $scale)"
    rm -rf "$d/restore-wk"
    sync
    drive once --label wk-backup-fetch --log "$OUT/logs/backup-wk-fetch-$scale.log" \
      --extra "{$x,\"store\":\"file\"}" -- \
      "${AS_PG[@]}" "${WK_ENV[@]}" "$BIN" --envdir "$d/wkenv" backup-fetch "$d/restore-wk" LATEST
    rm -rf "$d/restore-wk"

    if [ $s3 = 1 ]; then
      log "B2s: walkeeper backup-push and backup-fetch, S3 (s3s-fs on loopback) (scale $scale)"
      set_archive "$BIN --envdir $d/wkenv-s3 wal-push %p"
      wk_pair -s3 s3 "$BIN" "$d/wkenv-s3" -s3
      # backup-fetch's syncfs, measured: the same fetch without it.
      sync
      drive once --label wk-backup-fetch-nosync --log "$OUT/logs/backup-wk-fetch-$scale.log" \
        --extra "{$x,\"store\":\"file\"}" -- \
        "${AS_PG[@]}" "${WK_ENV[@]}" "$BIN" --envdir "$d/wkenv" backup-fetch "$d/restore-wk" LATEST --no-sync
      rm -rf "$d/restore-wk"
      set_archive "$BIN --envdir $d/wkenv wal-push %p"
    fi

    if [ -n "${BASELINE:-}" ]; then
      log "B2b: baseline walkeeper ($BASELINE_DESC) backup-push and backup-fetch (scale $scale)"
      wk_pair -baseline file "$BASELINE" "$d/wkenv" ""
    fi

    log "B3: pgBackRest full backup, process-max=2, lz4 (scale $scale)"
    set_archive "pgbackrest --config=$d/pgbr.conf --stanza=bench archive-push %p"
    if [ $first = 1 ]; then
      as_pg "${pgbr[@]}" stanza-create >>"$OUT/logs/backup-pgbr.log" 2>&1
      first=0
    fi
    "${psql[@]}" -c "CHECKPOINT" >/dev/null
    sync
    drive once --label pgbr-backup --log "$OUT/logs/backup-pgbr.log" \
      --extra "{$x,\"store\":\"file\"}" -- "${AS_PG[@]}" "${pgbr[@]}" --type=full backup
    stored=$(du -sb "$(ls -td "$d/pgbr-repo/backup/bench/"*F | head -n1)" | cut -f1)
    echo "{\"label\":\"pgbr-backup-size\",$x,\"stored\":$stored}" >>"$RESULTS"

    log "B4: pgBackRest restore, process-max=2 (scale $scale)"
    rm -rf "$d/restore-pgbr"
    as_pg mkdir -m 700 "$d/restore-pgbr"
    sync
    drive once --label pgbr-restore --log "$OUT/logs/backup-pgbr.log" \
      --extra "{$x,\"store\":\"file\"}" -- "${AS_PG[@]}" "${pgbr[@]}" --pg1-path="$d/restore-pgbr" restore
    rm -rf "$d/restore-pgbr"
    set_archive "$BIN --envdir $d/wkenv wal-push %p"

    log "B5: limits: tar of the data directory, lz4 -1 over it (1 core), O_DIRECT read"
    tar -cf "$TMP/data.tar" --exclude=./pg_wal -C "$data" . 2>/dev/null || true
    drive once --label lz4-cli-tar --log "$OUT/logs/backup-limits.log" --extra "{$x}" -- \
      sh -c "lz4 -1 -q -c '$TMP/data.tar' >/dev/null"
    drive once --label disk-read-direct --log "$OUT/logs/backup-limits.log" --extra "{$x}" -- \
      dd if="$TMP/data.tar" of=/dev/null bs=4M iflag=direct status=none
    rm -f "$TMP/data.tar"
  done
  unset -f set_archive wk_pair
  pg_stop "$data"
  [ $s3 = 0 ] || stop_server "$S3_PID"
  rm -rf "$d"
}
