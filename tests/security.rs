//! Production security against the real components, on loopback: etcd 3.4 over TLS with client
//! certificates and with expiring auth tokens, PostgreSQL 15 accepting only TLS, the agent's
//! API token (made by the agent, proved to wal-push), S3 server-side encryption and storage
//! class on every upload, and secrets that files others can read do not hold.

#[allow(dead_code)]
#[path = "support/storage.rs"]
mod faults;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const SCOPE: &str = "sec";

/// Certificates made by openssl for the test: a CA, a server certificate for 127.0.0.1 and
/// localhost, a client certificate (CN postgres), and a second, unrelated CA.
struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn make(dir: &Path) -> Certs {
        let dir = dir.join("certs");
        std::fs::create_dir_all(&dir).unwrap();
        let ssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl (installed by .ci/setup)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            ssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.crt"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=walkeeper test {ca}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )
        .unwrap();
        for (name, cn) in [("server", "localhost"), ("client", "postgres")] {
            ssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ]);
            ssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ]);
        }
        chown_pg_recursive(&dir);
        for key in ["server.key", "client.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        Certs { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// etcd 3.4 on loopback with the given extra flags (TLS with client certificates when `tls`),
/// killed on drop.
struct EtcdProc {
    child: Option<Child>,
    url: String,
    tls: Option<[String; 3]>,
    user: Option<String>,
}

impl EtcdProc {
    fn start(dir: &Path, tls: Option<&Certs>, extra: &[&str]) -> EtcdProc {
        let port = free_port();
        let peer = format!("http://127.0.0.1:{}", free_port());
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.join("etcd.log")).unwrap();
        let mut c = Command::new("etcd");
        c.args(["--name", "t"])
            .arg("--data-dir")
            .arg(dir.join("etcd-data"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(extra)
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(t) = tls {
            c.args(["--cert-file", &t.path("server.crt")])
                .args(["--key-file", &t.path("server.key")])
                .args(["--trusted-ca-file", &t.path("ca.crt")])
                .arg("--client-cert-auth");
        }
        let e = EtcdProc {
            child: Some(c.spawn().expect("etcd (installed by .ci/setup)")),
            url,
            tls: tls.map(|t| [t.path("ca.crt"), t.path("client.crt"), t.path("client.key")]),
            user: None,
        };
        wait_until("etcd to serve", Duration::from_secs(30), || {
            e.etcdctl_status(&["endpoint", "health"])
        });
        e
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3").args(["--endpoints", &self.url]);
        if let Some([ca, cert, key]) = &self.tls {
            c.args(["--cacert", ca, "--cert", cert, "--key", key]);
        }
        if let Some(u) = &self.user {
            c.args(["--user", u]);
        }
        c.args(args).output().unwrap()
    }

    fn etcdctl_status(&self, args: &[&str]) -> bool {
        self.ctl(args).status.success()
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
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
}

impl Drop for EtcdProc {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

struct Agent {
    child: Option<Child>,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

fn start_agent(vars: &[(String, String)], pgdata: &Path, cwd: &Path) -> Agent {
    let port = free_port();
    let mut vars = vars.to_vec();
    vars.retain(|(k, _)| k != "WALKEEPER_AGENT_URL");
    vars.push(("WALKEEPER_API_LISTEN".into(), format!("127.0.0.1:{port}")));
    vars.push(("WALKEEPER_PGDATA".into(), pgdata.display().to_string()));
    vars.push(("WALKEEPER_BACKUP_SCHEDULE".into(), "off".into()));
    let log = std::fs::File::create(cwd.join(format!("agent-{port}.log"))).unwrap();
    let child = command(&["agent"], &vars, cwd)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent = Agent {
        child: Some(child),
        port,
    };
    let http = reqwest::blocking::Client::new();
    wait_until("the agent's API", Duration::from_secs(30), || {
        http.get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    });
    agent
}

impl Agent {
    fn get(&self, path: &str) -> serde_json::Value {
        reqwest::blocking::get(format!("http://127.0.0.1:{}{path}", self.port))
            .and_then(|r| r.text())
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

fn cluster_vars(backend: &Backend, etcd: &[(&str, String)]) -> Vec<(String, String)> {
    let mut v = backend.vars();
    v.push(("WALKEEPER_SCOPE".into(), SCOPE.into()));
    v.push(("WALKEEPER_NAME".into(), "pg1".into()));
    v.extend(etcd.iter().map(|(k, val)| (k.to_string(), val.clone())));
    v
}

fn push(vars: &[(String, String)], pgdata: &Path, name: &str, seed: u64) -> std::process::Output {
    let path = pgdata.join("pg_wal").join(name);
    if !path.exists() {
        std::fs::write(&path, synthetic_segment(name, seed)).unwrap();
    }
    run(&["wal-push", &format!("pg_wal/{name}")], vars, pgdata)
}

fn archived(backend: &Backend, name: &str) -> bool {
    backend
        .objects()
        .iter()
        .any(|o| o.starts_with(&format!("wal_005/{name}.")))
}

#[test]
fn etcd_over_tls_with_client_certificates_serves_the_agent_wal_push_and_the_guarded_write() {
    let scratch = Scratch::new();
    let certs = Certs::make(scratch.path());
    let etcd = EtcdProc::start(scratch.path(), Some(&certs), &[]);
    let backend = Backend::file(&scratch);
    let pgdata = fake_pgdata(&scratch, "data");
    let host = etcd.url.trim_start_matches("https://").to_string();
    // Patroni's own names, as the image passes them through.
    let vars = cluster_vars(
        &backend,
        &[
            ("PATRONI_ETCD3_HOSTS", format!("'{host}'")),
            ("PATRONI_ETCD3_PROTOCOL", "https".into()),
            ("PATRONI_ETCD3_CACERT", certs.path("ca.crt")),
            ("PATRONI_ETCD3_CERT", certs.path("client.crt")),
            ("PATRONI_ETCD3_KEY", certs.path("client.key")),
        ],
    );
    etcd.set_leader("pg1", 60);

    // The agent follows the leader key over TLS.
    let agent = start_agent(&vars, &pgdata, scratch.path());
    wait_until("the agent to see pg1 lead", Duration::from_secs(30), || {
        agent.get("/status")["leader"] == "pg1"
    });
    etcd.set_leader("pg2", 60);
    wait_until("the agent to see pg2 lead", Duration::from_secs(30), || {
        agent.get("/status")["leader"] == "pg2"
    });
    etcd.set_leader("pg1", 60);

    // wal-push asks the agent (which proves it knows the token), and uploads as the leader.
    let mut with_agent = vars.clone();
    with_agent.push(("WALKEEPER_AGENT_URL".into(), agent.url()));
    let out = push(&with_agent, &pgdata, "000000010000000000000001", 1);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(archived(&backend, "000000010000000000000001"));
    drop(agent);
    // Without an agent, wal-push asks etcd itself, over TLS: walkeeper's own names this time.
    let own = cluster_vars(
        &backend,
        &[
            ("WALKEEPER_ETCD_HOSTS", etcd.url.clone()),
            ("WALKEEPER_ETCD_CACERT", certs.path("ca.crt")),
            ("WALKEEPER_ETCD_CERT", certs.path("client.crt")),
            ("WALKEEPER_ETCD_KEY", certs.path("client.key")),
            (
                "WALKEEPER_AGENT_URL",
                format!("http://127.0.0.1:{}", free_port()),
            ),
        ],
    );
    let out = push(&own, &pgdata, "000000010000000000000002", 2);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(archived(&backend, "000000010000000000000002"));

    // The guarded backup-list write, from the YAML `cluster:` section's TLS files.
    let config = scratch.path().join("walkeeper.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster:\n  scope: {SCOPE}\n  name: pg1\n  etcd_hosts: ['{host}']\n  etcd_protocol: https\n  \
             etcd_cacert: {}\n  etcd_cert: {}\n  etcd_key: {}\n",
            certs.path("ca.crt"),
            certs.path("client.crt"),
            certs.path("client.key")
        ),
    )
    .unwrap();
    let settings =
        walkeeper::config::Settings::from_sources(Default::default(), Some(&config), None).unwrap();
    let cluster = settings.cluster.unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt
        .block_on(walkeeper::cluster::Etcd::connect(&cluster))
        .unwrap();
    assert!(rt
        .block_on(client.put_if_leader(&[("walkeeper-backup-list", "[]".into())]))
        .unwrap());
    assert_eq!(
        etcd.etcdctl(&[
            "get",
            "--print-value-only",
            &format!("/service/{SCOPE}/walkeeper-backup-list")
        ])
        .trim(),
        "[]"
    );

    // A CA that did not sign etcd's certificate: refused, saying why.
    let mut wrong = cluster.clone();
    wrong.etcd_tls.ca = Some(certs.dir.join("other-ca.crt"));
    let err = rt
        .block_on(async {
            walkeeper::cluster::Etcd::connect(&wrong)
                .await?
                .leader_status()
                .await
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("certificate"), "not a clear TLS error: {err}");
    let mut wrong_vars = own.clone();
    wrong_vars.retain(|(k, _)| k != "WALKEEPER_ETCD_CACERT");
    wrong_vars.push(("WALKEEPER_ETCD_CACERT".into(), certs.path("other-ca.crt")));
    let out = push(&wrong_vars, &pgdata, "000000010000000000000003", 3);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("certificate"), "{}", stderr(&out));
    assert!(!archived(&backend, "000000010000000000000003"));
    // Plain http:// to a TLS etcd with TLS files configured is a configuration error.
    let mut plain = own.clone();
    plain.retain(|(k, _)| k != "WALKEEPER_ETCD_HOSTS");
    plain.push(("WALKEEPER_ETCD_HOSTS".into(), format!("http://{host}")));
    let out = push(&plain, &pgdata, "000000010000000000000003", 3);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("https"), "{}", stderr(&out));
}

#[test]
fn etcd_user_auth_keeps_working_after_the_auth_token_expires() {
    let scratch = Scratch::new();
    let etcd = EtcdProc::start(
        scratch.path(),
        None,
        &["--auth-token", "simple", "--auth-token-ttl", "3"],
    );
    etcd.etcdctl(&["user", "add", "root:rootpw"]);
    etcd.etcdctl(&["user", "grant-role", "root", "root"]);
    etcd.etcdctl(&["auth", "enable"]);
    let mut etcd = etcd;
    etcd.user = Some("root:rootpw".into());
    let backend = Backend::file(&scratch);
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = cluster_vars(
        &backend,
        &[
            ("WALKEEPER_ETCD_HOSTS", etcd.url.clone()),
            ("WALKEEPER_ETCD_USERNAME", "root".into()),
            ("WALKEEPER_ETCD_PASSWORD", "rootpw".into()),
        ],
    );
    etcd.set_leader("pg1", 120);
    let agent = start_agent(&vars, &pgdata, scratch.path());
    wait_until("the agent to see pg1 lead", Duration::from_secs(30), || {
        agent.get("/status")["leader"] == "pg1"
    });
    let mut with_agent = vars.clone();
    with_agent.push(("WALKEEPER_AGENT_URL".into(), agent.url()));
    // Well past the 3 s token lifetime, several times over: every push asks the agent, whose
    // etcd client authenticated once at start.
    let start = Instant::now();
    for (i, wait) in [0u64, 5, 10, 16].into_iter().enumerate() {
        let until = start + Duration::from_secs(wait);
        wait_until("time to pass", Duration::from_secs(30), || {
            Instant::now() >= until
        });
        let name = format!("0000000100000000000000{:02X}", i + 1);
        let out = push(&with_agent, &pgdata, &name, i as u64);
        assert_eq!(
            out.status.code(),
            Some(0),
            "after {:?}: {}",
            start.elapsed(),
            stderr(&out)
        );
        assert!(archived(&backend, &name));
    }
    // The agent's watch follows a new leader after its token expired.
    etcd.set_leader("pg2", 120);
    wait_until("the agent to see pg2 lead", Duration::from_secs(30), || {
        agent.get("/status")["leader"] == "pg2"
    });
    let out = push(&with_agent, &pgdata, "000000010000000000000009", 9);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pg2 holds the leader key"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_agent_makes_a_private_token_and_wal_push_trusts_only_an_agent_that_proves_it() {
    let scratch = Scratch::new();
    let etcd = EtcdProc::start(scratch.path(), None, &[]);
    let backend = Backend::file(&scratch);
    let pgdata = fake_pgdata(&scratch, "data");
    let vars = cluster_vars(&backend, &[("WALKEEPER_ETCD_HOSTS", etcd.url.clone())]);
    etcd.set_leader("pg1", 60);
    let agent = start_agent(&vars, &pgdata, scratch.path());
    let token_file = pgdata.join("pg_wal/.walkeeper/api-token");
    wait_until("the token file", Duration::from_secs(30), || {
        token_file.exists()
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&token_file), 0o600);
    assert_eq!(mode(token_file.parent().unwrap()), 0o700);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 64);

    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .build()
        .unwrap();
    let post = |path: &str, tok: Option<&str>, host: Option<&str>, ctype: &str, body: Vec<u8>| {
        let mut r = http
            .post(format!("{}{path}", agent.url()))
            .header("content-type", ctype)
            .body(body);
        if let Some(t) = tok {
            r = r.bearer_auth(t);
        }
        if let Some(h) = host {
            r = r.header("host", h);
        }
        let resp = r.send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap_or_default())
    };
    // On loopback too, no token means no mutation.
    let (code, body) = post("/backup-push", None, None, "application/json", vec![]);
    assert_eq!(code, 401, "{body}");
    // A DNS name pointed at 127.0.0.1 (rebinding) is not this agent.
    let host = format!("attacker.example:{}", agent.port);
    let (code, body) = post(
        "/backup-push",
        Some(&token),
        Some(&host),
        "application/json",
        vec![],
    );
    assert_eq!(code, 421, "{body}");
    // A body a browser form could send is refused; so is one over the size limit.
    let (code, body) = post(
        "/restart",
        Some(&token),
        None,
        "text/plain",
        br#"{"recovery_target_time": "2026-01-01T00:00:00Z"}"#.to_vec(),
    );
    assert_eq!(code, 415, "{body}");
    let (code, _) = post(
        "/restart",
        Some(&token),
        None,
        "application/json",
        vec![b' '; 200 * 1024],
    );
    assert_eq!(code, 413);

    // wal-push believes the real agent.
    let mut with_agent = vars.clone();
    with_agent.push(("WALKEEPER_AGENT_URL".into(), agent.url()));
    let out = push(&with_agent, &pgdata, "000000010000000000000001", 1);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // An impostor on another port says this member leads; nobody does.
    etcd.etcdctl(&["del", &format!("/service/{SCOPE}/leader")]);
    // With the token, a mutation gets through to the leadership check.
    wait_until(
        "the agent to see nobody lead",
        Duration::from_secs(30),
        || agent.get("/status")["leader"].is_null(),
    );
    let (code, body) = post(
        "/backup-push",
        Some(&token),
        None,
        "application/json",
        vec![],
    );
    assert_eq!(code, 409, "{body}");
    let impostor = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = impostor.local_addr().unwrap().port();
    let serve = std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut c, _)) = impostor.accept() {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let body = r#"{"member":"pg1","leader":"pg1","is_leader":true,"valid_for_ms":60000}"#;
            let _ = write!(
                c,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-walkeeper-proof: 00\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let mut fooled = vars.clone();
    fooled.push((
        "WALKEEPER_AGENT_URL".into(),
        format!("http://127.0.0.1:{port}"),
    ));
    let out = push(&fooled, &pgdata, "000000010000000000000002", 2);
    serve.join().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("did not prove"), "{}", stderr(&out));
    assert!(!archived(&backend, "000000010000000000000002"));
}

#[test]
fn files_holding_secrets_that_others_can_read_are_refused() {
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let backend = Backend::file(&scratch);
    // An envdir file holding a secret, readable by all.
    let envdir = scratch.mkdir("env");
    for (k, v) in backend.vars() {
        write_private(&envdir.join(k), &format!("{v}\n"));
    }
    std::fs::write(envdir.join("AWS_SECRET_ACCESS_KEY"), "s3cret\n").unwrap();
    let out = run(
        &[
            "--envdir",
            envdir.to_str().unwrap(),
            "wal-push",
            "pg_wal/000000010000000000000001",
        ],
        &[],
        &pgdata,
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("AWS_SECRET_ACCESS_KEY") && stderr(&out).contains("chmod 600"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("s3cret"), "{}", stderr(&out));
    // WAL-E's documented envdir: root:postgres, 0640. Allowed (the tests run as root), as libpq
    // allows a root-owned key shared through a group; the push goes on to its next check.
    std::fs::set_permissions(
        envdir.join("AWS_SECRET_ACCESS_KEY"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let out = run(
        &[
            "--envdir",
            envdir.to_str().unwrap(),
            "wal-push",
            "pg_wal/000000010000000000000001",
        ],
        &[],
        &pgdata,
    );
    assert!(
        !stderr(&out).contains("chmod 600"),
        "a root-owned 0640 envdir file was refused: {}",
        stderr(&out)
    );
    // An API token file readable by the group: the agent does not start.
    let etcd = EtcdProc::start(scratch.path(), None, &[]);
    let token = scratch.path().join("token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let mut vars = cluster_vars(&backend, &[("WALKEEPER_ETCD_HOSTS", etcd.url.clone())]);
    vars.push((
        "WALKEEPER_API_TOKEN_FILE".into(),
        token.display().to_string(),
    ));
    vars.push(("WALKEEPER_PGDATA".into(), pgdata.display().to_string()));
    vars.push((
        "WALKEEPER_API_LISTEN".into(),
        format!("127.0.0.1:{}", free_port()),
    ));
    let out = run(&["agent"], &vars, scratch.path());
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("group or world access"),
        "{}",
        stderr(&out)
    );
}

/// A PostgreSQL 15 that accepts TCP connections only over TLS, with a client certificate signed
/// by the test CA; its WAL archived by walkeeper.
struct TlsPg {
    scratch: Scratch,
    certs: Certs,
    env: PathBuf,
    pg: Pg,
}

impl TlsPg {
    fn start() -> TlsPg {
        let scratch = Scratch::new();
        let certs = Certs::make(scratch.path());
        let backend = Backend::file(&scratch);
        let env = backend.envdir(&scratch, &[]);
        let wk = walkeeper();
        let mut pg = Pg::init(
            &scratch,
            "primary",
            &format!(
                "wal_level = replica\narchive_mode = on\narchive_command = '{wk} --envdir {env} wal-push %p'\n\
                 listen_addresses = '127.0.0.1'\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\n",
                certs.path("server.crt"),
                certs.path("server.key"),
                certs.path("ca.crt"),
                env = env.display()
            ),
        );
        std::fs::write(
            pg.data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust clientcert=verify-ca\n",
        )
        .unwrap();
        chown_pg(&pg.data.join("pg_hba.conf"));
        pg.start();
        TlsPg {
            scratch,
            certs,
            env,
            pg,
        }
    }

    /// `walkeeper backup-push` as postgres with `connstring` and extra variables.
    fn backup_push(&self, connstring: &str, vars: &[(&str, String)]) -> std::process::Output {
        let mut c = as_postgres(walkeeper());
        c.arg("--envdir")
            .arg(&self.env)
            .args(["backup-push", self.pg.data.to_str().unwrap()])
            .arg(format!("--connstring={connstring}"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.scratch.path())
            .current_dir(self.scratch.path());
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    }
}

#[test]
fn postgres_connections_honour_sslmode_root_certificate_and_client_certificate() {
    let t = TlsPg::start();
    let base = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        t.pg.port
    );
    let client = format!(
        "sslcert={} sslkey={}",
        t.certs.path("client.crt"),
        t.certs.path("client.key")
    );

    // verify-full with the CA and the client certificate, from the connection string.
    let out = t.backup_push(
        &format!(
            "{base} sslmode=verify-full sslrootcert={} {client}",
            t.certs.path("ca.crt")
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The same from libpq's variables.
    let out = t.backup_push(
        &base,
        &[
            ("PGSSLMODE", "verify-ca".into()),
            ("PGSSLROOTCERT", t.certs.path("ca.crt")),
            ("PGSSLCERT", t.certs.path("client.crt")),
            ("PGSSLKEY", t.certs.path("client.key")),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Without TLS the server refuses (hostssl only).
    let out = t.backup_push(&format!("{base} sslmode=disable"), &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("no encryption") || stderr(&out).contains("pg_hba.conf"),
        "{}",
        stderr(&out)
    );
    // A CA that did not sign the server's certificate.
    let out = t.backup_push(
        &format!(
            "{base} sslmode=verify-full sslrootcert={} {client}",
            t.certs.path("other-ca.crt")
        ),
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("certificate"),
        "not a clear TLS error: {}",
        stderr(&out)
    );
    // verify-full checks the name: the certificate names 127.0.0.1 and localhost only.
    let out = t.backup_push(
        &format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={} {client}",
            t.pg.port,
            t.certs.path("ca.crt")
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // require without a client certificate: the server wants one (clientcert=verify-ca).
    let out = t.backup_push(&format!("{base} sslmode=require"), &[]);
    assert_ne!(out.status.code(), Some(0));
    // A client key others can read is refused, as libpq does.
    let open_key = t.scratch.path().join("open.key");
    std::fs::copy(t.certs.dir.join("client.key"), &open_key).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    chown_pg(&open_key);
    let out = t.backup_push(
        &format!(
            "{base} sslmode=require sslcert={} sslkey={}",
            t.certs.path("client.crt"),
            open_key.display()
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sslkey"), "{}", stderr(&out));
}

#[test]
fn s3_uploads_carry_server_side_encryption_and_the_storage_class() {
    let s3 = S3::start();
    let proxy = faults::Proxy::start(s3.port);
    let scratch = Scratch::new();
    let pgdata = fake_pgdata(&scratch, "data");
    let v = |k: &str, val: &str| (k.to_string(), val.to_string());
    let vars = vec![
        v("WALG_S3_PREFIX", "s3://walkeeper/cluster-a"),
        v("AWS_ENDPOINT", &format!("http://127.0.0.1:{}", proxy.port)),
        v("AWS_ACCESS_KEY_ID", S3_KEY),
        v("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        v("AWS_REGION", "us-east-1"),
        v("AWS_S3_FORCE_PATH_STYLE", "true"),
        v("WALKEEPER_RETRY_TIMEOUT", "5"),
        v("WALG_S3_SSE", "aws:kms"),
        v("WALG_S3_SSE_KMS_ID", "test-key-1"),
        // s3s-fs accepts only STANDARD; the header is what counts here.
        v("WALG_S3_STORAGE_CLASS", "STANDARD"),
    ];
    // A segment that compresses to one request, and one that takes a multipart upload.
    let small = "000000010000000000000001";
    let mut bytes = synthetic_segment(small, 1);
    bytes[8192..].fill(0);
    std::fs::write(pgdata.join("pg_wal").join(small), bytes).unwrap();
    let large = "000000010000000000000002";
    std::fs::write(
        pgdata.join("pg_wal").join(large),
        synthetic_segment(large, 2),
    )
    .unwrap();
    for name in [small, large] {
        let out = run(&["wal-push", &format!("pg_wal/{name}")], &vars, &pgdata);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let requests = proxy.requests();
    let uploads: Vec<&(String, String, String)> = requests
        .iter()
        .filter(|(m, p, _)| {
            // A single put, or the creation of a multipart upload.
            (m == "PUT" && !p.contains("partNumber="))
                || (m == "POST" && (p.ends_with("?uploads") || p.ends_with("?uploads=")))
        })
        .collect();
    assert!(
        uploads.iter().any(|(m, _, _)| m == "PUT") && uploads.iter().any(|(m, _, _)| m == "POST"),
        "expected a single put and a multipart upload: {requests:?}"
    );
    for (m, p, head) in uploads {
        for h in [
            "x-amz-server-side-encryption: aws:kms",
            "x-amz-server-side-encryption-aws-kms-key-id: test-key-1",
            "x-amz-storage-class: standard",
        ] {
            assert!(head.contains(h), "{m} {p} lacks {h}:\n{head}");
        }
    }

    // SSE-S3 from the YAML file's s3: section.
    let config = scratch.path().join("walkeeper.yaml");
    std::fs::write(&config, "s3:\n  sse: AES256\n  storage_class: STANDARD\n").unwrap();
    let mut yaml_vars: Vec<(String, String)> = vars
        .iter()
        .filter(|(k, _)| !k.starts_with("WALG_S3_S"))
        .cloned()
        .collect();
    yaml_vars.push(v("WALKEEPER_CONFIG", config.to_str().unwrap()));
    let name = "000000010000000000000003";
    let mut bytes = synthetic_segment(name, 3);
    bytes[8192..].fill(0);
    std::fs::write(pgdata.join("pg_wal").join(name), bytes).unwrap();
    let before = proxy.requests().len();
    let out = run(
        &["wal-push", &format!("pg_wal/{name}")],
        &yaml_vars,
        &pgdata,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let requests = proxy.requests();
    let put = requests[before..]
        .iter()
        .find(|(m, _, _)| m == "PUT")
        .expect("a put");
    assert!(
        put.2.contains("x-amz-server-side-encryption: aes256")
            && put.2.contains("x-amz-storage-class: standard"),
        "{}",
        put.2
    );
    // A storage class that is not one is refused before any upload.
    let mut bad = vars.clone();
    bad.push(v("WALG_S3_STORAGE_CLASS", "cheap please"));
    let out = run(&["wal-push", &format!("pg_wal/{name}")], &bad, &pgdata);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn create_replica_names_the_leader_without_its_password() {
    let scratch = Scratch::new();
    let backend = Backend::file(&scratch);
    let datadir = scratch.path().join("new");
    let out = run(
        &[
            "create-replica",
            "--scope=sec",
            &format!("--datadir={}", datadir.display()),
            &format!(
                "--connstring=host=127.0.0.1 port={} user=replicator password=s3cret-pw",
                free_port()
            ),
        ],
        &backend.vars(),
        scratch.path(),
    );
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("password=***"),
        "the error does not name the leader: {}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("s3cret-pw"), "{}", stderr(&out));
}
