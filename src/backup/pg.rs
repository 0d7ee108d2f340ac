//! The PostgreSQL side of a base backup: connecting (PG* variables, a libpq connstring,
//! PGPASSFILE, TLS as libpq does it) and the non-exclusive backup functions.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

use crate::config::Vars;
use crate::error::{Error, Result};
use crate::wal::names::WalSegSize;
use crate::wal::Lsn;

/// The server's WAL segment size in bytes, as a subquery, whatever unit `pg_settings` reports
/// `wal_segment_size` in.
macro_rules! wal_segment_size_sql {
    () => {
        "(SELECT setting::bigint * CASE unit WHEN '8kB' THEN 8192 WHEN 'MB' THEN 1048576 ELSE 1 END \
           FROM pg_settings WHERE name = 'wal_segment_size')"
    };
}

fn pg_err(what: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::Postgres(format!("PostgreSQL {what}: {}", with_causes(&e)))
}

/// An error with its causes (a TLS failure says why, not only "error performing TLS handshake").
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    /// libpq tries plaintext first; here TLS is tried first, as with `prefer`.
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl TlsMode {
    fn parse(v: &str) -> Result<TlsMode> {
        Ok(match v.trim() {
            "disable" => TlsMode::Disable,
            "allow" => TlsMode::Allow,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(Error::BadInput(format!(
                    "sslmode {other:?} is not one of disable, allow, prefer, require, verify-ca, \
                     verify-full"
                )))
            }
        })
    }
}

/// TLS for a PostgreSQL connection, from `sslmode`, `sslrootcert`, `sslcert` and `sslkey` in the
/// connection string, else PGSSLMODE, PGSSLROOTCERT, PGSSLCERT and PGSSLKEY, else libpq's
/// defaults (`prefer`, and the files in `~/.postgresql/` when they exist).
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub mode: TlsMode,
    /// CA certificates (PEM), or `system` for the system's roots.
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A connection config: tokio-postgres's, and the TLS settings it cannot hold.
#[derive(Clone)]
pub struct ConnConfig {
    pub pg: Config,
    pub tls: TlsSettings,
}

impl std::ops::Deref for ConnConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.pg
    }
}

/// The TLS keys libpq takes that tokio-postgres does not.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// Splits the TLS keys out of a connection string (key=value or URL): the rest, for
/// tokio-postgres, and the TLS values.
fn split_tls_keys(s: &str) -> Result<(String, Vec<(String, String)>)> {
    let t = s.trim();
    if t.starts_with("postgres://") || t.starts_with("postgresql://") {
        let Some((base, query)) = t.split_once('?') else {
            return Ok((t.to_string(), Vec::new()));
        };
        let mut keep = Vec::new();
        let mut tls = Vec::new();
        for part in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            if TLS_KEYS.contains(&k) {
                let v: String = url::form_urlencoded::parse(format!("v={v}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                tls.push((k.to_string(), v));
            } else {
                keep.push(part);
            }
        }
        let rest = if keep.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", keep.join("&"))
        };
        return Ok((rest, tls));
    }
    let mut keep = Vec::new();
    let mut tls = Vec::new();
    let mut chars = t.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(Error::BadInput(format!(
                "connection string: {key:?} has no value (expected key=value)"
            )));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut raw = String::new();
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            raw.push('\'');
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                raw.push(c);
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            raw.push(n);
                            value.push(n);
                        }
                    }
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(Error::BadInput(format!(
                    "connection string: the value of {key:?} has no closing quote"
                )));
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                raw.push(c);
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        raw.push(n);
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if TLS_KEYS.contains(&key.as_str()) {
            tls.push((key, value));
        } else {
            keep.push(format!("{key}={raw}"));
        }
    }
    Ok((keep.join(" "), tls))
}

