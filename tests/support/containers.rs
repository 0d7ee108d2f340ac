//! Container fixtures, driven through the Docker engine's API (bollard): per test, two private
//! networks (`cluster`: etcd and the members; `storage`: the S3 server and the members), an
//! etcd container, an S3 container and walkeeper-patroni members, all built locally by
//! `images/build-images`. Everything a test creates is labelled and removed on drop, so a
//! failing test removes it too; leftovers of a killed test process are removed by the next run.
//! Tests talk to the containers only through the engine (exec, logs), never over the network.
#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
    NetworkDisconnectRequest, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

/// The tag the tests build and use (so they never replace a user's `local` images).
pub const TAG: &str = "test";
pub const BUCKET: &str = "walkeeper";
pub const S3_KEY: &str = "AKIAWALKEEPERCONTAINERS";
pub const S3_SECRET: &str = "walkeeper-container-test-secret";
pub const SU_PASSWORD: &str = "container-su-secret";
pub const REPL_PASSWORD: &str = "container-repl-secret";
pub const API_TOKEN: &str = "container-test-api-token";
const LABEL: &str = "org.walkeeper.test";
const PID_LABEL: &str = "org.walkeeper.test.pid";
/// The members' data directory (the image's PGDATA).
pub const PGDATA: &str = "/var/lib/postgresql/data/pgdata";
const ENVDIR: &str = "/run/walkeeper/env";

static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());
static IMAGES: OnceLock<Result<(), String>> = OnceLock::new();

fn say(line: &str) {
    // Straight to stderr, past the test harness's capture: skips and build times show in CI.
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A connection to the Docker engine, with the runtime that drives it.
pub struct Engine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
}

