//! A real OpenStack Swift ("all in one", one replica, tempauth) from Debian's packages, on
//! loopback, in a directory the test owns: rings, configuration, storage and logs all live there.
//! memcached (which tempauth keeps its tokens in) runs beside it. Every process is started by
//! the test and killed and reaped on drop, also when the test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, kill_and_reap, wait_until};

pub const SWIFT_CONTAINER: &str = "walkeeper";
pub const SWIFT_USER: &str = "test:tester";
pub const SWIFT_PASSWORD: &str = "walkeeper-swift-test-password";

pub struct Swift {
    pub port: u16,
    /// Set when the proxy authenticates through Keystone instead of tempauth.
    keystone: Option<String>,
    pub memcached_port: u16,
    pub dir: PathBuf,
    children: Children,
    _tmp: tempfile::TempDir,
}

/// The processes started so far, killed and reaped (newest first) on drop, so a failure while
/// starting stops them too.
#[derive(Default)]
struct Children(Vec<Option<Child>>);

impl Children {
    fn push(&mut self, c: Child) {
        self.0.push(Some(c));
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            kill_and_reap(c);
        }
    }
}

const SERVERS: [&str; 3] = ["account", "container", "object"];

impl Swift {
    /// Starts Swift with tempauth tokens that live `token_life` seconds, and creates the
    /// container [`SWIFT_CONTAINER`].
    pub fn start(token_life: u64) -> Swift {
        Self::start_with(token_life, None)
    }

    /// Starts Swift behind a real Keystone (authtoken + keystoneauth middleware); the Swift
    /// endpoint is registered in Keystone's catalog.
    pub fn start_keystone(ks: &Keystone) -> Swift {
        Self::start_with(3600, Some(ks))
    }