fn tls_settings(given: &[(String, String)], vars: &Vars) -> Result<TlsSettings> {
    let pick = |key: &str, var: &str| -> Option<String> {
        given
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| vars.get(var).map(String::from))
            .filter(|v| !v.is_empty())
    };
    let mode = TlsMode::parse(&pick("sslmode", "PGSSLMODE").unwrap_or_else(|| "prefer".into()))?;
    // libpq's defaults: files in ~/.postgresql/, used when they exist.
    let home_file = |name: &str| -> Option<PathBuf> {
        let p = Path::new(vars.get("HOME")?).join(".postgresql").join(name);
        p.exists().then_some(p)
    };
    let rootcert = pick("sslrootcert", "PGSSLROOTCERT")
        .map(PathBuf::from)
        .or_else(|| home_file("root.crt"));
    let cert = pick("sslcert", "PGSSLCERT")
        .map(PathBuf::from)
        .or_else(|| home_file("postgresql.crt"));
    let key = pick("sslkey", "PGSSLKEY")
        .map(PathBuf::from)
        .or_else(|| home_file("postgresql.key"));
    if matches!(mode, TlsMode::VerifyCa | TlsMode::VerifyFull) && rootcert.is_none() {
        return Err(Error::Config(
            "sslmode verify-ca and verify-full need the CA certificate: sslrootcert (or \
             PGSSLROOTCERT, or ~/.postgresql/root.crt; `system` for the system's roots)"
                .into(),
        ));
    }
    Ok(TlsSettings {
        mode,
        rootcert,
        cert,
        key,
    })
}

/// Builds a connection config from `--connstring` (libpq key=value or URL) and the PG* variables
/// libpq reads, and finds the password in PGPASSFILE (or ~/.pgpass) when none is given.
pub fn config(connstring: Option<&str>, vars: &Vars) -> Result<ConnConfig> {
    let (rest, given_tls) = match connstring {
        Some(s) => {
            let (rest, tls) = split_tls_keys(s)?;
            (Some(rest), tls)
        }
        None => (None, Vec::new()),
    };
    let tls = tls_settings(&given_tls, vars)?;
    let mut cfg = match rest.as_deref() {
        Some(s) if !s.trim().is_empty() => Config::from_str(s).map_err(|e| {
            Error::BadInput(format!(
                "connection string {}: {e}",
                crate::security::scrub_connstring(s)
            ))
        })?,
        _ => Config::new(),
    };
    cfg.ssl_mode(match tls.mode {
        TlsMode::Disable => SslMode::Disable,
        TlsMode::Allow | TlsMode::Prefer => SslMode::Prefer,
        TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
    });
    if cfg.get_hosts().is_empty() {
        let host = vars.get("PGHOST").unwrap_or("/var/run/postgresql");
        for h in host.split(',') {
            cfg.host(h);
        }
    }
    if cfg.get_ports().is_empty() {
        let port = vars.get("PGPORT").unwrap_or("5432");
        let port: u16 = port
            .parse()
            .map_err(|_| Error::BadInput(format!("PGPORT={port:?} is not a port")))?;
        cfg.port(port);
    }
    if cfg.get_user().is_none() {
        cfg.user(vars.get("PGUSER").unwrap_or("postgres"));
    }
    if cfg.get_dbname().is_none() {
        cfg.dbname(vars.get("PGDATABASE").unwrap_or("postgres"));
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("walkeeper");
    }
    if cfg.get_password().is_none() {
        if let Some(p) = vars.get("PGPASSWORD") {
            cfg.password(p);
        } else if let Some(p) = passfile_password(&cfg, vars)? {
            cfg.password(p);
        }
    }
    Ok(ConnConfig { pg: cfg, tls })
}

fn passfile_path(vars: &Vars) -> Option<PathBuf> {
    vars.get("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| vars.get("HOME").map(|h| Path::new(h).join(".pgpass")))
}

/// Looks the connection up in a libpq password file (`host:port:db:user:password`, `*`
/// wildcards, `\` escapes). Unix-socket connections match the host `localhost`, as in libpq.
fn passfile_password(cfg: &Config, vars: &Vars) -> Result<Option<String>> {
    let Some(path) = passfile_path(vars) else {
        return Ok(None);
    };
    if path.exists() {
        if let Err(e) = crate::security::check_private(&path, "password file") {
            // Like libpq: a password file others can read is not used.
            if vars.get("PGPASSFILE").is_some() {
                return Err(e);
            }
            tracing::warn!("{e}; not using it");
            return Ok(None);
        }
    }
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        // Like libpq, an unreadable default ~/.pgpass is ignored; a named PGPASSFILE is not.
        Err(_) if vars.get("PGPASSFILE").is_none() => return Ok(None),
        Err(e) => return Err(Error::Config(format!("PGPASSFILE {}: {e}", path.display()))),
    };
    let host = match cfg.get_hosts().first() {
        Some(Host::Tcp(h)) => h.clone(),
        _ => "localhost".to_string(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432).to_string();
    let db = cfg.get_dbname().unwrap_or("postgres");
    let user = cfg.get_user().unwrap_or("postgres");
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let fields = split_pgpass(line);
        if fields.len() != 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&fields[0], &host) && m(&fields[1], &port) && m(&fields[2], db) && m(&fields[3], user)
        {
            return Ok(Some(fields[4].clone()));
        }
    }
    Ok(None)
}

