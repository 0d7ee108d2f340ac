//! Base backups, retention, verification and point-in-time restore against a real PostgreSQL 15,
//! on file://, on a real S3 server, on a real OpenStack Swift and on fake-gcs-server (gs://).

mod support;

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::Duration;

use support::*;

/// A primary archiving through walkeeper, plus everything needed to run walkeeper as postgres.
struct Cluster {
    scratch: Scratch,
    backend: Backend,
    env: PathBuf,
    primary: Pg,
}

impl Cluster {
    fn start(backend_for: impl FnOnce(&Scratch) -> Backend, extra_env: &[(&str, &str)]) -> Cluster {
        let scratch = Scratch::new();
        let backend = backend_for(&scratch);
        let env = backend.envdir(&scratch, extra_env);
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
        Cluster {
            scratch,
            backend,
            env,
            primary,
        }
    }

    /// Runs walkeeper as postgres with the cluster's envdir and connection variables.
    fn walkeeper(&self, args: &[&str]) -> Output {
        self.walkeeper_with(&[], args)
    }

    /// [`Cluster::walkeeper`] with more environment variables.
    fn walkeeper_with(&self, vars: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = as_postgres(walkeeper());
        c.arg("--envdir").arg(&self.env).args(args);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGHOST", &self.primary.sock)
            .env("PGPORT", self.primary.port.to_string())
            .env("PGUSER", "postgres")
            .envs(vars.iter().copied())
            .current_dir(self.scratch.path());
        c.output().unwrap()
    }

