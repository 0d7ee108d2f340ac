//! WAL-E's command lines, run exactly as WAL-E's users write them (issue 14, item 2).
//!
//! The archive is on file:// (and a real S3 server for the credential options); the backups
//! are taken from and restored into a real PostgreSQL 15.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::*;

fn seg(n: u64) -> String {
    format!("00000001{:08X}{:08X}", n / 256, n % 256)
}

/// A fake data directory with `names` in pg_wal, each with a `.ready` file.
fn pgdata_with_ready(scratch: &Scratch, names: &[String]) -> PathBuf {
    let pgdata = fake_pgdata(scratch, "data");
    for (i, n) in names.iter().enumerate() {
        std::fs::write(
            pgdata.join("pg_wal").join(n),
            synthetic_segment(n, 40 + i as u64),
        )
        .unwrap();
        std::fs::write(pgdata.join(format!("pg_wal/archive_status/{n}.ready")), "").unwrap();
    }
    pgdata
}

fn file_prefix(dir: &Path) -> String {
    format!("file://localhost{}", dir.display())
}

fn no_vars() -> Vec<(String, String)> {
    Vec::new()
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn terse_file_prefix_and_wal_push_pool_size_upload_the_ready_segments_quietly() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let names: Vec<String> = (0x21..0x25).map(seg).collect();
    let pgdata = pgdata_with_ready(&scratch, &names);
    let prefix = file_prefix(&archive);
    // The environment names another archive: the command line's prefix wins, as in WAL-E.
    let other = scratch.mkdir("other");
    let vars = vec![("WALE_FILE_PREFIX".to_string(), file_prefix(&other))];
    let out = run(
        &[
            "--terse",
            "--file-prefix",
            &prefix,
            "wal-push",
            "--pool-size",
            "4",
            &format!("pg_wal/{}", names[0]),
        ],
        &vars,
        &pgdata,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("INFO"),
        "--terse logs only warnings: {}",
        stderr(&out)
    );
    // The three other .ready segments follow in the background (pool size 4 = this one + 3).
    let want: Vec<String> = names.iter().map(|n| format!("wal_005/{n}.lz4")).collect();
    wait_until("the pool's uploads", Duration::from_secs(60), || {
        list_files(&archive) == want
    });
    assert!(list_files(&other).is_empty());

    // Without --terse, the same command logs its outcome; a pool of 1 uploads only its own.
    let names2: Vec<String> = (0x31..0x33).map(seg).collect();
    let scratch2 = Scratch::new();
    let pgdata2 = pgdata_with_ready(&scratch2, &names2);
    let out = run(
        &[
            "--file-prefix",
            &prefix,
            "wal-push",
            "-p",
            "1",
            &format!("pg_wal/{}", names2[0]),
        ],
        &no_vars(),
        &pgdata2,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("outcome=\"uploaded\""),
        "{}",
        stderr(&out)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(!list_files(&archive).contains(&format!("wal_005/{}.lz4", names2[1])));
}

#[test]
fn every_wal_e_prefix_option_names_the_archive() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let name = seg(0x41);
    let pgdata = pgdata_with_ready(&scratch, std::slice::from_ref(&name));
    let push = |opt: &str, value: &str| {
        run(
            &[opt, value, "wal-push", &format!("pg_wal/{name}")],
            &no_vars(),
            &pgdata,
        )
    };
    let out = push("--file-prefix", &file_prefix(&archive));
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(list_files(&archive), vec![format!("wal_005/{name}.lz4")]);
    // The other prefixes are taken as the archive too: a file:// URL works under any of them.
    for opt in ["--s3-prefix", "--wabs-prefix", "--gs-prefix"] {
        let out = push(opt, &file_prefix(&archive));
        assert_eq!(code(&out), Some(0), "{opt}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("already-archived"),
            "{opt}: {}",
            stderr(&out)
        );
    }
    // Two different prefixes on one command line are refused.
    let out = run(
        &[
            "--file-prefix",
            &file_prefix(&archive),
            "--s3-prefix",
            "s3://bucket/x",
            "wal-push",
            &format!("pg_wal/{name}"),
        ],
        &no_vars(),
        &pgdata,
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--s3-prefix"), "{}", stderr(&out));
}

#[test]
fn gpg_key_id_missing_from_the_keyring_is_refused_by_name_and_nothing_is_stored() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    // An empty keyring: the key cannot be exported, so nothing can be encrypted to it.
    let home = scratch.mkdir("gnupg");
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let gnupg = vec![("GNUPGHOME".to_string(), home.display().to_string())];
    let name = seg(0x51);
    let pgdata = pgdata_with_ready(&scratch, std::slice::from_ref(&name));
    let prefix = file_prefix(&archive);
    let out = run(
        &[
            "--gpg-key-id",
            "DEADBEEF",
            "--file-prefix",
            &prefix,
            "wal-push",
            &format!("pg_wal/{name}"),
        ],
        &gnupg,
        &pgdata,
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("DEADBEEF"), "{}", stderr(&out));
    assert!(list_files(&archive).is_empty());
    // For restore_command the refusal is fatal (128), never "not available".
    let out = run(
        &[
            "--gpg-key-id",
            "DEADBEEF",
            "--file-prefix",
            &prefix,
            "wal-fetch",
            &name,
            "pg_wal/RECOVERYXLOG",
        ],
        &gnupg,
        &pgdata,
    );
    assert_eq!(code(&out), Some(128), "{}", stderr(&out));
}

