//! Leader-only uploads against a real etcd 3.4, without Patroni: wal-push asks etcd itself when
//! no agent runs, uploads only while this member holds the leader key with a lease that lasts,
//! takes a non-leader's old-timeline segment only up to the archived switch point, and refuses
//! when etcd cannot be asked. Also the agent's API guards: the token, and names that never
//! leave pg_wal.

mod support;

use std::process::Command;
use std::time::Duration;

use support::cluster::Etcd;
use support::*;

const SCOPE: &str = "lead";

struct Member {
    scratch: Scratch,
    etcd: Etcd,
    backend: Backend,
    pgdata: std::path::PathBuf,
}

impl Member {
    fn new() -> Member {
        let scratch = Scratch::new();
        let etcd = Etcd::start(scratch.path());
        let backend = Backend::file(&scratch);
        let pgdata = fake_pgdata(&scratch, "data");
        Member {
            scratch,
            etcd,
            backend,
            pgdata,
        }
    }

    /// Cluster member pg1, with no agent at the agent URL (a closed port).
    fn vars(&self) -> Vec<(String, String)> {
        let mut v = self.backend.vars();
        let kv = |k: &str, val: String| (k.to_string(), val);
        v.extend([
            kv("WALKEEPER_SCOPE", SCOPE.into()),
            kv("WALKEEPER_NAME", "pg1".into()),
            kv("WALKEEPER_ETCD_HOSTS", self.etcd.url()),
            kv(
                "WALKEEPER_AGENT_URL",
                format!("http://127.0.0.1:{}", free_port()),
            ),
        ]);
        v
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.etcd.url()])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Makes `who` the leader on a fresh lease of `ttl` seconds (Patroni's shape).
    fn set_leader(&self, who: &str, ttl: u32) {
        let granted = self.etcdctl(&["lease", "grant", &ttl.to_string()]);
        let id = granted.split_whitespace().nth(1).expect("a lease id");
        self.etcdctl(&[
            "put",
            &format!("--lease={id}"),
            &format!("/service/{SCOPE}/leader"),
            who,
        ]);
    }

    fn push(&self, name: &str, seed: u64) -> std::process::Output {
        let path = self.pgdata.join("pg_wal").join(name);
        if !path.exists() {
            std::fs::write(&path, synthetic_segment(name, seed)).unwrap();
        }
        run(
            &["wal-push", &format!("pg_wal/{name}")],
            &self.vars(),
            &self.pgdata,
        )
    }

    fn archived(&self, name: &str) -> bool {
        self.backend
            .objects()
            .contains(&format!("wal_005/{name}.lz4"))
    }
}

#[test]
fn wal_push_uploads_only_while_this_member_holds_the_leader_key_with_a_lasting_lease() {
    let mut m = Member::new();

    let out = m.push("000000010000000000000001", 1);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no member holds the leader key"),
        "{}",
        stderr(&out)
    );
    assert!(!m.archived("000000010000000000000001"));

    m.set_leader("pg2", 30);
    let out = m.push("000000010000000000000001", 1);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pg2 holds the leader key, not pg1"),
        "{}",
        stderr(&out)
    );
    assert!(!m.archived("000000010000000000000001"));

    // A lease about to run out is not enough to start an upload.
    m.set_leader("pg1", 2);
    let out = m.push("000000010000000000000001", 1);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("lease may end"), "{}", stderr(&out));
    assert!(!m.archived("000000010000000000000001"));

    m.set_leader("pg1", 30);
    let out = m.push("000000010000000000000001", 1);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(m.archived("000000010000000000000001"));

    // Not the leader, but the archive already holds identical content: success, no upload.
    m.set_leader("pg2", 30);
    let out = m.push("000000010000000000000001", 1);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("already-archived"),
        "{}",
        stderr(&out)
    );

    // etcd gone: leadership cannot be determined, so nothing is uploaded.
    m.etcd.stop();
    let out = m.push("000000010000000000000002", 2);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cannot tell whether pg1 holds the leader key"),
        "{}",
        stderr(&out)
    );
    assert!(!m.archived("000000010000000000000002"));
}

