//! Retention never deletes what must be kept, and archive content never crashes walkeeper.
//!
//! Most cases run the real binary on a file:// archive laid out by hand (sentinels are JSON and
//! retention only lists WAL keys), so they are fast; one runs against a real PostgreSQL 15 with
//! `backup-push --permanent`.

mod support;

use std::path::PathBuf;
use std::process::Output;

use support::*;

const SEG: u64 = 16 << 20;

fn seg_name(tli: u32, n: u64) -> String {
    format!("{tli:08X}{:08X}{:08X}", n / 256, n % 256)
}

/// A file:// archive written by hand.
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
            "WALG_FILE_PREFIX".to_string(),
            format!("file://{}", self.root.display()),
        )]
    }

    fn put(&self, key: &str, bytes: &[u8]) {
        let p = self.root.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    fn wal(&self, range: std::ops::Range<u64>) {
        for n in range {
            self.put(&format!("wal_005/{}.lz4", seg_name(1, n)), b"segment");
        }
    }

    /// A complete backup from segment `start` to `stop`, finished `age_h` hours ago.
    fn backup(&self, start: u64, stop: u64, age_h: i64, permanent: bool) -> String {
        self.backup_with(start, stop, age_h, permanent, SEG)
    }

    fn backup_with(&self, start: u64, stop: u64, age_h: i64, permanent: bool, seg: u64) -> String {
        let name = format!("base_{}", seg_name(1, start));
        let finish = chrono::Utc::now() - chrono::Duration::hours(age_h);
        let sentinel = serde_json::json!({
            "LSN": start * SEG + 0x28,
            "FinishLSN": stop * SEG + 0x100,
            "Timeline": 1,
            "PgVersion": 150000,
            "FinishTime": finish.to_rfc3339(),
            "StartTime": finish.to_rfc3339(),
            "IsPermanent": permanent,
            "WalSegmentSize": seg,
        });
        self.put(
            &format!("basebackups_005/{name}/tar_partitions/part_001.tar.lz4"),
            b"part",
        );
        self.put(&format!("basebackups_005/{name}/metadata.json"), b"{}");
        self.put(
            &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
            &serde_json::to_vec(&sentinel).unwrap(),
        );
        name
    }

    fn run(&self, args: &[&str]) -> Output {
        run(args, &self.vars(), self.scratch.path())
    }

    /// Every file in the archive with its contents.
    fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        list_files(&self.root)
            .into_iter()
            .map(|f| {
                let bytes = std::fs::read(self.root.join(&f)).unwrap();
                (f, bytes)
            })
            .collect()
    }

    fn objects(&self) -> Vec<String> {
        list_files(&self.root)
    }
}

fn has(objects: &[String], key: &str) -> bool {
    objects.iter().any(|o| o == key)
}

fn assert_clean_failure(out: &Output, what: &str) {
    let code = out.status.code();
    assert!(
        code.is_some() && code != Some(0) && code != Some(101),
        "{what}: exit {code:?}: {}",
        stderr(out)
    );
    assert!(!stderr(out).contains("panicked"), "{what}: {}", stderr(out));
}

