//! wal-push and wal-fetch against a real PostgreSQL 15, on file://, on a real S3 server and on a
//! real OpenStack Swift and on fake-gcs-server (gs://).

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::*;

/// PostgreSQL archives through walkeeper under pgbench load; every archived file comes back
/// byte-identical; a second server recovers from a base copy plus the archive alone, reaches the
/// same rows, probes timelines through restore_command and promotes onto timeline 2.
fn archive_and_recover(backend: Backend, scratch: &Scratch) {
    let env = backend.envdir(
        scratch,
        &[
            ("WALKEEPER_PREFETCH", "3"),
            ("WALKEEPER_PUSH_LOOKAHEAD", "4"),
        ],
    );
    let copies = scratch.mkdir("copies");
    let wk = walkeeper();
    let mut primary = Pg::init(
        scratch,
        "primary",
        &format!(
            "wal_level = replica\narchive_mode = on\narchive_command = '{wk} --envdir {env} wal-push %p && cp %p {copies}/%f'\n",
            env = env.display(),
            copies = copies.display()
        ),
    );
    primary.start();
    let base = scratch.path().join("restored");
    let out = pg_tool("pg_basebackup")
        .arg("-h")
        .arg(&primary.sock)
        .args([
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-X",
            "none",
            "-c",
            "fast",
            "-D",
        ])
        .arg(&base)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    primary.pgbench(&["-i", "-s", "3", "-q"]);
    primary.switch_and_wait_archived();
    primary.pgbench(&["-c", "2", "-t", "1500"]);
    primary.switch_and_wait_archived();
    primary.psql("CREATE TABLE marker AS SELECT 42 AS answer");
    let last = primary.switch_and_wait_archived();
    let history_rows = primary.psql("SELECT count(*) FROM pgbench_history");
    let accounts_sum = primary.psql("SELECT sum(abalance) FROM pgbench_accounts");
    primary.stop();

    // Every archived file is stored once and comes back byte-identical.
    let names: Vec<String> = list_files(&copies);
    assert!(
        names.len() >= 4,
        "expected several archived segments, got {names:?}"
    );
    assert!(names.contains(&last));
    let objects = backend.objects();
    let fetch_dir = fake_pgdata(scratch, "fetchcheck");
    for name in &names {
        assert!(
            objects.contains(&format!("wal_005/{name}.lz4")),
            "{name} not stored as wal_005/{name}.lz4: {objects:?}"
        );
        let out = run(
            &[
                "--envdir",
                env.to_str().unwrap(),
                "wal-fetch",
                name,
                "pg_wal/RECOVERYXLOG",
            ],
            &[],
            &fetch_dir,
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "wal-fetch {name}: {}",
            stderr(&out)
        );
        let got = std::fs::read(fetch_dir.join("pg_wal/RECOVERYXLOG")).unwrap();
        let want = std::fs::read(copies.join(name)).unwrap();
        assert!(got == want, "{name} differs after the round trip");
    }

    // A second server recovers from the archive alone.
    std::fs::write(base.join("recovery.signal"), "").unwrap();
    chown_pg_recursive(&base);
    let mut restored = Pg::configure(
        scratch,
        "restored",
        base,
        &format!(
            "archive_mode = on\narchive_command = '{wk} --envdir {env} wal-push %p'\nrestore_command = '{wk} --envdir {env} wal-fetch %f %p'\nrecovery_target_action = promote\n",
            env = env.display()
        ),
    );
    restored.start();
    wait_until("recovery to finish", Duration::from_secs(300), || {
        restored.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_history"),
        history_rows
    );
    assert_eq!(
        restored.psql("SELECT sum(abalance) FROM pgbench_accounts"),
        accounts_sum
    );
    assert_eq!(restored.psql("SELECT answer FROM marker"), "42");
    // The "missing" exit code ended recovery; timeline probing found no 00000002.history, so the
    // server promoted onto timeline 2 and archived its history file.
    assert_eq!(
        restored.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    restored.psql("SELECT pg_switch_wal()");
    wait_until(
        "00000002.history in the archive",
        Duration::from_secs(60),
        || {
            backend
                .objects()
                .contains(&"wal_005/00000002.history.lz4".to_string())
        },
    );
    let log = restored.log_text();
    assert!(
        log.contains("restored log file"),
        "no WAL came from the archive:\n{log}"
    );
    restored.stop();
}

#[test]
fn postgres_archives_and_recovers_through_file_store() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    archive_and_recover(backend, &scratch);
}

#[test]
fn postgres_archives_and_recovers_through_s3_store() {
    let scratch = Scratch::new();
    archive_and_recover(Backend::s3(), &scratch);
}

#[test]
fn postgres_archives_and_recovers_through_swift_store() {
    let scratch = Scratch::new();
    archive_and_recover(Backend::swift(), &scratch);
}

#[test]
fn concurrent_pushes_of_one_segment_upload_once_to_swift_store() {
    concurrent_push(Backend::swift());
}

#[test]
fn different_content_under_an_archived_name_is_refused_on_swift_store() {
    overwrite_refusal(Backend::swift());
}

#[test]
fn absent_segment_and_history_exit_with_the_missing_code_on_swift_store() {
    missing_files(Backend::swift());
}

#[test]
fn postgres_archives_and_recovers_through_gcs_store() {
    let scratch = Scratch::new();
    archive_and_recover(Backend::gcs(), &scratch);
}

#[test]
fn concurrent_pushes_of_one_segment_upload_once_to_gcs_store() {
    concurrent_push(Backend::gcs());
}

#[test]
fn different_content_under_an_archived_name_is_refused_on_gcs_store() {
    overwrite_refusal(Backend::gcs());
}

#[test]
fn absent_segment_and_history_exit_with_the_missing_code_on_gcs_store() {
    missing_files(Backend::gcs());
}

fn put_segment(pgdata: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(pgdata.join("pg_wal").join(name), bytes).unwrap();
}

/// Two wal-push calls for one segment at once: one uploads, the other finds it archived.
fn concurrent_push(backend: Backend) {
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let name = "000000010000000000000011";
    put_segment(&pgdata, name, &synthetic_segment(name, 1));
    let vars = backend.vars();
    let path = format!("pg_wal/{name}");
    let spawn = || {
        command(&["wal-push", &path], &vars, &pgdata)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert_eq!(
        (a.status.code(), b.status.code()),
        (Some(0), Some(0)),
        "{}\n{}",
        stderr(&a),
        stderr(&b)
    );
    let logs = [stderr(&a), stderr(&b)];
    let uploaded = logs
        .iter()
        .filter(|l| l.contains("outcome=\"uploaded\""))
        .count();
    let skipped = logs
        .iter()
        .filter(|l| l.contains("outcome=\"already-archived\""))
        .count();
    assert_eq!((uploaded, skipped), (1, 1), "{logs:?}");
    assert_eq!(backend.objects(), vec![format!("wal_005/{name}.lz4")]);
}

#[test]
fn concurrent_pushes_of_one_segment_upload_once_to_file_store() {
    let scratch = Scratch::new();
    concurrent_push(Backend::file(&scratch));
}

#[test]
fn concurrent_pushes_of_one_segment_upload_once_to_s3_store() {
    concurrent_push(Backend::s3());
}

/// A segment's backup history file (`<segment>.<offset>.backup`) archived before the segment
/// itself (a standby with archive_mode=always sees them in that order) is not mistaken for the
/// segment: the segment is archived, and pushing it again finds it identical.
fn segment_after_its_backup_file(backend: Backend) {
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let name = "000000010000000000000005";
    let backup_file = format!("{name}.00000028.backup");
    put_segment(&pgdata, &backup_file, b"START WAL LOCATION: 0/5000028\n");
    put_segment(&pgdata, name, &synthetic_segment(name, 5));
    let vars = backend.vars();
    for file in [backup_file.as_str(), name, name] {
        let out = run(&["wal-push", &format!("pg_wal/{file}")], &vars, &pgdata);
        assert_eq!(out.status.code(), Some(0), "{file}: {}", stderr(&out));
    }
    assert_eq!(
        backend.objects(),
        vec![
            format!("wal_005/{backup_file}.lz4"),
            format!("wal_005/{name}.lz4")
        ]
    );
}

#[test]
fn a_segment_archived_after_its_backup_history_file_is_not_confused_with_it_on_file_store() {
    let scratch = Scratch::new();
    segment_after_its_backup_file(Backend::file(&scratch));
}

#[test]
fn a_segment_archived_after_its_backup_history_file_is_not_confused_with_it_on_s3_store() {
    segment_after_its_backup_file(Backend::s3());
}

/// Patroni's pre-rewind archive run and pg_rewind run the commands outside the data directory,
/// with absolute `<PGDATA>/pg_wal/<file>` paths: those name their data directory.
#[test]
fn absolute_pg_wal_paths_work_from_any_working_directory() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let pgdata = fake_pgdata(&scratch, "data");
    let name = "000000010000000000000021";
    put_segment(&pgdata, name, &synthetic_segment(name, 21));
    let elsewhere = scratch.mkdir("elsewhere");
    let seg = pgdata.join("pg_wal").join(name);
    let out = run(
        &["wal-push", seg.to_str().unwrap()],
        &backend.vars(),
        &elsewhere,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let dest = pgdata.join("pg_wal/RECOVERYXLOG");
    let out = run(
        &["wal-fetch", name, dest.to_str().unwrap()],
        &backend.vars(),
        &elsewhere,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(&dest).unwrap() == std::fs::read(&seg).unwrap());
}

/// Identical re-push: success, no upload. Different content: exit 3, the stored object unchanged.
fn overwrite_refusal(backend: Backend) {
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = backend.vars();
    let seg = "000000010000000000000021";
    let original = synthetic_segment(seg, 2);
    put_segment(&pgdata, seg, &original);
    let push = |p: &str| run(&["wal-push", p], &vars, &pgdata);
    let seg_path = format!("pg_wal/{seg}");
    assert_eq!(push(&seg_path).status.code(), Some(0));
    let again = push(&seg_path);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        stderr(&again).contains("outcome=\"already-archived\""),
        "{}",
        stderr(&again)
    );

    put_segment(&pgdata, seg, &synthetic_segment(seg, 3));
    let refused = push(&seg_path);
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let msg = stderr(&refused);
    assert!(
        msg.contains(seg) && msg.contains("refusing to overwrite") && msg.contains("sha256"),
        "{msg}"
    );

    let fetched = run(&["wal-fetch", seg, "pg_wal/RECOVERYXLOG"], &vars, &pgdata);
    assert_eq!(fetched.status.code(), Some(0), "{}", stderr(&fetched));
    assert!(std::fs::read(pgdata.join("pg_wal/RECOVERYXLOG")).unwrap() == original);

    let hist = "00000002.history";
    put_segment(
        &pgdata,
        hist,
        b"1\t0/3000000\tno recovery target specified\n",
    );
    assert_eq!(push(&format!("pg_wal/{hist}")).status.code(), Some(0));
    put_segment(&pgdata, hist, b"1\t0/5000000\tsplit brain\n");
    let refused = push(&format!("pg_wal/{hist}"));
    assert_eq!(refused.status.code(), Some(3), "{}", stderr(&refused));
    let fetched = run(
        &["wal-fetch", hist, "pg_wal/RECOVERYHISTORY"],
        &vars,
        &pgdata,
    );
    assert_eq!(fetched.status.code(), Some(0));
    assert_eq!(
        std::fs::read(pgdata.join("pg_wal/RECOVERYHISTORY")).unwrap(),
        b"1\t0/3000000\tno recovery target specified\n"
    );
}

#[test]
fn different_content_under_an_archived_name_is_refused_on_file_store() {
    let scratch = Scratch::new();
    overwrite_refusal(Backend::file(&scratch));
}

#[test]
fn different_content_under_an_archived_name_is_refused_on_s3_store() {
    overwrite_refusal(Backend::s3());
}

fn missing_files(backend: Backend) {
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = backend.vars();
    for name in ["000000010000000000000099", "00000009.history"] {
        let out = run(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &pgdata);
        assert_eq!(out.status.code(), Some(74), "{name}: {}", stderr(&out));
        assert!(!pgdata.join("pg_wal/RECOVERYXLOG").exists());
    }
}

#[test]
fn absent_segment_and_history_exit_with_the_missing_code_on_file_store() {
    let scratch = Scratch::new();
    missing_files(Backend::file(&scratch));
}

#[test]
fn absent_segment_and_history_exit_with_the_missing_code_on_s3_store() {
    missing_files(Backend::s3());
}

#[test]
fn storage_outage_is_fatal_for_restore_never_missing() {
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let seg = "000000010000000000000031";
    put_segment(&pgdata, seg, &synthetic_segment(seg, 4));

    // A server that refuses connections.
    let mut backend = Backend::s3();
    let mut vars = backend.vars();
    if let Backend::S3(s3) = &mut backend {
        assert_eq!(
            run(&["wal-push", &format!("pg_wal/{seg}")], &vars, &pgdata)
                .status
                .code(),
            Some(0)
        );
        s3.stop();
    }
    vars.retain(|(k, _)| k != "WALKEEPER_RETRY_TIMEOUT");
    vars.push(("WALKEEPER_RETRY_TIMEOUT".into(), "3".into()));
    for name in [seg, "000000010000000000000032", "00000002.history"] {
        let started = Instant::now();
        let out = run(&["wal-fetch", name, "pg_wal/RECOVERYXLOG"], &vars, &pgdata);
        assert_eq!(out.status.code(), Some(128), "{name}: {}", stderr(&out));
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "took {:?}",
            started.elapsed()
        );
        assert!(!pgdata.join("pg_wal/RECOVERYXLOG").exists());
    }
}

