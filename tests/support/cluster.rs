//! A real Patroni cluster on loopback: etcd 3.4, an S3 server, and per member a walkeeper
//! agent, Patroni and PostgreSQL 15, each as its own processes under the postgres user.
//! Everything is stopped on drop, so a failing test stops it too. Cluster tests take a lock,
//! so two clusters never share the machine's two cores.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::*;

pub const PATRONI4: &str = "/opt/walkeeper-test/patroni-venv/bin/patroni";
pub const PATRONI3: &str = "/usr/bin/patroni";
pub const SU_PASSWORD: &str = "su-secret";
pub const REPL_PASSWORD: &str = "repl-secret";

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// etcd 3.4 on loopback ports, with its data in the scratch directory.
pub struct Etcd {
    child: Option<Child>,
    pub port: u16,
    peer_port: u16,
    pub data: PathBuf,
    log: PathBuf,
}

impl Etcd {
    pub fn start(dir: &Path) -> Etcd {
        let mut e = Etcd {
            child: None,
            port: free_port(),
            peer_port: free_port(),
            data: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(&self.log).unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t"])
            .arg("--data-dir")
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (installed by .ci/setup)");
        self.child = Some(child);
        let port = self.port;
        wait_until("etcd to serve", Duration::from_secs(30), || {
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &format!("127.0.0.1:{port}"),
                    "endpoint",
                    "health",
                ])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        });
    }

    pub fn url(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        super::kill_and_reap(&mut self.child);
    }

    /// Starts etcd again (after [`Etcd::stop`]) with its data, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops etcd, deletes its data and starts an empty one on the same port.
    pub fn wipe(&mut self) {
        self.stop();
        std::fs::remove_dir_all(&self.data).unwrap();
        self.spawn();
    }

    pub fn get(&self, key: &str) -> Option<String> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.url(), "get", key, "--print-value-only"])
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl get {key}: {}", stderr(&out));
        let v = String::from_utf8_lossy(&out.stdout).to_string();
        if v.is_empty() {
            None
        } else {
            // etcdctl adds a newline after the value
            Some(v.strip_suffix('\n').unwrap_or(&v).to_string())
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How a member is set up.
#[derive(Clone, Debug)]
pub struct MemberOpts {
    pub patroni: &'static str,
    /// `on` or `always`.
    pub archive_mode: &'static str,
    /// Extra keys of Patroni's `walkeeper` create-replica method section.
    pub method_args: Vec<(String, String)>,
    /// Extra envdir variables for this member's walkeeper (agent, wal-push, create-replica).
    pub env: Vec<(String, String)>,
    /// Put `cp %p <member>/cp-archive/%f;` before wal-push (the baseline of a plain cp).
    pub cp_baseline: bool,
    /// Only archive while `<member>/archive-blocked` does not exist.
    pub blockable_archiving: bool,
}

impl Default for MemberOpts {
    fn default() -> Self {
        MemberOpts {
            patroni: PATRONI4,
            archive_mode: "on",
            method_args: Vec::new(),
            env: Vec::new(),
            cp_baseline: false,
            blockable_archiving: false,
        }
    }
}

pub struct Member {
    pub name: String,
    pub dir: PathBuf,
    pub data: PathBuf,
    pub envdir: PathBuf,
    pub pg_port: u16,
    pub api_port: u16,
    pub agent_port: u16,
    pub opts: MemberOpts,
    patroni: Option<Child>,
    agent: Option<Child>,
    pub patroni_log: PathBuf,
    pub agent_log: PathBuf,
    pub wal_push_log: PathBuf,
}

impl Member {
    pub fn patroni_log_text(&self) -> String {
        std::fs::read_to_string(&self.patroni_log).unwrap_or_default()
    }
    pub fn agent_log_text(&self) -> String {
        std::fs::read_to_string(&self.agent_log).unwrap_or_default()
    }
    pub fn wal_push_log_text(&self) -> String {
        std::fs::read_to_string(&self.wal_push_log).unwrap_or_default()
    }
    pub fn postmaster_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
    pub fn patroni_pid(&self) -> Option<i32> {
        self.patroni.as_ref().map(|c| c.id() as i32)
    }
    pub fn agent_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.agent_port)
    }
    pub fn patroni_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.api_port)
    }
}

