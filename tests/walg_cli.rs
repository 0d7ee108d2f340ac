//! WAL-G's command lines, part two (issue 14, item 3): `wal-verify integrity timeline` with
//! WAL-G's four segment statuses, `st ls` in WAL-G's table on every store, `--turbo`, and the
//! WAL-G commands and options walkeeper does not implement, refused by name with what walkeeper
//! does instead.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::*;

const SEG: u64 = 16 << 20;

fn seg(tli: u32, n: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", n / 256, n % 256)
}

fn out_text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn put(root: &Path, key: &str, bytes: &[u8]) {
    let p = root.join(key);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A WAL-G backup starting in segment `start`, laid out as WAL-G stores it.
fn backup(root: &Path, start: u64) {
    let name = format!("base_{}", seg(1, start));
    let now = chrono::Utc::now().to_rfc3339();
    let sentinel = serde_json::json!({
        "LSN": start * SEG + 0x28,
        "FinishLSN": (start + 1) * SEG + 0x100,
        "Timeline": 1,
        "PgVersion": 150004,
        "FinishTime": now,
        "StartTime": now,
        "IsPermanent": false,
        "WalSegmentSize": SEG,
        "SystemIdentifier": 7312345678901234567u64,
        "UncompressedSize": 1000,
        "CompressedSize": 500,
    });
    put(
        root,
        &format!("basebackups_005/{name}/tar_partitions/part_001.tar.lz4"),
        b"part",
    );
    put(
        root,
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
        &serde_json::to_vec(&sentinel).unwrap(),
    );
}

fn file_vars(root: &Path) -> Vec<(String, String)> {
    vec![(
        "WALG_FILE_PREFIX".into(),
        format!("file://{}", root.display()),
    )]
}

#[test]
fn wal_verify_integrity_marks_missing_segments_in_the_upload_window_uploading_and_older_ones_lost()
{
    let scratch = Scratch::new();
    let root = scratch.mkdir("archive");
    backup(&root, 2);
    for n in (2..10).filter(|n| *n != 4 && *n != 8) {
        put(&root, &format!("wal_005/{}.lz4", seg(1, n)), b"segment");
    }
    let mut vars = file_vars(&root);
    vars.push(("WALG_UPLOAD_CONCURRENCY".into(), "3".into()));
    // No server answers: the check runs to the newest archived segment (9). Scanning back, the
    // three segments 9, 8, 7 may still be uploading; 4 is lost.
    let out = run(
        &["wal-verify", "integrity", "--json"],
        &vars,
        scratch.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&out_text(&out)).unwrap();
    assert_eq!(v["integrity"]["status"], "FAILURE", "{v}");
    let rows: Vec<(String, String, String, u64)> = v["integrity"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            assert_eq!(d["timeline_id"], 1);
            (
                d["status"].as_str().unwrap().to_string(),
                d["start_segment"].as_str().unwrap().to_string(),
                d["end_segment"].as_str().unwrap().to_string(),
                d["segments_count"].as_u64().unwrap(),
            )
        })
        .collect();
    let row = |s: &str, a: u64, b: u64| (s.to_string(), seg(1, a), seg(1, b), b - a + 1);
    assert_eq!(
        rows,
        vec![
            row("FOUND", 2, 3),
            row("MISSING_LOST", 4, 4),
            row("FOUND", 5, 7),
            row("MISSING_UPLOADING", 8, 8),
            row("FOUND", 9, 9),
        ]
    );

    // Only an uploading segment missing: WARNING, exit 0, WAL-G's table.
    put(&root, &format!("wal_005/{}.lz4", seg(1, 4)), b"segment");
    let out = run(&["wal-verify", "integrity"], &vars, scratch.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rule = "+-----+--------------------------+--------------------------+----------------+-------------------+";
    let expected = [
        "[wal-verify] integrity check status: WARNING".to_string(),
        "[wal-verify] integrity check details:".into(),
        rule.into(),
        "| TLI | START                    | END                      | SEGMENTS COUNT | STATUS            |".into(),
        rule.into(),
        format!("|   1 | {} | {} |              6 |             FOUND |", seg(1, 2), seg(1, 7)),
        format!("|   1 | {} | {} |              1 | MISSING_UPLOADING |", seg(1, 8), seg(1, 8)),
        format!("|   1 | {} | {} |              1 |             FOUND |", seg(1, 9), seg(1, 9)),
        rule.into(),
    ]
    .join("\n")
        + "\n";
    assert_eq!(out_text(&out), expected);

    // wal-show --without-backups: WAL-G's output without the backups.
    let out = run(&["wal-show", "--detailed-json"], &vars, scratch.path());
    let v: serde_json::Value = serde_json::from_str(&out_text(&out)).unwrap();
    assert_eq!(v[0]["backups"].as_array().map(Vec::len), Some(1), "{v}");
    let out = run(
        &["wal-show", "--detailed-json", "--without-backups"],
        &vars,
        scratch.path(),
    );
    let v: serde_json::Value = serde_json::from_str(&out_text(&out)).unwrap();
    assert!(v[0].get("backups").is_none(), "{v}");
    let out = run(&["wal-show", "--without-backups"], &vars, scratch.path());
    assert!(
        !out_text(&out).contains("BACKUPS COUNT"),
        "{}",
        out_text(&out)
    );

    // Without a backup, WAL-G checks from segment 1: nothing can restore segment 1's WAL.
    std::fs::remove_dir_all(root.join("basebackups_005")).unwrap();
    let out = run(
        &["wal-verify", "integrity", "--json"],
        &vars,
        scratch.path(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(&out_text(&out)).unwrap();
    assert_eq!(
        v["integrity"]["details"][0]["status"], "MISSING_LOST",
        "{v}"
    );
    assert_eq!(
        v["integrity"]["details"][0]["start_segment"],
        seg(1, 1).as_str()
    );
}

/// archive_command through a switch: while `<scratch>/stop` exists, archiving fails.
fn switchable_archive(scratch: &Scratch, archive: &Path) -> (PathBuf, String) {
    let stop = scratch.path().join("stop");
    let script = scratch.path().join("archive.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ntest -e {} && exit 1\nWALG_FILE_PREFIX=file://{} exec {} wal-push \"$1\"\n",
            stop.display(),
            archive.display(),
            walkeeper()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (
        stop,
        format!(
            "wal_level = replica\narchive_mode = on\narchive_command = '{} %p'\n",
            script.display()
        ),
    )
}

#[test]
fn wal_verify_against_a_running_server_reports_delayed_uploading_and_lost_segments_and_its_timeline(
) {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    chown_pg_recursive(&archive);
    let (stop, conf) = switchable_archive(&scratch, &archive);
    let mut pg = Pg::init(&scratch, "primary", &conf);
    pg.start();
    let archived = pg.switch_and_wait_archived();
    let (_, a) = seg_of(&archived).unwrap();
    // The check starts at the oldest backup's segment.
    backup(&archive, a);
    std::fs::write(&stop, b"").unwrap();
    // Three more segments PostgreSQL cannot archive, then a write into the current one.
    for i in 0..3 {
        pg.psql(&format!("CREATE TABLE t{i} (); SELECT pg_switch_wal()"));
    }
    pg.psql("CREATE TABLE t_current ()");
    let current = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    assert_eq!(seg_of(&current), Some((1, a + 4)), "{current}");

    let mut vars = file_vars(&archive);
    vars.extend([
        ("PGHOST".to_string(), pg.sock.display().to_string()),
        ("PGPORT".into(), pg.port.to_string()),
        ("PGUSER".into(), "postgres".into()),
        ("WALG_INTEGRITY_MAX_DELAYED_WALS".into(), "1".into()),
        ("WALG_UPLOAD_CONCURRENCY".into(), "1".into()),
    ]);
    let out = run(
        &["wal-verify", "integrity", "timeline", "--json"],
        &vars,
        scratch.path(),
    );
    let v: serde_json::Value =
        serde_json::from_str(&out_text(&out)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(out.status.code(), Some(1), "{v} {}", stderr(&out));
    let details = v["integrity"]["details"].as_array().unwrap();
    let last: Vec<(&str, &str)> = details
        .iter()
        .rev()
        .take(4)
        .rev()
        .map(|d| {
            (
                d["status"].as_str().unwrap(),
                d["start_segment"].as_str().unwrap(),
            )
        })
        .collect();
    // Scanning back from the segment before the current one: one delayed, one uploading, and
    // the one before them lost.
    assert_eq!(
        last,
        vec![
            ("FOUND", seg(1, a).as_str()),
            ("MISSING_LOST", seg(1, a + 1).as_str()),
            ("MISSING_UPLOADING", seg(1, a + 2).as_str()),
            ("MISSING_DELAYED", seg(1, a + 3).as_str()),
        ],
        "{v}"
    );
    assert_eq!(details.len(), 4, "{v}");
    assert_eq!(v["integrity"]["status"], "FAILURE");
    assert_eq!(v["timeline"]["status"], "OK");
    assert_eq!(v["timeline"]["details"]["current_timeline_id"], 1);
    assert_eq!(v["timeline"]["details"]["highest_storage_timeline_id"], 1);

    // A wider delay window: all three are delayed, a WARNING (exit 0).
    vars.push(("WALG_INTEGRITY_MAX_DELAYED_WALS".into(), "3".into()));
    let out = run(
        &["wal-verify", "integrity", "timeline"],
        &vars,
        scratch.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = out_text(&out);
    assert!(
        text.starts_with("[wal-verify] integrity check status: WARNING\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "|   1 | {} | {} |              3 | MISSING_DELAYED |",
            seg(1, a + 1),
            seg(1, a + 3)
        )),
        "{text}"
    );
    assert!(
        text.contains("[wal-verify] timeline check status: OK\n")
            && text.contains("Current cluster timeline: 1\n"),
        "{text}"
    );

    // Archiving resumes: once PostgreSQL has caught up, OK. (A new segment wakes the
    // archiver at once.)
    std::fs::remove_file(&stop).unwrap();
    pg.psql("SELECT pg_switch_wal()");
    wait_until(
        "the archiver to catch up",
        std::time::Duration::from_secs(120),
        || pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= seg(1, a + 4),
    );
    let out = run(&["wal-verify", "integrity"], &vars, scratch.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out_text(&out).starts_with("[wal-verify] integrity check status: OK\n"));
    pg.stop();
}

/// Checks `st ls` output against WAL-G's tabwriter layout and returns (type, size, time, name)
/// rows.
fn ls_rows(text: &str) -> Vec<(String, String, String, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let header = lines[0];
    assert!(header.starts_with("type size last modified"), "{text}");
    let name_at = header.find("name").unwrap();
    assert_eq!(&header[name_at..], "name", "{text}");
    lines[1..]
        .iter()
        .map(|l| {
            assert_eq!(&l[name_at - 1..name_at], " ", "{text}");
            let (kind, rest) = l.split_at(5);
            let (size, rest) = rest.split_at(5);
            let time = rest[..name_at - 10].trim_end();
            chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S%.f +0000 UTC")
                .unwrap_or_else(|e| panic!("{time:?}: {e}\n{text}"));
            (
                kind.trim_end().to_string(),
                size.trim_end().to_string(),
                time.to_string(),
                l[name_at..].to_string(),
            )
        })
        .collect()
}

fn st_ls_on(backend: &Backend) {
    let scratch = Scratch::new();
    let vars = backend.vars();
    let src = scratch.path().join("note.txt");
    std::fs::write(&src, b"twelve bytes").unwrap();
    for dest in ["a/top.txt", "a/b/c.txt"] {
        let out = run(
            &[
                "st",
                "put",
                "--no-compress",
                "--no-encrypt",
                src.to_str().unwrap(),
                dest,
            ],
            &vars,
            scratch.path(),
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let out = run(&["st", "ls", "a"], &vars, scratch.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = out_text(&out);
    let rows = ls_rows(&text);
    assert_eq!(rows.len(), 2, "{text}");
    assert_eq!(
        rows[0],
        (
            "dir".into(),
            "0".into(),
            "0001-01-01 00:00:00 +0000 UTC".into(),
            "b/".into()
        ),
        "{text}"
    );
    assert_eq!(
        (rows[1].0.as_str(), rows[1].1.as_str(), rows[1].3.as_str()),
        ("obj", "12", "top.txt"),
        "{text}"
    );
    let out = run(&["st", "ls", "-r", "a"], &vars, scratch.path());
    let text = out_text(&out);
    let names: Vec<(String, String)> = ls_rows(&text).into_iter().map(|r| (r.0, r.3)).collect();
    assert_eq!(
        names,
        vec![
            ("obj".into(), "b/c.txt".into()),
            ("obj".into(), "top.txt".into())
        ],
        "{text}"
    );
    let out = run(&["st", "ls", "--recursive"], &vars, scratch.path());
    let text = out_text(&out);
    let names: Vec<String> = ls_rows(&text).into_iter().map(|r| r.3).collect();
    assert_eq!(names, vec!["a/b/c.txt", "a/top.txt"], "{text}");
    // The root: one folder.
    let out = run(&["st", "ls"], &vars, scratch.path());
    let rows = ls_rows(&out_text(&out));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].3, "a/");
}

#[test]
fn st_ls_prints_wal_g_table_with_folders_and_recursive_paths_on_file_and_s3() {
    let scratch = Scratch::new();
    st_ls_on(&Backend::file(&scratch));
    st_ls_on(&Backend::s3());
}

#[test]
fn turbo_ignores_the_configured_throttling() {
    let scratch = Scratch::new();
    let root = scratch.mkdir("archive");
    let mut vars = file_vars(&root);
    vars.push(("WALG_DISK_RATE_LIMIT".into(), "fast".into()));
    let out = run(&["backup-list"], &vars, scratch.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WALG_DISK_RATE_LIMIT"),
        "{}",
        stderr(&out)
    );
    let out = run(&["--turbo", "backup-list"], &vars, scratch.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = run(&["backup-list", "--turbo"], &vars, scratch.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn wal_g_commands_and_options_walkeeper_lacks_are_refused_by_name_with_what_it_does_instead() {
    let scratch = Scratch::new();
    let root = scratch.mkdir("archive");
    let vars = file_vars(&root);
    let cases: &[(&[&str], i32, &[&str])] = &[
        (
            &["wal-receive"],
            2,
            &["wal-receive", "does not stream WAL", "archive_command"],
        ),
        (
            &["wal-restore", "/target", "/source"],
            2,
            &["wal-restore", "pg_rewind", "wal-fetch"],
        ),
        (
            &["catchup-push", "/data", "--from-lsn", "0/3000000"],
            2,
            &["catchup-push", "no catchup backups"],
        ),
        (
            &["catchup-fetch", "/data", "base_x"],
            2,
            &["catchup-fetch", "create-replica"],
        ),
        (&["catchup-list"], 2, &["catchup-list", "create-replica"]),
        (
            &["copy", "--from=a.json", "--to=b.json"],
            2,
            &["copy", "storage's own tools"],
        ),
        (&["daemon", "/tmp/walg.sock"], 2, &["daemon", "wal-push %p"]),
        (
            &["pgbackrest", "backup-list"],
            2,
            &["pgbackrest", "pgBackRest"],
        ),
        (
            &["st", "transfer", "pg-wals", "--source=failover"],
            2,
            &["st transfer", "failover"],
        ),
        (
            &["st", "-t", "failover_1", "ls"],
            2,
            &["--target failover_1", "one archive prefix"],
        ),
        (
            &["delete", "retain", "FULL", "5", "--use-sentinel-time"],
            2,
            &["--use-sentinel-time", "start LSN"],
        ),
        (
            &["delete", "target", "--target-user-data", "{\"x\": 1}"],
            2,
            &["--target-user-data", "delete target NAME"],
        ),
        (
            &["delete", "garbage", "--without-backup-check"],
            2,
            &["--without-backup-check"],
        ),
        (
            &[
                "wal-push",
                "--target-storage",
                "s2",
                "pg_wal/000000010000000000000001",
            ],
            2,
            &["--target-storage", "one archive prefix"],
        ),
        // restore_command: a refusal must not read as "not archived".
        (
            &[
                "wal-fetch",
                "--target-storage=s2",
                "000000010000000000000001",
                "/tmp/x",
            ],
            128,
            &["--target-storage"],
        ),
        (
            &["backup-push", "/data", "-r"],
            2,
            &["-r", "rating composer"],
        ),
        (
            &["backup-fetch", "/restored", "LATEST", "--reverse-unpack"],
            2,
            &["--reverse-unpack", "chain"],
        ),
        (&["flags"], 2, &["flags", "--help"]),
        (&["completion", "bash"], 2, &["completion"]),
    ];
    for (args, code, says) in cases {
        let out = run(args, &vars, scratch.path());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {err}");
        for s in *says {
            assert!(err.contains(s), "{args:?} should say {s:?}: {err}");
        }
    }
    assert!(list_files(&root).is_empty(), "{:?}", list_files(&root));
    // WAL-G's `delete retain -a TIME` is `--after`.
    backup(&root, 2);
    let out = run(
        &["delete", "retain", "1", "-a", "2020-01-01T00:00:00Z"],
        &vars,
        scratch.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
