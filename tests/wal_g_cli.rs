//! WAL-G's command lines, run exactly as WAL-G's users write them (issue 14, item 3).
//!
//! Most run on a file:// archive laid out by hand (sentinels and metadata are JSON), one on a
//! real PostgreSQL 15.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::*;

const SEG: u64 = 16 << 20;

fn seg(tli: u32, n: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", n / 256, n % 256)
}

struct Archive {
    scratch: Scratch,
    root: PathBuf,
}

impl Archive {
    fn new() -> Archive {
        let scratch = Scratch::new();
        let root = scratch.mkdir("archive");
        Archive { scratch, root }
    }

    fn vars(&self) -> Vec<(String, String)> {
        vec![(
            "WALG_FILE_PREFIX".into(),
            format!("file://{}", self.root.display()),
        )]
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        let p = self.root.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn wal(&self, tli: u32, range: std::ops::Range<u64>) {
        for n in range {
            self.put(&format!("wal_005/{}.lz4", seg(tli, n)), b"segment");
        }
    }

    /// A WAL-G backup from segment `start` to `stop`, finished `age_h` hours ago, with its
    /// metadata.json.
    fn backup(&self, start: u64, stop: u64, age_h: i64, permanent: bool) -> String {
        let name = format!("base_{}", seg(1, start));
        let finish = chrono::Utc::now() - chrono::Duration::hours(age_h);
        let sentinel = serde_json::json!({
            "LSN": start * SEG + 0x28,
            "FinishLSN": stop * SEG + 0x100,
            "Timeline": 1,
            "PgVersion": 150004,
            "FinishTime": finish.to_rfc3339(),
            "StartTime": finish.to_rfc3339(),
            "IsPermanent": permanent,
            "WalSegmentSize": SEG,
            "SystemIdentifier": 7312345678901234567u64,
            "UncompressedSize": 1000,
            "CompressedSize": 500,
        });
        let metadata = serde_json::json!({
            "start_time": finish.to_rfc3339(),
            "finish_time": finish.to_rfc3339(),
            "date_fmt": "%Y-%m-%dT%H:%M:%S.%fZ",
            "hostname": "db1",
            "data_dir": "/var/lib/postgresql/15/main",
            "pg_version": 150004,
            "start_lsn": start * SEG + 0x28,
            "finish_lsn": stop * SEG + 0x100,
            "is_permanent": permanent,
            "system_identifier": 7312345678901234567u64,
            "uncompressed_size": 1000,
            "compressed_size": 500,
        });
        self.put(
            &format!("basebackups_005/{name}/tar_partitions/part_001.tar.lz4"),
            b"part",
        );
        self.put(
            &format!("basebackups_005/{name}/metadata.json"),
            &serde_json::to_vec(&metadata).unwrap(),
        );
        self.put(
            &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
            &serde_json::to_vec(&sentinel).unwrap(),
        );
        name
    }

    fn run(&self, args: &[&str]) -> Output {
        run(args, &self.vars(), self.scratch.path())
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn objects(&self) -> Vec<String> {
        list_files(&self.root)
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn backup_list_json_detail_and_pretty_use_wal_g_field_names() {
    let a = Archive::new();
    let old = a.backup(2, 3, 30, false);
    let new = a.backup(5, 6, 10, true);

    let v = json(&a.ok(&["backup-list", "--json"]));
    let rows = v.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["backup_name"], old.as_str());
    assert_eq!(rows[0]["wal_file_name"], seg(1, 2).as_str());
    assert_eq!(rows[0]["storage_name"], "default");
    assert!(rows[0]["time"].as_str().unwrap().ends_with('Z'), "{v}");
    assert!(
        rows[0].get("start_lsn").is_none(),
        "no detail without --detail: {v}"
    );

    let text = a.ok(&["backup-list", "--detail", "--json"]);
    assert_eq!(text.lines().count(), 1, "WAL-G's compact JSON: {text}");
    let v = json(&text);
    let r = &v[1];
    assert_eq!(r["backup_name"], new.as_str());
    assert_eq!(r["start_lsn"], 5 * SEG + 0x28);
    assert_eq!(r["finish_lsn"], 6 * SEG + 0x100);
    assert_eq!(r["hostname"], "db1");
    assert_eq!(r["data_dir"], "/var/lib/postgresql/15/main");
    assert_eq!(r["pg_version"], 150004);
    assert_eq!(r["is_permanent"], true);
    assert_eq!(r["system_identifier"], 7312345678901234567u64);
    assert_eq!(r["uncompressed_size"], 1000);
    assert_eq!(r["compressed_size"], 500);
    assert_eq!(r["date_fmt"], "%Y-%m-%dT%H:%M:%S.%fZ");
    assert!(
        r["start_time"].is_string() && r["finish_time"].is_string(),
        "{v}"
    );

    // --pretty --json: the same, indented.
    let text = a.ok(&["backup-list", "--pretty", "--json", "--detail"]);
    assert!(text.lines().count() > 10, "{text}");
    assert_eq!(json(&text), v);
    // --pretty alone: WAL-G's table.
    let text = a.ok(&["backup-list", "--pretty"]);
    assert!(
        text.contains("| Name") && text.contains(&old) && text.contains("WAL file name"),
        "{text}"
    );
    // walkeeper's own keys stay under their own flag.
    let v = json(&a.ok(&["backup-list", "--walkeeper-json"]));
    assert_eq!(v[0]["name"], old.as_str());
    assert_eq!(v[0]["start_segment"], seg(1, 2).as_str());
}

#[test]
fn wal_g_delete_forms_are_dry_runs_until_confirmed_and_keep_what_they_must() {
    let a = Archive::new();
    let b2 = a.backup(2, 3, 50, false);
    let b5 = a.backup(5, 6, 40, false);
    let b8 = a.backup(8, 9, 30, false);
    let b11 = a.backup(11, 12, 20, false);
    a.wal(1, 1..14);
    // A backup that failed long ago: parts, no sentinel.
    a.put(
        &format!(
            "basebackups_005/base_{}/tar_partitions/part_001.tar.lz4",
            seg(1, 1)
        ),
        b"failed",
    );

    // Dry runs by default: nothing changes.
    let before = a.objects();
    for args in [
        &["delete", "retain", "FULL", "1"][..],
        &["delete", "retain", "FIND_FULL", "1", "--after", &b5][..],
        &["delete", "before", "FIND_FULL", &b8][..],
        &["delete", "target", &b5][..],
        &["delete", "garbage"][..],
        &["delete", "everything", "FORCE"][..],
    ] {
        let out = a.ok(args);
        assert!(out.contains("would delete"), "{args:?}: {out}");
        assert_eq!(a.objects(), before, "{args:?}");
    }

    // retain FULL 1 --after b8 keeps b8 and b11.
    let out = a.ok(&["delete", "retain", "FULL", "1", "--after", &b8]);
    assert!(
        out.contains(&format!(
            "would delete basebackups_005/{b5}_backup_stop_sentinel.json"
        )),
        "{out}"
    );
    assert!(
        !out.contains(&format!("{b8}_backup_stop_sentinel")),
        "{out}"
    );

    // target deletes one backup and no WAL.
    a.ok(&["delete", "--confirm", "target", &b5]);
    let now = a.objects();
    assert!(!now.iter().any(|k| k.contains(&b5)), "{now:?}");
    assert!(now.iter().any(|k| k.contains(&b2)), "{now:?}");
    assert!(
        now.contains(&format!("wal_005/{}.lz4", seg(1, 5))),
        "{now:?}"
    );

    // garbage: WAL older than the oldest backup and the failed backup's leftovers.
    a.ok(&["delete", "--confirm", "garbage"]);
    let now = a.objects();
    assert!(
        !now.contains(&format!("wal_005/{}.lz4", seg(1, 1))),
        "{now:?}"
    );
    assert!(
        now.contains(&format!("wal_005/{}.lz4", seg(1, 2))),
        "{now:?}"
    );
    assert!(!now.iter().any(|k| k.contains(&seg(1, 1))), "{now:?}");

    // before TIME: the backups that finished before it go.
    let t = (chrono::Utc::now() - chrono::Duration::hours(35)).to_rfc3339();
    a.ok(&["delete", "--confirm", "before", "FIND_FULL", &t]);
    let now = a.objects();
    assert!(!now.iter().any(|k| k.contains(&b2)), "{now:?}");
    assert!(now.iter().any(|k| k.contains(&b8)), "{now:?}");
    assert!(
        !now.contains(&format!("wal_005/{}.lz4", seg(1, 7))),
        "{now:?}"
    );

    // Bad words are refused by name.
    let out = a.run(&["delete", "retain", "HALF", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("HALF"), "{}", stderr(&out));
    let out = a.run(&["delete", "before", "2026-01-01 00:00:00"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("zone"), "{}", stderr(&out));

    a.ok(&["delete", "--confirm", "everything", "FORCE"]);
    assert!(a.objects().is_empty(), "{:?}", a.objects());
    let _ = b11;
}

#[test]
fn backup_mark_makes_a_backup_permanent_and_i_makes_it_ordinary_again() {
    let a = Archive::new();
    let b2 = a.backup(2, 3, 50, false);
    let b5 = a.backup(5, 6, 40, false);
    a.wal(1, 1..8);
    a.ok(&["backup-mark", &b2]);
    let v = json(&a.ok(&["backup-list", "--detail", "--json"]));
    assert_eq!(v[0]["is_permanent"], true, "{v}");
    let sentinel: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            a.root
                .join(format!("basebackups_005/{b2}_backup_stop_sentinel.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(sentinel["IsPermanent"], true);
    assert_eq!(
        sentinel["SystemIdentifier"], 7312345678901234567u64,
        "other fields kept"
    );
    // Retention keeps it now.
    a.ok(&["delete", "--confirm", "retain", "1"]);
    assert!(a.objects().iter().any(|k| k.contains(&b2)));
    // -i: ordinary again, and retention may take it.
    a.ok(&["backup-mark", "-i", &b2]);
    a.ok(&["delete", "--confirm", "retain", "1"]);
    assert!(!a.objects().iter().any(|k| k.contains(&b2)));
    assert!(a.objects().iter().any(|k| k.contains(&b5)));
    let out = a.run(&["backup-mark", "base_000000010000000000000077"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn wal_verify_integrity_timeline_prints_wal_g_report_and_wal_show_the_timelines() {
    let a = Archive::new();
    a.backup(2, 3, 10, false);
    a.wal(1, 2..6);
    a.wal(1, 7..10);
    let out = a.run(&["wal-verify", "integrity", "timeline"]);
    assert_eq!(out.status.code(), Some(1), "a gap: {}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("[wal-verify] integrity check status: FAILURE"),
        "{text}"
    );
    assert!(
        text.contains("MISSING_LOST") && text.contains(&seg(1, 6)),
        "{text}"
    );
    // No server to ask: WARNING, as WAL-G.
    assert!(
        text.contains("[wal-verify] timeline check status: WARNING"),
        "{text}"
    );
    assert!(
        text.contains("Highest timeline found in storage: 1"),
        "{text}"
    );
    let out = a.run(&["wal-verify", "integrity", "--json"]);
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v["integrity"]["status"], "FAILURE");
    let d = v["integrity"]["details"].as_array().unwrap();
    assert_eq!(d.len(), 3, "{v}");
    assert_eq!(d[0]["start_segment"], seg(1, 2).as_str());
    assert_eq!(d[0]["end_segment"], seg(1, 5).as_str());
    assert_eq!(d[0]["segments_count"], 4);
    assert_eq!(d[0]["status"], "FOUND");
    assert_eq!(d[1]["status"], "MISSING_LOST");
    assert_eq!(d[2]["segments_count"], 3);
    assert!(v.get("timeline").is_none(), "{v}");

    let text = a.ok(&["wal-show"]);
    assert!(
        text.contains("LOST_SEGMENTS") && text.contains(&seg(1, 9)),
        "{text}"
    );
    let v = json(&a.ok(&["wal-show", "--detailed-json"]));
    assert_eq!(v[0]["id"], 1);
    assert_eq!(v[0]["missing_segments"][0], seg(1, 6).as_str());
    assert_eq!(v[0]["segments_count"], 7);
    assert_eq!(v[0]["backups"].as_array().unwrap().len(), 1);

    a.wal(1, 6..7);
    let out = a.run(&["wal-verify", "integrity"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("integrity check status: OK"));
}

#[test]
fn st_lists_reads_writes_and_removes_objects() {
    let a = Archive::new();
    let src = a.scratch.path().join("note.txt");
    std::fs::write(&src, b"hello storage").unwrap();
    let out = a.ok(&["st", "put", src.to_str().unwrap(), "extra/note.txt"]);
    assert_eq!(out.trim(), "extra/note.txt.lz4");
    // Never overwrite.
    let again = a.run(&["st", "put", src.to_str().unwrap(), "extra/note.txt"]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    let ls = a.ok(&["st", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("dir  0 ") && l.ends_with(" extra/")),
        "{ls}"
    );
    let ls = a.ok(&["st", "ls", "extra"]);
    assert!(ls.contains("note.txt.lz4"), "{ls}");
    let dest = a.scratch.path().join("back.txt");
    a.ok(&["st", "get", "extra/note.txt.lz4", dest.to_str().unwrap()]);
    assert_eq!(std::fs::read(&dest).unwrap(), b"hello storage");
    assert_eq!(
        a.ok(&["st", "cat", "--decompress", "extra/note.txt.lz4"]),
        "hello storage"
    );
    let raw = a.run(&["st", "cat", "extra/note.txt.lz4"]);
    assert_ne!(raw.stdout, b"hello storage");
    // A missing object: exit 74, and no file left where it would have gone.
    let gone = a.scratch.path().join("gone.txt");
    let out = a.run(&["st", "get", "extra/none.lz4", gone.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(74), "{}", stderr(&out));
    assert!(!gone.exists());
    // A large object goes up and comes back byte-identical, streamed both ways.
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let big_src = a.scratch.path().join("big.bin");
    std::fs::write(&big_src, &big).unwrap();
    a.ok(&["st", "put", big_src.to_str().unwrap(), "extra/big"]);
    let big_back = a.scratch.path().join("big.back");
    a.ok(&["st", "get", "extra/big.lz4", big_back.to_str().unwrap()]);
    assert!(
        std::fs::read(&big_back).unwrap() == big,
        "st get of a large object differs"
    );
    let cat = a.run(&["st", "cat", "--decompress", "extra/big.lz4"]);
    assert!(cat.stdout == big, "st cat of a large object differs");
    a.ok(&["st", "rm", "extra/big.lz4"]);
    a.ok(&[
        "st",
        "put",
        "--no-compress",
        "--no-encrypt",
        src.to_str().unwrap(),
        "extra/raw",
    ]);
    assert_eq!(a.ok(&["st", "cat", "extra/raw"]), "hello storage");
    a.ok(&["st", "rm", "extra/raw"]);
    a.ok(&["st", "rm", "extra"]);
    assert!(a.objects().is_empty(), "{:?}", a.objects());
    let out = a.run(&["st", "rm", "extra"]);
    assert_eq!(out.status.code(), Some(74), "{}", stderr(&out));
}

fn fake_segment_dir(scratch: &Scratch, name: &str, seed: u64) -> PathBuf {
    let pgdata = fake_pgdata(scratch, &format!("data{seed}"));
    std::fs::write(
        pgdata.join("pg_wal").join(name),
        synthetic_segment(name, seed),
    )
    .unwrap();
    pgdata
}

#[test]
fn wal_g_config_files_name_the_archive_and_overwrite_stays_refused() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let name = seg(1, 0x31);
    let pgdata = fake_segment_dir(&scratch, &name, 1);
    let cfg = scratch.path().join("walg.json");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"WALG_FILE_PREFIX": "file://{}", "WALG_COMPRESSION_METHOD": "zstd"}}"#,
            archive.display()
        ),
    )
    .unwrap();
    let out = run(
        &[
            "--config",
            cfg.to_str().unwrap(),
            "wal-push",
            &format!("pg_wal/{name}"),
        ],
        &[],
        &pgdata,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(list_files(&archive), vec![format!("wal_005/{name}.zst")]);

    // ~/.walg.yaml, with no --config.
    let home = scratch.mkdir("home");
    std::fs::write(
        home.join(".walg.yaml"),
        format!("WALG_FILE_PREFIX: file://{}\n", archive.display()),
    )
    .unwrap();
    let name2 = seg(1, 0x32);
    let pgdata2 = fake_segment_dir(&scratch, &name2, 2);
    let home_vars = vec![("HOME".to_string(), home.display().to_string())];
    let out = run(
        &["wal-push", &format!("pg_wal/{name2}")],
        &home_vars,
        &pgdata2,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(list_files(&archive).contains(&format!("wal_005/{name2}.lz4")));

    // WALG_PREVENT_WAL_OVERWRITE=false does not make walkeeper overwrite.
    let other = fake_segment_dir(&scratch, &name2, 3);
    let mut vars = home_vars.clone();
    vars.push(("WALG_PREVENT_WAL_OVERWRITE".into(), "false".into()));
    let out = run(&["wal-push", &format!("pg_wal/{name2}")], &vars, &other);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
}

fn sentinel_of(archive: &Path) -> serde_json::Value {
    let f = list_files(archive)
        .into_iter()
        .find(|f| f.ends_with("_backup_stop_sentinel.json"))
        .unwrap();
    serde_json::from_slice(&std::fs::read(archive.join(f)).unwrap()).unwrap()
}

#[test]
fn backup_push_full_p_and_add_user_data_and_refused_options_on_a_real_server() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    chown_pg_recursive(&archive);
    let prefix = format!("file://{}", archive.display());
    let wk = walkeeper();
    let mut pg = Pg::init(
        &scratch,
        "primary",
        &format!("wal_level = replica\narchive_mode = on\narchive_command = 'WALG_FILE_PREFIX={prefix} {wk} wal-push %p'\n"),
    );
    pg.start();
    let data = pg.data.to_str().unwrap().to_string();
    let walkeeper_env = |args: &[&str], env: &[(&str, &str)]| -> Output {
        let mut c = as_postgres(walkeeper());
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("WALG_FILE_PREFIX", &prefix)
            .env("PGHOST", &pg.sock)
            .env("PGPORT", pg.port.to_string())
            .env("PGUSER", "postgres")
            .envs(env.iter().copied())
            .current_dir(scratch.path());
        c.output().unwrap()
    };
    let walkeeper_as_pg = |args: &[&str]| walkeeper_env(args, &[]);
    // A delta of a backup that does not exist is refused by name, before anything is stored.
    let out = walkeeper_as_pg(&["backup-push", &data, "--delta-from-name", "base_x"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--delta-from-name base_x")
            && stderr(&out).contains("no complete backup"),
        "{}",
        stderr(&out)
    );
    assert!(!list_files(&archive)
        .iter()
        .any(|f| f.starts_with("basebackups_005")));

    let out = walkeeper_as_pg(&[
        "backup-push",
        "--full",
        "-p",
        "--add-user-data",
        r#"{"tier": "gold"}"#,
        &data,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = sentinel_of(&archive);
    assert_eq!(s["IsPermanent"], true, "{s}");
    assert_eq!(s["UserData"]["tier"], "gold", "{s}");
    let out = walkeeper_as_pg(&["backup-list", "--detail", "--json"]);
    let v = json(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(v[0]["user_data"]["tier"], "gold", "{v}");
    assert_eq!(v[0]["is_permanent"], true, "{v}");

    // WALG_NETWORK_RATE_LIMIT and WALG_DISK_RATE_LIMIT bound backup-push's reading (the
    // lowest applies): the data directory takes at least size / limit seconds.
    let size = v[0]["uncompressed_size"].as_u64().unwrap();
    let limit = size / 2; // about two seconds' worth
    for (var, other) in [
        ("WALG_NETWORK_RATE_LIMIT", "WALG_DISK_RATE_LIMIT"),
        ("WALG_DISK_RATE_LIMIT", "WALG_NETWORK_RATE_LIMIT"),
    ] {
        pg.psql("SELECT pg_switch_wal()");
        pg.psql("CHECKPOINT");
        let started = std::time::Instant::now();
        let limit_s = limit.to_string();
        let out = walkeeper_env(
            &["backup-push", &data],
            &[(var, &limit_s), (other, "900000000000")],
        );
        assert_eq!(out.status.code(), Some(0), "{var}: {}", stderr(&out));
        let took = started.elapsed().as_secs_f64();
        assert!(
            took >= 1.5,
            "{var}={limit} for {size} bytes took only {took:.2} s"
        );
    }
    // WALG_DELTA_MAX_STEPS takes a delta of the newest backup; --delta-from-user-data picks
    // the base by its user data.
    let out = walkeeper_env(&["backup-push", &data], &[("WALG_DELTA_MAX_STEPS", "6")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = walkeeper_as_pg(&["backup-list", "--detail", "--json"]);
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["backup_name"].as_str().unwrap())
        .collect();
    let newest = names.last().unwrap();
    assert!(
        newest.ends_with(&format!("_D_{}", &names[names.len() - 2][5..29])),
        "{names:?}"
    );
    let out = walkeeper_as_pg(&[
        "backup-push",
        &data,
        "--delta-from-user-data",
        r#"{"tier": "gold"}"#,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = walkeeper_as_pg(&["backup-list", "--detail", "--json"]);
    let v = json(&String::from_utf8_lossy(&out.stdout));
    let newest = v.as_array().unwrap().last().unwrap()["backup_name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        newest.ends_with(&format!("_D_{}", &names[0][5..29])),
        "{newest}"
    );
    pg.stop();
}

#[test]
fn backup_fetch_refuses_the_wal_g_options_it_does_not_implement_by_name() {
    let a = Archive::new();
    let b = a.backup(2, 3, 10, false);
    let dest = a.scratch.path().join("restored");
    for (opt, extra) in [
        ("--target-user-data", Some("{\"tier\":\"gold\"}")),
        ("--reverse-delta-unpack", None),
        ("--skip-redundant-tars", None),
        ("--restore-only", Some("db1")),
    ] {
        let mut args = vec!["backup-fetch", dest.to_str().unwrap(), b.as_str(), opt];
        args.extend(extra);
        let out = a.run(&args);
        assert_eq!(out.status.code(), Some(2), "{opt}: {}", stderr(&out));
        assert!(stderr(&out).contains(opt), "{opt}: {}", stderr(&out));
        assert!(stderr(&out).contains("drop the option"), "{}", stderr(&out));
        assert!(!dest.exists(), "{opt}: nothing is restored");
    }
}
