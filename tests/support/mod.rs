//! Test fixtures: real PostgreSQL 15 servers and a real S3 server (s3s-fs) on loopback, each
//! stopped by Drop, so a failing test stops them too.
#![allow(dead_code)]

pub mod cluster;
pub mod containers;
pub mod gcs;
pub mod stores;
pub mod swift;

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn walkeeper() -> &'static str {
    env!("CARGO_BIN_EXE_walkeeper")
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the postgres user exists")
    };
    (id("-u"), id("-g"))
}

/// A temporary directory the postgres user owns (and everyone may traverse).
pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("walkeeper-test-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_pg(dir.path());
        Scratch { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// A subdirectory owned by postgres.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        chown_pg(&p);
        p
    }
}

pub fn chown_pg(path: &Path) {
    let (u, g) = postgres_ids();
    std::os::unix::fs::chown(path, Some(u), Some(g)).unwrap();
}

/// Writes a file only its owner can read (mode 0600), as walkeeper requires of files that hold
/// secrets (envdir files, token files, keys).
pub fn write_private(path: &Path, contents: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

pub fn chown_pg_recursive(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// A command that runs as the postgres user.
pub fn as_postgres(program: &str) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
        program,
    ]);
    c
}

pub fn pg_tool(name: &str) -> Command {
    as_postgres(&format!("{PG_BIN}/{name}"))
}

/// A PostgreSQL 15 server in its own directory on a free port, stopped on drop.
pub struct Pg {
    pub data: PathBuf,
    pub sock: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    running: bool,
}