#[test]
fn a_non_leader_may_upload_old_timeline_segments_only_up_to_the_archived_switch_point() {
    let m = Member::new();
    m.set_leader("pg2", 30);
    // Timeline 2 began at 0/3000100: timeline 1 is history up to there.
    let hist = m.scratch.path().join("00000002.history");
    std::fs::write(&hist, "1\t0/3000100\tno recovery target specified\n").unwrap();
    chown_pg(&hist);
    // Archived by whoever led then (a plain, cluster-less wal-push here).
    let leader_vars = m.backend.vars();
    std::fs::copy(&hist, m.pgdata.join("pg_wal/00000002.history")).unwrap();
    let out = run(
        &["wal-push", "pg_wal/00000002.history"],
        &leader_vars,
        &m.pgdata,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    std::fs::remove_file(m.pgdata.join("pg_wal/00000002.history")).unwrap();

    // 000000010000000000000002 ends at 0/3000000, before the switch point: history.
    let out = m.push("000000010000000000000002", 2);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("uploading it as history"),
        "{}",
        stderr(&out)
    );
    assert!(m.archived("000000010000000000000002"));
    // 000000010000000000000003 holds the switch point and what came after it on the old
    // primary: refused.
    let out = m.push("000000010000000000000003", 3);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!m.archived("000000010000000000000003"));
    // So is a timeline-2 segment from a member that does not lead.
    let out = m.push("000000020000000000000004", 4);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!m.archived("000000020000000000000004"));
}

