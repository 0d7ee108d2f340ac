//! `walkeeper agent` in standalone mode, as Timescale's WAL-E sidecar runs beside a plain
//! PostgreSQL: no Patroni, no etcd. PostgreSQL 15 archives with `wget .../wal-push/%f -O -` and
//! restores with `wget .../wal-fetch/%f -O -`; base backups are taken with a GET of
//! `/backup-push`. Token-less GET only from the networks listed in
//! `WALKEEPER_API_TOKENLESS_NETWORKS`; everything else needs the token. All on loopback.

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// A standalone agent run as postgres (it reads the data directory and writes fetched WAL
/// into it), killed on drop.
struct Sidecar {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

impl Sidecar {
    fn start(vars: &[(String, String)], cwd: &Path, name: &str) -> Sidecar {
        let port = free_port();
        let log = cwd.join(format!("{name}.log"));
        let mut c = as_postgres(walkeeper());
        c.arg("agent").current_dir(cwd).env_clear();
        c.env("PATH", std::env::var("PATH").unwrap_or_default());
        c.envs(vars.iter().map(|(k, v)| (k, v)));
        c.env("WALKEEPER_API_LISTEN", format!("127.0.0.1:{port}"));
        let child = c
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut s = Sidecar {
            child: Some(child),
            port,
            log,
        };
        let http = reqwest::blocking::Client::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !http
            .get(s.url("/health"))
            .send()
            .is_ok_and(|r| r.status().is_success())
        {
            if let Some(Ok(Some(status))) = s.child.as_mut().map(|c| c.try_wait()) {
                panic!("the agent exited with {status}: {}", s.log_text());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the standalone agent did not answer: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The command PostgreSQL runs, as Timescale's documentation writes it.
    fn wget(&self, route: &str) -> String {
        format!("/usr/bin/wget 127.0.0.1:{}/{route}/%f -O -", self.port)
    }
}

/// An HTTP client whose connections come from `source` (any 127/8 address is loopback).
fn client_from(source: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .local_address(source.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

fn sidecar_vars(backend: &Backend, pg: &Pg, pgdata: &Path) -> Vec<(String, String)> {
    let mut v = backend.vars();
    for (k, val) in [
        ("PGDATA", pgdata.display().to_string()),
        ("PGHOST", pg.sock.display().to_string()),
        ("PGPORT", pg.port.to_string()),
        ("PGUSER", "postgres".into()),
        ("WALE_LOG_DESTINATION", "stderr".into()),
        // Token-less GET for clients on 127.0.0.1 only (the "docker network" here).
        ("WALKEEPER_API_TOKENLESS_NETWORKS", "127.0.0.1/32".into()),
    ] {
        v.push((k.to_string(), val));
    }
    v
}

#[test]
fn a_plain_postgresql_archives_and_restores_through_the_standalone_agent_with_wget() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let data = initdb(&scratch, "pg");
    // The server's port and socket first (the agent needs them), then its archive_command.
    let mut pg = Pg::configure(&scratch, "pg", data.clone(), "");
    let sidecar = Sidecar::start(&sidecar_vars(&backend, &pg, &data), scratch.path(), "wale");
    std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(
                f,
                "archive_mode = on\narchive_command = '{}'\nwal_level = replica",
                sidecar.wget("wal-push")
            )
        })
        .unwrap();
    pg.start();
    pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
    let first = pg.switch_and_wait_archived();
    // wget exited 0 only once the segment was stored: it is in the archive.
    assert!(
        backend
            .objects()
            .iter()
            .any(|o| o.starts_with(&format!("wal_005/{first}"))),
        "{first} not in {:?}",
        backend.objects()
    );

    // A base backup with a token-less GET, as `curl http://wale/backup-push`.
    let curl = Command::new("curl")
        .args(["-sS", "-f", &sidecar.url("/backup-push")])
        .output()
        .unwrap();
    assert!(
        curl.status.success(),
        "curl backup-push: {}{}",
        stderr(&curl),
        sidecar.log_text()
    );
    let answer: serde_json::Value = serde_json::from_slice(&curl.stdout).unwrap();
    assert!(answer["finish_lsn"].is_string(), "{answer}");
    pg.psql("INSERT INTO t SELECT generate_series(1001, 1500)");
    pg.switch_and_wait_archived();
    let rows = pg.psql("SELECT count(*), sum(x) FROM t");
    assert_eq!(rows, "1500|1125750");

    // Outside the opt-in: a client from 127.0.0.2, or a browser, needs the token; POST always.
    // (A segment the archive lacks: an authorised request gets 404, a refused one 401.)
    let seg = "/wal-fetch/0000000100000000000000FE".to_string();
    let outside = client_from("127.0.0.2");
    let r = outside.get(sidecar.url(&seg)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401, "{}", r.text().unwrap_or_default());
    let inside = client_from("127.0.0.1");
    let r = inside
        .get(sidecar.url(&seg))
        .header("Sec-Fetch-Mode", "no-cors")
        .header("Origin", "http://evil.example")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "a browser's GET");
    let r = inside.post(sidecar.url(&seg)).send().unwrap();
    assert_eq!(r.status().as_u16(), 401, "a POST without the token");
    let token = std::fs::read_to_string(data.join("pg_wal/.walkeeper/api-token")).unwrap();
    let r = outside
        .get(sidecar.url(&seg))
        .bearer_auth(token.trim())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 404, "{}", r.text().unwrap_or_default());
    // A segment the archive does not hold: 404, so wget exits non-zero (8: an HTTP error).
    let missing = Command::new("/usr/bin/wget")
        .args(["-q", "-O", "-"])
        .arg(sidecar.url("/wal-fetch/0000000100000000000000FE"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(8), "{}", stderr(&missing));
    drop(sidecar);
    pg.stop();

    // A new server restored from LATEST, replaying the archive with wget through a new sidecar.
    let restored = scratch.mkdir("restored");
    std::fs::set_permissions(
        &restored,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let mut fetch = as_postgres(walkeeper());
    fetch
        .args(["backup-fetch", &restored.display().to_string(), "LATEST"])
        .current_dir(scratch.path())
        .env_clear()
        .envs(backend.vars());
    let out = fetch.output().unwrap();
    assert!(out.status.success(), "backup-fetch: {}", stderr(&out));
    let mut pg2 = Pg::configure(&scratch, "restored", restored.clone(), "");
    let sidecar2 = Sidecar::start(
        &sidecar_vars(&backend, &pg2, &restored),
        scratch.path(),
        "wale2",
    );
    std::fs::OpenOptions::new()
        .append(true)
        .open(restored.join("postgresql.conf"))
        .and_then(|mut f| {
            use std::io::Write;
            writeln!(
                f,
                "archive_mode = off\nrestore_command = '{}'",
                sidecar2.wget("wal-fetch")
            )
        })
        .unwrap();
    std::fs::write(restored.join("recovery.signal"), "").unwrap();
    chown_pg_recursive(&restored);
    pg2.start();
    wait_until("recovery to end", Duration::from_secs(120), || {
        pg2.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert_eq!(pg2.psql("SELECT count(*), sum(x) FROM t"), rows);
}

#[test]
fn a_standalone_agent_beyond_loopback_needs_a_token_or_the_networks_opt_in() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let pgdata = fake_pgdata(&scratch, "pg");
    let port = free_port();
    let mut vars = backend.vars();
    vars.push(("PGDATA".into(), pgdata.display().to_string()));
    vars.push(("WALKEEPER_API_LISTEN".into(), format!("0.0.0.0:{port}")));
    let out = run(&["agent"], &vars, scratch.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WALKEEPER_API_TOKENLESS_NETWORKS"),
        "{}",
        stderr(&out)
    );
    vars.push((
        "WALKEEPER_API_TOKENLESS_NETWORKS".into(),
        "not-a-net".into(),
    ));
    let out = run(&["agent"], &vars, scratch.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("\"not-a-net\""), "{}", stderr(&out));
    // Partial cluster settings are an error, not a standalone server.
    let mut partial = backend.vars();
    partial.push(("PGDATA".into(), pgdata.display().to_string()));
    partial.push(("PATRONI_SCOPE".into(), "demo".into()));
    let out = run(&["agent"], &partial, scratch.path());
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("incomplete"), "{}", stderr(&out));
}