/// initdb only (no server) into `<scratch>/<name>`: its pg_wal holds a real segment.
pub fn initdb(scratch: &Scratch, name: &str) -> PathBuf {
    let data = scratch.path().join(name);
    let out = pg_tool("initdb")
        .arg("-D")
        .arg(&data)
        .args(["--auth=trust", "--no-sync", "-U", "postgres"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    data
}

impl Pg {
    /// initdb with `extra` appended to postgresql.conf.
    pub fn init(scratch: &Scratch, name: &str, extra: &str) -> Pg {
        let data = initdb(scratch, name);
        Self::configure(scratch, name, data, extra)
    }

    /// A server for an existing data directory (e.g. made by pg_basebackup).
    pub fn configure(scratch: &Scratch, name: &str, data: PathBuf, extra: &str) -> Pg {
        let port = free_port();
        let sock = scratch.path().to_path_buf();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        writeln!(
            conf,
            "\nport = {port}\nunix_socket_directories = '{}'\nlisten_addresses = ''\nfsync = off\n{extra}",
            sock.display()
        )
        .unwrap();
        Pg {
            log: scratch.path().join(format!("{name}.log")),
            data,
            sock,
            port,
            running: false,
        }
    }

    pub fn start(&mut self) {
        let out = pg_tool("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-w", "-t", "300", "start"])
            .output()
            .unwrap();
        self.running = true;
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = pg_tool("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "fast", "-w", "stop"])
                .output();
            self.running = false;
        }
    }

    fn conn(&self, c: &mut Command) {
        c.arg("-h")
            .arg(&self.sock)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", "postgres"]);
    }

    /// Runs SQL and returns the unaligned, tuples-only output.
    pub fn psql(&self, sql: &str) -> String {
        let mut c = pg_tool("psql");
        self.conn(&mut c);
        let out = c
            .args([
                "-d",
                "postgres",
                "-XqAt",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn pgbench(&self, args: &[&str]) {
        let mut c = pg_tool("pgbench");
        self.conn(&mut c);
        let out = c.args(args).arg("postgres").output().unwrap();
        assert!(
            out.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Forces a segment switch and waits until that segment is archived.
    pub fn switch_and_wait_archived(&self) -> String {
        let seg = self.psql("SELECT pg_walfile_name(pg_switch_wal())");
        wait_until("the archiver", Duration::from_secs(120), || {
            let row = self
                .psql("SELECT coalesce(last_archived_wal, ''), failed_count FROM pg_stat_archiver");
            row.split('|').next().unwrap_or("") >= seg.as_str()
        });
        seg
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_tool("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// A real S3 server (s3s-fs) on a free loopback port, killed on drop.
pub struct S3 {
    child: Option<Child>,
    pub port: u16,
    pub root: PathBuf,
    _scratch: tempfile::TempDir,
}

pub const S3_BUCKET: &str = "walkeeper";
pub const S3_KEY: &str = "AKIAWALKEEPERTEST";
pub const S3_SECRET: &str = "walkeeper-test-secret-key";

impl S3 {
    pub fn start() -> S3 {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path().to_path_buf();
        std::fs::create_dir(root.join(S3_BUCKET)).unwrap();
        let port = free_port();
        let bin = which("s3s-fs");
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(&root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs (installed by .ci/setup)");
        let s3 = S3 {
            child: Some(child),
            port,
            root,
            _scratch: scratch,
        };
        wait_until("s3s-fs to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        s3
    }

    pub fn stop(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Starts the server again on the same port and files, after [`S3::stop`].
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(which("s3s-fs"))
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", S3_KEY, "--secret-key", S3_SECRET])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs");
        self.child = Some(child);
        let port = self.port;
        wait_until("s3s-fs to listen again", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// Files the server stores for the bucket, relative to the bucket.
    pub fn objects(&self) -> Vec<String> {
        list_files(&self.root.join(S3_BUCKET))
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(name: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_bin = PathBuf::from(home).join(".cargo/bin").join(name);
    if cargo_bin.exists() {
        return cargo_bin;
    }
    PathBuf::from(name)
}

/// Every regular file below `dir`, relative, sorted; walkeeper's temporary folder excluded.
pub fn list_files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.retain(|p| !p.starts_with(".walkeeper-tmp"));
    out.sort();
    out
}

/// Where an archive test stores its objects.
pub enum Backend {
    File(PathBuf),
    S3(S3),
    /// A real OpenStack Swift (tempauth), archive at `swift://walkeeper/cluster-a`.
    Swift(swift::Swift),
    /// A real fake-gcs-server, archive at `gs://walkeeper/cluster-a`.
    Gcs(gcs::FakeGcs),
}

impl Backend {
    pub fn file(scratch: &Scratch) -> Backend {
        Backend::File(scratch.mkdir("archive"))
    }
    pub fn s3() -> Backend {
        Backend::S3(S3::start())
    }
    pub fn swift() -> Backend {
        Backend::Swift(swift::Swift::start(3600))
    }
    pub fn gcs() -> Backend {
        Backend::Gcs(gcs::FakeGcs::start())
    }

    pub fn vars(&self) -> Vec<(String, String)> {
        let v = |k: &str, val: &str| (k.to_string(), val.to_string());
        match self {
            Backend::File(p) => vec![v("WALG_FILE_PREFIX", &format!("file://{}", p.display()))],
            Backend::S3(s3) => vec![
                v("WALE_S3_PREFIX", &format!("s3://{S3_BUCKET}/cluster-a")),
                v("AWS_ENDPOINT", &format!("http://127.0.0.1:{}", s3.port)),
                v("AWS_ACCESS_KEY_ID", S3_KEY),
                v("AWS_SECRET_ACCESS_KEY", S3_SECRET),
                v("AWS_REGION", "us-east-1"),
                v("AWS_S3_FORCE_PATH_STYLE", "true"),
                v("WALKEEPER_RETRY_TIMEOUT", "5"),
            ],
            Backend::Swift(sw) => sw.vars("cluster-a"),
            Backend::Gcs(g) => g.vars("cluster-a"),
        }
    }

    /// The stored objects, relative to the archive prefix.
    pub fn objects(&self) -> Vec<String> {
        match self {
            Backend::File(p) => list_files(p),
            Backend::S3(s3) => s3
                .objects()
                .into_iter()
                .filter_map(|o| o.strip_prefix("cluster-a/").map(String::from))
                .collect(),
            Backend::Swift(sw) => sw
                .list(swift::SWIFT_CONTAINER)
                .into_iter()
                .filter_map(|(o, _)| o.strip_prefix("cluster-a/").map(String::from))
                .collect(),
            Backend::Gcs(g) => g
                .objects()
                .into_iter()
                .filter_map(|o| o.strip_prefix("cluster-a/").map(String::from))
                .collect(),
        }
    }

    /// Writes the variables as a daemontools envdir readable by postgres.
    pub fn envdir(&self, scratch: &Scratch, extra: &[(&str, &str)]) -> PathBuf {
        let dir = scratch.mkdir("env");
        for (k, v) in self.vars() {
            write_private(&dir.join(&k), &format!("{v}\n"));
        }
        for (k, v) in extra {
            write_private(&dir.join(k), &format!("{v}\n"));
        }
        chown_pg_recursive(&dir);
        dir
    }
}

/// Runs walkeeper with only the given variables (plus PATH and HOME) in `cwd`.
pub fn run(args: &[&str], vars: &[(String, String)], cwd: &Path) -> Output {
    command(args, vars, cwd).output().expect("run walkeeper")
}

pub fn command(args: &[&str], vars: &[(String, String)], cwd: &Path) -> Command {
    let mut c = Command::new(walkeeper());
    c.args(args).current_dir(cwd).env_clear();
    for k in ["PATH", "HOME"] {
        if let Ok(v) = std::env::var(k) {
            c.env(k, v);
        }
    }
    c.envs(vars.iter().map(|(k, v)| (k, v)));
    c
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A data directory skeleton for calling the commands by hand: `<dir>/pg_wal/archive_status`.
pub fn fake_pgdata(scratch: &Scratch, name: &str) -> PathBuf {
    let d = scratch.mkdir(name);
    std::fs::create_dir_all(d.join("pg_wal/archive_status")).unwrap();
    chown_pg_recursive(&d);
    d
}

/// A 16 MiB file that looks like segment `name` to anyone reading its first page header
/// (timeline, address, segment size), filled with pseudo-random, partly compressible bytes.
pub fn synthetic_segment(name: &str, seed: u64) -> Vec<u8> {
    const SEG: usize = 16 << 20;
    let tli = u32::from_str_radix(&name[0..8], 16).unwrap();
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap();
    let mut v = vec![0u8; SEG];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for chunk in v.chunks_mut(64) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        // Half random, half repeated: compressible like real WAL, never trivially so.
        for (i, c) in chunk.iter_mut().enumerate() {
            *c = if i < 24 { b[i % 8] } else { (i as u8) ^ b[0] };
        }
    }
    v[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    v[2..4].copy_from_slice(&2u16.to_le_bytes()); // XLP_LONG_HEADER
    v[4..8].copy_from_slice(&tli.to_le_bytes());
    v[8..16].copy_from_slice(&((log * 256 + seg) * SEG as u64).to_le_bytes());
    v[16..20].copy_from_slice(&0u32.to_le_bytes());
    v[24..32].copy_from_slice(&7_000_000_000_000_000_001u64.to_le_bytes());
    v[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
    v[36..40].copy_from_slice(&8192u32.to_le_bytes());
    v
}

/// (timeline, segment number) of a full 16 MiB segment name.
pub fn seg_of(name: &str) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    Some((tli, log * 0x100 + seg))
}

/// PostgreSQL's `X/Y` LSN text as a number.
pub fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').expect("an LSN");
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The timeline-1 segment names in `names` that end past `switch` (the LSN where timeline 2
/// began): WAL only the old primary wrote.
pub fn timeline_1_past(names: &std::collections::BTreeSet<String>, switch: u64) -> Vec<String> {
    const SEG: u64 = 16 << 20;
    names
        .iter()
        .filter(|n| matches!(seg_of(n), Some((1, segno)) if (segno + 1) * SEG > switch))
        .cloned()
        .collect()
}

/// Kills a server the test started, if it still runs, and waits for it.
pub fn kill_and_reap(child: &mut Option<std::process::Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// An XFS file system with reflink, in an image on a loop device, mounted for one test and
/// unmounted (its image removed) when dropped, on failure too. Needs root and xfsprogs
/// (`.ci/setup` installs it).
pub struct XfsMount {
    pub dir: PathBuf,
    image: PathBuf,
}

impl XfsMount {
    /// Mounted on `dir` (made if missing), its image beside it.
    pub fn new(dir: &Path) -> XfsMount {
        let (dir, image) = (dir.to_path_buf(), dir.with_extension("xfs.img"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::File::create(&image)
            .unwrap()
            .set_len(2 << 30)
            .unwrap();
        let out = Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&image)
            .output()
            .expect("mkfs.xfs (Debian's xfsprogs; .ci/setup installs it)");
        assert!(
            out.status.success(),
            "mkfs.xfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount -o loop (needs root and loop devices): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = XfsMount { dir, image };
        chown_pg(&m.dir);
        m
    }

    /// Bytes in use on the file system.
    pub fn used(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=used"])
            .arg(&self.dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        let _ = std::fs::remove_file(&self.image);
    }
}
