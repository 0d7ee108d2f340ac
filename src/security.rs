//! Secrets and the files that hold them: private files and directories, the agent's API token
//! and the proof of knowing it, the environment a child process must not inherit, and connection
//! strings rendered without their password.
//!
//! This module sits at the bottom of the layers (beside `config`): every other layer may use it.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// The file in the state directory that holds the agent's API token when none is configured.
pub const TOKEN_FILE_NAME: &str = "api-token";

/// The response header carrying the agent's proof that it knows the API token
/// (see [`leadership_proof`]).
pub const PROOF_HEADER: &str = "x-walkeeper-proof";

/// Refuses a file that its group or others may read, as libpq refuses a password file with
/// group or world access. `what` names the file in the error.
pub fn check_private(path: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "{what} {} has group or world access (mode {mode:04o}); it holds a secret, so its \
             permissions must be u=rw (0600) or less: chmod 600 {}",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// Refuses a private key file as libpq refuses `sslkey`: group or world access is allowed only
/// for a root-owned file of mode 0640 or less (a key shared through a group by a system service).
pub fn check_private_key(path: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))?;
    if meta.uid() == 0 && meta.mode() & 0o037 == 0 {
        return Ok(());
    }
    check_private(path, what)
}

/// Reads a secret from a file only the owner can read (see [`check_private`]).
pub fn read_private(path: &Path, what: &str) -> Result<String> {
    check_private(path, what)?;
    std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{what} {}: {e}", path.display())))
}

/// Creates (or replaces) `path` with `contents`, mode 0600 from the start: written to a
/// temporary file in the same directory, synced, and renamed into place.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// Creates `dir` (and missing parents) with mode 0700: walkeeper's state directory holds the
/// API token, locks and staged WAL. An existing directory is left as it is (it may be shared,
/// like a WALKEEPER_STATE_DIR someone pointed at /tmp).
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))
}

/// 32 random bytes from the operating system, hex-encoded.
pub fn random_hex() -> Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Config(format!("the system's random source: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Constant-time comparison, so a token cannot be guessed byte by byte from response times.
pub fn tokens_equal(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Where the API token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `WALKEEPER_API_TOKEN`.
    Value(String),
    /// `WALKEEPER_API_TOKEN_FILE` / `agent.api_token_file`: must exist, mode 0600 or less.
    File(PathBuf),
    /// Neither: the agent's own token in its state directory.
    StateDir(PathBuf),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Value(_) => f.write_str("Value(<redacted>)"),
            TokenSource::File(p) => f.debug_tuple("File").field(p).finish(),
            TokenSource::StateDir(p) => f.debug_tuple("StateDir").field(p).finish(),
        }
    }
}

impl TokenSource {
    /// Was the token configured by the operator (not made by the agent)?
    pub fn is_configured(&self) -> bool {
        !matches!(self, TokenSource::StateDir(_))
    }

    /// The token, for a client of the agent (wal-push, scripts): None when the agent has not
    /// made one yet.
    pub fn read(&self) -> Result<Option<String>> {
        let text = match self {
            TokenSource::Value(v) => v.clone(),
            TokenSource::File(p) => read_private(p, "API token file")?,
            TokenSource::StateDir(p) => {
                if !p.exists() {
                    return Ok(None);
                }
                read_private(p, "API token file")?
            }
        };
        Ok(Some(text.trim().to_string()).filter(|t| !t.is_empty()))
    }

    /// The token, for the agent: a configured one (empty is an error), else the one in the
    /// state directory, else a new random one. The path is returned for the agent's own token,
    /// which [`persist_token`] writes once the state directory can exist.
    pub fn for_agent(&self) -> Result<(String, Option<PathBuf>)> {
        match self {
            TokenSource::StateDir(p) => {
                let token = match self.read()? {
                    Some(t) => t,
                    None => random_hex()?,
                };
                Ok((token, Some(p.clone())))
            }
            configured => {
                let token = configured.read()?.ok_or_else(|| {
                    Error::Config(
                        "the API token (WALKEEPER_API_TOKEN or its file) is empty".to_string(),
                    )
                })?;
                Ok((token, None))
            }
        }
    }
}

/// Writes the agent's own token to `path` (mode 0600, its directory 0700) unless it already
/// holds it. Nothing is created while the directory above the state directory is missing (the
/// default state directory is in pg_wal, which a new member's data directory does not have yet):
/// returns whether the file holds the token.
pub fn persist_token(path: &Path, token: &str) -> Result<bool> {
    let Some(state) = path.parent() else {
        return Ok(false);
    };
    if !state.parent().is_some_and(Path::is_dir) {
        return Ok(false);
    }
    if let Ok(text) = std::fs::read_to_string(path) {
        if text.trim() == token {
            return Ok(true);
        }
    }
    ensure_private_dir(state)?;
    write_private(path, format!("{token}\n").as_bytes())?;
    Ok(true)
}