/// Pushes `names` from a source data directory into `prefix`.
fn push_all(scratch: &Scratch, prefix: &str, names: &[String]) -> PathBuf {
    let src = fake_pgdata(scratch, "src");
    for (i, n) in names.iter().enumerate() {
        std::fs::write(
            src.join("pg_wal").join(n),
            synthetic_segment(n, 60 + i as u64),
        )
        .unwrap();
        let out = run(
            &["--file-prefix", prefix, "wal-push", &format!("pg_wal/{n}")],
            &no_vars(),
            &src,
        );
        assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    }
    src
}

#[test]
fn gitlab_wal_fetch_p_4_prefetches_the_next_four_segments() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let prefix = file_prefix(&archive);
    let names: Vec<String> = (0x61..0x66).map(seg).collect();
    let src = push_all(&scratch, &prefix, &names);
    let dst = fake_pgdata(&scratch, "dst");
    // GitLab's restore_command: wal-e wal-fetch -p 4 "%f" "%p"
    let out = run(
        &[
            "--file-prefix",
            &prefix,
            "wal-fetch",
            "-p",
            "4",
            &names[0],
            "pg_wal/RECOVERYXLOG",
        ],
        &no_vars(),
        &dst,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let pre = dst.join("pg_wal/.walkeeper/prefetch");
    wait_until("four prefetched segments", Duration::from_secs(60), || {
        names[1..].iter().all(|n| pre.join(n).exists())
    });
    let out = run(
        &[
            "--file-prefix",
            &prefix,
            "wal-fetch",
            "--prefetch",
            "0",
            &names[4],
            "pg_wal/RECOVERYXLOG",
        ],
        &no_vars(),
        &dst,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("from=\"prefetch\""),
        "{}",
        stderr(&out)
    );
    assert!(
        std::fs::read(dst.join("pg_wal/RECOVERYXLOG")).unwrap()
            == std::fs::read(src.join("pg_wal").join(&names[4])).unwrap()
    );
}

#[test]
fn wal_prefetch_in_wal_e_form_serves_the_next_wal_fetch() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let prefix = file_prefix(&archive);
    let names: Vec<String> = (0x71..0x73).map(seg).collect();
    let src = push_all(&scratch, &prefix, &names);
    let dst = fake_pgdata(&scratch, "dst");
    // wal-e wal-prefetch BASE_DIRECTORY SEGMENT, BASE_DIRECTORY being pg_wal.
    let base = dst.join("pg_wal");
    let out = run(
        &[
            "--file-prefix",
            &prefix,
            "wal-prefetch",
            base.to_str().unwrap(),
            &names[1],
        ],
        &no_vars(),
        scratch.path(),
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(dst
        .join("pg_wal/.walkeeper/prefetch")
        .join(&names[1])
        .exists());
    assert!(!dst
        .join("pg_wal/.walkeeper/prefetch")
        .join(&names[0])
        .exists());
    let out = run(
        &[
            "--file-prefix",
            &prefix,
            "wal-fetch",
            &names[1],
            "pg_wal/RECOVERYXLOG",
        ],
        &no_vars(),
        &dst,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("from=\"prefetch\""),
        "{}",
        stderr(&out)
    );
    assert!(
        std::fs::read(dst.join("pg_wal/RECOVERYXLOG")).unwrap()
            == std::fs::read(src.join("pg_wal").join(&names[1])).unwrap()
    );
    // A segment the archive lacks: WAL-E's prefetch fails; nothing is left behind.
    let out = run(
        &[
            "--file-prefix",
            &prefix,
            "wal-prefetch",
            base.to_str().unwrap(),
            &seg(0x7F),
        ],
        &no_vars(),
        scratch.path(),
    );
    assert_ne!(code(&out), Some(0), "{}", stderr(&out));
    assert!(!dst
        .join("pg_wal/.walkeeper/prefetch")
        .join(seg(0x7F))
        .exists());
}