pub struct Cluster {
    pub members: Vec<Member>,
    pub etcd: Etcd,
    pub s3: S3,
    pub scope: String,
    pub scratch: Scratch,
    http: reqwest::blocking::Client,
    _one: MutexGuard<'static, ()>,
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) on a PID this test started.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

impl Cluster {
    pub fn new(scope: &str) -> Cluster {
        let one = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let scratch = Scratch::new();
        let etcd = Etcd::start(scratch.path());
        let s3 = S3::start();
        Cluster {
            members: Vec::new(),
            etcd,
            s3,
            scope: scope.to_string(),
            scratch,
            http: reqwest::blocking::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            _one: one,
        }
    }

    /// The archive variables every member shares.
    pub fn archive_vars(&self) -> Vec<(String, String)> {
        let v = |k: &str, val: &str| (k.to_string(), val.to_string());
        vec![
            v(
                "WALE_S3_PREFIX",
                &format!("s3://{S3_BUCKET}/{}", self.scope),
            ),
            v(
                "AWS_ENDPOINT",
                &format!("http://127.0.0.1:{}", self.s3.port),
            ),
            v("AWS_ACCESS_KEY_ID", S3_KEY),
            v("AWS_SECRET_ACCESS_KEY", S3_SECRET),
            v("AWS_REGION", "us-east-1"),
            v("AWS_S3_FORCE_PATH_STYLE", "true"),
            v("WALKEEPER_RETRY_TIMEOUT", "5"),
        ]
    }

    /// Archive objects, relative to the cluster's prefix.
    pub fn objects(&self) -> Vec<String> {
        let p = format!("{}/", self.scope);
        self.s3
            .objects()
            .into_iter()
            .filter_map(|o| o.strip_prefix(&p).map(String::from))
            .collect()
    }

    /// Runs walkeeper with the archive's variables (as root, outside any member).
    pub fn walkeeper(&self, args: &[&str]) -> Output {
        run(args, &self.archive_vars(), self.scratch.path())
    }

    /// Adds a member (not started) and returns its index.
    pub fn add(&mut self, opts: MemberOpts) -> usize {
        let i = self.members.len();
        let name = format!("pg{}", i + 1);
        let dir = self.scratch.mkdir(&name);
        let envdir = dir.join("env");
        std::fs::create_dir_all(&envdir).unwrap();
        let m = Member {
            data: dir.join("data"),
            envdir,
            pg_port: free_port(),
            api_port: free_port(),
            agent_port: free_port(),
            patroni_log: dir.join("patroni.log"),
            agent_log: dir.join("agent.log"),
            wal_push_log: dir.join("wal-push.log"),
            dir,
            name,
            opts,
            patroni: None,
            agent: None,
        };
        self.write_config(&m);
        self.members.push(m);
        i
    }