/// The agent's answer to wal-push's leadership question carries
/// `HMAC-SHA256(token, "walkeeper-leadership-v1\n" || nonce || "\n" || body)`: wal-push sends a
/// fresh random nonce (never the token), so only a process that knows the token can answer, and
/// an old answer cannot be replayed.
pub fn leadership_proof(token: &str, nonce: &str, body: &[u8]) -> String {
    hex::encode(leadership_mac(token, nonce, body).finalize().into_bytes())
}

/// Checks a [`leadership_proof`] in constant time.
pub fn verify_leadership_proof(token: &str, nonce: &str, body: &[u8], proof_hex: &str) -> bool {
    match hex::decode(proof_hex.trim()) {
        Ok(proof) => leadership_mac(token, nonce, body)
            .verify_slice(&proof)
            .is_ok(),
        Err(_) => false,
    }
}

fn leadership_mac(token: &str, nonce: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length: new_from_slice cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"walkeeper-leadership-v1\n");
    mac.update(nonce.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

/// Prefixes of variables that carry cloud credentials or archive settings with keys.
const SECRET_PREFIXES: &[&str] = &[
    "AWS_", "AZURE_", "WABS_", "GOOGLE_", "GCS_", "GCP_", "WALG_", "WALE_",
];

/// Does the variable `name` hold (or point at) a secret that a child process must not inherit,
/// and that Debug output must not show?
pub fn is_secret_var(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    SECRET_PREFIXES.iter().any(|p| upper.starts_with(p))
        || [
            "PASSWORD",
            "SECRET",
            "TOKEN",
            "CREDENTIAL",
            "PRIVATE",
            "_KEY",
        ]
        .iter()
        .any(|w| upper.contains(w))
        || upper == "PGPASSWORD"
        || upper == "WALKEEPER_AGE_IDENTITY_FILE"
}

/// Does the variable `name` hold a secret value itself (a password, a secret key, a token), as
/// opposed to a setting or a path? Debug output hides such values, and an envdir file holding
/// one must be private.
pub fn holds_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    (upper.contains("PASSWORD")
        || upper.contains("PASSPHRASE")
        || upper.contains("SECRET")
        || (upper.contains("TOKEN") && !upper.ends_with("_FILE") && !upper.ends_with("_PATH"))
        || upper.ends_with("_KEY")
        || upper == "WALG_PGP_KEY"
        || upper == "WALG_LIBSODIUM_KEY"
        || upper.ends_with("CONNECTION_STRING")
        || upper.ends_with("_SAS_TOKEN"))
        && !upper.ends_with("_KEY_ID")
}

/// Removes from `cmd`'s environment every inherited variable [`is_secret_var`] names: cloud
/// keys, WAL-E/WAL-G settings, the API token, etcd and Patroni passwords. PostgreSQL backends
/// expose their environment in `/proc/PID/environ`.
pub fn scrub_env(cmd: &mut std::process::Command) -> &mut std::process::Command {
    let mut names: Vec<std::ffi::OsString> = std::env::vars_os().map(|(k, _)| k).collect();
    names.extend(cmd.get_envs().map(|(k, _)| k.to_os_string()));
    for k in names {
        if k.to_str().is_none_or(is_secret_var) {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// A connection string in `Debug` output: shown with its password replaced (see
/// [`scrub_connstring`]).
pub struct ScrubbedConnstring<'a>(pub Option<&'a str>);

impl std::fmt::Debug for ScrubbedConnstring<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.map(scrub_connstring).fmt(f)
    }
}

/// A libpq connection string (key=value or URL) with its password replaced by `***`, for
/// messages and logs.
pub fn scrub_connstring(s: &str) -> String {
    let t = s.trim_start();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        return scrub_url(s);
    }
    // key = value pairs; values may be single-quoted with backslash escapes.
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        // Copy blanks.
        while i < b.len() && b[i].is_ascii_whitespace() {
            out.push(b[i] as char);
            i += 1;
        }
        let key_start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[key_start..i];
        out.push_str(key);
        while i < b.len() && b[i].is_ascii_whitespace() {
            out.push(b[i] as char);
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            out.push('=');
            i += 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                out.push(b[i] as char);
                i += 1;
            }
            let value_start = i;
            if i < b.len() && b[i] == b'\'' {
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i = (i + 1).min(b.len());
            } else {
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                i = i.min(b.len());
            }
            if key.eq_ignore_ascii_case("password") {
                out.push_str("***");
            } else {
                out.push_str(&s[value_start..i]);
            }
        }
    }
    out
}