#[test]
fn version_prints_the_version_alone() {
    let scratch = Scratch::new();
    let out = run(&["version"], &no_vars(), scratch.path());
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn aws_access_key_id_on_argv_takes_its_secret_from_the_environment() {
    let scratch = Scratch::new();
    let s3 = Backend::s3();
    let name = seg(0x81);
    let pgdata = pgdata_with_ready(&scratch, std::slice::from_ref(&name));
    let right_key = s3
        .vars()
        .into_iter()
        .find(|(k, _)| k == "AWS_ACCESS_KEY_ID")
        .map(|(_, v)| v)
        .unwrap();
    // The environment's key id is wrong; -k gives the right one, the secret stays in the
    // environment.
    let vars: Vec<(String, String)> = s3
        .vars()
        .into_iter()
        .map(|(k, v)| {
            if k == "AWS_ACCESS_KEY_ID" {
                (k, "WRONGKEY".to_string())
            } else {
                (k, v)
            }
        })
        .collect();
    let path = format!("pg_wal/{name}");
    let out = run(&["wal-push", &path], &vars, &pgdata);
    assert_ne!(
        code(&out),
        Some(0),
        "the wrong key id must fail: {}",
        stderr(&out)
    );
    let out = run(&["-k", &right_key, "wal-push", &path], &vars, &pgdata);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(s3.objects(), vec![format!("wal_005/{name}.lz4")]);
    let out = run(
        &["--aws-access-key-id", &right_key, "wal-push", &path],
        &vars,
        &pgdata,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    // --aws-instance-profile ignores the environment's keys and asks the instance metadata
    // service (here a closed loopback port): it fails rather than use them.
    let mut right = s3.vars();
    right.push((
        "AWS_METADATA_ENDPOINT".into(),
        format!("http://127.0.0.1:{}", free_port()),
    ));
    let out = run(
        &["--aws-instance-profile", "wal-push", &path],
        &right,
        &pgdata,
    );
    assert_ne!(code(&out), Some(0), "{}", stderr(&out));
    let mut env_profile = right.clone();
    env_profile.push(("AWS_INSTANCE_PROFILE".into(), "1".into()));
    let out = run(&["wal-push", &path], &env_profile, &pgdata);
    assert_ne!(code(&out), Some(0), "{}", stderr(&out));
    let out = run(&["wal-push", &path], &right, &pgdata);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    // As in WAL-E, the two are exclusive.
    let out = run(
        &[
            "-k",
            &right_key,
            "--aws-instance-profile",
            "wal-push",
            &path,
        ],
        &right,
        &pgdata,
    );
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
}

/// A hand-written WAL-E backup (sentinel and one partition) starting in segment `start`.
fn wal_e_backup(archive: &Path, start: u64, offset: u32, stop: u64) -> String {
    let name = format!("base_{}_{offset:08}", seg(start));
    let put = |key: &str, bytes: &[u8]| {
        let p = archive.join(key);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    };
    put(
        &format!("basebackups_005/{name}/tar_partitions/part_00000000.tar.lzo"),
        b"part",
    );
    let sentinel = serde_json::json!({
        "wal_segment_backup_stop": seg(stop),
        "wal_segment_offset_backup_stop": "00000312",
        "expanded_size_bytes": 12345,
    });
    put(
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
        &serde_json::to_vec(&sentinel).unwrap(),
    );
    name
}

#[test]
fn backup_list_query_and_delete_work_on_wal_e_named_backups() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let prefix = file_prefix(&archive);
    let old = wal_e_backup(&archive, 0x10, 40, 0x11);
    let mid = wal_e_backup(&archive, 0x20, 40, 0x21);
    let new = wal_e_backup(&archive, 0x30, 40, 0x31);
    for n in (0x0F..0x33).map(seg) {
        let p = archive.join(format!("wal_005/{n}.lzo"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"segment").unwrap();
    }
    std::fs::create_dir_all(archive.join("wal_004")).unwrap();
    std::fs::write(archive.join(format!("wal_004/{}.lzo", seg(1))), b"old").unwrap();
    std::fs::create_dir_all(archive.join("basebackups_004/base_x")).unwrap();
    std::fs::write(archive.join("basebackups_004/base_x/part"), b"old").unwrap();
    let wk = |args: &[&str]| {
        let mut a = vec!["--file-prefix", prefix.as_str()];
        a.extend_from_slice(args);
        run(&a, &no_vars(), scratch.path())
    };
    let lines = |o: &Output| -> Vec<String> {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(String::from)
            .collect()
    };

    let out = wk(&["backup-list"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(lines(&out).len(), 4, "{:?}", lines(&out));
    assert!(lines(&out)[0].starts_with("name\tlast_modified\texpanded_size_bytes"));
    let out = wk(&["backup-list", "LATEST"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let l = lines(&out);
    assert_eq!(l.len(), 2, "{l:?}");
    assert!(l[1].starts_with(&format!("{new}\t")), "{l:?}");
    let out = wk(&["backup-list", "--detail", &mid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let l = lines(&out);
    assert_eq!(l.len(), 2, "{l:?}");
    let cols: Vec<&str> = l[1].split('\t').collect();
    assert_eq!(cols[0], mid);
    assert_eq!(cols[5], seg(0x21), "{cols:?}");
    let out = wk(&["backup-list", &format!("base_{}_00000099", seg(0x20))]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(lines(&out).len(), 1, "an unknown name lists nothing");
    let out = wk(&["backup-list", "yesterday"]);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("invalid backup query"),
        "{}",
        stderr(&out)
    );

    // --dry-run wins over --confirm, as in WAL-E.
    let before = list_files(&archive);
    let out = wk(&["delete", "--dry-run", "--confirm", "before", &mid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would delete"));
    let out = wk(&["delete", "-n", "--confirm", "retain", "1"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert_eq!(list_files(&archive), before);

    let out = wk(&["delete", "--confirm", "before", &mid]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let now = list_files(&archive);
    assert!(!now.iter().any(|k| k.contains(&old)), "{now:?}");
    assert!(now.iter().any(|k| k.contains(&mid)), "{now:?}");
    assert!(
        !now.contains(&format!("wal_005/{}.lzo", seg(0x1F))),
        "{now:?}"
    );
    assert!(
        now.contains(&format!("wal_005/{}.lzo", seg(0x20))),
        "{now:?}"
    );

    let out = wk(&["delete", "--confirm", "retain", "1"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let now = list_files(&archive);
    assert!(!now.iter().any(|k| k.contains(&mid)), "{now:?}");
    assert!(now.iter().any(|k| k.contains(&new)), "{now:?}");

    // old-versions removes WAL-E's obsolete layouts only.
    let out = wk(&["delete", "old-versions"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would delete wal_004/"));
    assert!(archive.join("wal_004").read_dir().unwrap().next().is_some());
    let out = wk(&["delete", "--confirm", "old-versions"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let now = list_files(&archive);
    assert!(
        !now.iter()
            .any(|k| k.starts_with("wal_004/") || k.starts_with("basebackups_004/")),
        "{now:?}"
    );
    assert!(now.iter().any(|k| k.contains(&new)), "{now:?}");

    let out = wk(&["delete", "--confirm", "everything"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        list_files(&archive).is_empty(),
        "{:?}",
        list_files(&archive)
    );
}

/// A primary archiving through WAL-E's command line (`--file-prefix … wal-push %p`).
struct Primary {
    scratch: Scratch,
    prefix: String,
    pg: Pg,
}

impl Primary {
    fn start() -> Primary {
        let scratch = Scratch::new();
        let archive = scratch.mkdir("archive");
        chown_pg_recursive(&archive);
        let prefix = file_prefix(&archive);
        let wk = walkeeper();
        let mut pg = Pg::init(
            &scratch,
            "primary",
            &format!(
                "wal_level = replica\narchive_mode = on\narchive_command = '{wk} --terse --file-prefix {prefix} wal-push %p'\n"
            ),
        );
        pg.start();
        Primary {
            scratch,
            prefix,
            pg,
        }
    }

    /// walkeeper as postgres, with WAL-E's prefix option and the server's connection.
    fn wk(&self, args: &[&str]) -> Output {
        let mut c = as_postgres(walkeeper());
        c.args(["--file-prefix", &self.prefix]).args(args);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGHOST", &self.pg.sock)
            .env("PGPORT", self.pg.port.to_string())
            .env("PGUSER", "postgres")
            .current_dir(self.scratch.path());
        c.output().unwrap()
    }

    /// Starts a server on a fetched data directory with restore_command in WAL-E's form, and
    /// waits until recovery ends.
    fn start_restored(&self, name: &str, data: PathBuf) -> Pg {
        std::fs::write(data.join("recovery.signal"), "").unwrap();
        chown_pg_recursive(&data);
        let wk = walkeeper();
        let mut pg = Pg::configure(
            &self.scratch,
            name,
            data,
            &format!(
                "archive_mode = off\nrestore_command = '{wk} --file-prefix {} wal-fetch -p 4 \"%f\" \"%p\"'\nrecovery_target_action = promote\n",
                self.prefix
            ),
        );
        pg.start();
        wait_until("recovery to finish", Duration::from_secs(300), || {
            pg.psql("SELECT pg_is_in_recovery()") == "f"
        });
        pg
    }
}

#[test]
fn backup_push_and_fetch_with_pool_size_and_read_rate_limit_restore_the_rows() {
    let p = Primary::start();
    p.pg.psql("CREATE TABLE t AS SELECT generate_series(1, 5000) AS v");
    let data = p.pg.data.to_str().unwrap().to_string();
    let out = p.wk(&[
        "backup-push",
        "--pool-size",
        "3",
        "--cluster-read-rate-limit",
        "200000000",
        &data,
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    p.pg.psql("INSERT INTO t SELECT generate_series(5001, 6000)");
    p.pg.switch_and_wait_archived();
    let target = p.scratch.path().join("restored");
    let out = p.wk(&[
        "backup-fetch",
        "--pool-size",
        "3",
        target.to_str().unwrap(),
        "LATEST",
    ]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let restored = p.start_restored("restored", target);
    assert_eq!(
        restored.psql("SELECT count(*), sum(v) FROM t"),
        "6000|18003000"
    );
}

#[test]
fn backup_push_while_offline_of_a_stopped_cluster_restores_its_rows() {
    let mut p = Primary::start();
    p.pg.psql("CREATE TABLE t AS SELECT generate_series(1, 3000) AS v");
    let data = p.pg.data.to_str().unwrap().to_string();
    // A running server is refused.
    let out = p.wk(&["backup-push", "--while-offline", &data]);
    assert_ne!(code(&out), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("postmaster.pid"), "{}", stderr(&out));

    p.pg.stop();
    let out = p.wk(&["backup-push", "--while-offline", &data]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let out = p.wk(&["backup-list", "--detail", "LATEST"]);
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(listed.lines().count(), 2, "{listed}");

    // 1. The copy starts by itself, as the stopped server would have: no recovery, no archive.
    let plain = p.scratch.path().join("plain");
    let out = p.wk(&["backup-fetch", plain.to_str().unwrap(), "LATEST"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(!plain.join("backup_label").exists());
    chown_pg_recursive(&plain);
    let mut copy = Pg::configure(&p.scratch, "plain", plain, "archive_mode = off\n");
    copy.start();
    assert_eq!(copy.psql("SELECT count(*), sum(v) FROM t"), "3000|4501500");
    copy.stop();

    // 2. Archive recovery from it replays the WAL the original wrote after its restart.
    p.pg.start();
    p.pg.psql("INSERT INTO t SELECT generate_series(3001, 4000)");
    p.pg.switch_and_wait_archived();
    let target = p.scratch.path().join("restored");
    let out = p.wk(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let restored = p.start_restored("restored", target);
    assert_eq!(
        restored.psql("SELECT count(*), sum(v) FROM t"),
        "4000|8002000"
    );
}

#[test]
fn backup_push_while_offline_of_a_stopped_standby_restores_its_rows() {
    let p = Primary::start();
    p.pg.psql("CREATE TABLE t AS SELECT generate_series(1, 2000) AS v");
    // A streaming standby, as WAL-E's documentation has it: stopped for the backup.
    let standby_dir = p.scratch.path().join("standby");
    let out = pg_tool("pg_basebackup")
        .arg("-h")
        .arg(&p.pg.sock)
        .args([
            "-p",
            &p.pg.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-c",
            "fast",
            "-D",
        ])
        .arg(&standby_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_basebackup: {}", stderr(&out));
    let mut standby = Pg::configure(&p.scratch, "standby", standby_dir, "archive_mode = off\n");
    standby.start();
    p.pg.psql("INSERT INTO t SELECT generate_series(2001, 3000)");
    let lsn = p.pg.psql("SELECT pg_current_wal_lsn()");
    wait_until("the standby to replay", Duration::from_secs(60), || {
        standby.psql(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'")) == "t"
    });
    standby.stop();
    let data = standby.data.to_str().unwrap().to_string();
    let out = p.wk(&["backup-push", "--while-offline", &data]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    // The copy starts and recovers from the archive, with every row the standby had.
    p.pg.switch_and_wait_archived();
    let target = p.scratch.path().join("from-standby");
    let out = p.wk(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let _ = std::fs::remove_file(target.join("standby.signal"));
    let restored = p.start_restored("from-standby", target);
    assert_eq!(
        restored.psql("SELECT count(*), sum(v) FROM t"),
        "3000|4501500"
    );
}