    fn backup_push(&self) -> Output {
        let out = self.walkeeper(&["backup-push", self.primary.data.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
        out
    }

    fn backup_list(&self) -> Vec<Vec<String>> {
        let out = self.walkeeper(&["backup-list", "--detail"]);
        assert_eq!(out.status.code(), Some(0), "backup-list: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split('\t').map(String::from).collect())
            .collect()
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Starts a server on a restored data directory with restore_command through walkeeper and
    /// waits until it has finished recovery.
    fn start_restored(&self, name: &str, data: PathBuf, extra: &str) -> Pg {
        chown_pg_recursive(&data);
        let wk = walkeeper();
        let mut pg = Pg::configure(
            &self.scratch,
            name,
            data,
            &format!(
                "archive_mode = off\nrestore_command = '{wk} --envdir {env} wal-fetch %f %p'\n{extra}",
                env = self.env.display()
            ),
        );
        pg.start();
        wait_until("recovery to finish", Duration::from_secs(300), || {
            pg.psql("SELECT pg_is_in_recovery()") == "f"
        });
        pg
    }
}

fn pgbench_background(pg: &Pg) -> Child {
    let mut c = pg_tool("pgbench");
    c.arg("-h").arg(&pg.sock).args([
        "-p",
        &pg.port.to_string(),
        "-U",
        "postgres",
        "-c",
        "2",
        "-T",
        "600",
        "postgres",
    ]);
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn backup_under_load_restores(backend_for: impl FnOnce(&Scratch) -> Backend) {
    let c = Cluster::start(backend_for, &[("WALG_TAR_SIZE_THRESHOLD", "8388608")]);
    c.primary.pgbench(&["-i", "-s", "4", "-q"]);
    let load = KillOnDrop(pgbench_background(&c.primary));
    c.backup_push();
    drop(load);
    c.primary.psql("CREATE TABLE marker AS SELECT 7 AS v");
    c.primary.switch_and_wait_archived();
    let rows = c.primary.psql("SELECT count(*) FROM pgbench_history");
    let sum = c.primary.psql("SELECT sum(abalance) FROM pgbench_accounts");
    let sysid = c
        .primary
        .psql("SELECT system_identifier FROM pg_control_system()");

    let list = c.backup_list();
    assert_eq!(list.len(), 1, "{list:?}");
    let name = &list[0][0];
    assert!(name.starts_with("base_0000000100000000"), "{name}");
    let objects = c.backend.objects();
    assert!(
        objects.contains(&format!("basebackups_005/{name}_backup_stop_sentinel.json")),
        "{objects:?}"
    );
    assert!(objects.contains(&format!("basebackups_005/{name}/metadata.json")));
    assert!(objects.contains(&format!(
        "basebackups_005/{name}/tar_partitions/pg_control.tar.lz4"
    )));
    assert!(objects.contains(&format!("basebackups_005/{name}/files_metadata.json")));
    let parts = objects
        .iter()
        .filter(|o| o.contains("/tar_partitions/part_"))
        .count();
    assert!(
        parts >= 3,
        "an 8 MiB threshold splits ~60 MB into several partitions: {objects:?}"
    );
    let json = c.walkeeper(&["backup-list", "--walkeeper-json"]);
    let json = String::from_utf8_lossy(&json.stdout);
    assert!(
        json.contains(&format!("\"system_identifier\": {sysid}")),
        "{json}"
    );

    let target = c.dir("restored");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "backup-fetch: {}", stderr(&out));
    let mode = std::fs::metadata(&target)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(mode, 0o700);
    for d in [
        "pg_wal/archive_status",
        "pg_replslot",
        "pg_stat_tmp",
        "pg_subtrans",
        "pg_notify",
    ] {
        assert!(target.join(d).is_dir(), "{d} not recreated");
    }
    assert!(target.join("backup_label").exists());
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    let restored = c.start_restored("restored", target, "recovery_target_action = promote\n");
    assert_eq!(restored.psql("SELECT count(*) FROM pgbench_history"), rows);
    assert_eq!(
        restored.psql("SELECT sum(abalance) FROM pgbench_accounts"),
        sum
    );
    assert_eq!(restored.psql("SELECT v FROM marker"), "7");
}

#[test]
fn backup_under_load_restores_with_the_same_rows_from_file_store() {
    backup_under_load_restores(Backend::file);
}

#[test]
fn backup_under_load_restores_with_the_same_rows_from_s3_store() {
    backup_under_load_restores(|_| Backend::s3());
}

#[test]
fn backup_under_load_restores_with_the_same_rows_from_swift_store() {
    backup_under_load_restores(|_| Backend::swift());
}

#[test]
fn backup_under_load_restores_with_the_same_rows_from_gcs_store() {
    backup_under_load_restores(|_| Backend::gcs());
}

fn now_after(pg: &Pg) -> String {
    // A target strictly between two commits: take the server's clock after the first.
    pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

fn pitr(backend_for: impl FnOnce(&Scratch) -> Backend) {
    let c = Cluster::start(backend_for, &[]);
    c.primary.psql("CREATE TABLE marks (id int, note text)");
    c.backup_push();
    c.primary.psql("INSERT INTO marks VALUES (1, 'before')");
    std::thread::sleep(Duration::from_millis(20));
    let target = now_after(&c.primary);
    std::thread::sleep(Duration::from_millis(20));
    c.primary.psql("INSERT INTO marks VALUES (2, 'after')");
    c.primary.switch_and_wait_archived();

    // Errors that name the earliest restorable point.
    let dir = c.dir("pitr");
    let out = c.walkeeper(&[
        "restore",
        dir.to_str().unwrap(),
        "--target-time",
        "2001-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("earliest restorable point"),
        "{}",
        stderr(&out)
    );
    let out = c.walkeeper(&[
        "restore",
        dir.to_str().unwrap(),
        "--target-time",
        "2026-01-01 00:00:00",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("has no zone"), "{}", stderr(&out));
    let out = c.walkeeper(&[
        "restore",
        dir.to_str().unwrap(),
        "--target-time",
        "2999-01-01T00:00:00Z",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("future"), "{}", stderr(&out));
    assert!(!dir.join("PG_VERSION").exists());

    let out = c.walkeeper(&["restore", dir.to_str().unwrap(), "--target-time", &target]);
    assert_eq!(out.status.code(), Some(0), "restore: {}", stderr(&out));
    let auto = dir.join("postgresql.auto.conf");
    assert!(std::fs::read_to_string(&auto)
        .unwrap()
        .contains("recovery_target_time"));
    let restored = c.start_restored("pitr", dir, "");
    assert_eq!(
        restored.psql("SELECT string_agg(note, ',' ORDER BY id) FROM marks"),
        "before"
    );
    // Recovery is over: the target does not stay behind to come back with later backups.
    let left = std::fs::read_to_string(&auto).unwrap();
    assert!(!left.contains("recovery_target"), "{left}");
}

#[test]
fn point_in_time_restore_keeps_rows_before_the_target_and_drops_rows_after_on_file_store() {
    pitr(Backend::file);
}

#[test]
fn point_in_time_restore_keeps_rows_before_the_target_and_drops_rows_after_on_s3_store() {
    pitr(|_| Backend::s3());
}

#[test]
fn point_in_time_restore_keeps_rows_before_the_target_and_drops_rows_after_on_swift_store() {
    pitr(|_| Backend::swift());
}

#[test]
fn point_in_time_restore_keeps_rows_before_the_target_and_drops_rows_after_on_gcs_store() {
    pitr(|_| Backend::gcs());
}

#[test]
fn tablespaces_round_trip_through_restore_spec() {
    let c = Cluster::start(Backend::file, &[]);
    let ts = c.scratch.mkdir("ts_one");
    c.primary.psql(&format!(
        "CREATE TABLESPACE one LOCATION '{}'",
        ts.display()
    ));
    c.primary.psql(
        "CREATE TABLE in_ts TABLESPACE one AS SELECT g AS id FROM generate_series(1, 5000) g",
    );
    c.backup_push();
    c.primary
        .psql("INSERT INTO in_ts SELECT g FROM generate_series(5001, 6000) g");
    c.primary.switch_and_wait_archived();
    let oid = c
        .primary
        .psql("SELECT oid FROM pg_tablespace WHERE spcname = 'one'");

    let new_loc = c.scratch.mkdir("ts_moved");
    let spec = c.scratch.path().join("spec.json");
    std::fs::write(
        &spec,
        format!(
            "{{\"base_prefix\": \"{}\", \"tablespaces\": [\"{oid}\"], \"{oid}\": {{\"loc\": \"{}/\", \"link\": \"pg_tblspc/{oid}\"}}}}",
            c.dir("tsrestored").display(),
            new_loc.display()
        ),
    )
    .unwrap();
    chown_pg(&spec);
    let target = c.dir("tsrestored");
    let out = c.walkeeper(&[
        "backup-fetch",
        target.to_str().unwrap(),
        "LATEST",
        "--restore-spec",
        spec.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let link = std::fs::read_link(target.join(format!("pg_tblspc/{oid}"))).unwrap();
    assert_eq!(link, new_loc);
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    let restored = c.start_restored("tsrestored", target, "");
    assert_eq!(restored.psql("SELECT count(*) FROM in_ts"), "6000");
    assert_eq!(
        restored
            .psql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'one'"),
        new_loc.display().to_string()
    );
}

#[test]
fn retention_keeps_a_restorable_backup_and_a_gapless_archive() {
    let c = Cluster::start(Backend::file, &[]);
    c.primary.pgbench(&["-i", "-s", "1", "-q"]);
    c.backup_push();
    c.primary.pgbench(&["-t", "500"]);
    c.primary.switch_and_wait_archived();
    c.backup_push();
    c.primary.pgbench(&["-t", "500"]);
    c.primary.psql("CREATE TABLE marker AS SELECT 1 AS v");
    c.primary.switch_and_wait_archived();
    let rows = c.primary.psql("SELECT count(*) FROM pgbench_history");
    let list = c.backup_list();
    assert_eq!(list.len(), 2);
    let (old, newer) = (list[0][0].clone(), list[1][0].clone());

    let dry = c.walkeeper(&["delete", "retain", "1"]);
    assert_eq!(dry.status.code(), Some(0), "{}", stderr(&dry));
    let dry_keys: Vec<String> = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert!(
        dry_keys
            .iter()
            .any(|l| l == &format!("would delete basebackups_005/{old}_backup_stop_sentinel.json")),
        "{dry_keys:?}"
    );
    assert!(!dry_keys.iter().any(|l| l.contains(&newer)), "{dry_keys:?}");
    assert!(
        dry_keys.iter().any(|l| l.contains("wal_005/")),
        "old WAL should go: {dry_keys:?}"
    );
    assert_eq!(c.backup_list().len(), 2, "a dry run deletes nothing");

    let out = c.walkeeper(&["delete", "--confirm", "retain", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let again = c.walkeeper(&["delete", "--confirm", "retain", "1"]);
    assert_eq!(
        again.status.code(),
        Some(0),
        "running it twice is fine: {}",
        stderr(&again)
    );
    let list = c.backup_list();
    assert_eq!(
        list.iter().map(|r| r[0].clone()).collect::<Vec<_>>(),
        vec![newer.clone()]
    );
    let objects = c.backend.objects();
    assert!(!objects.iter().any(|o| o.contains(&old)), "{objects:?}");
    for key in dry_keys
        .iter()
        .filter_map(|k| k.strip_prefix("would delete "))
    {
        assert!(!objects.contains(&key.to_string()), "{key} still there");
    }

    let verify = c.walkeeper(&["wal-verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "wal-verify: {}\n{}",
        String::from_utf8_lossy(&verify.stdout),
        stderr(&verify)
    );

    let target = c.dir("kept");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), &newer]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    let restored = c.start_restored("kept", target, "");
    assert_eq!(restored.psql("SELECT count(*) FROM pgbench_history"), rows);
    assert_eq!(restored.psql("SELECT v FROM marker"), "1");
}

#[test]
fn wal_verify_reports_a_gap() {
    let c = Cluster::start(Backend::file, &[]);
    c.backup_push();
    c.primary.psql("CREATE TABLE t AS SELECT 1");
    c.primary.switch_and_wait_archived();
    c.primary.psql("INSERT INTO t VALUES (2)");
    let last = c.primary.switch_and_wait_archived();
    let ok = c.walkeeper(&["wal-verify"]);
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let Backend::File(store) = &c.backend else {
        unreachable!()
    };
    // Remove a segment in the middle.
    let mut segs: Vec<String> = list_files(&store.join("wal_005"))
        .into_iter()
        .filter(|f| f.len() == 28 && f.ends_with(".lz4") && f[..24] <= *last)
        .collect();
    segs.sort();
    let victim = segs[segs.len() - 2].clone();
    std::fs::remove_file(store.join("wal_005").join(&victim)).unwrap();
    let bad = c.walkeeper(&["wal-verify"]);
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(
        text.contains(&format!("missing {}", &victim[..24])),
        "{text}"
    );
}

fn fetch_fails_loudly(c: &Cluster, name: &str) {
    let target = c.dir(name);
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "{name}: a damaged backup was fetched: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("part_001"),
        "the error names the object: {}",
        stderr(&out)
    );
    assert!(
        !target.join("global/pg_control").exists(),
        "looks complete after a failure"
    );
    assert!(
        !target.join("PG_VERSION").exists(),
        "partial contents left behind"
    );
}

#[test]
fn corrupted_or_truncated_partitions_fail_backup_fetch_loudly() {
    let c = Cluster::start(Backend::file, &[]);
    c.primary.pgbench(&["-i", "-s", "1", "-q"]);
    c.backup_push();
    let Backend::File(store) = &c.backend else {
        unreachable!()
    };
    let name = &c.backup_list()[0][0];
    let part = store.join(format!(
        "basebackups_005/{name}/tar_partitions/part_001.tar.lz4"
    ));
    let original = std::fs::read(&part).unwrap();

    std::fs::write(&part, &original[..original.len() * 2 / 3]).unwrap();
    fetch_fails_loudly(&c, "truncated");

    // Damage a run of bytes, not one: a single flipped byte can turn an lz4 match offset into
    // another offset that points at identical bytes (zeroed pages), which decodes to the very
    // same data and rightly passes the content checksum.
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 64] {
        *b ^= 0xFF;
    }
    std::fs::write(&part, &flipped).unwrap();
    fetch_fails_loudly(&c, "corrupted");

    std::fs::remove_file(&part).unwrap();
    let target = c.dir("missing");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(!target.join("global/pg_control").exists());
}

#[test]
fn backup_fetch_refuses_a_non_empty_target() {
    let c = Cluster::start(Backend::file, &[]);
    c.backup_push();
    let out = c.walkeeper(&["backup-fetch", c.primary.data.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
}

#[test]
fn a_killed_backup_push_leaves_no_listed_backup_and_the_next_one_succeeds() {
    let c = Cluster::start(Backend::file, &[("WALG_TAR_SIZE_THRESHOLD", "1048576")]);
    c.primary.pgbench(&["-i", "-s", "3", "-q"]);
    let mut cmd = as_postgres(walkeeper());
    cmd.arg("--envdir")
        .arg(&c.env)
        .args(["backup-push", c.primary.data.to_str().unwrap()]);
    cmd.env("PGHOST", &c.primary.sock)
        .env("PGPORT", c.primary.port.to_string())
        .env("PGUSER", "postgres");
    cmd.env("WALKEEPER_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let Backend::File(store) = &c.backend else {
        unreachable!()
    };
    wait_until("the first partition", Duration::from_secs(120), || {
        list_files(store)
            .iter()
            .any(|f| f.contains("tar_partitions/part_"))
    });
    // setpriv execs walkeeper, so this PID is walkeeper's.
    let _ = std::process::Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        c.backup_list().is_empty(),
        "a killed backup must not be listed"
    );
    // The server is still in backup mode on a dead session: that session's end aborts it.
    c.backup_push();
    assert_eq!(c.backup_list().len(), 1);
    let target = c.dir("after_kill");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::write(target.join("recovery.signal"), "").unwrap();
    let restored = c.start_restored("after_kill", target, "");
    assert_eq!(
        restored.psql("SELECT count(*) FROM pgbench_accounts"),
        "300000"
    );
}

/// Reads an object of the archive (a sentinel, files_metadata.json) as JSON.
fn archived_json(c: &Cluster, key: &str) -> serde_json::Value {
    let out = c.walkeeper(&["st", "cat", key]);
    assert_eq!(out.status.code(), Some(0), "st cat {key}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn backup_push_names_a_corrupt_page_by_file_and_block_and_still_completes() {
    let mut c = Cluster::start(Backend::file, &[]);
    c.primary.psql(
        "CREATE TABLE t WITH (autovacuum_enabled = false) AS \
         SELECT g AS id, repeat('x', 200) AS pad FROM generate_series(1, 2000) g; CHECKPOINT",
    );
    let rel = c.primary.psql("SELECT pg_relation_filepath('t')");
    c.primary.stop();
    let out = pg_tool("pg_checksums")
        .arg("--enable")
        .arg("-D")
        .arg(&c.primary.data)
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_checksums: {}", stderr(&out));
    // One flipped byte in the middle of block 2, written while the server is stopped.
    let path = c.primary.data.join(&rel);
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() >= 3 * 8192, "{} bytes", bytes.len());
    bytes[2 * 8192 + 5000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    c.primary.start();

    let out = c.backup_push();
    let log = stderr(&out);
    assert!(
        log.contains("page checksum verification failed")
            && log.contains(&rel)
            && log.contains("blocks=[2]"),
        "{log}"
    );
    let name = c.backup_list()[0][0].clone();
    let sentinel = archived_json(
        &c,
        &format!("basebackups_005/{name}_backup_stop_sentinel.json"),
    );
    let report = &sentinel["PageChecksums"];
    assert_eq!(report["CorruptPages"], 1, "{report}");
    assert_eq!(
        report["CorruptFiles"][format!("/{rel}")],
        serde_json::json!({"CorruptBlocksCount": 1, "SomeCorruptBlocks": [2]}),
        "{report}"
    );
    assert!(report["PagesChecked"].as_u64().unwrap() > 100, "{report}");
    let files = archived_json(&c, &format!("basebackups_005/{name}/files_metadata.json"));
    assert_eq!(
        files["Files"][format!("/{rel}")]["CorruptBlocks"]["SomeCorruptBlocks"],
        serde_json::json!([2])
    );
    // The backup is whole: it restores, and the intact rows are there.
    let target = c.dir("restored");
    let out = c.walkeeper(&["backup-fetch", target.to_str().unwrap(), "LATEST"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(std::fs::read(target.join(&rel)).unwrap(), bytes);

    // Verification off: nothing checked, nothing reported.
    c.primary.psql("SELECT pg_switch_wal()");
    let out = c.walkeeper_with(
        &[("WALG_VERIFY_PAGE_CHECKSUMS", "false")],
        &["backup-push", c.primary.data.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("page checksum verification failed"));
    let newest = c.backup_list().last().unwrap()[0].clone();
    assert_ne!(newest, name);
    let sentinel = archived_json(
        &c,
        &format!("basebackups_005/{newest}_backup_stop_sentinel.json"),
    );
    assert!(sentinel.get("PageChecksums").is_none(), "{sentinel}");
}
