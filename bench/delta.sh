# Part D: delta backups on a pgbench cluster (issue 16): walkeeper's full and delta backup-push
# (WALG_DELTA_MAX_STEPS), pgBackRest's full and incremental backups of the same data, restores of
# the chain against the full backup, and delta restores (walkeeper backup-fetch --delta,
# pgBackRest restore --delta) over the stopped server's own data directory, and PITR-style
# restores (the data directory moved aside; the chain fetched whole into a new directory, or
# into one seeded from the aside copy) on the bench's file system and, where a loop mount
# works, on XFS with reflink.
# Between the full and the delta backups 1% of pgbench_accounts changes: a contiguous range of
# aids (BENCH_DELTA_UPDATE=range, the default) or rows spread over the whole table (=spread,
# aid % 100 = 0, which touches most pages). Sourced by bench/run.

bench_delta() {
  local scale=${BENCH_DELTA_SCALE:-100} spread=${BENCH_DELTA_UPDATE:-range}
  local d=$TMP/pgD port
  rm -rf "$d"; mkdir -p "$d"
  chown postgres: "$d"
  port=$(free_port)
  local data=$d/data
  as_pg mkdir -p "$d/wkenv" "$d/wk-archive" "$d/pgbr-repo" "$d/pgbr-log" "$d/pgbr-lock" "$d/pgbr-spool"
  echo "file://$d/wk-archive" | as_pg tee "$d/wkenv/WALG_FILE_PREFIX" >/dev/null
  echo 6 | as_pg tee "$d/wkenv/WALG_DELTA_MAX_STEPS" >/dev/null
  bench_initdb "$data" "$d" "$port" "$BIN --envdir $d/wkenv wal-push %p" </dev/null
  bench_pgbr_conf "$d/pgbr.conf" "$d" "$data" "$port" <<CONF
start-fast=y
archive-check=n
CONF
  pg_start "$data" "$OUT/logs/delta-pg.log"
  local psql=(as_pg psql -h "$d" -p "$port" -d postgres -qAt)
  local WK=("${AS_PG[@]}" env WALKEEPER_LOG=info "$BIN" --envdir "$d/wkenv")
  local conn="host=$d port=$port user=postgres dbname=postgres"
  local pgbr=(pgbackrest --config="$d/pgbr.conf" --stanza=bench)
  log "D: pgbench -i -s $scale"
  as_pg pgbench -h "$d" -p "$port" -i -s "$scale" -q postgres >/dev/null 2>&1
  "${psql[@]}" -c "CHECKPOINT" >/dev/null
  local bytes
  bytes=$(( $(du -sb "$data" | cut -f1) - $(du -sb "$data/pg_wal" | cut -f1) ))
  local x="\"part\":\"delta\",\"scale\":$scale,\"bytes\":$bytes,\"update\":\"$spread\""
  stored_of() { du -sb "$d/wk-archive/basebackups_005/$1" | cut -f1; }
  newest() { ls -t "$d/wk-archive/basebackups_005/" | grep _backup_stop_sentinel.json | head -n1 | sed 's/_backup_stop_sentinel.json//'; }
  cold() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null && echo cold || echo warm; }
  # The delta backup restored into $1/new, the way the PITR restart does with the old data
  # directory $2 moved aside: whole (a full fetch), and seeded from $2 (--seed-from: clones on
  # a file system that reflinks, else a local copy; then a delta restore); cold, then warm.
  pitr_pair() { # dir aside fs changes
    local warm kind cache
    for warm in "" -warm; do
      for kind in full seeded; do
        rm -rf "$1/new"
        if [ -z "$warm" ]; then cache=$(cold); else cache=warm; fi
        local seed=()
        [ $kind = seeded ] && seed=(--seed-from "$2")
        drive once --label "wk-pitr-$kind$warm" --log "$OUT/logs/delta-wk.log" \
          --extra "{$x,\"cache\":\"$cache\",\"fs\":\"$3\",\"changes\":\"$4\"}" -- \
          "${WK[@]}" backup-fetch "${seed[@]}" "$1/new" "$delta"
      done
    done
    rm -rf "$1/new"
  }

  log "D1: walkeeper full backup-push"
  sync
  drive once --label wk-full-push --log "$OUT/logs/delta-wk.log" --extra "{$x}" -- \
    "${WK[@]}" backup-push "$data" --full --connstring "$conn"
  local full; full=$(newest)
  echo "{\"label\":\"wk-full-size\",$x,\"stored\":$(stored_of "$full")}" >>"$RESULTS"
  log "D2: pgBackRest full backup"
  as_pg "${pgbr[@]}" stanza-create >>"$OUT/logs/delta-pgbr.log" 2>&1
  sync
  drive once --label pgbr-full --log "$OUT/logs/delta-pgbr.log" --extra "{$x}" -- \
    "${AS_PG[@]}" "${pgbr[@]}" --type=full backup
  local pgbr_full; pgbr_full=$(ls -td "$d/pgbr-repo/backup/bench/"*F | head -n1)
  echo "{\"label\":\"pgbr-full-size\",$x,\"stored\":$(du -sb "$pgbr_full" | cut -f1)}" >>"$RESULTS"

  log "D3: 1% of pgbench_accounts changes ($spread)"
  local rows=$(( scale * 1000 ))
  if [ "$spread" = spread ]; then
    "${psql[@]}" -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0" >/dev/null
  else
    "${psql[@]}" -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $rows" >/dev/null
  fi
  "${psql[@]}" -c "CHECKPOINT" >/dev/null

  log "D4: walkeeper delta backup-push"
  sync
  drive once --label wk-delta-push --log "$OUT/logs/delta-wk.log" --extra "{$x}" -- \
    "${WK[@]}" backup-push "$data" --connstring "$conn"
  local delta; delta=$(newest)
  case $delta in *_D_*) ;; *) echo "the second backup is not a delta: $delta" >&2; exit 1 ;; esac
  echo "{\"label\":\"wk-delta-size\",$x,\"stored\":$(stored_of "$delta")}" >>"$RESULTS"
  log "D5: pgBackRest incremental backup"
  sync
  drive once --label pgbr-incr --log "$OUT/logs/delta-pgbr.log" --extra "{$x}" -- \
    "${AS_PG[@]}" "${pgbr[@]}" --type=incr backup
  local pgbr_incr; pgbr_incr=$(ls -td "$d/pgbr-repo/backup/bench/"*I | head -n1)
  echo "{\"label\":\"pgbr-incr-size\",$x,\"stored\":$(du -sb "$pgbr_incr" | cut -f1)}" >>"$RESULTS"

  log "D6: restores into an empty directory: the full backup, the chain (full + delta)"
  local which label cache
  local warm
  for which in full delta; do
    [ $which = full ] && name=$full || name=$delta
    for warm in "" -warm; do
      rm -rf "$d/restore"
      if [ -z "$warm" ]; then cache=$(cold); else cache=warm; fi
      drive once --label "wk-fetch-$which$warm" --log "$OUT/logs/delta-wk.log" --extra "{$x,\"cache\":\"$cache\"}" -- \
        "${WK[@]}" backup-fetch "$d/restore" "$name"
    done
  done
  rm -rf "$d/restore"
  as_pg mkdir -m 700 "$d/restore"
  cache=$(cold)
  drive once --label pgbr-restore-incr --log "$OUT/logs/delta-pgbr.log" --extra "{$x,\"cache\":\"$cache\"}" -- \
    "${AS_PG[@]}" "${pgbr[@]}" --pg1-path="$d/restore" restore
  rm -rf "$d/restore"

  log "D7: PITR-style restores: the server stopped after changes since the delta, its data directory moved aside, the chain restored into a new one"
  # small: only pgbench's small tables change (the mistake a PITR undoes is often there);
  # accounts: the 1% of pgbench_accounts again (new row versions: both of its files and its
  # index change).
  local changes
  for changes in small accounts; do
    if [ $changes = small ]; then
      "${psql[@]}" -c "UPDATE pgbench_tellers SET tbalance = tbalance + 1; UPDATE pgbench_branches SET bbalance = bbalance + 1; INSERT INTO pgbench_history SELECT 1, 1, g, 1, now() FROM generate_series(1, 1000) g" >/dev/null
    else
      pg_start "$data" "$OUT/logs/delta-pg.log"
      "${psql[@]}" -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $rows" >/dev/null
    fi
    pg_stop "$data"
    mv "$data" "$d/aside"
    pitr_pair "$d" "$d/aside" "$(findmnt -no FSTYPE -T "$d")" $changes
    if command -v mkfs.xfs >/dev/null && xfs_mount "$d/xfs.img" "$d/xfs"; then
      cp -a "$d/aside" "$d/xfs/aside"
      find "$d/xfs/aside/pg_wal" -type f -delete
      pitr_pair "$d/xfs" "$d/xfs/aside" xfs $changes
      xfs_umount "$d/xfs"
      rm -f "$d/xfs.img"
    else
      log "D7: no XFS loop mount here (needs root, loop devices, xfsprogs): no reflink rows"
    fi
    mv "$d/aside" "$data"
  done

  log "D8: delta restores over the stopped server's own data directory"
  cache=$(cold)
  drive once --label wk-fetch-delta-inplace --log "$OUT/logs/delta-wk.log" --extra "{$x,\"cache\":\"$cache\"}" -- \
    "${WK[@]}" backup-fetch --delta "$data" "$delta"
  cache=$(cold)
  drive once --label pgbr-restore-delta-inplace --log "$OUT/logs/delta-pgbr.log" --extra "{$x,\"cache\":\"$cache\"}" -- \
    "${AS_PG[@]}" "${pgbr[@]}" --delta restore
  unset -f stored_of newest cold pitr_pair
  rm -rf "$d"
}