    fn write_config(&self, m: &Member) {
        let mut env = self.archive_vars();
        let v = |k: &str, val: String| (k.to_string(), val);
        env.extend([
            v("WALKEEPER_SCOPE", self.scope.clone()),
            v("WALKEEPER_NAME", m.name.clone()),
            v("WALKEEPER_ETCD_HOSTS", self.etcd.url()),
            v(
                "WALKEEPER_API_LISTEN",
                format!("127.0.0.1:{}", m.agent_port),
            ),
            v("WALKEEPER_PGDATA", m.data.display().to_string()),
            v(
                "WALKEEPER_CONNSTRING",
                format!(
                    "host={} port={} user=postgres dbname=postgres",
                    m.dir.display(),
                    m.pg_port
                ),
            ),
            v(
                "WALKEEPER_PATRONI_URL",
                format!("http://127.0.0.1:{}", m.api_port),
            ),
            v("WALKEEPER_BACKUP_SCHEDULE", "off".into()),
            v("WALKEEPER_BACKUP_LIST_REFRESH", "2s".into()),
            v("WALKEEPER_LOG", "info".into()),
        ]);
        env.extend(m.opts.env.iter().cloned());
        for (k, val) in &env {
            std::fs::write(m.envdir.join(k), format!("{val}\n")).unwrap();
        }
        let wk = walkeeper();
        let envdir = m.envdir.display();
        let dir = m.dir.display();
        let mut archive = format!("{wk} --envdir {envdir} wal-push %p 2>>{dir}/wal-push.log");
        if m.opts.cp_baseline {
            std::fs::create_dir_all(m.dir.join("cp-archive")).unwrap();
            archive =
                format!("test -f {dir}/cp-archive/%f || cp %p {dir}/cp-archive/%f; {archive}");
        }
        if m.opts.blockable_archiving {
            archive = format!("test ! -e {dir}/archive-blocked && {archive}");
        }
        let mut method = String::new();
        for (k, val) in &m.opts.method_args {
            writeln!(method, "    {k}: {val}").unwrap();
        }
        let yaml = format!(
            r#"scope: {scope}
namespace: /service/
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: {etcd}
bootstrap:
  dcs:
    ttl: 20
    loop_wait: 2
    retry_timeout: 5
    maximum_lag_on_failover: 1073741824
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: "on"
        wal_log_hints: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_keep_size: 256MB
        archive_mode: "{archive_mode}"
        archive_timeout: 0
  initdb:
  - encoding: UTF8
  - data-checksums
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 md5
  - host all all 127.0.0.1/32 md5
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {data}
  bin_dir: {pg_bin}
  pgpass: {dir}/pgpass
  authentication:
    superuser:
      username: postgres
      password: {su}
    replication:
      username: replicator
      password: {repl}
    rewind:
      username: postgres
      password: {su}
  parameters:
    unix_socket_directories: '{dir}'
    fsync: "off"
    archive_command: '{archive}'
  recovery_conf:
    restore_command: '{wk} --envdir {envdir} wal-fetch %f %p'
  create_replica_methods:
  - walkeeper
  - basebackup
  walkeeper:
    command: {wk} --envdir {envdir} create-replica
    no_leader: 1
    no_master: 1
{method}  basebackup:
    checkpoint: fast
"#,
            scope = self.scope,
            name = m.name,
            api = m.api_port,
            etcd = self.etcd.url(),
            archive_mode = m.opts.archive_mode,
            pg = m.pg_port,
            data = m.data.display(),
            pg_bin = PG_BIN,
            su = SU_PASSWORD,
            repl = REPL_PASSWORD,
            archive = archive.replace('\'', "''"),
        );
        std::fs::write(m.dir.join("patroni.yml"), yaml).unwrap();
        chown_pg_recursive(&m.dir);
    }

    /// Starts member `i`: its agent (until `/health` answers), then Patroni.
    pub fn start(&mut self, i: usize) {
        self.start_agent(i);
        self.start_patroni(i);
    }

