//! Data safety of the WAL commands: wal-fetch never hands PostgreSQL another segment, wal-push
//! archives only whole segments of this cluster, look-ahead records never stand in for an
//! object that is not there, wal-fetch exits above 125 for every failure but "missing",
//! unimplemented encryption is refused, and killed calls leave nothing that breaks later ones.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

const SYNTHETIC_SYSID: u64 = 7_000_000_000_000_000_001;

fn put(pgdata: &Path, name: &str, bytes: &[u8]) -> String {
    std::fs::write(pgdata.join("pg_wal").join(name), bytes).unwrap();
    format!("pg_wal/{name}")
}

fn file_vars(archive: &Path) -> Vec<(String, String)> {
    vec![(
        "WALG_FILE_PREFIX".to_string(),
        format!("file://{}", archive.display()),
    )]
}

fn with(vars: &[(String, String)], k: &str, v: &str) -> Vec<(String, String)> {
    let mut out = vars.to_vec();
    out.push((k.to_string(), v.to_string()));
    out
}

fn code(o: &std::process::Output) -> Option<i32> {
    o.status.code()
}

/// walkeeper's temporary files in `dir`.
fn temps(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.starts_with('.') && n.contains(".walkeeper."))
                .collect()
        })
        .unwrap_or_default()
}

/// The system identifier in a data directory's pg_control.
fn sysid_of(data: &Path) -> u64 {
    let b = std::fs::read(data.join("global/pg_control")).unwrap();
    u64::from_le_bytes(b[0..8].try_into().unwrap())
}

fn record_sysid(archive: &Path, sysid: u64) {
    std::fs::create_dir_all(archive.join("sysids")).unwrap();
    std::fs::write(archive.join("sysids/sysid"), format!("{sysid}\n")).unwrap();
}

#[test]
fn real_segments_are_checked_against_name_and_cluster_in_both_directions() {
    let scratch = Scratch::new();
    let a = initdb(&scratch, "a");
    let b = initdb(&scratch, "b");
    let (sys_a, sys_b) = (sysid_of(&a), sysid_of(&b));
    assert_ne!(sys_a, sys_b);
    let seg = "000000010000000000000001";
    let archive = scratch.mkdir("archive");
    record_sysid(&archive, sys_a);
    let vars = file_vars(&archive);

    // Cluster A's own segment is archived.
    let out = run(&["wal-push", &format!("pg_wal/{seg}")], &vars, &a);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let stored = list_files(&archive);
    assert_eq!(
        stored,
        vec!["sysids/sysid".to_string(), format!("wal_005/{seg}.lz4")]
    );

    // Cluster B's segment under the same name: refused, naming both identifiers, nothing new.
    let out = run(&["wal-push", &format!("pg_wal/{seg}")], &vars, &b);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(2), "{err}");
    assert!(
        err.contains(&sys_a.to_string()) && err.contains(&sys_b.to_string()),
        "{err}"
    );
    assert_eq!(list_files(&archive), stored);

    // The object stored under the next segment's name holds segment 1's bytes: wal-fetch
    // exits 128 and writes nothing where PostgreSQL looks.
    let next = "000000010000000000000002";
    std::fs::copy(
        archive.join(format!("wal_005/{seg}.lz4")),
        archive.join(format!("wal_005/{next}.lz4")),
    )
    .unwrap();
    let restore = fake_pgdata(&scratch, "restore");
    let dest = restore.join("pg_wal/RECOVERYXLOG");
    let out = run(&["wal-fetch", next, "pg_wal/RECOVERYXLOG"], &vars, &restore);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(128), "{err}");
    assert!(err.contains("does not hold segment"), "{err}");
    assert!(!dest.exists());
    assert!(temps(&restore.join("pg_wal")).is_empty());

    // The named segment itself restores byte for byte.
    let out = run(&["wal-fetch", seg, "pg_wal/RECOVERYXLOG"], &vars, &restore);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(a.join("pg_wal").join(seg)).unwrap());
    std::fs::remove_file(&dest).unwrap();

    // An archive whose sysids/sysid names cluster B: A's segment is another cluster's WAL.
    record_sysid(&archive, sys_b);
    let out = run(&["wal-fetch", seg, "pg_wal/RECOVERYXLOG"], &vars, &restore);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(128), "{err}");
    assert!(err.contains("system identifier"), "{err}");
    assert!(!dest.exists());
}

