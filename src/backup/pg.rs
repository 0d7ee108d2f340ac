//! The PostgreSQL side of a base backup: connecting (PG* variables, a libpq connstring,
//! PGPASSFILE) and the non-exclusive backup functions.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use super::Lsn;
use crate::config::Vars;
use crate::error::{Error, Result};
use crate::wal::names::WalSegSize;

fn pg_err(what: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |e| Error::BadInput(format!("PostgreSQL {what}: {e}"))
}

/// Builds a connection config from `--connstring` (libpq key=value or URL) and the PG* variables
/// libpq reads, and finds the password in PGPASSFILE (or ~/.pgpass) when none is given.
pub fn config(connstring: Option<&str>, vars: &Vars) -> Result<Config> {
    let mut cfg = match connstring {
        Some(s) => {
            Config::from_str(s).map_err(|e| Error::BadInput(format!("connection string: {e}")))?
        }
        None => Config::new(),
    };
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
    Ok(cfg)
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

pub async fn connect(cfg: &Config) -> Result<Client> {
    let (client, conn) = cfg.connect(NoTls).await.map_err(pg_err("connection"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!("PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// What the server says about itself before a backup.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version_num: i64,
    pub system_identifier: u64,
    pub seg_size: WalSegSize,
    pub data_directory: String,
}

pub async fn server_info(client: &Client) -> Result<ServerInfo> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::bigint, \
                    (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT setting::bigint * CASE unit WHEN '8kB' THEN 8192 WHEN 'MB' THEN 1048576 ELSE 1 END \
                       FROM pg_settings WHERE name = 'wal_segment_size'), \
                    current_setting('data_directory')",
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
            .map_err(|_| Error::BadInput(format!("system identifier {sysid:?}")))?,
        seg_size: {
            let v: i64 = row.try_get(2).map_err(pg_err("wal_segment_size"))?;
            u64::try_from(v)
                .map_err(|_| Error::BadInput(format!("wal_segment_size {v}")))
                .and_then(WalSegSize::new)
                .map_err(|e| Error::BadInput(format!("the server's wal_segment_size: {e}")))?
        },
        data_directory: row
            .try_get(3)
            .map_err(pg_err("server information: data_directory"))?,
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

#[cfg(test)]
mod tests {
    use super::*;

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