#[test]
fn zstd_objects_are_found_whatever_codec_is_configured() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let pgdata = fake_pgdata(&scratch, "data");
    let seg = "000000010000000000000041";
    let bytes = synthetic_segment(seg, 5);
    put_segment(&pgdata, seg, &bytes);
    let mut vars = backend.vars();
    vars.push(("WALG_COMPRESSION_METHOD".into(), "zstd".into()));
    assert_eq!(
        run(&["wal-push", &format!("pg_wal/{seg}")], &vars, &pgdata)
            .status
            .code(),
        Some(0)
    );
    assert_eq!(backend.objects(), vec![format!("wal_005/{seg}.zst")]);
    let lz4_vars = backend.vars();
    let out = run(
        &["wal-fetch", seg, "pg_wal/RECOVERYXLOG"],
        &lz4_vars,
        &pgdata,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(pgdata.join("pg_wal/RECOVERYXLOG")).unwrap() == bytes);
    // zstd's own CLI reads the object: the format is standard.
    let obj = match &backend {
        Backend::File(p) => p.join(format!("wal_005/{seg}.zst")),
        Backend::S3(_) | Backend::Swift(_) | Backend::Gcs(_) => unreachable!(),
    };
    let out = std::process::Command::new("zstd")
        .args(["-d", "-c"])
        .arg(obj)
        .output()
        .unwrap();
    assert!(out.status.success() && out.stdout == bytes);
}