#[test]
fn only_the_holder_of_the_leader_key_can_write_the_backup_list() {
    let m = Member::new();
    let settings = walkeeper::config::ClusterSettings {
        scope: SCOPE.into(),
        name: "pg1".into(),
        namespace: "/service".into(),
        etcd_hosts: vec![format!("http://{}", m.etcd.url())],
        etcd_user: None,
        etcd_tls: Default::default(),
        agent_url: String::new(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt
        .block_on(walkeeper::cluster::Etcd::connect(&settings))
        .unwrap();
    let key = format!("/service/{SCOPE}/wale-backup-list");
    let write = |text: &str| {
        rt.block_on(etcd.put_if_leader(&[("wale-backup-list", text.to_string())]))
            .unwrap()
    };
    m.set_leader("pg2", 30);
    assert!(!write("from a deposed leader"));
    assert_eq!(m.etcd.get(&key), None);
    m.set_leader("pg1", 30);
    assert!(write("from the leader"));
    assert_eq!(m.etcd.get(&key).as_deref(), Some("from the leader"));
    // `initialize` is only ever created, never overwritten.
    assert!(rt
        .block_on(etcd.create_if_absent("initialize", "123"))
        .unwrap());
    assert!(!rt
        .block_on(etcd.create_if_absent("initialize", "456"))
        .unwrap());
    assert_eq!(
        m.etcd
            .get(&format!("/service/{SCOPE}/initialize"))
            .as_deref(),
        Some("123")
    );
}

/// A running agent for pg1 (no Patroni, no PostgreSQL), killed on drop.
struct Agent {
    child: std::process::Child,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_agent(m: &Member, extra: &[(&str, &str)]) -> Agent {
    let port = free_port();
    let mut vars = m.vars();
    vars.retain(|(k, _)| k != "WALKEEPER_AGENT_URL");
    vars.push(("WALKEEPER_API_LISTEN".into(), format!("127.0.0.1:{port}")));
    vars.push(("WALKEEPER_PGDATA".into(), m.pgdata.display().to_string()));
    vars.push(("WALKEEPER_BACKUP_SCHEDULE".into(), "off".into()));
    for (k, v) in extra {
        vars.retain(|(key, _)| key != k);
        vars.push((k.to_string(), v.to_string()));
    }
    let child = command(&["agent"], &vars, m.scratch.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let agent = Agent { child, port };
    wait_until("the agent's API", Duration::from_secs(30), || {
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/health"))
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    });
    agent
}

#[test]
fn an_agent_listening_beyond_loopback_refuses_to_start_without_a_token() {
    let m = Member::new();
    let mut vars = m.vars();
    vars.push((
        "WALKEEPER_API_LISTEN".into(),
        format!("0.0.0.0:{}", free_port()),
    ));
    vars.push(("WALKEEPER_PGDATA".into(), m.pgdata.display().to_string()));
    let out = run(&["agent"], &vars, m.scratch.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("WALKEEPER_API_TOKEN"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn mutating_endpoints_need_the_bearer_token_and_file_names_never_leave_pg_wal() {
    let m = Member::new();
    let token_file = m.scratch.path().join("token");
    write_private(&token_file, "s3cr3t-token\n");
    let agent = start_agent(
        &m,
        &[("WALKEEPER_API_TOKEN_FILE", token_file.to_str().unwrap())],
    );
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", agent.port);
    let send = |method: reqwest::Method, path: &str, token: Option<&str>| -> (u16, String) {
        let mut r = http.request(method, url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    };
    use reqwest::Method;

    assert_eq!(send(Method::POST, "/backup-push", None).0, 401);
    assert_eq!(send(Method::POST, "/backup-push", Some("wrong")).0, 401);
    assert_eq!(send(Method::POST, "/restart", None).0, 401);
    assert_eq!(
        send(Method::POST, "/wal-push/000000010000000000000001", None).0,
        401
    );
    // Mutations are POST only.
    let tok = Some("s3cr3t-token");
    assert_eq!(send(Method::GET, "/backup-push", tok).0, 405);
    assert_eq!(
        send(Method::GET, "/wal-push/000000010000000000000001", tok).0,
        405
    );
    // With the token, the request gets through to the leadership check: nobody leads.
    let (code, body) = send(Method::POST, "/backup-push", tok);
    assert_eq!(code, 409, "{body}");
    // The configured token is also in the state directory, where wal-push looks when its own
    // environment lacks it.
    let copy = m.pgdata.join("pg_wal/.walkeeper/api-token");
    wait_until(
        "the token in the state directory",
        Duration::from_secs(30),
        || std::fs::read_to_string(&copy).is_ok_and(|t| t.trim() == "s3cr3t-token"),
    );

    // Read-only endpoints need no token.
    assert_eq!(send(Method::GET, "/health", None).0, 200);
    let (code, metrics) = send(Method::GET, "/metrics", None);
    assert_eq!(code, 200);
    assert!(metrics.contains("walkeeper_leader "), "{metrics}");
    let (code, status) = send(Method::GET, "/status", None);
    assert_eq!(code, 200);
    assert!(status.contains("\"role\":\"replica\""), "{status}");

    // Only WAL names, only pg_wal.
    for path in [
        "/wal-push/..%2F..%2Fetc%2Fpasswd",
        "/wal-push/etc/passwd",
        "/wal-fetch/postgresql.conf",
    ] {
        let (code, body) = send(Method::POST, path, tok);
        assert_eq!(code, 400, "{path}: {body}");
    }
    let (code, body) = send(Method::POST, "/wal-fetch/000000010000000000000009", tok);
    assert_eq!(code, 404, "{body}");
    assert!(!m.pgdata.join("pg_wal/000000010000000000000009").exists());
    // A nested sidecar path names its last component, inside pg_wal.
    let (code, body) = send(Method::POST, "/wal-push/a/b/000000010000000000000001", tok);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("pg_wal"), "{body}");
}

#[test]
fn the_agent_follows_the_leader_key_and_reconnects_after_etcd_restarts() {
    let mut m = Member::new();
    let agent = start_agent(&m, &[]);
    let status = |field: &str| -> serde_json::Value {
        let body = reqwest::blocking::get(format!("http://127.0.0.1:{}/status", agent.port))
            .and_then(|r| r.text())
            .unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default()[field].clone()
    };
    m.set_leader("pg2", 30);
    wait_until("the agent to see pg2 lead", Duration::from_secs(20), || {
        status("leader") == "pg2"
    });
    assert_eq!(status("role"), "replica");
    m.etcd.stop();
    wait_until(
        "the agent to notice etcd is gone",
        Duration::from_secs(30),
        || status("etcd_connected") == false,
    );
    assert_eq!(status("role"), "unknown");
    m.etcd.restart();
    m.set_leader("pg1", 30);
    wait_until(
        "the agent to reconnect and see pg1 lead",
        Duration::from_secs(30),
        || status("etcd_connected") == true && status("leader") == "pg1",
    );
    assert_eq!(status("role"), "leader");
}
