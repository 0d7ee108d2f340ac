# Part C: what encryption costs (issue 15, item 5): wal-push and wal-fetch per segment (one
# process per segment, real pgbench segments as part A makes them) and backup-push /
# backup-fetch of a pgbench cluster, each with no encryption, age and OpenPGP (a gpg-made RSA
# key: the public key alone for pushing, the secret key for fetching), on the same data in one
# run, rounds interleaved. The machine's limits on the same bytes: the lz4 CLI alone, and piped
# into `gpg --encrypt` and `openssl enc -aes-256-cfb`. Sourced by bench/run.
#
# Knobs: BENCH_SEGMENTS (as part A), BENCH_CRYPT_SCALE (pgbench scale, default 50),
# BENCH_CRYPT_REPEAT (rounds, best kept; default 2).

# shellcheck source=bench/wal.sh
source "$ROOT/bench/wal.sh"

# The keys, made once per run: a gpg keyring with an RSA 3072 key (gpg 2.2's default algorithm)
# and its public and secret keys exported armored, an age identity, a raw key for openssl.
crypt_keys() { # dir
  local k=$1
  rm -rf "$k"
  mkdir -p "$k/gnupg"
  chmod 700 "$k/gnupg"
  local g=(gpg --homedir "$k/gnupg" --batch -q --pinentry-mode loopback --passphrase '')
  "${g[@]}" --quick-gen-key 'walkeeper bench <bench@localhost>' rsa3072 sign,cert never
  local fpr
  fpr=$("${g[@]}" --with-colons --list-keys | awk -F: '/^fpr/ {print $10; exit}')
  "${g[@]}" --quick-add-key "$fpr" rsa3072 encr never
  "${g[@]}" --armor --export "$fpr" >"$k/pub.asc"
  "${g[@]}" --armor --export-secret-keys "$fpr" >"$k/sec.asc"
  GPG_FPR=$fpr
  age-keygen -o "$k/age.id" 2>/dev/null
  AGE_RECIPIENT=$(age-keygen -y "$k/age.id")
  OSSL_KEY=$(openssl rand -hex 32)
  OSSL_IV=$(openssl rand -hex 16)
  chown postgres: "$k/pub.asc" "$k/sec.asc" "$k/age.id"
  chmod 755 "$k"
}

# The settings of each mode, as env(1) arguments: push_env MODE / fetch_env MODE.
push_env() {
  case $1 in
    plain) ;;
    age) echo "WALKEEPER_AGE_RECIPIENT=$AGE_RECIPIENT" ;;
    pgp) echo "WALG_PGP_KEY_PATH=$KEYS/pub.asc" ;;
  esac
}
fetch_env() {
  case $1 in
    plain) ;;
    age) echo "WALKEEPER_AGE_IDENTITY_FILE=$KEYS/age.id" ;;
    pgp) echo "WALG_PGP_KEY_PATH=$KEYS/sec.asc" ;;
  esac
}

# wal-fetch of every segment of $segs from the archive the previous row wrote ($DEST), one
# process per segment, to pg_wal/RECOVERYXLOG as recovery asks for it.
fetch_row() { # mode segs bytes
  local e
  mapfile -t e < <(fetch_env "$1")
  sync
  drive per-seg --label "crypt-fetch-$1" --segs "$2" --cwd "$TMP/pgdata" --log "$OUT/logs/crypt.log" \
    --extra "{\"part\":\"crypt\",\"enc\":\"$1\",\"rep\":$ROUND,\"bytes\":$3}" -- \
    env "WALG_FILE_PREFIX=file://$DEST" "${e[@]}" "$BIN" wal-fetch "{seg}" pg_wal/RECOVERYXLOG ||
    { echo "crypt-fetch-$1 failed; see $OUT/logs/crypt.log" >&2; return 1; }
  rm -f "$TMP/pgdata/pg_wal/RECOVERYXLOG"
}

crypt_wal_round() { # segs bytes
  local segs=$1 x=",\"bytes\":$2" mode e
  local gpg=(gpg --homedir "$KEYS/gnupg" --batch -q --trust-model always --compress-algo none
    --cipher-algo AES256 -r "$GPG_FPR" -e)
  log "C round $ROUND: limits per segment: lz4 -1 CLI alone, | gpg --encrypt, | openssl enc -aes-256-cfb"
  ROW_PART=crypt FSYNC_OUT="@DEST@/{seg}.lz4" row crypt-limit-lz4 file "$segs" none "$x" -- \
    lz4 -1 -q -f "{path}" "@DEST@/{seg}.lz4"
  ROW_PART=crypt FSYNC_OUT="@DEST@/{seg}.lz4.gpg" row crypt-limit-gpg file "$segs" none "$x" -- \
    sh -c "lz4 -1 -q -c \"\$1\" | ${gpg[*]} -o \"\$2\"" sh "{path}" "@DEST@/{seg}.lz4.gpg"
  ROW_PART=crypt FSYNC_OUT="@DEST@/{seg}.lz4.enc" row crypt-limit-openssl file "$segs" none "$x" -- \
    sh -c "lz4 -1 -q -c \"\$1\" | openssl enc -aes-256-cfb -K $OSSL_KEY -iv $OSSL_IV -out \"\$2\"" \
    sh "{path}" "@DEST@/{seg}.lz4.enc"
  for mode in plain age pgp; do
    log "C round $ROUND: walkeeper wal-push and wal-fetch per segment, $mode, file://"
    mapfile -t e < <(push_env "$mode")
    ROW_PART=crypt row "crypt-push-$mode" file "$segs" none "$x,\"enc\":\"$mode\"" -- \
      env "WALG_FILE_PREFIX=file://@DEST@" "${e[@]}" "$BIN" wal-push "{rel}"
    fetch_row "$mode" "$segs" "$2"
  done
}