#[test]
fn permanent_backup_and_its_wal_survive_retain_and_before() {
    for how in [&["retain", "1"][..], &["before", "NEWEST"][..]] {
        let a = Archive::new();
        a.wal(1..14);
        a.put("wal_005/00000002.history.lz4", b"history");
        let perm = a.backup(2, 3, 50, true);
        let old = a.backup(5, 6, 40, false);
        let new = a.backup(11, 12, 20, false);
        let args: Vec<&str> = ["delete", "--confirm"]
            .iter()
            .copied()
            .chain(
                how.iter()
                    .map(|w| if *w == "NEWEST" { new.as_str() } else { w }),
            )
            .collect();
        let out = a.run(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
        let objects = a.objects();
        assert!(
            has(
                &objects,
                &format!("basebackups_005/{perm}_backup_stop_sentinel.json")
            ),
            "{objects:?}"
        );
        assert!(has(
            &objects,
            &format!("basebackups_005/{perm}/tar_partitions/part_001.tar.lz4")
        ));
        assert!(!objects.iter().any(|o| o.contains(&old)), "{objects:?}");
        // The permanent backup's start..stop segments stay; other WAL below the newest kept
        // backup's start goes; `.history` files stay.
        for n in [2, 3, 11, 12, 13] {
            assert!(
                has(&objects, &format!("wal_005/{}.lz4", seg_name(1, n))),
                "{n}: {objects:?}"
            );
        }
        for n in [1, 4, 5, 6, 10] {
            assert!(
                !has(&objects, &format!("wal_005/{}.lz4", seg_name(1, n))),
                "{n}: {objects:?}"
            );
        }
        assert!(has(&objects, "wal_005/00000002.history.lz4"));
    }
}

#[test]
fn delete_everything_refuses_a_permanent_backup_unless_forced() {
    let a = Archive::new();
    a.wal(1..5);
    let perm = a.backup(2, 3, 50, true);
    let before = a.snapshot();
    for args in [
        &["delete", "everything"][..],
        &["delete", "--confirm", "everything"][..],
    ] {
        let out = a.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(&perm), "{}", stderr(&out));
        assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    }
    assert!(a.snapshot() == before, "a refused delete deletes nothing");
    let dry = a.run(&["delete", "everything", "FORCE"]);
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    assert!(String::from_utf8_lossy(&dry.stdout).contains(&format!(
        "would delete basebackups_005/{perm}_backup_stop_sentinel.json"
    )));
    assert!(a.snapshot() == before, "a dry run deletes nothing");
    let out = a.run(&["delete", "--confirm", "everything", "--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(a.objects(), Vec::<String>::new());

    let b = Archive::new();
    b.backup(2, 3, 50, true);
    let out = b.run(&["delete", "--confirm", "everything", "FORCE"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(b.objects(), Vec::<String>::new());
}

#[test]
fn retain_and_before_refuse_an_archive_without_a_complete_backup() {
    let a = Archive::new();
    a.wal(1..6);
    a.put("wal_005/00000002.history.lz4", b"history");
    // A backup still being written: parts, no sentinel.
    a.put(
        &format!(
            "basebackups_005/base_{}/tar_partitions/part_001.tar.lz4",
            seg_name(1, 2)
        ),
        b"part",
    );
    let before = a.snapshot();
    for args in [
        &["delete", "--confirm", "retain", "1"][..],
        &["delete", "retain", "3"][..],
        &[
            "delete",
            "--confirm",
            "before",
            "base_000000010000000000000002",
        ][..],
    ] {
        let out = a.run(args);
        assert_clean_failure(&out, &format!("{args:?}"));
        assert!(
            stderr(&out).contains("delete everything")
                || stderr(&out).contains("nothing was deleted"),
            "{args:?}: {}",
            stderr(&out)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}");
        assert!(a.snapshot() == before, "{args:?} deleted something");
    }
    let out = a.run(&["delete", "retain", "1"]);
    assert!(
        stderr(&out).contains("`delete everything`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn in_progress_backup_and_history_files_survive_retain_even_when_old() {
    let a = Archive::new();
    a.wal(1..14);
    a.put("wal_005/00000002.history.lz4", b"history");
    a.put("wal_005/00000003.history.zst", b"history");
    let running = format!(
        "basebackups_005/base_{}/tar_partitions/part_001.tar.lz4",
        seg_name(1, 1)
    );
    a.put(&running, b"part");
    let old = a.backup(5, 6, 40, false);
    let new = a.backup(11, 12, 20, false);
    let out = a.run(&["delete", "--confirm", "retain", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let objects = a.objects();
    assert!(has(&objects, &running), "{objects:?}");
    assert!(has(&objects, "wal_005/00000002.history.lz4"));
    assert!(has(&objects, "wal_005/00000003.history.zst"));
    assert!(!objects.iter().any(|o| o.contains(&old)));
    assert!(has(
        &objects,
        &format!("basebackups_005/{new}_backup_stop_sentinel.json")
    ));
    // Only `delete everything` removes them.
    let out = a.run(&["delete", "--confirm", "everything"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(a.objects(), Vec::<String>::new());
}

#[test]
fn sentinels_with_a_bad_segment_size_fail_every_command_cleanly() {
    for bad in [0u64, 3 << 30] {
        let a = Archive::new();
        a.wal(1..6);
        a.backup(3, 4, 10, false);
        let name = a.backup_with(2, 3, 20, false, bad);
        let key = format!("basebackups_005/{name}_backup_stop_sentinel.json");
        let before = a.snapshot();
        let datadir = format!("--datadir={}", a.scratch.path().join("replica").display());
        for args in [
            &["create-replica", &datadir][..],
            &["backup-list"][..],
            &["backup-list", "--detail"][..],
            &["backup-list", "--json"][..],
            &["delete", "retain", "1"][..],
            &["delete", "--confirm", "retain", "1"][..],
            &["delete", "--confirm", "everything"][..],
            &["wal-verify"][..],
        ] {
            let out = a.run(args);
            assert_clean_failure(&out, &format!("{bad}: {args:?}"));
            assert!(
                stderr(&out).contains(&key),
                "{bad} {args:?}: {}",
                stderr(&out)
            );
        }
        assert!(a.snapshot() == before, "{bad}: nothing deleted");
    }
}

#[test]
fn corrupt_history_file_fails_wal_verify_naming_it() {
    let a = Archive::new();
    a.backup(2, 3, 10, false);
    for n in 1..5 {
        a.put(&format!("wal_005/{}.lz4", seg_name(2, n)), b"segment");
    }
    let text = b"1\tnot-an-lsn\tno recovery target specified\n";
    let mut z = std::process::Command::new("zstd")
        .args(["-q", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    z.stdin.take().unwrap().write_all(text).unwrap();
    let out = z.wait_with_output().unwrap();
    assert!(out.status.success());
    a.put("wal_005/00000002.history.zst", &out.stdout);
    let out = a.run(&["wal-verify"]);
    assert_clean_failure(&out, "wal-verify");
    assert!(
        stderr(&out).contains("wal_005/00000002.history.zst") && stderr(&out).contains("line 1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn backup_list_detail_and_json_show_permanence() {
    let a = Archive::new();
    let perm = a.backup(2, 3, 50, true);
    let plain = a.backup(5, 6, 40, false);
    let out = a.run(&["backup-list", "--detail"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows[0].last(), Some(&"is_permanent"), "{text}");
    assert_eq!(
        (rows[1][0], *rows[1].last().unwrap()),
        (perm.as_str(), "true")
    );
    assert_eq!(
        (rows[2][0], *rows[2].last().unwrap()),
        (plain.as_str(), "false")
    );
    let out = a.run(&["backup-list", "--walkeeper-json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], perm.as_str());
    assert_eq!(v[0]["is_permanent"], true);
    assert_eq!(v[1]["is_permanent"], false);
}

/// A real server: `backup-push --permanent`, a second backup, `delete retain 1`.
#[test]
fn pushed_permanent_backup_survives_retain_on_a_real_server() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let env = backend.envdir(&scratch, &[]);
    let wk = walkeeper();
    let mut primary = Pg::init(
        &scratch,
        "primary",
        &format!(
            "wal_level = replica\narchive_mode = on\narchive_command = '{wk} --envdir {env} wal-push %p'\n",
            env = env.display()
        ),
    );
    primary.start();
    let walkeeper = |args: &[&str]| -> Output {
        let mut c = as_postgres(wk);
        c.arg("--envdir").arg(&env).args(args);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGHOST", &primary.sock)
            .env("PGPORT", primary.port.to_string())
            .env("PGUSER", "postgres")
            .current_dir(scratch.path());
        c.output().unwrap()
    };
    let data = primary.data.to_str().unwrap().to_string();
    let out = walkeeper(&["backup-push", "--permanent", &data]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    primary.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS v");
    primary.switch_and_wait_archived();
    let out = walkeeper(&["backup-push", &data]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list = walkeeper(&["backup-list", "--walkeeper-json"]);
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let perm = v[0]["name"].as_str().unwrap().to_string();
    assert_eq!(v[0]["is_permanent"], true);
    assert_eq!(v[1]["is_permanent"], false);
    let (start, stop) = (
        v[0]["start_segment"].as_str().unwrap().to_string(),
        v[0]["stop_segment"].as_str().unwrap().to_string(),
    );
    let out = walkeeper(&["delete", "--confirm", "retain", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let objects = backend.objects();
    assert!(
        has(
            &objects,
            &format!("basebackups_005/{perm}_backup_stop_sentinel.json")
        ),
        "{objects:?}"
    );
    for seg in [&start, &stop] {
        assert!(
            objects
                .iter()
                .any(|o| o.starts_with(&format!("wal_005/{seg}."))),
            "{seg} (the permanent backup's WAL) was deleted: {objects:?}"
        );
    }
    let out = walkeeper(&["delete", "--confirm", "everything"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(has(
        &backend.objects(),
        &format!("basebackups_005/{perm}_backup_stop_sentinel.json")
    ));
    primary.stop();
}