/// The engine, or None (with a message saying so) when the container suite is skipped:
/// `WALKEEPER_CONTAINER_TESTS=0`, or no engine answers. With `WALKEEPER_CONTAINER_TESTS=1` a
/// missing engine fails the test instead.
pub fn engine(test: &str) -> Option<Engine> {
    let setting = std::env::var("WALKEEPER_CONTAINER_TESTS").unwrap_or_default();
    let required = setting == "1";
    let skip = |why: String| -> Option<Engine> {
        assert!(
            !required,
            "WALKEEPER_CONTAINER_TESTS=1 but the container suite cannot run: {why}"
        );
        say(&format!("SKIPPED container test {test}: {why}"));
        None
    };
    if setting == "0" {
        return skip("WALKEEPER_CONTAINER_TESTS=0".into());
    }
    if std::env::var_os("DOCKER_HOST").is_none() && !Path::new("/var/run/docker.sock").exists() {
        return skip("no Docker engine (/var/run/docker.sock is absent)".into());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let connected = rt.block_on(async {
        let connect = async {
            let docker = Docker::connect_with_defaults()?;
            // The engine here is 20.10 (API 1.41); bollard would otherwise speak its newer
            // default version.
            let docker = docker.negotiate_version().await?;
            docker.ping().await?;
            Ok::<_, bollard::errors::Error>(docker)
        };
        tokio::time::timeout(Duration::from_secs(15), connect).await
    });
    match connected {
        Ok(Ok(docker)) => Some(Engine { rt, docker }),
        Ok(Err(e)) => skip(format!("the Docker engine does not answer: {e}")),
        Err(_) => skip("the Docker engine did not answer within 15 s".into()),
    }
}

/// Builds (or finds up to date) the images, once per test process.
fn ensure_images() {
    let result = IMAGES.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let start = Instant::now();
        let out = Command::new(root.join("images/build-images"))
            .args(["--binary", super::walkeeper(), "--tag", TAG])
            .current_dir(root)
            .output()
            .map_err(|e| format!("running images/build-images: {e}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("images/build-images failed:\n{text}"));
        }
        for l in text.lines() {
            say(&format!("  {l}"));
        }
        say(&format!(
            "container images ready in {:.1}s",
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// What a command run in a container gave back.
#[derive(Debug)]
pub struct Exec {
    pub code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl Exec {
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

/// A test's containers and networks.
pub struct Cluster {
    engine: Engine,
    /// Prefix of every container and network name of this test.
    pub id: String,
    pub scope: String,
    pub cluster_net: String,
    pub storage_net: String,
    containers: Vec<String>,
    networks: Vec<String>,
    /// Extra environment of each member (index i is member `pg{i+1}`).
    member_env: Vec<Vec<String>>,
    /// etcd over TLS: the certificates `images/make-etcd-certs` made, in a directory of this
    /// test (removed on drop), mounted read-only into etcd and the members.
    pub etcd_tls: Option<std::path::PathBuf>,
    started: Instant,
    _one: MutexGuard<'static, ()>,
}

impl Cluster {
    /// Networks, etcd and the S3 server for one test; no member yet.
    pub fn new(engine: Engine, scope: &str) -> Cluster {
        Cluster::create(engine, scope, false)
    }

    /// As [`Cluster::new`], with etcd over TLS and client certificates (images/compose.tls.yml's
    /// setup): certificates made by `images/make-etcd-certs`, Patroni and walkeeper given them
    /// under Patroni's variables.
    pub fn with_tls_etcd(engine: Engine, scope: &str) -> Cluster {
        Cluster::create(engine, scope, true)
    }

    fn create(engine: Engine, scope: &str, tls: bool) -> Cluster {
        let one = ONE_CLUSTER_AT_A_TIME
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        ensure_images();
        let id = format!("wkt-{}-{scope}", std::process::id());
        let mut c = Cluster {
            engine,
            cluster_net: format!("{id}-cluster"),
            storage_net: format!("{id}-storage"),
            id,
            scope: scope.to_string(),
            containers: Vec::new(),
            networks: Vec::new(),
            member_env: Vec::new(),
            etcd_tls: None,
            started: Instant::now(),
            _one: one,
        };
        c.remove_leftovers();
        if tls {
            c.etcd_tls = Some(make_etcd_certs(&c.id));
        }
        for net in [c.cluster_net.clone(), c.storage_net.clone()] {
            c.create_network(&net);
        }
        c.start_etcd();
        c.start_s3();
        c
    }

    fn block<F: std::future::Future>(&self, f: F) -> F::Output {
        self.engine.rt.block_on(f)
    }

    fn labels(&self) -> HashMap<String, String> {
        HashMap::from([
            (LABEL.to_string(), self.id.clone()),
            (PID_LABEL.to_string(), std::process::id().to_string()),
        ])
    }

    /// Removes containers and networks left by test processes that no longer run.
    fn remove_leftovers(&self) {
        let d = &self.engine.docker;
        let filters = HashMap::from([("label".to_string(), vec![PID_LABEL.to_string()])]);
        let dead = |labels: &Option<HashMap<String, String>>| -> bool {
            let pid = labels
                .as_ref()
                .and_then(|l| l.get(PID_LABEL))
                .and_then(|p| p.parse::<i32>().ok());
            // SAFETY: signal 0 only asks whether the process exists.
            pid.is_some_and(|p| p != std::process::id() as i32 && unsafe { libc::kill(p, 0) } != 0)
        };
        let containers = self
            .block(
                d.list_containers(Some(
                    ListContainersOptionsBuilder::default()
                        .all(true)
                        .filters(&filters)
                        .build(),
                )),
            )
            .unwrap_or_default();
        for c in containers.iter().filter(|c| dead(&c.labels)) {
            if let Some(id) = &c.id {
                say(&format!("removing leftover container {:?}", c.names));
                let _ = self.block(
                    d.remove_container(
                        id,
                        Some(
                            RemoveContainerOptionsBuilder::default()
                                .force(true)
                                .v(true)
                                .build(),
                        ),
                    ),
                );
            }
        }
        let networks = self
            .block(
                d.list_networks(Some(
                    ListNetworksOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                )),
            )
            .unwrap_or_default();
        for n in networks.iter().filter(|n| dead(&n.labels)) {
            if let Some(id) = &n.id {
                let _ = self.block(d.remove_network(id));
            }
        }
    }

    fn create_network(&mut self, name: &str) {
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            // No way out of the test's own networks.
            internal: Some(true),
            labels: Some(self.labels()),
            ..Default::default()
        };
        self.block(self.engine.docker.create_network(req))
            .unwrap_or_else(|e| panic!("creating network {name}: {e}"));
        self.networks.push(name.to_string());
    }

    /// The engine's name of a container of this test (`etcd`, `s3`, `pg1`, ...).
    pub fn container(&self, logical: &str) -> String {
        format!("{}-{logical}", self.id)
    }

    /// Creates and starts a container on `net` (with `alias`), also attached to `more` nets.
    fn run(&mut self, logical: &str, mut body: ContainerCreateBody, net: &str, more: &[&str]) {
        let name = self.container(logical);
        body.labels = Some(self.labels());
        body.hostname = Some(logical.to_string());
        body.networking_config = Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                net.to_string(),
                EndpointSettings {
                    aliases: Some(vec![logical.to_string()]),
                    ..Default::default()
                },
            )])),
        });
        let host = body.host_config.get_or_insert_with(HostConfig::default);
        host.network_mode = Some(net.to_string());
        let d = &self.engine.docker;
        self.block(d.create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            body,
        ))
        .unwrap_or_else(|e| panic!("creating container {name}: {e}"));
        self.containers.push(name.clone());
        for extra in more {
            self.connect(logical, extra);
        }
        self.block(d.start_container(&name, None))
            .unwrap_or_else(|e| panic!("starting container {name}: {e}"));
    }

    fn start_etcd(&mut self) {
        let mut body = ContainerCreateBody {
            image: Some(format!("walkeeper-etcd:{TAG}")),
            ..Default::default()
        };
        if let Some(dir) = &self.etcd_tls {
            // images/compose.tls.yml's etcd settings.
            body.env = Some(
                [
                    "ETCD_LISTEN_CLIENT_URLS=https://0.0.0.0:2379",
                    "ETCD_ADVERTISE_CLIENT_URLS=https://etcd:2379",
                    "ETCD_CLIENT_CERT_AUTH=true",
                    "ETCD_TRUSTED_CA_FILE=/etc/etcd/tls/ca.crt",
                    "ETCD_CERT_FILE=/etc/etcd/tls/server.crt",
                    "ETCD_KEY_FILE=/etc/etcd/tls/server.key",
                ]
                .map(String::from)
                .to_vec(),
            );
            body.host_config = Some(HostConfig {
                binds: Some(vec![format!("{}:/etc/etcd/tls:ro", dir.display())]),
                ..Default::default()
            });
        }
        let net = self.cluster_net.clone();
        self.run("etcd", body, &net, &[]);
        self.wait_until(
            "etcd to serve",
            Duration::from_secs(60),
            |c| c.etcdctl(&["endpoint", "health"]).ok(),
            |c| c.logs("etcd"),
        );
    }

    fn start_s3(&mut self) {
        let body = ContainerCreateBody {
            image: Some(format!("walkeeper-s3:{TAG}")),
            env: Some(vec![
                format!("S3_BUCKET={BUCKET}"),
                format!("S3_ACCESS_KEY={S3_KEY}"),
                format!("S3_SECRET_KEY={S3_SECRET}"),
            ]),
            host_config: Some(HostConfig {
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let net = self.storage_net.clone();
        self.run("s3", body, &net, &[]);
        self.wait_until(
            "the S3 server to listen",
            Duration::from_secs(30),
            |c| {
                c.exec(
                    "s3",
                    "root",
                    &["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9000"],
                    &[],
                )
                .ok()
            },
            |c| c.logs("s3"),
        );
    }

    /// Creates and starts a container of the test (`logical` is its name and network alias) on
    /// `net`, also attached to `more`.
    pub fn start_container(
        &mut self,
        logical: &str,
        body: ContainerCreateBody,
        net: &str,
        more: &[&str],
    ) {
        self.run(logical, body, net, more);
    }

    /// A network's subnet (CIDR), as the engine assigned it.
    pub fn subnet(&self, net: &str) -> String {
        let n = self
            .block(self.engine.docker.inspect_network(net, None))
            .unwrap_or_else(|e| panic!("inspecting network {net}: {e}"));
        n.ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.subnet))
            .unwrap_or_else(|| panic!("network {net} has no subnet"))
    }

    /// Runs `sql` through psql as postgres in the container `logical`; None when it fails.
    pub fn psql_in_try(&self, logical: &str, sql: &str) -> Option<String> {
        let e = self.psql_in(logical, sql);
        e.ok().then(|| e.stdout.trim().to_string())
    }

    /// Removes etcd with its data and starts an empty one under the same name.
    pub fn replace_etcd(&mut self) {
        self.remove("etcd");
        self.start_etcd();
    }

    /// The archive's prefix: dingo's layout for `WAL_S3_BUCKET`, which the members are given.
    pub fn prefix(&self) -> String {
        format!("s3://{BUCKET}/backups/{}/wal", self.scope)
    }

    /// The storage variables, for a container outside the cluster (a standalone restore).
    pub fn storage_env(&self) -> Vec<String> {
        vec![
            format!("WALE_S3_PREFIX={}", self.prefix()),
            "AWS_ENDPOINT=http://s3:9000".into(),
            format!("AWS_ACCESS_KEY_ID={S3_KEY}"),
            format!("AWS_SECRET_ACCESS_KEY={S3_SECRET}"),
            "AWS_REGION=us-east-1".into(),
            "AWS_S3_FORCE_PATH_STYLE=true".into(),
        ]
    }

    /// A member's environment: what a user of the image sets.
    fn member_body(&self, i: usize) -> ContainerCreateBody {
        let name = member(i);
        let mut env = vec![
            format!("PATRONI_SCOPE={}", self.scope),
            format!("PATRONI_NAME={name}"),
            format!("CONNECT_HOST={name}"),
            "ETCD_HOSTS=etcd:2379".into(),
            format!("PATRONI_SUPERUSER_PASSWORD={SU_PASSWORD}"),
            format!("PATRONI_REPLICATION_PASSWORD={REPL_PASSWORD}"),
            format!("WAL_S3_BUCKET={BUCKET}"),
            "AWS_ENDPOINT=http://s3:9000".into(),
            format!("AWS_ACCESS_KEY_ID={S3_KEY}"),
            format!("AWS_SECRET_ACCESS_KEY={S3_SECRET}"),
            "AWS_REGION=us-east-1".into(),
            "AWS_S3_FORCE_PATH_STYLE=true".into(),
            format!("WALKEEPER_API_TOKEN={API_TOKEN}"),
            "WALKEEPER_RETRY_TIMEOUT=5".into(),
            "WALKEEPER_BACKUP_LIST_REFRESH=2s".into(),
            "BACKUP_SCHEDULE=off".into(),
            "PATRONI_TTL=20".into(),
            "PATRONI_LOOP_WAIT=2".into(),
            "PATRONI_RETRY_TIMEOUT=5".into(),
            "ARCHIVE_TIMEOUT=0".into(),
        ];
        let mut binds = Vec::new();
        if let Some(dir) = &self.etcd_tls {
            // images/compose.tls.yml's member settings.
            env.extend(
                [
                    "PATRONI_ETCD3_PROTOCOL=https",
                    "PATRONI_ETCD3_CACERT=/etc/walkeeper/etcd-tls/ca.crt",
                    "PATRONI_ETCD3_CERT=/etc/walkeeper/etcd-tls/client.crt",
                    "PATRONI_ETCD3_KEY=/etc/walkeeper/etcd-tls/client.key",
                ]
                .map(String::from),
            );
            binds.push(format!("{}:/etc/walkeeper/etcd-tls:ro", dir.display()));
        }
        env.extend(self.member_env[i].iter().cloned());
        ContainerCreateBody {
            image: Some(format!("walkeeper-patroni:{TAG}")),
            env: Some(env),
            // Long enough for Patroni to stop PostgreSQL and release the leader key.
            stop_timeout: Some(60),
            host_config: Some(HostConfig {
                binds: (!binds.is_empty()).then_some(binds),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Adds member `pg{n}` with extra environment variables and starts it; returns its index.
    pub fn add_member(&mut self, extra_env: &[(&str, &str)]) -> usize {
        let i = self.member_env.len();
        self.member_env
            .push(extra_env.iter().map(|(k, v)| format!("{k}={v}")).collect());
        self.start_member(i);
        i
    }

    /// Creates and starts member `i`'s container (fresh: an empty data directory).
    pub fn start_member(&mut self, i: usize) {
        let body = self.member_body(i);
        let (net, storage) = (self.cluster_net.clone(), self.storage_net.clone());
        self.run(&member(i), body, &net, &[&storage]);
    }

    pub fn members(&self) -> usize {
        self.member_env.len()
    }

    /// Stops a container the way `docker stop` does (SIGTERM, then SIGKILL after the timeout);
    /// returns how long it took and the exit code.
    pub fn stop(&self, logical: &str) -> (Duration, i64) {
        let name = self.container(logical);
        let start = Instant::now();
        self.block(self.engine.docker.stop_container(
            &name,
            Some(StopContainerOptionsBuilder::default().t(60).build()),
        ))
        .unwrap_or_else(|e| panic!("stopping {name}: {e}"));
        let took = start.elapsed();
        let state = self
            .block(self.engine.docker.inspect_container(&name, None))
            .unwrap_or_else(|e| panic!("inspecting {name}: {e}"))
            .state
            .unwrap_or_default();
        (took, state.exit_code.unwrap_or(-1))
    }

    /// Removes a container and its data.
    pub fn remove(&mut self, logical: &str) {
        let name = self.container(logical);
        self.block(
            self.engine.docker.remove_container(
                &name,
                Some(
                    RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build(),
                ),
            ),
        )
        .unwrap_or_else(|e| panic!("removing {name}: {e}"));
        self.containers.retain(|c| *c != name);
    }

    pub fn disconnect(&self, logical: &str, net: &str) {
        let req = NetworkDisconnectRequest {
            container: self.container(logical),
            force: Some(true),
        };
        self.block(self.engine.docker.disconnect_network(net, req))
            .unwrap_or_else(|e| panic!("disconnecting {logical} from {net}: {e}"));
    }

    pub fn connect(&self, logical: &str, net: &str) {
        let req = NetworkConnectRequest {
            container: self.container(logical),
            endpoint_config: Some(EndpointSettings {
                aliases: Some(vec![logical.to_string()]),
                ..Default::default()
            }),
        };
        self.block(self.engine.docker.connect_network(net, req))
            .unwrap_or_else(|e| panic!("connecting {logical} to {net}: {e}"));
    }

    /// Runs a command in a container (as `user`, with extra environment `env`).
    pub fn exec(&self, logical: &str, user: &str, cmd: &[&str], env: &[&str]) -> Exec {
        let name = self.container(logical);
        let d = &self.engine.docker;
        let run = async {
            let created = d
                .create_exec(
                    &name,
                    CreateExecOptions {
                        attach_stdout: Some(true),
                        attach_stderr: Some(true),
                        cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                        env: Some(env.iter().map(|s| s.to_string()).collect()),
                        user: Some(user.to_string()),
                        ..Default::default()
                    },
                )
                .await?;
            let (mut stdout, mut stderr) = (String::new(), String::new());
            if let StartExecResults::Attached { mut output, .. } =
                d.start_exec(&created.id, None).await?
            {
                while let Some(chunk) = output.next().await {
                    match chunk? {
                        LogOutput::StdOut { message } => {
                            stdout.push_str(&String::from_utf8_lossy(&message))
                        }
                        LogOutput::StdErr { message } => {
                            stderr.push_str(&String::from_utf8_lossy(&message))
                        }
                        _ => {}
                    }
                }
            }
            let code = d.inspect_exec(&created.id).await?.exit_code.unwrap_or(-1);
            Ok::<_, bollard::errors::Error>(Exec {
                code,
                stdout,
                stderr,
            })
        };
        match self.block(async { tokio::time::timeout(Duration::from_secs(300), run).await }) {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => Exec {
                code: -1,
                stdout: String::new(),
                stderr: format!("exec {cmd:?} in {name}: {e}"),
            },
            Err(_) => Exec {
                code: -1,
                stdout: String::new(),
                stderr: format!("exec {cmd:?} in {name}: no answer within 300 s"),
            },
        }
    }

    /// The last lines of a container's log.
    pub fn logs(&self, logical: &str) -> String {
        self.logs_tail(logical, "60")
    }

    /// A container's log (`tail`: a number of lines, or "all").
    pub fn logs_tail(&self, logical: &str, tail: &str) -> String {
        let name = self.container(logical);
        let mut stream = self.engine.docker.logs(
            &name,
            Some(
                LogsOptionsBuilder::default()
                    .stdout(true)
                    .stderr(true)
                    .tail(tail)
                    .build(),
            ),
        );
        self.block(async {
            let mut text = String::new();
            while let Some(Ok(chunk)) = stream.next().await {
                text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            }
            text
        })
    }

    /// Every member's recent log, for failure messages.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for i in 0..self.members() {
            let name = self.container(&member(i));
            if self.containers.contains(&name) {
                out.push_str(&format!(
                    "\n--- {} ---\n{}",
                    member(i),
                    self.logs(&member(i))
                ));
            }
        }
        out
    }

    /// Polls `cond` every 200 ms until it holds; on timeout, panics with `context`.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&Cluster) -> bool,
        context: impl Fn(&Cluster) -> String,
    ) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    context(self)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn psql_exec(&self, i: usize, sql: &str) -> Exec {
        self.psql_in(&member(i), sql)
    }

    /// Runs `sql` through psql as postgres in the container `logical`.
    fn psql_in(&self, logical: &str, sql: &str) -> Exec {
        self.exec(
            logical,
            "postgres",
            &[
                "psql",
                "-XqAt",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                "postgres",
                "-c",
                sql,
            ],
            &[],
        )
    }

    /// Runs SQL on member `i`; None when it fails (server down, read-only, ...).
    pub fn psql_try(&self, i: usize, sql: &str) -> Option<String> {
        let e = self.psql_exec(i, sql);
        e.ok().then(|| e.stdout.trim().to_string())
    }

    pub fn psql(&self, i: usize, sql: &str) -> String {
        let e = self.psql_exec(i, sql);
        assert!(
            e.ok(),
            "psql on {}: {sql}: {}{}",
            member(i),
            e.stderr,
            self.all_logs()
        );
        e.stdout.trim().to_string()
    }

    /// etcdctl in the etcd container, over TLS with etcd's own certificate when etcd uses TLS.
    pub fn etcdctl(&self, args: &[&str]) -> Exec {
        let mut cmd = vec!["etcdctl"];
        if self.etcd_tls.is_some() {
            cmd.extend([
                "--endpoints=https://127.0.0.1:2379",
                "--cacert=/etc/etcd/tls/ca.crt",
                "--cert=/etc/etcd/tls/server.crt",
                "--key=/etc/etcd/tls/server.key",
            ]);
        }
        cmd.extend_from_slice(args);
        self.exec("etcd", "root", &cmd, &[])
    }

    /// A key's value in etcd.
    pub fn etcd_get(&self, key: &str) -> Option<String> {
        let e = self.etcdctl(&["get", key, "--print-value-only"]);
        assert!(e.ok(), "etcdctl get {key}: {}", e.stderr);
        let v = e.stdout.strip_suffix('\n').unwrap_or(&e.stdout);
        (!v.is_empty()).then(|| v.to_string())
    }

    pub fn key(&self, name: &str) -> String {
        format!("/service/{}/{name}", self.scope)
    }

    /// The member holding the leader key.
    pub fn leader(&self) -> Option<usize> {
        let name = self.etcd_get(&self.key("leader"))?;
        (0..self.members()).find(|&i| member(i) == name)
    }

    /// Waits until some member holds the leader key and runs as a primary; returns it.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let mut found = None;
        self.wait_until(
            "a leader running as primary",
            timeout,
            |c| {
                found = c.leader().filter(|&i| {
                    c.psql_try(i, "SELECT pg_is_in_recovery()").as_deref() == Some("f")
                });
                found.is_some()
            },
            |c| c.all_logs(),
        );
        found.unwrap()
    }

    /// Waits until member `i` streams from the leader.
    pub fn wait_streaming(&self, i: usize, timeout: Duration) {
        self.wait_until(
            &format!("{} to stream from the leader", member(i)),
            timeout,
            |c| {
                c.psql_try(i, "SELECT status FROM pg_stat_wal_receiver")
                    .as_deref()
                    == Some("streaming")
            },
            |c| c.all_logs(),
        );
    }

    /// Switches WAL on member `i` and waits until that segment is archived.
    pub fn switch_and_wait_archived(&self, i: usize) -> String {
        let seg = self.psql(i, "SELECT pg_walfile_name(pg_switch_wal())");
        self.wait_until(
            &format!("{seg} to be archived"),
            Duration::from_secs(60),
            |c| {
                c.psql_try(
                    i,
                    "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
                )
                .is_some_and(|l| l >= seg)
            },
            |c| c.all_logs(),
        );
        seg
    }

    /// Runs walkeeper in member `i` as postgres, with the member's envdir.
    pub fn walkeeper(&self, i: usize, args: &[&str]) -> Exec {
        let mut cmd = vec!["walkeeper", "--envdir", ENVDIR];
        cmd.extend_from_slice(args);
        self.exec(&member(i), "postgres", &cmd, &[])
    }

    /// `walkeeper backup-list` rows (header dropped), run in member `i`.
    pub fn backup_list(&self, i: usize) -> Vec<Vec<String>> {
        let e = self.walkeeper(i, &["backup-list"]);
        assert!(e.ok(), "backup-list: {}", e.stderr);
        e.stdout
            .lines()
            .skip(1)
            .map(|l| l.split('\t').map(String::from).collect())
            .collect()
    }

    /// An HTTP request to member `i`'s agent API (from inside its container), with the bearer
    /// token when `token` (passed in the exec's environment, not its command line).
    pub fn agent(
        &self,
        i: usize,
        method: &str,
        path: &str,
        body: &str,
        token: bool,
    ) -> (u16, String) {
        const CLIENT: &str = r#"
import os, sys, urllib.error, urllib.request
method, path, body = sys.argv[1], sys.argv[2], sys.argv[3]
data = body.encode() if body or method == "POST" else None
req = urllib.request.Request("http://127.0.0.1:8432" + path, data=data, method=method)
req.add_header("Content-Type", "application/json")
if os.environ.get("TOKEN"):
    req.add_header("Authorization", "Bearer " + os.environ["TOKEN"])
try:
    r = urllib.request.urlopen(req, timeout=120)
    code, text = r.status, r.read()
except urllib.error.HTTPError as e:
    code, text = e.code, e.read()
sys.stdout.write("%d\n%s" % (code, text.decode()))
"#;
        let env = format!("TOKEN={}", if token { API_TOKEN } else { "" });
        let e = self.exec(
            &member(i),
            "postgres",
            &["python3", "-c", CLIENT, method, path, body],
            &[&env],
        );
        assert!(e.ok(), "agent {method} {path}: {}", e.stderr);
        let (code, text) = e.stdout.split_once('\n').unwrap_or((&e.stdout, ""));
        (code.trim().parse().unwrap_or(0), text.to_string())
    }

    /// Object names in the archive, relative to the prefix.
    pub fn objects(&self) -> Vec<String> {
        let dir = format!("/data/{BUCKET}/backups/{}/wal", self.scope);
        let e = self.exec(
            "s3",
            "root",
            &["find", &dir, "-type", "f", "-printf", "%P\\n"],
            &[],
        );
        let mut v: Vec<String> = e.stdout.lines().map(String::from).collect();
        v.sort();
        v
    }

    /// WAL file names (without codec extension) in the archive.
    pub fn archived_wal(&self) -> BTreeSet<String> {
        self.objects()
            .iter()
            .filter_map(|o| o.strip_prefix("wal_005/"))
            .map(|o| o.rsplit_once('.').map(|(b, _)| b).unwrap_or(o).to_string())
            .collect()
    }

    /// Restores the newest backup and all archived WAL into a new, standalone container (no
    /// Patroni, no etcd), starts PostgreSQL there, waits for the end of recovery and runs `sql`.
    pub fn standalone_restore_query(&mut self, sql: &str) -> String {
        // The same data directory path as the members': the backup's configuration names it.
        const SCRIPT: &str = r#"set -eu
install -d -o postgres -g postgres -m 0700 "$PGDATA"
install -d -o postgres -g postgres -m 2775 /var/run/postgresql
cd /var/lib/postgresql
setpriv --reuid=postgres --regid=postgres --init-groups walkeeper restore "$PGDATA"
exec setpriv --reuid=postgres --regid=postgres --init-groups /usr/lib/postgresql/15/bin/postgres \
  -D "$PGDATA" -c archive_mode=off -c listen_addresses=''
"#;
        let body = ContainerCreateBody {
            image: Some(format!("walkeeper-patroni:{TAG}")),
            entrypoint: Some(vec![
                "/usr/bin/tini".into(),
                "--".into(),
                "bash".into(),
                "-c".into(),
                SCRIPT.into(),
            ]),
            env: Some(self.storage_env()),
            ..Default::default()
        };
        let net = self.storage_net.clone();
        self.run("restore", body, &net, &[]);
        let ready = |c: &Cluster| {
            c.exec(
                "restore",
                "postgres",
                &[
                    "psql",
                    "-XqAt",
                    "-d",
                    "postgres",
                    "-c",
                    "SELECT pg_is_in_recovery()",
                ],
                &[],
            )
            .stdout
            .trim()
                == "f"
        };
        self.wait_until(
            "the standalone restore to finish recovery",
            Duration::from_secs(300),
            ready,
            |c| c.logs("restore"),
        );
        let e = self.psql_in("restore", sql);
        assert!(e.ok(), "{sql} on the restored server: {}", e.stderr);
        self.remove("restore");
        e.stdout.trim().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let d = self.engine.docker.clone();
        if std::thread::panicking() {
            // The whole logs, for the post-mortem, before the containers go.
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("container-logs");
            let _ = std::fs::create_dir_all(&dir);
            for name in &self.containers {
                let logical = name.strip_prefix(&format!("{}-", self.id)).unwrap_or(name);
                let file = dir.join(format!("{}-{logical}.log", self.scope));
                if std::fs::write(&file, self.logs_tail(logical, "all")).is_ok() {
                    say(&format!("log of {logical}: {}", file.display()));
                }
            }
        }
        for name in std::mem::take(&mut self.containers).iter().rev() {
            let r = self.block(
                d.remove_container(
                    name,
                    Some(
                        RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .v(true)
                            .build(),
                    ),
                ),
            );
            if let Err(e) = r {
                say(&format!("removing container {name}: {e}"));
            }
        }
        for net in std::mem::take(&mut self.networks) {
            if let Err(e) = self.block(d.remove_network(&net)) {
                say(&format!("removing network {net}: {e}"));
            }
        }
        if let Some(dir) = self.etcd_tls.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        say(&format!(
            "container scenario {}: {:.1}s (removed its containers and networks)",
            self.scope,
            self.started.elapsed().as_secs_f64()
        ));
    }
}

/// The certificates of a TLS etcd, made by `images/make-etcd-certs` (as a user of
/// images/compose.tls.yml makes them) in a directory of the test `id`.
fn make_etcd_certs(id: &str) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("etcd-tls")
        .join(id);
    let _ = std::fs::remove_dir_all(&dir);
    let out = Command::new(root.join("images/make-etcd-certs"))
        .arg(&dir)
        .output()
        .expect("running images/make-etcd-certs");
    assert!(
        out.status.success(),
        "images/make-etcd-certs: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

/// The name of member `i`: pg1, pg2, ...
pub fn member(i: usize) -> String {
    format!("pg{}", i + 1)
}