    pub fn start_agent(&mut self, i: usize) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.agent_log)
            .unwrap();
        let child = as_postgres(walkeeper())
            .arg("--envdir")
            .arg(&m.envdir)
            .arg("agent")
            .current_dir(&m.dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &m.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        m.agent = Some(child);
        let url = m.agent_url("/health");
        let http = self.http.clone();
        let log = m.agent_log.clone();
        wait_until_or(
            "the agent to be ready",
            Duration::from_secs(60),
            || {
                http.get(&url)
                    .send()
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            },
            || std::fs::read_to_string(&log).unwrap_or_default(),
        );
    }

    pub fn start_patroni(&mut self, i: usize) {
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.patroni_log)
            .unwrap();
        let child = as_postgres(m.opts.patroni)
            .arg(m.dir.join("patroni.yml"))
            .current_dir(&m.dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &m.dir)
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        m.patroni = Some(child);
    }

    /// Sends `sig` to member `i`'s Patroni (the postmaster it started keeps running).
    pub fn signal_patroni(&mut self, i: usize, sig: i32) {
        if let Some(pid) = self.members[i].patroni_pid() {
            signal(pid, sig);
        }
        if sig == libc::SIGKILL {
            if let Some(mut c) = self.members[i].patroni.take() {
                let _ = c.wait();
            }
        }
    }

    /// Waits for member `i`'s Patroni to exit (after a SIGTERM).
    pub fn wait_patroni_exit(&mut self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        if let Some(mut c) = self.members[i].patroni.take() {
            loop {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "Patroni of {} did not exit",
                    self.members[i].name
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// SIGKILL of the member's PostgreSQL (postmaster) and Patroni: a crashed host.
    pub fn crash(&mut self, i: usize) {
        let pm = self.members[i].postmaster_pid();
        self.signal_patroni(i, libc::SIGKILL);
        if let Some(pid) = pm {
            signal(pid, libc::SIGKILL);
            wait_until("the postmaster to die", Duration::from_secs(30), || {
                !alive(pid)
            });
        }
    }

    /// Stops member `i`'s PostgreSQL directly (immediate), for crash cleanup.
    pub fn stop_postgres(&self, i: usize) {
        let m = &self.members[i];
        if m.data.join("postmaster.pid").exists() {
            let _ = pg_tool("pg_ctl")
                .arg("-D")
                .arg(&m.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }

    pub fn stop_agent(&mut self, i: usize) {
        self.signal_agent(i, libc::SIGTERM);
    }

    /// Sends `sig` to member `i`'s agent and waits until it has exited (SIGKILL after 10 s).
    pub fn signal_agent(&mut self, i: usize, sig: i32) {
        if let Some(mut c) = self.members[i].agent.take() {
            signal(c.id() as i32, sig);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops a member completely: Patroni (clean), its PostgreSQL, its agent.
    pub fn stop_member(&mut self, i: usize) {
        if let Some(pid) = self.members[i].patroni_pid() {
            signal(pid, libc::SIGTERM);
            self.wait_patroni_exit(i, Duration::from_secs(60));
        }
        self.stop_postgres(i);
        self.stop_agent(i);
    }

    /// What member `i`'s Patroni says about itself.
    pub fn patroni_state(&self, i: usize) -> Option<serde_json::Value> {
        let r = self
            .http
            .get(self.members[i].patroni_url("/patroni"))
            .send()
            .ok()?;
        r.json().ok()
    }

    /// The member holding the leader key.
    pub fn leader(&self) -> Option<usize> {
        let name = self.etcd.get(&format!("/service/{}/leader", self.scope))?;
        self.members.iter().position(|m| m.name == name)
    }

    /// Waits until some member leads and runs as primary, and returns it.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let mut found = None;
        wait_until_or(
            "a leader running as primary",
            timeout,
            || {
                found = self.leader().filter(|&i| {
                    self.patroni_state(i)
                        .map(|s| s["role"] == "primary" || s["role"] == "master")
                        .unwrap_or(false)
                        && self.psql_try(i, "SELECT pg_is_in_recovery()").as_deref() == Some("f")
                });
                found.is_some()
            },
            || self.logs(),
        );
        found.unwrap()
    }

    /// Waits until member `i` runs as a replica streaming from the leader.
    pub fn wait_streaming(&self, i: usize, timeout: Duration) {
        wait_until_or(
            &format!("{} to stream from the leader", self.members[i].name),
            timeout,
            || {
                self.psql_try(i, "SELECT status FROM pg_stat_wal_receiver")
                    .as_deref()
                    == Some("streaming")
            },
            || self.logs(),
        );
    }

    /// Every member's logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let tail = |t: String| {
                let lines: Vec<&str> = t.lines().collect();
                lines[lines.len().saturating_sub(40)..].join("\n")
            };
            let _ = write!(
                out,
                "\n--- {} patroni ---\n{}\n--- {} agent ---\n{}\n--- {} wal-push ---\n{}\n",
                m.name,
                tail(m.patroni_log_text()),
                m.name,
                tail(m.agent_log_text()),
                m.name,
                tail(m.wal_push_log_text())
            );
        }
        out
    }

    fn psql_cmd(&self, i: usize, sql: &str) -> Output {
        let m = &self.members[i];
        pg_tool("psql")
            .arg("-h")
            .arg(&m.dir)
            .arg("-p")
            .arg(m.pg_port.to_string())
            .args([
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-XqAt",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap()
    }

    /// Runs SQL on member `i`; None when it fails (server down, in recovery for a write).
    pub fn psql_try(&self, i: usize, sql: &str) -> Option<String> {
        let out = self.psql_cmd(i, sql);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn psql(&self, i: usize, sql: &str) -> String {
        let out = self.psql_cmd(i, sql);
        assert!(
            out.status.success(),
            "psql on {} {sql}: {}{}",
            self.members[i].name,
            stderr(&out),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn pgbench(&self, i: usize, args: &[&str]) {
        let m = &self.members[i];
        let out = pg_tool("pgbench")
            .arg("-h")
            .arg(&m.dir)
            .arg("-p")
            .arg(m.pg_port.to_string())
            .args(["-U", "postgres"])
            .args(args)
            .arg("postgres")
            .output()
            .unwrap();
        assert!(out.status.success(), "pgbench {args:?}: {}", stderr(&out));
    }

    /// Switches WAL on member `i` and waits until that segment is archived.
    pub fn switch_and_wait_archived(&self, i: usize) -> String {
        let seg = self.psql(i, "SELECT pg_walfile_name(pg_switch_wal())");
        wait_until_or(
            &format!("{seg} to be archived"),
            Duration::from_secs(60),
            || {
                // pg_stat_archiver names the last file archived, which may be an older
                // segment's `.backup` file archived after this segment: ask the archive too.
                self.psql_try(
                    i,
                    "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
                )
                .is_some_and(|l| l >= seg)
                    || self
                        .objects()
                        .iter()
                        .any(|o| o.starts_with(&format!("wal_005/{seg}.")))
            },
            || self.logs(),
        );
        seg
    }

    pub fn agent_get(&self, i: usize, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(self.members[i].agent_url(path))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    pub fn agent_post(&self, i: usize, path: &str, body: &str) -> (u16, String) {
        let r = self
            .http
            .post(self.members[i].agent_url(path))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap_or_default())
    }

    /// Takes a base backup through the leader's agent and returns the backup list.
    pub fn backup(&self) -> Vec<Vec<String>> {
        let l = self.wait_leader(Duration::from_secs(60));
        let (code, body) = self.agent_post(l, "/backup-push", "");
        assert_eq!(code, 200, "backup-push: {body}{}", self.logs());
        self.backup_list()
    }

    /// `walkeeper backup-list` rows (header dropped).
    pub fn backup_list(&self) -> Vec<Vec<String>> {
        let out = self.walkeeper(&["backup-list"]);
        assert!(out.status.success(), "backup-list: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .map(|l| l.split('\t').map(String::from).collect())
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if let Some(pid) = self.members[i].patroni_pid() {
                signal(pid, libc::SIGKILL);
            }
            if let Some(mut c) = self.members[i].patroni.take() {
                let _ = c.wait();
            }
            self.stop_postgres(i);
            if let Some(mut c) = self.members[i].agent.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Like [`wait_until`], with more to say on timeout.
pub fn wait_until_or(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
