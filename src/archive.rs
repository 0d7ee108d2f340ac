//! An opened archive: settings, the store, and the codec keys. Every command starts here.

use crate::codec::pgp::PgpKeys;
use crate::codec::{Decryption, Encryption};
use crate::config::Settings;
use crate::error::{Error, Result};
use crate::storage::Store;

/// The folder of base backups (WAL-G's and WAL-E's name). The WAL layer reads sentinels too, to
/// learn the system identifier of the newest backup.
pub const BACKUP_FOLDER: &str = "basebackups_005";
/// The suffix of a backup's stop sentinel, written last: a backup without one does not exist.
pub const SENTINEL_SUFFIX: &str = "_backup_stop_sentinel.json";

#[derive(Debug)]
pub struct Archive {
    pub settings: Settings,
    pub store: Store,
    pub encryption: Option<Encryption>,
    pub decryption: Option<Decryption>,
}

impl Archive {
    pub fn open(settings: Settings) -> Result<Self> {
        let store = Store::from_settings(&settings)?;
        let pgp = PgpKeys::from_vars(&settings.vars)?;
        let encryption = match (settings.age_recipients.is_empty(), pgp.encryption) {
            (true, None) => None,
            (false, None) => Some(Encryption::from_recipients(&settings.age_recipients)?),
            (true, Some(p)) => Some(Encryption::Pgp(p)),
            (false, Some(_)) => {
                return Err(Error::Config(
                    "both age recipients and an OpenPGP key are set for uploads; set only one \
                     (either key still reads the objects it encrypted)"
                        .into(),
                ))
            }
        };
        let mut decryption = match &settings.age_identity_file {
            Some(p) => {
                crate::security::check_private(p, "age identity file")?;
                Some(Decryption::from_file(p)?)
            }
            None => None,
        };
        if let Some(p) = pgp.decryption {
            decryption.get_or_insert_with(Decryption::default).pgp = Some(p);
        }
        Ok(Archive {
            settings,
            store,
            encryption,
            decryption,
        })
    }
}
