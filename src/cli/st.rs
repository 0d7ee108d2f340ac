//! `walkeeper st ls|cat|get|put|rm` (WAL-G's storage tools), on paths relative to the archive
//! prefix (`wal_005/…`, `basebackups_005/…`).
//!
//! - `st ls [-r] [PATH]`: WAL-G's table (`type size last modified name`, columns aligned as Go's
//!   tabwriter does, times as Go prints them): the folders (`dir`, 0, the zero time, `name/`)
//!   then the objects directly in PATH, or with `-r` every object under it by its relative path;
//! - `st cat PATH [--decompress]`: the object's bytes on stdout;
//! - `st get PATH DEST [--no-decompress] [--no-decrypt]`: download, decoded by its extension;
//! - `st put SRC DEST [--no-compress] [--no-encrypt]`: upload, compressed with the configured
//!   codec (its extension appended) and encrypted when age is configured. walkeeper never
//!   overwrites: an existing object is refused (exit 2);
//! - `st rm PATH`: delete the object, or every object under the folder PATH.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::archive::Archive;
use crate::codec::{self, Compression};
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// WAL-G's failover storage to act on: only `default` (the one prefix) exists here.
    #[arg(short = 't', long, global = true, value_name = "STORAGE")]
    pub target: Option<String>,
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// List a folder.
    Ls {
        path: Option<String>,
        /// Every object under the folder, by its path relative to it.
        #[arg(short, long)]
        recursive: bool,
    },
    /// Print an object.
    Cat {
        path: String,
        /// Decode it by its extension.
        #[arg(long)]
        decompress: bool,
    },
    /// Download an object into a file.
    Get {
        path: String,
        dest: PathBuf,
        #[arg(long)]
        no_decompress: bool,
        #[arg(long)]
        no_decrypt: bool,
    },
    /// Upload a file.
    Put {
        src: PathBuf,
        dest: String,
        #[arg(long)]
        no_compress: bool,
        #[arg(long)]
        no_encrypt: bool,
    },
    /// Delete an object or a folder.
    Rm { path: String },
}

fn clean(path: &str) -> Result<String> {
    let p = path.trim_matches('/');
    if p.split('/').any(|c| c == "..") {
        return Err(Error::BadInput(format!(
            "{path:?}: no `..` in storage paths"
        )));
    }
    Ok(p.to_string())
}

/// How `st cat`/`st get` hand an object over.
#[derive(Clone, Copy)]
enum Decode {
    /// The stored bytes.
    Raw,
    /// Decompressed (by the name's codec extension), and decrypted when `decrypt`.
    Plain { decrypt: bool },
}

/// Streams the object at `path` (decoded as asked) into `dst`, a blocking writer, and returns
/// it. Nothing is held whole: the download, the decoder and the writer run as one pipeline.
async fn stream_out<W: Write + Send + 'static>(
    archive: &Arc<Archive>,
    path: &str,
    how: Decode,
    dst: W,
) -> Result<W> {
    let codec = match how {
        Decode::Raw => None,
        Decode::Plain { decrypt } => {
            let c = path
                .rsplit_once('.')
                .and_then(|(_, e)| Compression::from_ext(e))
                .ok_or_else(|| {
                    Error::BadInput(format!(
                        "{path}: no codec extension to decode it by (use --no-decompress)"
                    ))
                })?;
            Some((c, decrypt))
        }
    };
    let reader = archive
        .store
        .open_read(path)
        .await?
        .ok_or_else(|| Error::NotFound { key: path.into() })?;
    let (archive, key) = (archive.clone(), path.to_string());
    tokio::task::spawn_blocking(move || -> Result<W> {
        let mut dst = dst;
        let corrupt = |e: std::io::Error| Error::Corrupt {
            key: key.clone(),
            msg: e.to_string(),
        };
        match codec {
            None => {
                let mut r = reader;
                std::io::copy(&mut r, &mut dst).map_err(corrupt)?;
            }
            Some((c, decrypt)) => {
                let dec = archive.decryption.as_ref().filter(|_| decrypt);
                codec::decode(reader, &mut dst, c, dec).map_err(corrupt)?;
            }
        }
        Ok(dst)
    })
    .await
    .map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))?
}