fn lookahead(backend: Backend) {
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let names: Vec<String> = (0x51..0x56)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    for (i, n) in names.iter().enumerate() {
        put_segment(&pgdata, n, &synthetic_segment(n, 10 + i as u64));
        std::fs::write(pgdata.join(format!("pg_wal/archive_status/{n}.ready")), "").unwrap();
    }
    let mut vars = backend.vars();
    vars.push(("WALKEEPER_PUSH_LOOKAHEAD".into(), "4".into()));
    let out = run(
        &["wal-push", &format!("pg_wal/{}", names[0])],
        &vars,
        &pgdata,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The call returned once its own segment was durable; the others arrive from the detached
    // look-ahead process, each recorded for PostgreSQL's later call.
    assert!(backend
        .objects()
        .contains(&format!("wal_005/{}.lz4", names[0])));
    let want: Vec<String> = names.iter().map(|n| format!("wal_005/{n}.lz4")).collect();
    wait_until("the look-ahead uploads", Duration::from_secs(60), || {
        backend.objects() == want
            && names[1..].iter().all(|n| {
                pgdata
                    .join(format!("pg_wal/.walkeeper/pushed/{n}"))
                    .exists()
            })
    });
    // PostgreSQL's status files are PostgreSQL's: untouched.
    for n in &names {
        assert!(pgdata
            .join(format!("pg_wal/archive_status/{n}.ready"))
            .exists());
        assert!(!pgdata
            .join(format!("pg_wal/archive_status/{n}.done"))
            .exists());
    }
    // PostgreSQL's own call for a look-ahead segment is answered from the record.
    std::fs::rename(
        pgdata.join(format!("pg_wal/archive_status/{}.ready", names[0])),
        pgdata.join(format!("pg_wal/archive_status/{}.done", names[0])),
    )
    .unwrap();
    let out = run(
        &["wal-push", &format!("pg_wal/{}", names[1])],
        &vars,
        &pgdata,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("outcome=\"already-archived\""),
        "{}",
        stderr(&out)
    );
    // Each object decodes to its segment.
    for n in &names {
        let out = run(
            &["wal-fetch", n, "pg_wal/RECOVERYXLOG"],
            &backend.vars(),
            &pgdata,
        );
        assert_eq!(out.status.code(), Some(0));
        assert!(
            std::fs::read(pgdata.join("pg_wal/RECOVERYXLOG")).unwrap()
                == std::fs::read(pgdata.join("pg_wal").join(n)).unwrap()
        );
    }
}

#[test]
fn one_push_call_also_uploads_ready_segments_without_touching_status_files_on_file_store() {
    let scratch = Scratch::new();
    lookahead(Backend::file(&scratch));
}

#[test]
fn one_push_call_also_uploads_ready_segments_without_touching_status_files_on_s3_store() {
    lookahead(Backend::s3());
}

#[test]
fn prefetched_segments_serve_restores_while_storage_is_down() {
    let scratch = Scratch::new();
    let src = fake_pgdata(&scratch, "src");
    let mut backend = Backend::s3();
    let names: Vec<String> = (0x61..0x65)
        .map(|i| format!("0000000100000000000000{i:02X}"))
        .collect();
    let vars = backend.vars();
    for (i, n) in names.iter().enumerate() {
        put_segment(&src, n, &synthetic_segment(n, 20 + i as u64));
        let out = run(&["wal-push", &format!("pg_wal/{n}")], &vars, &src);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let dst = fake_pgdata(&scratch, "dst");
    let mut pvars = vars.clone();
    pvars.push(("WALKEEPER_PREFETCH".into(), "3".into()));
    let out = run(
        &["wal-fetch", &names[0], "pg_wal/RECOVERYXLOG"],
        &pvars,
        &dst,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let pre = dst.join("pg_wal/.walkeeper/prefetch");
    wait_until("three prefetched segments", Duration::from_secs(60), || {
        names[1..].iter().all(|n| pre.join(n).exists())
    });
    if let Backend::S3(s3) = &mut backend {
        s3.stop();
    }
    for n in &names[1..] {
        let out = run(&["wal-fetch", n, "pg_wal/RECOVERYXLOG"], &pvars, &dst);
        assert_eq!(out.status.code(), Some(0), "{n}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("from=\"prefetch\""),
            "{}",
            stderr(&out)
        );
        assert!(
            std::fs::read(dst.join("pg_wal/RECOVERYXLOG")).unwrap()
                == std::fs::read(src.join("pg_wal").join(n)).unwrap()
        );
    }
}

#[test]
fn a_corrupt_prefetched_copy_is_discarded_and_fetched_again() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let data = fake_pgdata(&scratch, "data");
    let n = "000000010000000000000071";
    let bytes = synthetic_segment(n, 30);
    put_segment(&data, n, &bytes);
    assert_eq!(
        run(
            &["wal-push", &format!("pg_wal/{n}")],
            &backend.vars(),
            &data
        )
        .status
        .code(),
        Some(0)
    );
    std::fs::remove_file(data.join("pg_wal").join(n)).unwrap();
    let pre = data.join("pg_wal/.walkeeper/prefetch");
    std::fs::create_dir_all(&pre).unwrap();
    std::fs::write(pre.join(n), &bytes[..1 << 20]).unwrap(); // cut short
    let out = run(
        &["wal-fetch", n, "pg_wal/RECOVERYXLOG"],
        &backend.vars(),
        &data,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("from=\"archive\""),
        "{}",
        stderr(&out)
    );
    assert!(std::fs::read(data.join("pg_wal/RECOVERYXLOG")).unwrap() == bytes);
}

#[test]
fn encrypted_archive_needs_the_identity_to_restore() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let data = fake_pgdata(&scratch, "data");
    let keyfile = scratch.path().join("age.key");
    let out = std::process::Command::new("age-keygen")
        .arg("-o")
        .arg(&keyfile)
        .output()
        .unwrap();
    assert!(out.status.success());
    let recipient = String::from_utf8_lossy(&out.stderr)
        .split_whitespace()
        .find(|w| w.starts_with("age1"))
        .expect("age-keygen prints the public key")
        .to_string();
    let n = "000000010000000000000081";
    let bytes = synthetic_segment(n, 40);
    put_segment(&data, n, &bytes);
    let mut push_vars = backend.vars();
    push_vars.push(("WALKEEPER_AGE_RECIPIENT".into(), recipient));
    assert_eq!(
        run(&["wal-push", &format!("pg_wal/{n}")], &push_vars, &data)
            .status
            .code(),
        Some(0)
    );
    let obj = match &backend {
        Backend::File(p) => std::fs::read(p.join(format!("wal_005/{n}.lz4"))).unwrap(),
        Backend::S3(_) | Backend::Swift(_) | Backend::Gcs(_) => unreachable!(),
    };
    assert!(obj.starts_with(b"age-encryption.org/v1"));
    let out = run(
        &["wal-fetch", n, "pg_wal/RECOVERYXLOG"],
        &backend.vars(),
        &data,
    );
    assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WALKEEPER_AGE_IDENTITY_FILE"),
        "{}",
        stderr(&out)
    );
    let mut fetch_vars = backend.vars();
    fetch_vars.push((
        "WALKEEPER_AGE_IDENTITY_FILE".into(),
        keyfile.display().to_string(),
    ));
    let out = run(&["wal-fetch", n, "pg_wal/RECOVERYXLOG"], &fetch_vars, &data);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(data.join("pg_wal/RECOVERYXLOG")).unwrap() == bytes);
}