    fn start_with(token_life: u64, ks: Option<&Keystone>) -> Swift {
        let tmp = tempfile::Builder::new()
            .prefix("walkeeper-swift-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path().to_path_buf();
        std::fs::create_dir_all(dir.join("dev/d1")).unwrap();
        std::fs::write(
            dir.join("swift.conf"),
            "[swift-hash]\nswift_hash_path_suffix = walkeeper-test\nswift_hash_path_prefix = walkeeper-test\n\
             [storage-policy:0]\nname = Policy-0\ndefault = yes\n[swift-constraints]\n",
        )
        .unwrap();
        let memcached_port = free_port();
        let mut children = Children::default();
        children.push(
            Command::new("memcached")
                .args(["-l", "127.0.0.1", "-p", &memcached_port.to_string()])
                .args(["-U", "0", "-u", "root"])
                .stdout(Stdio::null())
                .stderr(log(&dir, "memcached"))
                .spawn()
                .expect("memcached (installed by .ci/setup)"),
        );
        let mut ports = Vec::new();
        for kind in SERVERS {
            let port = free_port();
            ports.push(port);
            let builder = dir.join(format!("{kind}.builder"));
            ring(&dir, &["create", "4", "1", "1"], &builder);
            ring(
                &dir,
                &["add", &format!("r1z1-127.0.0.1:{port}/d1"), "1"],
                &builder,
            );
            ring(&dir, &["rebalance"], &builder);
            let conf = dir.join(format!("{kind}-server.conf"));
            std::fs::write(
                &conf,
                format!(
                    "[DEFAULT]\ndevices = {dev}\nmount_check = false\ndisable_fallocate = true\n\
                     bind_ip = 127.0.0.1\nbind_port = {port}\nworkers = 0\nuser = root\n\
                     swift_dir = {dir}\nlog_name = {kind}\n\
                     [pipeline:main]\npipeline = {kind}-server\n\
                     [app:{kind}-server]\nuse = egg:swift#{kind}\n",
                    dev = dir.join("dev").display(),
                    dir = dir.display()
                ),
            )
            .unwrap();
            children.push(server(&dir, kind, &conf));
        }
        let port = free_port();
        let (auth_filter, auth_conf) = match ks {
            None => (
                "tempauth".to_string(),
                format!(
                    "[filter:tempauth]\nuse = egg:swift#tempauth\n\
                     user_test_tester = {SWIFT_PASSWORD} .admin\ntoken_life = {token_life}\n"
                ),
            ),
            Some(ks) => {
                ks.register_swift(port);
                (
                    "authtoken keystoneauth".to_string(),
                    format!(
                        "[filter:authtoken]\npaste.filter_factory = keystonemiddleware.auth_token:filter_factory\n\
                         www_authenticate_uri = {u}\nauth_url = {u}\nauth_type = password\n\
                         project_domain_name = Default\nuser_domain_name = Default\nproject_name = admin\n\
                         username = admin\npassword = {KEYSTONE_PASSWORD}\ndelay_auth_decision = True\n\
                         interface = public\n\
                         [filter:keystoneauth]\nuse = egg:swift#keystoneauth\noperator_roles = admin, member\n",
                        u = ks.url()
                    ),
                )
            }
        };
        let conf = dir.join("proxy-server.conf");
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\nbind_ip = 127.0.0.1\nbind_port = {port}\nworkers = 0\nuser = root\n\
                 swift_dir = {dir}\nlog_name = proxy\n\
                 [pipeline:main]\npipeline = catch_errors gatekeeper healthcheck proxy-logging cache \
                 listing_formats bulk {auth_filter} copy slo dlo proxy-logging proxy-server\n\
                 [app:proxy-server]\nuse = egg:swift#proxy\naccount_autocreate = true\n\
                 {auth_conf}\
                 [filter:cache]\nuse = egg:swift#memcache\nmemcache_servers = 127.0.0.1:{memcached_port}\n\
                 [filter:healthcheck]\nuse = egg:swift#healthcheck\n\
                 [filter:catch_errors]\nuse = egg:swift#catch_errors\n\
                 [filter:gatekeeper]\nuse = egg:swift#gatekeeper\n\
                 [filter:proxy-logging]\nuse = egg:swift#proxy_logging\n\
                 [filter:listing_formats]\nuse = egg:swift#listing_formats\n\
                 [filter:bulk]\nuse = egg:swift#bulk\n\
                 [filter:copy]\nuse = egg:swift#copy\n\
                 [filter:slo]\nuse = egg:swift#slo\n\
                 [filter:dlo]\nuse = egg:swift#dlo\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        children.push(server(&dir, "proxy", &conf));
        let swift = Swift {
            port,
            keystone: ks.map(|k| k.url()),
            memcached_port,
            dir,
            children,
            _tmp: tmp,
        };
        for p in ports.iter().chain([&swift.memcached_port]) {
            wait_until("a Swift server to listen", Duration::from_secs(60), || {
                std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()
            });
        }
        let client = reqwest::blocking::Client::new();
        wait_until("the Swift proxy", Duration::from_secs(60), || {
            client
                .get(format!("http://127.0.0.1:{port}/healthcheck"))
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        // The first container request creates the account; retry until the servers answer.
        wait_until(
            "the container to be created",
            Duration::from_secs(60),
            || {
                let Some((url, token)) = swift.try_auth() else {
                    return false;
                };
                client
                    .put(format!("{url}/{SWIFT_CONTAINER}"))
                    .header("X-Auth-Token", token)
                    .header("Content-Length", "0")
                    .send()
                    .is_ok_and(|r| r.status().is_success())
            },
        );
        swift
    }

    pub fn auth_url(&self) -> String {
        format!("http://127.0.0.1:{}/auth/v1.0", self.port)
    }

    fn try_auth(&self) -> Option<(String, String)> {
        if let Some(url) = &self.keystone {
            return keystone_token(url);
        }
        let r = reqwest::blocking::Client::new()
            .get(self.auth_url())
            .header("X-Auth-User", SWIFT_USER)
            .header("X-Auth-Key", SWIFT_PASSWORD)
            .send()
            .ok()?;
        let h = |n: &str| {
            r.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        Some((h("x-storage-url")?, h("x-auth-token")?))
    }

    /// (storage URL, token) for the test's own requests.
    pub fn auth(&self) -> (String, String) {
        self.try_auth().expect("tempauth answers")
    }

    /// WAL-E's variables for an archive at `swift://walkeeper/<path>`.
    pub fn vars(&self, path: &str) -> Vec<(String, String)> {
        let v = |k: &str, val: &str| (k.to_string(), val.to_string());
        vec![
            v(
                "WALE_SWIFT_PREFIX",
                &format!("swift://{SWIFT_CONTAINER}/{path}"),
            ),
            v("SWIFT_AUTHURL", &self.auth_url()),
            v("SWIFT_USER", SWIFT_USER),
            v("SWIFT_PASSWORD", SWIFT_PASSWORD),
            v("SWIFT_AUTH_VERSION", "1"),
            v("WALKEEPER_RETRY_TIMEOUT", "10"),
        ]
    }

    /// Every object name in `container`, listed page by page.
    pub fn list(&self, container: &str) -> Vec<(String, u64)> {
        let (url, token) = self.auth();
        let client = reqwest::blocking::Client::new();
        let mut out = Vec::new();
        let mut marker = String::new();
        loop {
            let r = client
                .get(format!("{url}/{container}"))
                .query(&[("format", "json"), ("marker", &marker)])
                .header("X-Auth-Token", &token)
                .send()
                .unwrap();
            if r.status().as_u16() == 404 {
                return out;
            }
            let page: Vec<serde_json::Value> = r.json().unwrap_or_default();
            if page.is_empty() {
                return out;
            }
            for e in page {
                let name = e["name"].as_str().unwrap_or_default().to_string();
                marker = name.clone();
                out.push((name, e["bytes"].as_u64().unwrap_or_default()));
            }
        }
    }

    /// Drops every token tempauth has issued (memcached `flush_all`): the next request with an
    /// old token is answered 401.
    pub fn forget_tokens(&self) {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.memcached_port)).unwrap();
        c.write_all(b"flush_all\r\n").unwrap();
        let mut buf = [0u8; 16];
        let n = c.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"OK"), "memcached flush_all");
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in ["proxy", "account", "container", "object"] {
            s.push_str(
                &std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default(),
            );
        }
        s
    }
}