/// A time as Go's `time.Time.String()` prints a UTC one: `2006-01-02 15:04:05.5 +0000 UTC`,
/// fractional seconds without trailing zeros.
fn go_time(t: &chrono::DateTime<chrono::Utc>) -> String {
    let nanos = t.timestamp_subsec_nanos();
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    format!("{}{frac} +0000 UTC", t.format("%Y-%m-%d %H:%M:%S"))
}

/// Rows laid out as Go's `tabwriter.NewWriter(w, 0, 0, 1, ' ', 0)` lays out tab-terminated
/// cells: every column but the last padded to its widest cell plus one space.
fn tabwriter(rows: &[[String; 4]]) -> String {
    let mut widths = [0usize; 3];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        for (w, cell) in widths.iter().zip(row) {
            out.push_str(&format!("{cell:<width$}", width = w + 1));
        }
        out.push_str(&row[3]);
        out.push('\n');
    }
    out
}

async fn run_st(archive: &Arc<Archive>, what: &What) -> Result<()> {
    let mut stdout = std::io::stdout();
    let out_err = |e| Error::io("stdout", e);
    match what {
        What::Ls { path, recursive } => {
            let p = clean(path.as_deref().unwrap_or(""))?;
            let prefix = if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            };
            let mut dirs = std::collections::BTreeSet::new();
            let mut rows: Vec<[String; 4]> = Vec::new();
            for (key, meta) in archive.store.list(&p).await? {
                let Some(rest) = key.strip_prefix(&prefix) else {
                    continue;
                };
                match rest.split_once('/') {
                    Some((d, _)) if !recursive => {
                        dirs.insert(format!("{d}/"));
                    }
                    _ => rows.push([
                        "obj".into(),
                        meta.size.to_string(),
                        go_time(&meta.last_modified),
                        rest.to_string(),
                    ]),
                }
            }
            let dirs = dirs.into_iter().map(|d| {
                [
                    "dir".to_string(),
                    "0".into(),
                    "0001-01-01 00:00:00 +0000 UTC".into(),
                    d,
                ]
            });
            let mut table = vec![[
                "type".to_string(),
                "size".into(),
                "last modified".into(),
                "name".into(),
            ]];
            table.extend(dirs);
            table.extend(rows);
            stdout
                .write_all(tabwriter(&table).as_bytes())
                .map_err(out_err)?;
        }
        What::Cat { path, decompress } => {
            let p = clean(path)?;
            let how = if *decompress {
                Decode::Plain { decrypt: true }
            } else {
                Decode::Raw
            };
            let out =
                stream_out(archive, &p, how, std::io::BufWriter::new(std::io::stdout())).await?;
            out.into_inner()
                .map_err(|e| out_err(e.into_error()))?
                .flush()
                .map_err(out_err)?;
        }
        What::Get {
            path,
            dest,
            no_decompress,
            no_decrypt,
        } => {
            let p = clean(path)?;
            let how = if *no_decompress {
                Decode::Raw
            } else {
                Decode::Plain {
                    decrypt: !no_decrypt,
                }
            };
            let file = std::fs::File::create(dest).map_err(|e| Error::io(dest, e))?;
            match stream_out(archive, &p, how, std::io::BufWriter::new(file)).await {
                Ok(w) => {
                    let file = w
                        .into_inner()
                        .map_err(|e| Error::io(dest, e.into_error()))?;
                    file.sync_all().map_err(|e| Error::io(dest, e))?;
                }
                Err(e) => {
                    // No partial file is left looking like the object.
                    let _ = std::fs::remove_file(dest);
                    return Err(e);
                }
            }
        }
        What::Put {
            src,
            dest,
            no_compress,
            no_encrypt,
        } => {
            let p = clean(dest)?;
            if *no_compress && !*no_encrypt {
                return Err(Error::BadInput(
                    "st put --no-compress needs --no-encrypt: an encrypted object is stored \
                     compressed"
                        .into(),
                ));
            }
            // Readable now, so a wrong path fails before anything is sent.
            std::fs::File::open(src).map_err(|e| Error::io(src, e))?;
            let compression = archive.settings.compression;
            let key = if *no_compress {
                p
            } else {
                format!("{p}.{}", compression.ext())
            };
            if archive.store.head(&key).await?.is_some() {
                return Err(Error::BadInput(format!(
                    "{key} exists; walkeeper never overwrites (st rm it first)"
                )));
            }
            let (a, src2, raw, plain) = (archive.clone(), src.clone(), *no_compress, *no_encrypt);
            // Streamed from the file through the codec into the store (create-only).
            archive
                .store
                .put_stream(&key, move |w| {
                    let file = std::fs::File::open(&src2)?;
                    if raw {
                        std::io::copy(&mut std::io::BufReader::new(file), w).map(|_| ())
                    } else {
                        let enc = a.encryption.as_ref().filter(|_| !plain);
                        codec::encode(file, w, compression, enc).map(|_| ())
                    }
                })
                .await?;
            writeln!(stdout, "{key}").map_err(out_err)?;
        }
        What::Rm { path } => {
            let p = clean(path)?;
            if p.is_empty() {
                return Err(Error::BadInput(
                    "st rm needs a path (to empty the archive, say `delete everything`)".into(),
                ));
            }
            let keys: Vec<String> = if archive.store.head(&p).await?.is_some() {
                vec![p]
            } else {
                archive
                    .store
                    .list(&p)
                    .await?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect()
            };
            if keys.is_empty() {
                return Err(Error::NotFound { key: path.clone() });
            }
            for k in keys {
                archive.store.delete(&k).await?;
                writeln!(stdout, "deleted {k}").map_err(out_err)?;
            }
        }
    }
    Ok(())
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let result = async {
        if let Some(t) = args.target.as_deref().filter(|t| *t != "default") {
            return Err(Error::BadInput(format!(
                "st --target {t}: walkeeper has no failover storages; it acts on the one archive \
                 prefix (`--target default`), drop the option"
            )));
        }
        let settings = cli.settings()?;
        settings.refuse_unimplemented_encryption()?;
        let archive = Arc::new(Archive::open(settings)?);
        run_st(&archive, &args.what).await
    }
    .await;
    super::exit("st", result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ls_lays_out_rows_and_times_as_wal_g_go_tabwriter_and_time_string() {
        let t = |nanos| {
            chrono::Utc
                .with_ymd_and_hms(2024, 1, 2, 3, 4, 5)
                .unwrap()
                .with_nanosecond(nanos)
                .unwrap()
        };
        use chrono::Timelike;
        assert_eq!(go_time(&t(0)), "2024-01-02 03:04:05 +0000 UTC");
        assert_eq!(go_time(&t(100_000_000)), "2024-01-02 03:04:05.1 +0000 UTC");
        assert_eq!(
            go_time(&t(123_456_789)),
            "2024-01-02 03:04:05.123456789 +0000 UTC"
        );
        let row = |a: &str, b: &str, c: &str, d: &str| {
            [a.to_string(), b.to_string(), c.to_string(), d.to_string()]
        };
        let table = tabwriter(&[
            row("type", "size", "last modified", "name"),
            row("dir", "0", "0001-01-01 00:00:00 +0000 UTC", "wal_005/"),
            row("obj", "16777216", &go_time(&t(0)), "x.lz4"),
        ]);
        assert_eq!(
            table,
            "type size     last modified                 name\n\
             dir  0        0001-01-01 00:00:00 +0000 UTC wal_005/\n\
             obj  16777216 2024-01-02 03:04:05 +0000 UTC x.lz4\n"
        );
    }
}