#[test]
fn wal_e_lzop_segments_are_restored() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let data = fake_pgdata(&scratch, "data");
    let n = "000000010000000000000091";
    let bytes = synthetic_segment(n, 50);
    let raw = scratch.path().join(n);
    std::fs::write(&raw, &bytes).unwrap();
    let store = match &backend {
        Backend::File(p) => p.clone(),
        Backend::S3(_) | Backend::Swift(_) | Backend::Gcs(_) => unreachable!(),
    };
    std::fs::create_dir_all(store.join("wal_005")).unwrap();
    let out = std::process::Command::new("lzop")
        .arg("-o")
        .arg(store.join(format!("wal_005/{n}.lzo")))
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(
        &["wal-fetch", n, "pg_wal/RECOVERYXLOG"],
        &backend.vars(),
        &data,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(data.join("pg_wal/RECOVERYXLOG")).unwrap() == bytes);
}

/// Compresses `src` with the zstd tool into `dest`, as another WAL-G-format tool would store it.
fn zstd_object(src: &Path, dest: &Path) {
    let out = std::process::Command::new("zstd")
        .args(["-q", "-f", "-o"])
        .arg(dest)
        .arg(src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn one_name_under_two_codecs_restores_when_equal_and_is_refused_and_reported_when_different() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let Backend::File(store) = &backend else {
        unreachable!()
    };
    // Two real PostgreSQL 15 segments with the same name, from two clusters.
    let one = initdb(&scratch, "one");
    let two = initdb(&scratch, "two");
    let n = "000000010000000000000001";
    let bytes = std::fs::read(one.join("pg_wal").join(n)).unwrap();
    let other = std::fs::read(two.join("pg_wal").join(n)).unwrap();
    assert_ne!(bytes, other);
    let out = run(&["wal-push", &format!("pg_wal/{n}")], &backend.vars(), &one);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let zst = store.join(format!("wal_005/{n}.zst"));
    let data = fake_pgdata(&scratch, "data");
    let fetch = |vars: &[(String, String)]| {
        let _ = std::fs::remove_file(data.join("pg_wal/RECOVERYXLOG"));
        run(&["wal-fetch", n, "pg_wal/RECOVERYXLOG"], vars, &data)
    };
    let verify = || run(&["wal-verify"], &backend.vars(), &data);

    // The same segment under both codecs: restored, and reported as a harmless duplicate.
    zstd_object(&one.join("pg_wal").join(n), &zst);
    let out = fetch(&backend.vars());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read(data.join("pg_wal/RECOVERYXLOG")).unwrap() == bytes);
    let v = verify();
    let text = String::from_utf8_lossy(&v.stdout).into_owned();
    assert_eq!(v.status.code(), Some(0), "{text}{}", stderr(&v));
    assert!(
        text.contains(&format!("duplicate {n}: wal_005/{n}.lz4 (16777216 bytes")),
        "{text}"
    );

    // Another cluster's segment under the other codec: neither copy is restored, whichever
    // codec is configured, and the error names both.
    std::fs::remove_file(&zst).unwrap();
    zstd_object(&two.join("pg_wal").join(n), &zst);
    let mut zstd_vars = backend.vars();
    zstd_vars.push(("WALG_COMPRESSION_METHOD".into(), "zstd".into()));
    for vars in [backend.vars(), zstd_vars] {
        let out = fetch(&vars);
        assert_eq!(out.status.code(), Some(128), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("different content"), "{err}");
        assert!(
            err.contains(&format!("{n}.lz4")) && err.contains(&format!("{n}.zst")),
            "{err}"
        );
        assert!(!data.join("pg_wal/RECOVERYXLOG").exists());
    }
    let v = verify();
    let text = String::from_utf8_lossy(&v.stdout).into_owned();
    assert_eq!(v.status.code(), Some(1), "{text}{}", stderr(&v));
    assert!(text.contains(&format!("conflict {n}: ")), "{text}");
}