#[test]
fn wal_push_refuses_files_that_are_not_whole_segments_of_this_cluster() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = file_vars(&archive);
    let name = "000000010000000000000021";
    let good = synthetic_segment(name, 21);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an empty file", Vec::new()),
        ("17 MiB", [good.clone(), vec![0u8; 1 << 20]].concat()),
        ("half a segment", good[..8 << 20].to_vec()),
        (
            "another segment's bytes",
            synthetic_segment("000000010000000000000022", 22),
        ),
        (
            "a later timeline's bytes",
            synthetic_segment("000000020000000000000021", 21),
        ),
    ];
    for (what, bytes) in cases {
        let p = put(&pgdata, name, &bytes);
        let out = run(&["wal-push", &p], &vars, &pgdata);
        let err = stderr(&out);
        assert_eq!(code(&out), Some(2), "{what}: {err}");
        assert!(err.contains("not archiving"), "{what}: {err}");
        assert!(
            list_files(&archive).is_empty(),
            "{what}: {:?}",
            list_files(&archive)
        );
    }

    // Another cluster's archive (its system identifier recorded): refused, naming both.
    record_sysid(&archive, 42);
    let p = put(&pgdata, name, &good);
    let out = run(&["wal-push", &p], &vars, &pgdata);
    let err = stderr(&out);
    assert_eq!(code(&out), Some(2), "{err}");
    assert!(
        err.contains(" 42") && err.contains(&SYNTHETIC_SYSID.to_string()),
        "{err}"
    );
    assert_eq!(list_files(&archive), vec!["sysids/sysid".to_string()]);

    // Known by the newest backup's sentinel instead.
    std::fs::remove_dir_all(archive.join("sysids")).unwrap();
    std::fs::create_dir_all(archive.join("basebackups_005")).unwrap();
    std::fs::write(
        archive.join("basebackups_005/base_000000010000000000000010_backup_stop_sentinel.json"),
        r#"{"LSN":"0/10000028","FinishLSN":"0/10000100","SystemIdentifier":42}"#,
    )
    .unwrap();
    let out = run(&["wal-push", &p], &vars, &pgdata);
    assert_eq!(code(&out), Some(2), "{}", stderr(&out));
    std::fs::remove_dir_all(archive.join("basebackups_005")).unwrap();

    // The real thing, and the files that keep their own rules, archive.
    let out = run(&["wal-push", &p], &vars, &pgdata);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let others = [
        "00000002.history",
        "000000010000000000000022.partial",
        "000000010000000000000021.00000028.backup",
    ];
    for n in others {
        let p = put(&pgdata, n, b"contents that are no segment header");
        let out = run(&["wal-push", &p], &vars, &pgdata);
        assert_eq!(code(&out), Some(0), "{n}: {}", stderr(&out));
    }
    let mut want: Vec<String> = std::iter::once(name)
        .chain(others)
        .map(|n| format!("wal_005/{n}.lz4"))
        .collect();
    want.sort();
    assert_eq!(list_files(&archive), want);
}

