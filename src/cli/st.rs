//! `walkeeper st ls|cat|get|put|rm` (WAL-G's storage tools), on paths relative to the archive
//! prefix (`wal_005/…`, `basebackups_005/…`).
//!
//! - `st ls [PATH]`: the folders and objects directly in PATH (`dir`/`obj`, size, time, name);
//! - `st cat PATH [--decompress]`: the object's bytes on stdout;
//! - `st get PATH DEST [--no-decompress] [--no-decrypt]`: download, decoded by its extension;
//! - `st put SRC DEST [--no-compress] [--no-encrypt]`: upload, compressed with the configured
//!   codec (its extension appended) and encrypted when age is configured. walkeeper never
//!   overwrites: an existing object is refused (exit 2);
//! - `st rm PATH`: delete the object, or every object under the folder PATH.

use std::io::Write;
use std::path::PathBuf;

use crate::archive::Archive;
use crate::codec::{self, Compression};
use crate::error::{Error, Result};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(Debug, clap::Subcommand)]
pub enum What {
    /// List a folder.
    Ls { path: Option<String> },
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

async fn fetch(archive: &Archive, path: &str) -> Result<bytes::Bytes> {
    archive.store.get_bytes(path).await
}

fn decode(archive: &Archive, path: &str, bytes: &[u8], decrypt: bool) -> Result<Vec<u8>> {
    let c = path
        .rsplit_once('.')
        .and_then(|(_, e)| Compression::from_ext(e))
        .ok_or_else(|| {
            Error::BadInput(format!(
                "{path}: no codec extension to decode it by (use --no-decompress)"
            ))
        })?;
    let mut out = Vec::new();
    let dec = if decrypt {
        archive.decryption.as_ref()
    } else {
        None
    };
    codec::decode(bytes, &mut out, c, dec).map_err(|e| Error::Corrupt {
        key: path.into(),
        msg: e.to_string(),
    })?;
    Ok(out)
}

async fn run_st(archive: &Archive, what: &What) -> Result<()> {
    let mut stdout = std::io::stdout();
    let out_err = |e| Error::io("stdout", e);
    match what {
        What::Ls { path } => {
            let p = clean(path.as_deref().unwrap_or(""))?;
            let prefix = if p.is_empty() {
                String::new()
            } else {
                format!("{p}/")
            };
            let mut dirs = std::collections::BTreeSet::new();
            let mut objs = Vec::new();
            for (key, meta) in archive.store.list(&p).await? {
                let Some(rest) = key.strip_prefix(&prefix) else {
                    continue;
                };
                match rest.split_once('/') {
                    Some((d, _)) => {
                        dirs.insert(d.to_string());
                    }
                    None => objs.push((rest.to_string(), meta)),
                }
            }
            for d in dirs {
                writeln!(stdout, "dir\t0\t\t{d}").map_err(out_err)?;
            }
            for (name, m) in objs {
                writeln!(
                    stdout,
                    "obj\t{}\t{}\t{name}",
                    m.size,
                    m.last_modified
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
                .map_err(out_err)?;
            }
        }
        What::Cat { path, decompress } => {
            let p = clean(path)?;
            let bytes = fetch(archive, &p).await?;
            let body = if *decompress {
                decode(archive, &p, &bytes, true)?
            } else {
                bytes.to_vec()
            };
            stdout.write_all(&body).map_err(out_err)?;
        }
        What::Get {
            path,
            dest,
            no_decompress,
            no_decrypt,
        } => {
            let p = clean(path)?;
            let bytes = fetch(archive, &p).await?;
            let body = if *no_decompress {
                bytes.to_vec()
            } else {
                decode(archive, &p, &bytes, !no_decrypt)?
            };
            std::fs::write(dest, body).map_err(|e| Error::io(dest, e))?;
        }
        What::Put {
            src,
            dest,
            no_compress,
            no_encrypt,
        } => {
            let p = clean(dest)?;
            let body = std::fs::read(src).map_err(|e| Error::io(src, e))?;
            let compression = archive.settings.compression;
            let (key, data) = if *no_compress && *no_encrypt {
                (p, body)
            } else {
                let enc = if *no_encrypt {
                    None
                } else {
                    archive.encryption.as_ref()
                };
                let mut out = Vec::new();
                if *no_compress {
                    return Err(Error::BadInput(
                        "st put --no-compress needs --no-encrypt: an encrypted object is stored \
                         compressed"
                            .into(),
                    ));
                }
                codec::encode(&body[..], &mut out, compression, enc)
                    .map_err(|e| Error::io(src, e))?;
                (format!("{p}.{}", compression.ext()), out)
            };
            if archive.store.head(&key).await?.is_some() {
                return Err(Error::BadInput(format!(
                    "{key} exists; walkeeper never overwrites (st rm it first)"
                )));
            }
            archive.store.put_bytes(&key, data.into()).await?;
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
        let settings = cli.settings()?;
        settings.refuse_unimplemented_encryption()?;
        let archive = Archive::open(settings)?;
        run_st(&archive, &args.what).await
    }
    .await;
    super::exit("st", result)
}
