# Part R: the restore path (issue 16, item 5). PostgreSQL 15 recovers a base backup by replaying
# BENCH_RESTORE_SEGMENTS (128) archived pgbench segments through restore_command, and the run
# measures end-to-end recovery seconds (pg_ctl start to the end of recovery):
#   - the limit: `cp` from a local directory plus an fsync of the segment (`sync FILE`);
#   - walkeeper wal-fetch without and with prefetch (WALKEEPER_PREFETCH), file:// archive;
#   - pgBackRest 2.45 archive-get, asynchronous (archive-async=y, process-max=2), posix repo;
#   - WAL-E 1.1.1 wal-fetch (its default prefetch of 8), file:// archive.
# Every tool restores the same segments into a fresh copy of the same base backup. Sourced by
# bench/run.

bench_restore() {
  local n=${BENCH_RESTORE_SEGMENTS:-128}
  local d=$TMP/pgR port data
  rm -rf "$d"; mkdir -p "$d"
  chown postgres: "$d"
  data=$d/data
  port=$(free_port)
  as_pg mkdir -p "$d/src" "$d/wkenv" "$d/wk-archive" "$d/wale" "$d/pgbr-repo" "$d/pgbr-log" \
    "$d/pgbr-lock" "$d/pgbr-spool"
  echo "file://$d/wk-archive" | as_pg tee "$d/wkenv/WALG_FILE_PREFIX" >/dev/null
  bench_initdb "$data" "$d" "$port" "test ! -f $d/src/%f && cp %p $d/src/%f" <<CONF
checkpoint_timeout = 30s
synchronous_commit = off
CONF
  pg_start "$data" "$OUT/logs/restore-pg.log"
  local psql=(as_pg psql -h "$d" -p "$port" -d postgres -qAt)
  log "R: pgbench -i -s 20, a base backup, then $n segments of pgbench WAL"
  as_pg pgbench -h "$d" -p "$port" -i -s 20 -q postgres >/dev/null 2>&1
  as_pg pg_basebackup -h "$d" -p "$port" -D "$d/base" -X none -c fast >/dev/null
  local first last need t0=$SECONDS
  first=$("${psql[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
  need=$(( 0x${first:16:8} + n ))
  while :; do
    as_pg pgbench -h "$d" -p "$port" -c 4 -j 2 -M prepared -T 10 postgres >/dev/null 2>&1
    last=$("${psql[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
    [ $(( 0x${last:16:8} )) -ge "$need" ] && break
    [ $(( SECONDS - t0 )) -lt 900 ] || { echo "pgbench made too little WAL" >&2; return 1; }
  done
  last=$("${psql[@]}" -c "SELECT pg_walfile_name(pg_switch_wal())")
  until [ -f "$d/src/$last" ]; do sleep 0.2; done
  pg_stop "$data"
  local segs; segs=$(ls "$d/src" | grep -E '^[0-9A-F]{24}$' | sort)
  local count; count=$(echo "$segs" | wc -l)
  log "R: $count segments; filling walkeeper's, pgBackRest's and WAL-E's archives (untimed)"
  # The segments as archive_command sees them: inside a data directory's pg_wal.
  local fake=$d/fake s
  as_pg mkdir -p "$fake/pg_wal/archive_status" "$fake/global"
  as_pg cp "$data/PG_VERSION" "$fake/"
  as_pg cp "$data/global/pg_control" "$fake/global/"
  for s in $segs; do ln "$d/src/$s" "$fake/pg_wal/$s"; done
  for f in "$d"/src/*.history "$d"/src/*.backup; do [ -f "$f" ] && ln "$f" "$fake/pg_wal/" || true; done
  bench_pgbr_conf "$d/pgbr.conf" "$d" "$data" "$port" <<CONF
archive-async=y
CONF
  local pgbr=(pgbackrest --config="$d/pgbr.conf" --stanza=bench)
  as_pg "${pgbr[@]}" --no-online stanza-create >>"$OUT/logs/restore-pgbr.log" 2>&1
  for s in $(ls "$fake/pg_wal" | grep -v archive_status); do
    (cd "$fake" && as_pg "$BIN" --envdir "$d/wkenv" wal-push "pg_wal/$s")
    as_pg "${pgbr[@]}" --archive-async=n archive-push "$fake/pg_wal/$s" >>"$OUT/logs/restore-pgbr.log" 2>&1
    as_pg env WALE_LOG_DESTINATION=stderr "WALE_FILE_PREFIX=file://localhost$d/wale" \
      "$OUT/venv-wale/bin/wal-e" wal-push --pool-size 1 "$fake/pg_wal/$s" 2>>"$OUT/logs/restore-wale.log"
  done

  # One recovery: a fresh copy of the base backup, restore_command $2, until it promotes.
  replay() { # label restore_command
    local r=$d/replay rport
    rm -rf "$r"
    as_pg cp -a "$d/base" "$r"
    rport=$(free_port)
    cat >>"$r/postgresql.conf" <<CONF
port = $rport
unix_socket_directories = '$d'
archive_mode = off
restore_command = '$2'
CONF
    as_pg touch "$r/recovery.signal"
    rm -rf "$d/pgbr-spool"/*
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
    local t0 t1
    t0=$(date +%s.%N)
    pg_start "$r" "$OUT/logs/restore-replay-$1.log"
    until [ "$(as_pg psql -h "$d" -p "$rport" -d postgres -qAt -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do
      sleep 0.05
    done
    t1=$(date +%s.%N)
    local replayed
    replayed=$(grep -c 'restored log file' "$OUT/logs/restore-replay-$1.log" || true)
    pg_stop "$r"
    local secs; secs=$(awk "BEGIN { printf \"%.2f\", $t1 - $t0 }")
    echo "{\"label\":\"$1\",\"part\":\"restore\",\"segments\":$count,\"restored\":$replayed,\"seconds\":$secs}" >>"$RESULTS"
    printf '  %s: %s s, %s segments restored\n' "$1" "$secs" "$replayed" >&2
    rm -rf "$r"
  }
  local wk="$BIN --envdir $d/wkenv"
  log "R1: recoveries"
  replay cp-fsync "cp $d/src/%f %p && sync %p"
  replay wk-fetch "$wk wal-fetch %f %p"
  replay wk-fetch-prefetch "env WALKEEPER_PREFETCH=8 $wk wal-fetch %f %p"
  replay pgbr-archive-get-async "pgbackrest --config=$d/pgbr.conf --stanza=bench --pg1-path=$d/replay archive-get %f \"%p\""
  replay wal-e-fetch "env WALE_LOG_DESTINATION=stderr WALE_FILE_PREFIX=file://localhost$d/wale $OUT/venv-wale/bin/wal-e wal-fetch %f %p"
  replay cp-fsync-again "cp $d/src/%f %p && sync %p"
  unset -f replay
  rm -rf "$d"
}