/// Pushes segment 0 with look-ahead 4 and waits until segments 1..=4 are recorded.
fn pushed_ahead(pgdata: &Path, vars: &[(String, String)], names: &[String]) {
    for n in names {
        put(pgdata, n, &synthetic_segment(n, 7));
        std::fs::write(pgdata.join(format!("pg_wal/archive_status/{n}.ready")), "").unwrap();
    }
    let vars = with(vars, "WALKEEPER_PUSH_LOOKAHEAD", "4");
    let out = run(
        &["wal-push", &format!("pg_wal/{}", names[0])],
        &vars,
        pgdata,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    wait_until("the look-ahead records", Duration::from_secs(60), || {
        names[1..].iter().all(|n| {
            pgdata
                .join(format!("pg_wal/.walkeeper/pushed/{n}"))
                .exists()
        })
    });
    // The uploader exits once nothing is left; wait for it so the test owns no process.
    wait_until(
        "the look-ahead uploader to exit",
        Duration::from_secs(60),
        || {
            let Ok(f) = std::fs::File::open(pgdata.join("pg_wal/.walkeeper/ahead.lock")) else {
                return true;
            };
            f.try_lock_shared().is_ok()
        },
    );
}

#[test]
fn look_ahead_records_never_answer_for_another_archive_or_a_removed_object() {
    let scratch = Scratch::new();
    let first = scratch.mkdir("first");
    let pgdata = fake_pgdata(&scratch, "data");
    let names: Vec<String> = (0x31..=0x35)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    let vars = with(&file_vars(&first), "WALKEEPER_PUSH_LOOKAHEAD", "4");
    pushed_ahead(&pgdata, &vars, &names);
    let key = |n: &str| format!("wal_005/{n}.lz4");
    assert_eq!(
        list_files(&first),
        names.iter().map(|n| key(n)).collect::<Vec<_>>()
    );

    // The prefix switched to an empty archive: the record is another archive's; upload.
    let second = scratch.mkdir("second");
    let vars2 = with(&file_vars(&second), "WALKEEPER_PUSH_LOOKAHEAD", "4");
    let out = run(
        &["wal-push", &format!("pg_wal/{}", names[1])],
        &vars2,
        &pgdata,
    );
    let err = stderr(&out);
    assert_eq!(code(&out), Some(0), "{err}");
    assert!(err.contains("outcome=\"uploaded\""), "{err}");
    assert!(list_files(&second).contains(&key(&names[1])));

    // The object removed behind walkeeper's back: the record does not stand in for it.
    std::fs::remove_file(first.join(key(&names[2]))).unwrap();
    let out = run(
        &["wal-push", &format!("pg_wal/{}", names[2])],
        &vars,
        &pgdata,
    );
    let err = stderr(&out);
    assert_eq!(code(&out), Some(0), "{err}");
    assert!(err.contains("outcome=\"uploaded\""), "{err}");
    let check = fake_pgdata(&scratch, "check-data");
    let out = run(
        &["wal-fetch", &names[2], "pg_wal/RECOVERYXLOG"],
        &file_vars(&first),
        &check,
    );
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        std::fs::read(check.join("pg_wal/RECOVERYXLOG")).unwrap()
            == std::fs::read(pgdata.join("pg_wal").join(&names[2])).unwrap()
    );

    // An intact record for this archive still answers, after one HEAD.
    let out = run(
        &["wal-push", &format!("pg_wal/{}", names[3])],
        &vars,
        &pgdata,
    );
    let err = stderr(&out);
    assert_eq!(code(&out), Some(0), "{err}");
    assert!(err.contains("outcome=\"already-archived\""), "{err}");
}

#[test]
fn every_wal_fetch_failure_but_missing_exits_128() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = file_vars(&archive);
    let seg = "000000010000000000000001";
    let fetch = |args: &[&str], vars: &[(String, String)]| run(args, vars, &pgdata);
    // Missing: exactly 74.
    let out = fetch(&["wal-fetch", seg, "pg_wal/RECOVERYXLOG"], &vars);
    assert_eq!(code(&out), Some(74), "{}", stderr(&out));

    let no_pg_wal = scratch.mkdir("not-a-datadir");
    let no_pg_wal = no_pg_wal.to_str().unwrap();
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(String, String)>);
    let cases: Vec<Case> = vec![
        (
            "an unknown option",
            vec!["wal-fetch", "--no-such-option", seg, "pg_wal/RECOVERYXLOG"],
            vars.clone(),
        ),
        ("a missing argument", vec!["wal-fetch", seg], vars.clone()),
        (
            "a missing data directory",
            vec![
                "wal-fetch",
                "--pgdata",
                "/nonexistent/data",
                seg,
                "pg_wal/RECOVERYXLOG",
            ],
            vars.clone(),
        ),
        (
            "a directory that is no data directory",
            vec![
                "wal-fetch",
                "--pgdata",
                no_pg_wal,
                seg,
                "pg_wal/RECOVERYXLOG",
            ],
            vars.clone(),
        ),
        (
            "an unusable setting",
            vec!["wal-fetch", seg, "pg_wal/RECOVERYXLOG"],
            with(&vars, "WALKEEPER_RETRY_TIMEOUT", "soon"),
        ),
        (
            "no archive at all",
            vec!["wal-fetch", seg, "pg_wal/RECOVERYXLOG"],
            Vec::new(),
        ),
        (
            "an unreadable envdir",
            vec![
                "--envdir",
                "/nonexistent/env",
                "wal-fetch",
                seg,
                "pg_wal/RECOVERYXLOG",
            ],
            vars.clone(),
        ),
    ];
    for (what, args, vars) in cases {
        let out = fetch(&args, &vars);
        assert_eq!(code(&out), Some(128), "{what}: {}", stderr(&out));
    }
}