fn split_pgpass(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(f)) = (chars.next(), fields.last_mut()) {
                    f.push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(f) = fields.last_mut() {
                    f.push(c)
                }
            }
        }
    }
    fields
}

pub async fn connect(cfg: &ConnConfig) -> Result<Client> {
    // Unix sockets never use TLS (as in libpq); tokio-postgres-rustls cannot name their server.
    let local_only = cfg
        .pg
        .get_hosts()
        .iter()
        .all(|h| !matches!(h, Host::Tcp(_)));
    let client = if cfg.tls.mode == TlsMode::Disable || local_only {
        let (client, conn) = cfg.pg.connect(NoTls).await.map_err(pg_err("connection"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!("PostgreSQL connection ended: {e}");
            }
        });
        client
    } else {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(
            crate::backup::pgtls::client_config(&cfg.tls)?,
        );
        let (client, conn) = cfg.pg.connect(tls).await.map_err(pg_err("connection"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!("PostgreSQL connection ended: {e}");
            }
        });
        client
    };
    Ok(client)
}

/// What the server says about itself before a backup.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version_num: i64,
    pub system_identifier: u64,
    pub seg_size: WalSegSize,
    pub data_directory: String,
    /// Were data checksums enabled at initdb (`data_checksums`)?
    pub data_checksums: bool,
    /// The server's page size (`block_size`).
    pub block_size: i64,
}

pub async fn server_info(client: &Client) -> Result<ServerInfo> {
    let row = client
        .query_one(
            concat!(
                "SELECT current_setting('server_version_num')::bigint, \
                        (SELECT system_identifier::text FROM pg_control_system()), ",
                wal_segment_size_sql!(),
                ", current_setting('data_directory'), \
                   current_setting('data_checksums') = 'on', \
                   current_setting('block_size')::bigint"
            ),
            &[],
        )
        .await
        .map_err(pg_err("server information"))?;
    let sysid: String = row
        .try_get(1)
        .map_err(pg_err("server information: system_identifier"))?;
    Ok(ServerInfo {
        version_num: row
            .try_get(0)
            .map_err(pg_err("server information: server_version_num"))?,
        system_identifier: sysid
            .parse()
            .map_err(|_| Error::Postgres(format!("the server's system identifier {sysid:?}")))?,
        seg_size: {
            let v: i64 = row.try_get(2).map_err(pg_err("wal_segment_size"))?;
            u64::try_from(v)
                .map_err(|_| Error::Postgres(format!("the server's wal_segment_size {v}")))
                .and_then(WalSegSize::new)
                .map_err(|e| Error::Postgres(format!("the server's wal_segment_size: {e}")))?
        },
        data_directory: row
            .try_get(3)
            .map_err(pg_err("server information: data_directory"))?,
        data_checksums: row
            .try_get(4)
            .map_err(pg_err("server information: data_checksums"))?,
        block_size: row
            .try_get(5)
            .map_err(pg_err("server information: block_size"))?,
    })
}

/// Starts a non-exclusive backup on this session. Returns the start LSN and its timeline.
pub async fn start_backup(client: &Client, version: i64, label: &str) -> Result<(Lsn, u32)> {
    let sql = if version >= 150000 {
        "SELECT pg_backup_start($1, true)::text"
    } else {
        "SELECT pg_start_backup($1, true, false)::text"
    };
    let row = client
        .query_one(sql, &[&label])
        .await
        .map_err(pg_err("backup start"))?;
    let lsn = Lsn::parse(
        row.try_get::<_, &str>(0)
            .map_err(pg_err("backup start: start LSN"))?,
    )?;
    let tli: i32 = client
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .map_err(pg_err("timeline"))?
        .try_get(0)
        .map_err(pg_err("timeline: timeline_id"))?;
    Ok((lsn, tli as u32))
}

