//! OpenPGP (issue 15, item 2): WAL-E's `--gpg-key-id` archives, gpg, and WAL-G's PGP keys,
//! against real gpg (Debian's gnupg), WAL-E 1.1.1 from PyPI and a real PostgreSQL 15.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

type EnvVars = Vec<(String, String)>;

const WAL_E: &str = "/opt/walkeeper-test/wal-e-venv/bin/wal-e";

/// A GNUPGHOME the test owns, with one freshly generated key (ed25519 + cv25519); its agent is
/// stopped on drop.
struct Keyring {
    home: PathBuf,
    fpr: String,
}

impl Keyring {
    fn new(scratch: &Scratch, name: &str, passphrase: &str) -> Keyring {
        let home = scratch.path().join(name);
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        let mut k = Keyring {
            home,
            fpr: String::new(),
        };
        k.gpg_ok(
            &[
                "--passphrase",
                passphrase,
                "--quick-gen-key",
                &format!("{name} <{name}@walkeeper.invalid>"),
                "future-default",
                "default",
                "never",
            ],
            b"",
        );
        let list = String::from_utf8(k.gpg_ok(&["--list-keys", "--with-colons"], b"")).unwrap();
        k.fpr = list
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .unwrap()
            .to_string();
        k
    }

    fn gpg(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new("gpg")
            .env("GNUPGHOME", &self.home)
            .args(["--batch", "--yes", "--pinentry-mode", "loopback"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gpg is installed by .ci/setup");
        let mut stdin = child.stdin.take().unwrap();
        let feed = input.to_vec();
        let w = std::thread::spawn(move || {
            let _ = std::io::Write::write_all(&mut stdin, &feed);
        });
        let out = child.wait_with_output().unwrap();
        w.join().unwrap();
        out
    }

    fn gpg_ok(&self, args: &[&str], input: &[u8]) -> Vec<u8> {
        let out = self.gpg(args, input);
        assert!(out.status.success(), "gpg {args:?}: {}", stderr(&out));
        out.stdout
    }

    /// Writes the armored public or secret key to `path`, readable by postgres only.
    fn export(&self, path: &Path, secret: bool, passphrase: &str) -> PathBuf {
        let what = if secret {
            "--export-secret-keys"
        } else {
            "--export"
        };
        let key = self.gpg_ok(
            &["--passphrase", passphrase, "--armor", what, &self.fpr],
            b"",
        );
        write_private(path, &String::from_utf8(key).unwrap());
        chown_pg(path);
        path.to_path_buf()
    }

    fn var(&self) -> (String, String) {
        ("GNUPGHOME".into(), self.home.display().to_string())
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.home)
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

fn file_prefix(dir: &Path) -> String {
    format!("file://localhost{}", dir.display())
}

fn v(k: &str, val: &str) -> (String, String) {
    (k.to_string(), val.to_string())
}

/// Real segments: a PostgreSQL 15 that archives with `cp`; returns the copies' directory and
/// their names (at least `n`).
fn real_segments(scratch: &Scratch, n: usize) -> (PathBuf, Vec<String>) {
    let copies = scratch.mkdir("copies");
    let mut pg = Pg::init(
        scratch,
        "source",
        &format!(
            "wal_level = replica\narchive_mode = on\narchive_command = 'cp %p {}/%f'\n",
            copies.display()
        ),
    );
    pg.start();
    pg.psql("CREATE TABLE t (id int, note text)");
    for i in 0..n {
        pg.psql(&format!(
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, {}) g",
            5000 * (i + 1)
        ));
        pg.switch_and_wait_archived();
    }
    pg.stop();
    let mut names: Vec<String> = std::fs::read_dir(&copies)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    assert!(names.len() >= n, "{names:?}");
    (copies, names)
}

/// A data directory whose pg_wal holds copies of `names` (each `.ready`).
fn pgdata_with(scratch: &Scratch, name: &str, copies: &Path, names: &[String]) -> PathBuf {
    let pgdata = fake_pgdata(scratch, name);
    for n in names {
        std::fs::copy(copies.join(n), pgdata.join("pg_wal").join(n)).unwrap();
        std::fs::write(pgdata.join(format!("pg_wal/archive_status/{n}.ready")), "").unwrap();
    }
    pgdata
}

fn wal_e(args: &[&str], vars: &[(String, String)], cwd: &Path) -> Output {
    let mut c = Command::new(WAL_E);
    c.args(args).current_dir(cwd).env_clear();
    c.env("PATH", std::env::var("PATH").unwrap_or_default());
    c.envs(vars.iter().map(|(k, v)| (k, v)));
    c.output().expect("WAL-E 1.1.1 is installed by .ci/setup")
}

#[test]
fn wal_e_gpg_key_id_segments_are_fetched_byte_identical_by_wal_fetch() {
    let scratch = Scratch::new();
    let keys = Keyring::new(&scratch, "gnupg", "");
    let (copies, names) = real_segments(&scratch, 3);
    let names = &names[..3];
    let archive = scratch.mkdir("archive");
    let prefix = file_prefix(&archive);
    let src = pgdata_with(&scratch, "src", &copies, names);
    for n in names {
        let out = wal_e(
            &[
                "--terse",
                "--file-prefix",
                &prefix,
                "--gpg-key-id",
                &keys.fpr,
                "wal-push",
                src.join("pg_wal").join(n).to_str().unwrap(),
            ],
            &[keys.var()],
            &src,
        );
        assert_eq!(out.status.code(), Some(0), "wal-e: {}", stderr(&out));
        let obj = std::fs::read(archive.join(format!("wal_005/{n}.lzo"))).unwrap();
        assert!(!obj.starts_with(b"\x89LZO"), "WAL-E stored it encrypted");
    }

    let dst = fake_pgdata(&scratch, "dst");
    let secret = keys.export(&scratch.path().join("secret.asc"), true, "");
    // GitLab's restore: WALE_GPG_KEY_ID and gpg's keyring (gpg -d through its agent); the
    // same with --gpg-key-id; WAL-G's way, an exported secret key, in process.
    let ways: Vec<(Vec<&str>, EnvVars)> = vec![
        (vec![], vec![v("WALE_GPG_KEY_ID", &keys.fpr), keys.var()]),
        (vec!["--gpg-key-id", &keys.fpr], vec![keys.var()]),
        (
            vec![],
            vec![v("WALG_PGP_KEY_PATH", secret.to_str().unwrap())],
        ),
    ];
    for (i, (opts, mut vars)) in ways.into_iter().enumerate() {
        vars.push(v("WALE_FILE_PREFIX", &prefix));
        let n = &names[i];
        let mut args = opts.clone();
        args.extend(["wal-fetch", n.as_str(), "pg_wal/RECOVERYXLOG"]);
        let out = run(&args, &vars, &dst);
        assert_eq!(out.status.code(), Some(0), "way {i}: {}", stderr(&out));
        assert!(
            std::fs::read(dst.join("pg_wal/RECOVERYXLOG")).unwrap()
                == std::fs::read(copies.join(n)).unwrap(),
            "way {i}: {n} differs"
        );
    }
}

#[test]
fn a_wrong_or_missing_key_fails_wal_fetch_with_128_and_leaves_nothing() {
    let scratch = Scratch::new();
    let keys = Keyring::new(&scratch, "right", "");
    let other = Keyring::new(&scratch, "other", "");
    let (copies, names) = real_segments(&scratch, 1);
    let n = &names[0];
    let archive = scratch.mkdir("archive");
    let prefix = file_prefix(&archive);
    let src = pgdata_with(&scratch, "src", &copies, &names[..1]);
    let out = wal_e(
        &[
            "--terse",
            "--file-prefix",
            &prefix,
            "--gpg-key-id",
            &keys.fpr,
            "wal-push",
            src.join("pg_wal").join(n).to_str().unwrap(),
        ],
        &[keys.var()],
        &src,
    );
    assert_eq!(out.status.code(), Some(0), "wal-e: {}", stderr(&out));
    // walkeeper's own upload, to a public key alone.
    let public = keys.export(&scratch.path().join("public.asc"), false, "");
    let ours = pgdata_with(&scratch, "ours", &copies, &names[..1]);
    let archive2 = scratch.mkdir("archive2");
    let out = run(
        &["wal-push", &format!("pg_wal/{n}")],
        &[
            v("WALG_FILE_PREFIX", &file_prefix(&archive2)),
            v("WALG_PGP_KEY_PATH", public.to_str().unwrap()),
        ],
        &ours,
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let wrong_secret = other.export(&scratch.path().join("other.asc"), true, "");
    let dst = fake_pgdata(&scratch, "dst");
    for (what, pfx) in [
        ("WAL-E's", &prefix),
        ("walkeeper's", &file_prefix(&archive2)),
    ] {
        for (how, vars, expect) in [
            (
                "another keyring",
                vec![v("WALE_GPG_KEY_ID", &other.fpr), other.var()],
                "gpg -d failed",
            ),
            (
                "another secret key",
                vec![v("WALG_PGP_KEY_PATH", wrong_secret.to_str().unwrap())],
                "cannot decrypt",
            ),
            ("no key", vec![], "OpenPGP-encrypted"),
        ] {
            let mut vars = vars;
            vars.push(v("WALE_FILE_PREFIX", pfx));
            let out = run(&["wal-fetch", n, "pg_wal/RECOVERYXLOG"], &vars, &dst);
            assert_eq!(
                out.status.code(),
                Some(128),
                "{what} object, {how}: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(expect),
                "{what} object, {how}: {}",
                stderr(&out)
            );
            assert!(!dst.join("pg_wal/RECOVERYXLOG").exists());
        }
    }
}

#[test]
fn walkeeper_pgp_segments_decrypt_with_gpg_to_the_same_bytes() {
    let scratch = Scratch::new();
    let keys = Keyring::new(&scratch, "gnupg", "");
    let (copies, names) = real_segments(&scratch, 2);
    let public = keys.export(&scratch.path().join("public.asc"), false, "");
    // WALG_PGP_KEY holding the key (WAL-G's literal \n), and WALE_GPG_KEY_ID (gpg --export).
    let armored = std::fs::read_to_string(&public)
        .unwrap()
        .replace('\n', "\\n");
    let ways = [
        vec![v("WALG_PGP_KEY", &armored)],
        vec![v("WALE_GPG_KEY_ID", &keys.fpr), keys.var()],
    ];
    for (i, vars) in ways.into_iter().enumerate() {
        let n = &names[i];
        let archive = scratch.mkdir(&format!("archive{i}"));
        let pgdata = pgdata_with(&scratch, &format!("pg{i}"), &copies, &names[i..i + 1]);
        let mut vars = vars;
        vars.push(v("WALG_FILE_PREFIX", &file_prefix(&archive)));
        let out = run(&["wal-push", &format!("pg_wal/{n}")], &vars, &pgdata);
        assert_eq!(out.status.code(), Some(0), "way {i}: {}", stderr(&out));
        let obj = std::fs::read(archive.join(format!("wal_005/{n}.lz4"))).unwrap();
        let lz4 = keys.gpg_ok(&["--decrypt"], &obj);
        let plain = lz4_d(&lz4);
        assert!(
            plain == std::fs::read(copies.join(n)).unwrap(),
            "way {i}: differs"
        );
    }
}

fn lz4_d(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("lz4")
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feed = data.to_vec();
    let w = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &feed));
    let out = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn now_after(pg: &Pg) -> String {
    pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

#[test]
fn archive_backup_and_pitr_round_trip_with_a_protected_pgp_key() {
    let scratch = Scratch::new();
    let keys = Keyring::new(&scratch, "gnupg", "s3cret phrase");
    let secret = keys.export(&scratch.path().join("secret.asc"), true, "s3cret phrase");
    let backend = Backend::file(&scratch);
    let env = backend.envdir(
        &scratch,
        &[
            ("WALG_PGP_KEY_PATH", secret.to_str().unwrap()),
            ("WALG_PGP_KEY_PASSPHRASE", "s3cret phrase"),
        ],
    );
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
    let walkeeper_as_pg = |args: &[&str]| -> Output {
        let mut c = as_postgres(walkeeper());
        c.arg("--envdir").arg(&env).args(args);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("PGHOST", &primary.sock)
            .env("PGPORT", primary.port.to_string())
            .env("PGUSER", "postgres")
            .current_dir(scratch.path());
        c.output().unwrap()
    };
    primary.psql("CREATE TABLE marks (id int, note text)");
    let out = walkeeper_as_pg(&["backup-push", primary.data.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "backup-push: {}", stderr(&out));
    primary.psql("INSERT INTO marks VALUES (1, 'before')");
    std::thread::sleep(Duration::from_millis(20));
    let target = now_after(&primary);
    std::thread::sleep(Duration::from_millis(20));
    primary.psql("INSERT INTO marks VALUES (2, 'after')");
    primary.switch_and_wait_archived();

    // Every stored WAL segment and backup partition is OpenPGP that gpg decrypts.
    let objects = backend.objects();
    let Backend::File(root) = &backend else {
        unreachable!()
    };
    let parts: Vec<&String> = objects
        .iter()
        .filter(|o| o.starts_with("basebackups_005/") && o.ends_with(".tar.lz4"))
        .collect();
    assert!(!parts.is_empty(), "no partition in {objects:?}");
    let mut found = false;
    let mut seen = Vec::new();
    for part in &parts {
        let tar = lz4_d(&keys.gpg_ok(
            &["--passphrase", "s3cret phrase", "--decrypt"],
            &std::fs::read(root.join(part)).unwrap(),
        ));
        for entry in tar::Archive::new(&tar[..]).entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            seen.push(path.clone());
            if path.trim_start_matches('.').trim_start_matches('/') == "PG_VERSION" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
                assert_eq!(
                    s,
                    std::fs::read_to_string(primary.data.join("PG_VERSION")).unwrap()
                );
                found = true;
            }
        }
    }
    assert!(
        found,
        "PG_VERSION in {parts:?}: {:?}",
        &seen[..seen.len().min(20)]
    );
    for o in objects.iter().filter(|o| o.starts_with("wal_005/0")) {
        let obj = std::fs::read(root.join(o)).unwrap();
        let out = keys.gpg(&["--list-packets"], &obj);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("pubkey enc packet"),
            "{o} is not OpenPGP"
        );
    }

    let dir = scratch.path().join("pitr");
    let out = walkeeper_as_pg(&["restore", dir.to_str().unwrap(), "--target-time", &target]);
    assert_eq!(out.status.code(), Some(0), "restore: {}", stderr(&out));
    chown_pg_recursive(&dir);
    let mut restored = Pg::configure(
        &scratch,
        "restored",
        dir,
        &format!(
            "archive_mode = off\nrestore_command = '{wk} --envdir {env} wal-fetch %f %p'\n",
            env = env.display()
        ),
    );
    restored.start();
    wait_until("recovery to finish", Duration::from_secs(300), || {
        restored.psql("SELECT pg_is_in_recovery()") == "f"
    });
    assert_eq!(
        restored.psql("SELECT string_agg(note, ',' ORDER BY id) FROM marks"),
        "before"
    );
    restored.stop();
    primary.stop();
}