fn log(dir: &Path, name: &str) -> Stdio {
    Stdio::from(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap())
}

fn ring(dir: &Path, args: &[&str], builder: &Path) {
    let out = Command::new("swift-ring-builder")
        .arg(builder)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("swift-ring-builder (installed by .ci/setup)");
    // `rebalance` exits 1 when it warns (one device, one replica) but writes the ring.
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "swift-ring-builder {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn server(dir: &Path, kind: &str, conf: &Path) -> Child {
    Command::new(format!("swift-{kind}-server"))
        .arg(conf)
        .current_dir(dir)
        .stdout(log(dir, kind))
        .stderr(log(dir, &format!("{kind}.err")))
        .spawn()
        .expect("swift servers (installed by .ci/setup)")
}

pub const KEYSTONE_PASSWORD: &str = "walkeeper-keystone-admin-password";

/// A real Keystone (Debian's python3-keystone) on loopback: sqlite database, fernet keys and
/// configuration in a directory the test owns, served by `keystone-wsgi-public` (wsgiref).
/// Bootstrapped with user `admin`, project `admin` (domain `Default`), region `RegionOne`.
pub struct Keystone {
    pub port: u16,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Keystone {
    pub fn start() -> Keystone {
        let tmp = tempfile::Builder::new()
            .prefix("walkeeper-keystone-")
            .tempdir_in("/tmp")
            .unwrap();
        let dir = tmp.path();
        for d in ["fernet", "credential"] {
            std::fs::create_dir(dir.join(d)).unwrap();
        }
        let conf = dir.join("keystone.conf");
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\nlog_dir = {d}\n[database]\nconnection = sqlite:///{d}/keystone.db\n\
                 [token]\nprovider = fernet\n[fernet_tokens]\nkey_repository = {d}/fernet\n\
                 [credential]\nkey_repository = {d}/credential\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}/v3/");
        let manage = |args: &[&str]| {
            let out = Command::new("keystone-manage")
                .arg("--config-file")
                .arg(&conf)
                .args(args)
                .output()
                .expect("keystone-manage (installed by .ci/setup)");
            assert!(
                out.status.success(),
                "keystone-manage {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        manage(&["db_sync"]);
        manage(&[
            "fernet_setup",
            "--keystone-user",
            "root",
            "--keystone-group",
            "root",
        ]);
        manage(&[
            "credential_setup",
            "--keystone-user",
            "root",
            "--keystone-group",
            "root",
        ]);
        manage(&[
            "bootstrap",
            "--bootstrap-password",
            KEYSTONE_PASSWORD,
            "--bootstrap-admin-url",
            &url,
            "--bootstrap-public-url",
            &url,
            "--bootstrap-region-id",
            "RegionOne",
        ]);
        let child = Command::new("keystone-wsgi-public")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .env("OS_KEYSTONE_CONFIG_FILES", &conf)
            .stdout(Stdio::null())
            .stderr(log(dir, "keystone"))
            .spawn()
            .expect("keystone-wsgi-public");
        let ks = Keystone {
            port,
            child: Some(child),
            _tmp: tmp,
        };
        let client = reqwest::blocking::Client::new();
        wait_until("Keystone", Duration::from_secs(120), || {
            client
                .get(ks.url())
                .send()
                .is_ok_and(|r| r.status().is_success())
        });
        ks
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v3", self.port)
    }

    /// Registers an object-store service with a public endpoint on the Swift proxy's port.
    fn register_swift(&self, swift_port: u16) {
        // Keystone on sqlite answers 500 ("database is locked") now and then: poll until each
        // step is accepted.
        let client = reqwest::blocking::Client::new();
        let post = |path: &str, body: serde_json::Value| -> Option<serde_json::Value> {
            let (_, token) = keystone_token(&self.url())?;
            let r = client
                .post(format!("{}/{path}", self.url()))
                .header("X-Auth-Token", &token)
                .json(&body)
                .send()
                .ok()?;
            if !r.status().is_success() {
                eprintln!(
                    "keystone {path}: {}: {}",
                    r.status(),
                    r.text().unwrap_or_default()
                );
                return None;
            }
            r.json().ok()
        };
        let mut id = String::new();
        wait_until(
            "Keystone to register the object-store service",
            Duration::from_secs(60),
            || match post(
                "services",
                serde_json::json!({"service": {"type": "object-store", "name": "swift"}}),
            )
            .and_then(|v| v["service"]["id"].as_str().map(String::from))
            {
                Some(i) => {
                    id = i;
                    true
                }
                None => false,
            },
        );
        wait_until(
            "Keystone to register the Swift endpoint",
            Duration::from_secs(60),
            || {
                post(
                    "endpoints",
                    serde_json::json!({"endpoint": {
                        "service_id": id, "interface": "public", "region_id": "RegionOne",
                        "url": format!("http://127.0.0.1:{swift_port}/v1/AUTH_%(project_id)s"),
                    }}),
                )
                .is_some()
            },
        );
    }

    /// WAL-G's variables for an archive at `swift://walkeeper/<path>` through Keystone v3.
    pub fn vars(&self, path: &str) -> Vec<(String, String)> {
        let v = |k: &str, val: &str| (k.to_string(), val.to_string());
        vec![
            v(
                "WALG_SWIFT_PREFIX",
                &format!("swift://{SWIFT_CONTAINER}/{path}"),
            ),
            v("OS_AUTH_URL", &self.url()),
            v("OS_USERNAME", "admin"),
            v("OS_PASSWORD", KEYSTONE_PASSWORD),
            v("OS_PROJECT_NAME", "admin"),
            v("OS_USER_DOMAIN_NAME", "Default"),
            v("OS_PROJECT_DOMAIN_NAME", "Default"),
            v("OS_REGION_NAME", "RegionOne"),
            v("WALKEEPER_RETRY_TIMEOUT", "10"),
        ]
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// (object-store URL, token) for Keystone's admin (project-scoped, v3).
fn keystone_token(url: &str) -> Option<(String, String)> {
    let r = reqwest::blocking::Client::new()
        .post(format!("{url}/auth/tokens"))
        .json(&serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"name": "Default"}, "password": KEYSTONE_PASSWORD}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}))
        .send()
        .ok()?;
    let token = r
        .headers()
        .get("x-subject-token")?
        .to_str()
        .ok()?
        .to_string();
    let body: serde_json::Value = r.json().ok()?;
    let storage = body["token"]["catalog"]
        .as_array()?
        .iter()
        .filter(|s| s["type"] == "object-store")
        .flat_map(|s| s["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["interface"] == "public")
        .and_then(|e| e["url"].as_str().map(String::from))
        .unwrap_or_default();
    Some((storage, token))
}