/// Stops the backup without waiting for the archiver: the server's own wait sleeps in whole
/// seconds, so the caller polls the archive for the last segment instead (and must, before it
/// declares the backup complete). Returns the stop LSN, the backup_label and the
/// tablespace_map contents.
pub async fn stop_backup(client: &Client, version: i64) -> Result<(Lsn, String, String)> {
    let sql = if version >= 150000 {
        "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, labelfile, coalesce(spcmapfile, '') FROM pg_stop_backup(false, false)"
    };
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(pg_err("backup stop"))?;
    let lsn = row
        .try_get::<_, &str>(0)
        .map_err(pg_err("backup stop: lsn"))?;
    Ok((
        Lsn::parse(lsn)?,
        row.try_get(1).map_err(pg_err("backup stop: labelfile"))?,
        row.try_get(2).map_err(pg_err("backup stop: spcmapfile"))?,
    ))
}

/// A primary's current WAL position and timeline.
pub async fn wal_position(client: &Client) -> Result<(Lsn, u32)> {
    let row = client
        .query_one(
            "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())",
            &[],
        )
        .await
        .map_err(|e| Error::Cluster(format!("current WAL position: {e}")))?;
    let pos_err = |what: &'static str| {
        move |e: tokio_postgres::Error| Error::Cluster(format!("current WAL position: {what}: {e}"))
    };
    let lsn = Lsn::parse(row.try_get::<_, &str>(0).map_err(pos_err("lsn"))?)?;
    let file: &str = row.try_get(1).map_err(pos_err("pg_walfile_name"))?;
    let timeline = u32::from_str_radix(file.get(0..8).unwrap_or(""), 16)
        .map_err(|_| Error::Cluster(format!("timeline of WAL file {file:?}")))?;
    Ok((lsn, timeline))
}

/// `pg_is_in_recovery()`: does the server recover (a standby, or not yet promoted)?
pub async fn in_recovery(client: &Client) -> Result<bool> {
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .and_then(|r| r.try_get::<_, bool>(0))
        .map_err(|e| Error::Cluster(format!("pg_is_in_recovery(): {e}")))
}

/// Ends the current WAL segment (`pg_switch_wal()`) and returns its file name.
pub async fn switch_wal(client: &Client) -> Result<String> {
    let row = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(|e| Error::Cluster(format!("pg_switch_wal: {e}")))?;
    row.try_get(0)
        .map_err(|e| Error::Cluster(format!("pg_switch_wal's answer: {e}")))
}

/// The server's archiver (`pg_stat_archiver`) and its WAL position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiverStatus {
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub in_recovery: bool,
    /// `pg_current_wal_lsn()`, on a primary.
    pub current_lsn: Option<String>,
    /// The server's WAL segment size (the default when it cannot be read).
    pub seg_size: WalSegSize,
}

impl ArchiverStatus {
    /// How many bytes of WAL the primary wrote past the end of the last archived segment, when
    /// both are known.
    pub fn lag_bytes(&self) -> Option<u64> {
        let seg = crate::wal::names::WalName::parse(self.last_archived_wal.as_deref()?)
            .ok()?
            .segment()?;
        let cur = Lsn::parse(self.current_lsn.as_deref()?).ok()?;
        Some(
            cur.0
                .saturating_sub(seg.start_lsn(self.seg_size) + self.seg_size.get()),
        )
    }
}

/// Reads the archiver's state: last archived and failed segments, whether the server recovers,
/// and its current WAL position.
pub async fn archiver_status(client: &Client) -> Result<ArchiverStatus> {
    let row = client
        .query_one(
            concat!(
                "SELECT last_archived_wal, last_archived_time::text, failed_count, last_failed_wal, \
                        pg_is_in_recovery(), \
                        CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END, ",
                wal_segment_size_sql!(),
                " FROM pg_stat_archiver"
            ),
            &[],
        )
        .await
        .map_err(|e| Error::Cluster(format!("pg_stat_archiver: {e}")))?;
    let col = |what: &'static str| {
        move |e: tokio_postgres::Error| Error::Postgres(format!("pg_stat_archiver: {what}: {e}"))
    };
    Ok(ArchiverStatus {
        last_archived_wal: row.try_get(0).map_err(col("last_archived_wal"))?,
        last_archived_time: row.try_get(1).map_err(col("last_archived_time"))?,
        failed_count: row.try_get(2).map_err(col("failed_count"))?,
        last_failed_wal: row.try_get(3).map_err(col("last_failed_wal"))?,
        in_recovery: row.try_get(4).map_err(col("pg_is_in_recovery"))?,
        current_lsn: row.try_get(5).map_err(col("pg_current_wal_lsn"))?,
        seg_size: row
            .try_get::<_, Option<i64>>(6)
            .ok()
            .flatten()
            .and_then(|v| u64::try_from(v).ok())
            .and_then(|v| WalSegSize::new(v).ok())
            .unwrap_or_default(),
    })
}

