//! Bad input: a one-line error naming the cause, an exact non-zero exit, nothing stored.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use support::*;

struct Case {
    scratch: Scratch,
    store: std::path::PathBuf,
    pgdata: std::path::PathBuf,
}

impl Case {
    fn new() -> Case {
        let scratch = Scratch::new();
        let store = scratch.mkdir("archive");
        let pgdata = fake_pgdata(&scratch, "data");
        let seg = "000000010000000000000001";
        std::fs::write(pgdata.join("pg_wal").join(seg), synthetic_segment(seg, 1)).unwrap();
        Case {
            scratch,
            store,
            pgdata,
        }
    }

    fn vars(&self) -> Vec<(String, String)> {
        vec![("WALG_FILE_PREFIX".into(), self.store.display().to_string())]
    }

    /// Runs walkeeper, expects `code`, an error line containing `cause`, and an empty store.
    fn expect(&self, args: &[&str], vars: &[(String, String)], code: i32, cause: &str) {
        let out = run(args, vars, &self.pgdata);
        self.check(&out, args, code, cause);
    }

    fn check(&self, out: &std::process::Output, args: &[&str], code: i32, cause: &str) {
        let err = stderr(out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
        assert_eq!(lines.len(), 1, "{args:?}: expected one error line:\n{err}");
        assert!(
            lines[0].contains(cause),
            "{args:?}: {:?} does not name {cause:?}",
            lines[0]
        );
        assert!(
            list_files(&self.store).is_empty(),
            "{args:?} stored {:?}",
            list_files(&self.store)
        );
    }
}

#[test]
fn push_of_a_name_that_is_not_wal_is_refused() {
    let c = Case::new();
    std::fs::write(c.pgdata.join("pg_wal/notawalfile"), b"x").unwrap();
    c.expect(
        &["wal-push", "pg_wal/notawalfile"],
        &c.vars(),
        2,
        "is not a WAL file name",
    );
}

#[test]
fn push_of_a_path_outside_the_data_directory_is_refused() {
    let c = Case::new();
    c.expect(
        &["wal-push", "/etc/passwd"],
        &c.vars(),
        2,
        "outside the data directory",
    );
    let outside = c.scratch.mkdir("elsewhere");
    std::fs::write(outside.join("000000010000000000000002"), b"x").unwrap();
    c.expect(
        &["wal-push", "../elsewhere/000000010000000000000002"],
        &c.vars(),
        2,
        "outside the data directory",
    );
    // A symlink in pg_wal that points outside is refused too.
    std::os::unix::fs::symlink(
        outside.join("000000010000000000000002"),
        c.pgdata.join("pg_wal/000000010000000000000003"),
    )
    .unwrap();
    c.expect(
        &["wal-push", "pg_wal/000000010000000000000003"],
        &c.vars(),
        2,
        "symbolic link",
    );
}

#[test]
fn push_of_a_missing_file_is_refused() {
    let c = Case::new();
    c.expect(
        &["wal-push", "pg_wal/000000010000000000000009"],
        &c.vars(),
        2,
        "cannot archive",
    );
}

#[test]
fn push_of_an_unreadable_file_is_refused() {
    let c = Case::new();
    let seg = c.pgdata.join("pg_wal/000000010000000000000001");
    std::fs::set_permissions(&seg, std::fs::Permissions::from_mode(0o000)).unwrap();
    chown_pg_recursive(&c.store);
    // root reads anything, so run as postgres.
    let mut cmd = as_postgres(walkeeper());
    cmd.args(["wal-push", "pg_wal/000000010000000000000001"])
        .current_dir(&c.pgdata)
        .env_clear()
        .envs(c.vars());
    let out = cmd.output().unwrap();
    c.check(&out, &["wal-push (as postgres)"], 2, "cannot read");
}

#[test]
fn an_unknown_prefix_scheme_is_refused() {
    let c = Case::new();
    let vars = vec![("WALKEEPER_PREFIX".to_string(), "ftp://host/x".to_string())];
    c.expect(
        &["wal-push", "pg_wal/000000010000000000000001"],
        &vars,
        2,
        "unknown scheme \"ftp\"",
    );
    // For restore_command a configuration error must abort recovery, not look like "missing".
    c.expect(
        &[
            "wal-fetch",
            "000000010000000000000001",
            "pg_wal/RECOVERYXLOG",
        ],
        &vars,
        128,
        "unknown scheme",
    );
}

#[test]
fn a_malformed_config_file_is_refused() {
    let c = Case::new();
    let cfg = c.scratch.path().join("walkeeper.yaml");
    std::fs::write(&cfg, "prefix: [unclosed\n").unwrap();
    let cfg = cfg.display().to_string();
    c.expect(
        &[
            "--config",
            &cfg,
            "wal-push",
            "pg_wal/000000010000000000000001",
        ],
        &[],
        2,
        "config file",
    );
    std::fs::write(&cfg, "prefx: /tmp/x\n").unwrap();
    c.expect(
        &[
            "--config",
            &cfg,
            "wal-push",
            "pg_wal/000000010000000000000001",
        ],
        &[],
        2,
        "prefx",
    );
}

#[test]
fn a_malformed_envdir_is_refused() {
    let c = Case::new();
    c.expect(
        &[
            "--envdir",
            "/nonexistent/envdir",
            "wal-push",
            "pg_wal/000000010000000000000001",
        ],
        &c.vars(),
        2,
        "envdir /nonexistent/envdir",
    );
    let envdir = c.scratch.mkdir("env");
    std::fs::write(envdir.join("WALG_FILE_PREFIX"), b"/tmp/x\0y").unwrap();
    let e = envdir.display().to_string();
    c.expect(
        &[
            "--envdir",
            &e,
            "wal-push",
            "pg_wal/000000010000000000000001",
        ],
        &[],
        2,
        "NUL byte",
    );
}

#[test]
fn an_endpoint_that_refuses_connections_fails_within_the_retry_bound() {
    let c = Case::new();
    let port = free_port(); // bound, then released: nothing listens there
    let vars: Vec<(String, String)> = [
        ("WALE_S3_PREFIX", "s3://bucket/p"),
        ("AWS_ENDPOINT", &format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "AK"),
        ("AWS_SECRET_ACCESS_KEY", "SK"),
        ("WALKEEPER_RETRY_TIMEOUT", "2"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let started = Instant::now();
    c.expect(
        &["wal-push", "pg_wal/000000010000000000000001"],
        &vars,
        1,
        "storage",
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn fetch_of_a_name_that_is_not_wal_or_a_destination_outside_is_refused_with_128() {
    let c = Case::new();
    c.expect(
        &["wal-fetch", "../../etc/passwd", "pg_wal/RECOVERYXLOG"],
        &c.vars(),
        128,
        "is not a WAL file name",
    );
    c.expect(
        &["wal-fetch", "000000010000000000000001", "/tmp/RECOVERYXLOG"],
        &c.vars(),
        128,
        "outside the data directory",
    );
}