#[test]
fn unimplemented_encryption_is_refused_by_name_and_nothing_is_stored() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = file_vars(&archive);
    let name = "000000010000000000000021";
    let p = put(&pgdata, name, &synthetic_segment(name, 1));
    // Archived once without encryption, so that a fetch would find it.
    let out = run(&["wal-push", &p], &vars, &pgdata);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let before = list_files(&archive);
    let other = put(
        &pgdata,
        "000000010000000000000022",
        &synthetic_segment("000000010000000000000022", 2),
    );
    // WALG_PGP_KEY is implemented: a value that is not a key is refused the same way.
    for var in [
        "WALG_PGP_KEY",
        "WALG_LIBSODIUM_KEY",
        "WALG_ENVELOPE_PGP_KEY",
    ] {
        let v = with(&vars, var, "key-material-that-must-not-be-logged");
        let checks: [(&[&str], i32); 4] = [
            (&["wal-push", &other], 2),
            (&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], 128),
            (&["backup-push", pgdata.to_str().unwrap()], 2),
            // The agent archives, heals and takes scheduled backups itself.
            (&["agent"], 2),
        ];
        for (args, want) in checks {
            let out = run(args, &v, &pgdata);
            let err = stderr(&out);
            assert_eq!(code(&out), Some(want), "{var} {args:?}: {err}");
            assert!(err.contains(var), "{var} {args:?}: {err}");
            assert!(!err.contains("key-material"), "{err}");
            assert_eq!(list_files(&archive), before, "{var} {args:?}");
        }
        assert!(!pgdata.join("pg_wal/RECOVERYXLOG").exists());
    }
}

/// A small tmpfs mounted on a directory, unmounted on drop (on failure too).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Starts `args`, waits until `appeared` holds (the call is mid-way), then kills it with
/// SIGKILL by its pid and reaps it. False if it ended on its own first.
fn kill_midway(mut cmd: Command, mut appeared: impl FnMut() -> bool) -> bool {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if appeared() {
            let _ = child.kill(); // SIGKILL to this child's pid
            let _ = child.wait();
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "the call neither wrote nor ended"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn killed_fetches_and_pushes_leave_nothing_that_breaks_later_calls() {
    let scratch = Scratch::new();
    let archive = scratch.mkdir("archive");
    let vars = file_vars(&archive);
    let source = fake_pgdata(&scratch, "source");
    let name = "000000010000000000000041";
    let bytes = synthetic_segment(name, 41);
    let p = put(&source, name, &bytes);

    // Pushes killed mid-way (their locks and records must not wedge later calls).
    for _ in 0..5 {
        let mut cmd = command(&["wal-push", &p], &vars, &source);
        cmd.env("WALKEEPER_LOG", "debug");
        let locks = source.join("pg_wal/.walkeeper/locks");
        kill_midway(cmd, || locks.join(name).exists());
    }
    let out = run(&["wal-push", &p], &vars, &source);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));

    // Fetches killed mid-way into a pg_wal on a 40 MiB tmpfs: two abandoned 16 MiB temporary
    // files and a third fetch would not fit, so every call must sweep what the killed left.
    let restore = fake_pgdata(&scratch, "restore");
    let pg_wal = restore.join("pg_wal");
    let _fs = Tmpfs::mount(&pg_wal, "40m");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let (mut killed_leaving_temp, mut attempts) = (0, 0);
    while killed_leaving_temp < 4 {
        attempts += 1;
        assert!(attempts <= 60, "could not kill a fetch mid-write");
        let _ = std::fs::remove_file(pg_wal.join("RECOVERYXLOG"));
        let cmd = command(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &restore);
        // Mid-write: a temporary file with some bytes in it.
        let wrote = kill_midway(cmd, || {
            temps(&pg_wal)
                .iter()
                .any(|t| std::fs::metadata(pg_wal.join(t)).is_ok_and(|m| m.len() > 0))
        });
        if wrote && !temps(&pg_wal).is_empty() {
            killed_leaving_temp += 1;
        }
        // The earlier leftovers were swept by this call: at most its own is left.
        assert!(temps(&pg_wal).len() <= 1, "{:?}", temps(&pg_wal));
    }
    let out = run(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &restore);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(pg_wal.join("RECOVERYXLOG")).unwrap() == bytes);
    assert!(temps(&pg_wal).is_empty(), "{:?}", temps(&pg_wal));
}