/// Which instant the wall-clock time `local` (`YYYY-MM-DD HH:MM:SS[.f]`) is in the server's own
/// TimeZone, as PostgreSQL reads `recovery_target_time`: the session's zone is reset to the
/// server's first. Returns the instant as RFC 3339 text in UTC, and the zone's name.
pub async fn instant_in_server_zone(client: &Client, local: &str) -> Result<(String, String)> {
    let unavailable = |e: tokio_postgres::Error| Error::Postgres(format!("PostgreSQL: {e}"));
    client
        .batch_execute("RESET TimeZone")
        .await
        .map_err(unavailable)?;
    let row = client
        .query_one(
            "SELECT to_char(($1::text)::timestamptz AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), current_setting('TimeZone')",
            &[&local],
        )
        .await
        .map_err(unavailable)?;
    Ok((
        row.try_get(0).map_err(unavailable)?,
        row.try_get(1).map_err(unavailable)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_keys_leave_the_connection_string_in_both_forms() {
        let (rest, tls) = split_tls_keys(
            "host=h sslmode=verify-full user='u x' sslrootcert='/a b/ca.pem' sslkey=/k",
        )
        .unwrap();
        assert_eq!(rest, "host=h user='u x'");
        assert_eq!(
            tls,
            vec![
                ("sslmode".to_string(), "verify-full".to_string()),
                ("sslrootcert".to_string(), "/a b/ca.pem".to_string()),
                ("sslkey".to_string(), "/k".to_string()),
            ]
        );
        let (rest, tls) =
            split_tls_keys("postgresql://u@h:5/db?sslmode=require&application_name=x&sslcert=%2Fc")
                .unwrap();
        assert_eq!(rest, "postgresql://u@h:5/db?application_name=x");
        assert_eq!(tls[1], ("sslcert".to_string(), "/c".to_string()));
        assert!(split_tls_keys("host='unclosed").is_err());
    }

    #[test]
    fn sslmode_comes_from_the_connstring_then_pgsslmode() {
        let mut vars = Vars::default();
        vars.set("PGSSLMODE", "disable");
        let cfg = config(Some("host=h sslmode=require"), &vars).unwrap();
        assert_eq!(cfg.tls.mode, TlsMode::Require);
        let cfg = config(Some("host=h"), &vars).unwrap();
        assert_eq!(cfg.tls.mode, TlsMode::Disable);
        let e = config(Some("host=h sslmode=verify-full"), &Vars::default());
        assert!(e.is_err());
        vars.set("PGSSLMODE", "sometimes");
        assert!(config(Some("host=h"), &vars).is_err());
    }

    #[test]
    fn pgpass_lines_split_with_escapes() {
        assert_eq!(
            split_pgpass("h:5432:db:u:p\\:w\\\\d:x"),
            vec!["h", "5432", "db", "u", "p:w\\d:x"]
        );
    }

    #[test]
    fn passfile_supplies_the_password_for_a_matching_line() {
        let dir = tempfile::tempdir().unwrap();
        let pass = dir.path().join("pgpass");
        std::fs::write(
            &pass,
            "# comment\nother:5432:*:*:nope\n127.0.0.1:5433:*:replicator:s3cret\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut open = Vars::default();
        open.set("PGPASSFILE", pass.display().to_string());
        let e = config(Some("host=127.0.0.1 port=5433 user=replicator"), &open)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("group or world access"), "{e}");
        std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut vars = Vars::default();
        vars.set("PGPASSFILE", pass.display().to_string());
        let cfg = config(
            Some("host=127.0.0.1 port=5433 user=replicator dbname=postgres"),
            &vars,
        )
        .unwrap();
        assert_eq!(cfg.get_password(), Some(&b"s3cret"[..]));
        let cfg = config(Some("host=127.0.0.1 port=5434 user=replicator"), &vars).unwrap();
        assert_eq!(cfg.get_password(), None);
    }
}