crypt_backup() { # scale
  local d=$TMP/pgC port
  rm -rf "$d"; mkdir -p "$d"
  chown postgres: "$d"
  port=$(free_port)
  local data=$d/data mode
  # archive_command pushes to the archive of the mode being measured (backup-push checks that
  # the backup's last segment is there): $d/wkenv holds that mode's settings.
  as_pg mkdir -p "$d/wkenv"
  bench_initdb "$data" "$d" "$port" "$BIN --envdir $d/wkenv wal-push %p" </dev/null
  for mode in plain age pgp; do
    as_pg mkdir -p "$d/arch-$mode"
  done
  # The settings of mode $1 (push_env or fetch_env) into $d/wkenv.
  wkenv() {
    rm -f "$d/wkenv/"*
    echo "file://$d/arch-$1" | as_pg tee "$d/wkenv/WALG_FILE_PREFIX" >/dev/null
    local kv
    for kv in $("$2" "$1"); do
      echo "${kv#*=}" | as_pg tee "$d/wkenv/${kv%%=*}" >/dev/null
    done
  }
  wkenv plain push_env
  pg_start "$data" "$OUT/logs/crypt-pg.log"
  local psql=(as_pg psql -h "$d" -p "$port" -d postgres -qAt)
  local conn="host=$d port=$port user=postgres dbname=postgres"
  log "C: pgbench -i -s $1"
  as_pg pgbench -h "$d" -p "$port" -i -s "$1" -q postgres >/dev/null 2>&1
  "${psql[@]}" -c "CHECKPOINT" >/dev/null
  local bytes
  bytes=$(( $(du -sb "$data" | cut -f1) - $(du -sb "$data/pg_wal" | cut -f1) ))
  local x="\"part\":\"crypt\",\"scale\":$1,\"bytes\":$bytes"
  tar -cf "$TMP/crypt-data.tar" --exclude=./pg_wal -C "$data" . 2>/dev/null || true
  local gpg="gpg --homedir $KEYS/gnupg --batch -q --trust-model always --compress-algo none --cipher-algo AES256 -r $GPG_FPR -e"
  local r
  for ((r = 1; r <= ${BENCH_CRYPT_REPEAT:-2}; r++)); do
    log "C round $r: limits over a tar of the data directory: lz4 -1, | gpg --encrypt, | openssl enc"
    drive once --label crypt-limit-lz4-tar --log "$OUT/logs/crypt.log" --extra "{$x,\"rep\":$r}" -- \
      sh -c "lz4 -1 -q -c '$TMP/crypt-data.tar' >/dev/null"
    drive once --label crypt-limit-gpg-tar --log "$OUT/logs/crypt.log" --extra "{$x,\"rep\":$r}" -- \
      sh -c "lz4 -1 -q -c '$TMP/crypt-data.tar' | $gpg >/dev/null"
    drive once --label crypt-limit-openssl-tar --log "$OUT/logs/crypt.log" --extra "{$x,\"rep\":$r}" -- \
      sh -c "lz4 -1 -q -c '$TMP/crypt-data.tar' | openssl enc -aes-256-cfb -K $OSSL_KEY -iv $OSSL_IV >/dev/null"
    for mode in plain age pgp; do
      log "C round $r: walkeeper backup-push and backup-fetch, $mode, scale $1"
      wkenv "$mode" push_env
      "${psql[@]}" -c "CHECKPOINT" >/dev/null
      sync
      drive once --label "crypt-backup-push-$mode" --log "$OUT/logs/crypt.log" \
        --extra "{$x,\"enc\":\"$mode\",\"rep\":$r}" -- \
        "${AS_PG[@]}" "$BIN" --envdir "$d/wkenv" backup-push "$data" --connstring "$conn"
      wkenv "$mode" fetch_env
      rm -rf "$d/restore"
      sync
      drive once --label "crypt-backup-fetch-$mode" --log "$OUT/logs/crypt.log" \
        --extra "{$x,\"enc\":\"$mode\",\"rep\":$r}" -- \
        "${AS_PG[@]}" "$BIN" --envdir "$d/wkenv" backup-fetch "$d/restore" LATEST
      rm -rf "$d/restore"
    done
  done
  rm -f "$TMP/crypt-data.tar"
  unset -f wkenv
  pg_stop "$data"
  rm -rf "$d"
}

bench_crypt() {
  KEYS=$TMP/crypt-keys
  crypt_keys "$KEYS"
  gen_wal
  local segs=$WALCACHE/segments.txt
  cat "$WALCACHE/segs/"* >/dev/null # page cache warm for every row alike
  for ((ROUND = 1; ROUND <= ${BENCH_CRYPT_REPEAT:-2}; ROUND++)); do
    crypt_wal_round "$segs" $(( $(wc -l <"$segs") * 16777216 ))
  done
  rm -rf "$TMP/pgdata" "$TMP/dest"
  crypt_backup "${BENCH_CRYPT_SCALE:-50}"
  rm -rf "$KEYS"
}
