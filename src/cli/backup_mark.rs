//! `walkeeper backup-mark [-i] NAME` (WAL-G): make a backup permanent, or with `-i` (WAL-G's
//! `--impermanent`) ordinary again. Rewrites `IsPermanent` in the sentinel and `is_permanent`
//! in metadata.json, keeping every other field as it was.
//!
//! Objects are never overwritten in place: each is deleted, then written again, metadata.json
//! first, the sentinel last. While the sentinel is away the backup is not listed, and retention
//! leaves an unlisted backup alone.

use crate::archive::Archive;
use crate::backup::{resolve, sentinel_key, Format, BACKUP_FOLDER};
use crate::error::{Error, Result};
use crate::storage::Store;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The backup (a name, or LATEST).
    pub name: String,
    /// Make it ordinary again (retention may then delete it).
    #[arg(short = 'i', long)]
    pub impermanent: bool,
}

/// Sets `field` in the JSON object at `key` and writes it back.
async fn rewrite(store: &Store, key: &str, field: &str, value: bool) -> Result<bool> {
    let bytes = match store.get_bytes(key).await {
        Ok(b) => b,
        Err(Error::NotFound { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt {
        key: key.into(),
        msg: format!("not JSON: {e}"),
    })?;
    let Some(obj) = v.as_object_mut() else {
        return Err(Error::Corrupt {
            key: key.into(),
            msg: "not a JSON object".into(),
        });
    };
    if obj.get(field) == Some(&serde_json::Value::Bool(value)) {
        return Ok(true);
    }
    obj.insert(field.into(), serde_json::Value::Bool(value));
    let body = serde_json::to_vec_pretty(&v).map_err(|e| Error::Corrupt {
        key: key.into(),
        msg: e.to_string(),
    })?;
    store.delete(key).await?;
    store.put_bytes(key, body.into()).await?;
    Ok(true)
}

pub async fn run(cli: &super::Cli, args: &Args) -> i32 {
    let permanent = !args.impermanent;
    let result = async {
        let archive = Archive::open(cli.settings()?)?;
        let b = resolve(&archive.store, &args.name).await?;
        if b.format == Format::WalE {
            return Err(Error::BadInput(format!(
                "{}: a WAL-E backup has no permanence field; nothing was changed",
                b.name
            )));
        }
        let meta = format!("{BACKUP_FOLDER}/{}/metadata.json", b.name);
        rewrite(&archive.store, &meta, "is_permanent", permanent).await?;
        rewrite(
            &archive.store,
            &sentinel_key(&b.name),
            "IsPermanent",
            permanent,
        )
        .await?;
        println!(
            "{} is now {}",
            b.name,
            if permanent {
                "permanent"
            } else {
                "impermanent"
            }
        );
        Ok(())
    }
    .await;
    super::exit("backup-mark", result)
}