fn scrub_url(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = s[..scheme_end + 3].to_string();
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.find(':') {
                Some(c) => {
                    out.push_str(&userinfo[..c]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    match tail.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn connstring_passwords_are_scrubbed_in_both_forms() {
        assert_eq!(
            scrub_connstring("host=h user=u password=s3cret dbname=d"),
            "host=h user=u password=*** dbname=d"
        );
        assert_eq!(
            scrub_connstring("host=h password = 'a b\\' c' port=5"),
            "host=h password = *** port=5"
        );
        assert_eq!(
            scrub_connstring("postgresql://u:s3cret@h:5/db?sslmode=require&password=x"),
            "postgresql://u:***@h:5/db?sslmode=require&password=***"
        );
        assert_eq!(scrub_connstring("postgres://h/db"), "postgres://h/db");
    }

    proptest! {
        #[test]
        fn a_scrubbed_connstring_never_shows_the_password(
            pw in "[a-zA-Z0-9!#%&()*+,.:;<>?@^_{|}~-]{6,20}",
            quoted in any::<bool>(),
        ) {
            let kv = if quoted {
                format!("host=h password='{pw}' user=u")
            } else {
                format!("host=h password={pw} user=u")
            };
            prop_assert!(!scrub_connstring(&kv).contains(&pw));
            let url = format!("postgresql://u:{}@h/db", pw.replace(['@', '/', '?', ':'], "x"));
            let scrubbed = scrub_connstring(&url);
            prop_assert!(!scrubbed.contains(&pw.replace(['@', '/', '?', ':'], "x")), "{}", scrubbed);
        }

        #[test]
        fn scrubbing_never_panics(s in ".{0,80}") {
            let _ = scrub_connstring(&s);
        }
    }

    #[test]
    fn secret_variables_are_recognised() {
        for v in [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "AZURE_STORAGE_ACCESS_KEY",
            "WABS_ACCESS_KEY",
            "GOOGLE_APPLICATION_CREDENTIALS",
            "WALG_S3_PREFIX",
            "WALE_S3_PREFIX",
            "WALKEEPER_API_TOKEN",
            "WALKEEPER_ETCD_PASSWORD",
            "PATRONI_ETCD3_PASSWORD",
            "PATRONI_SUPERUSER_PASSWORD",
            "PATRONI_RESTAPI_PASSWORD",
            "PGPASSWORD",
        ] {
            assert!(is_secret_var(v), "{v}");
        }
        for v in ["PATH", "HOME", "PGDATA", "LANG", "TZ", "WALKEEPER_LOG"] {
            assert!(!is_secret_var(v), "{v}");
        }
        for v in [
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "WALKEEPER_API_TOKEN",
            "PATRONI_ETCD3_PASSWORD",
            "AZURE_STORAGE_ACCESS_KEY",
            "WALG_LIBSODIUM_KEY",
            "AZURE_STORAGE_CONNECTION_STRING",
        ] {
            assert!(holds_secret(v), "{v}");
        }
        for v in [
            "AWS_ACCESS_KEY_ID",
            "WALE_S3_PREFIX",
            "AWS_REGION",
            "WALKEEPER_API_TOKEN_FILE",
            "WALG_S3_SSE_KMS_ID",
        ] {
            assert!(!holds_secret(v), "{v}");
        }
    }

    #[test]
    fn a_scrubbed_child_sees_no_secret_but_keeps_the_rest() {
        let mut cmd = std::process::Command::new("env");
        cmd.env("AWS_SECRET_ACCESS_KEY", "s3cret")
            .env("WALKEEPER_API_TOKEN", "t0ken")
            .env("PATRONI_ETCD3_PASSWORD", "pw")
            .env("WALKEEPER_TEST_KEEP", "kept");
        let out = scrub_env(&mut cmd).output().unwrap();
        let env = String::from_utf8_lossy(&out.stdout);
        assert!(env.contains("WALKEEPER_TEST_KEEP=kept"), "{env}");
        assert!(env.contains("PATH="), "{env}");
        for secret in ["s3cret", "t0ken", "PATRONI_ETCD3_PASSWORD"] {
            assert!(!env.contains(secret), "{env}");
        }
    }

    #[test]
    fn the_leadership_proof_needs_the_token_and_the_nonce() {
        let p = leadership_proof("tok", "n1", b"{\"a\":1}");
        assert!(verify_leadership_proof("tok", "n1", b"{\"a\":1}", &p));
        assert!(!verify_leadership_proof("other", "n1", b"{\"a\":1}", &p));
        assert!(!verify_leadership_proof("tok", "n2", b"{\"a\":1}", &p));
        assert!(!verify_leadership_proof("tok", "n1", b"{\"a\":2}", &p));
        assert!(!verify_leadership_proof("tok", "n1", b"{\"a\":1}", "zz"));
    }

    #[test]
    fn private_files_are_0600_and_open_ones_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("a/state");
        let src = TokenSource::StateDir(state.join(TOKEN_FILE_NAME));
        assert_eq!(src.read().unwrap(), None);
        let (t, path) = src.for_agent().unwrap();
        assert_eq!(t.len(), 64);
        let path = path.unwrap();
        // Nothing is created while the directory above the state directory is missing.
        assert!(!persist_token(&path, &t).unwrap());
        assert!(!state.exists());
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        assert!(persist_token(&path, &t).unwrap());
        assert_eq!(src.for_agent().unwrap().0, t);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(TOKEN_FILE_NAME)), 0o600);
        assert_eq!(mode(&state), 0o700);
        assert_eq!(src.read().unwrap().as_deref(), Some(t.as_str()));
        std::fs::set_permissions(
            state.join(TOKEN_FILE_NAME),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let e = src.read().unwrap_err().to_string();
        assert!(e.contains("group or world access"), "{e}");
        assert!(!format!("{:?}", TokenSource::Value("s3cret".into())).contains("s3cret"));
    }
}
