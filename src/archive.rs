//! An opened archive: settings, the store, and the codec keys. Every command starts here.

use crate::codec::{Decryption, Encryption};
use crate::config::Settings;
use crate::error::Result;
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
        let encryption = if settings.age_recipients.is_empty() {
            None
        } else {
            Some(Encryption::from_recipients(&settings.age_recipients)?)
        };
        let decryption = match &settings.age_identity_file {
            Some(p) => {
                crate::security::check_private(p, "age identity file")?;
                Some(Decryption::from_file(p)?)
            }
            None => None,
        };
        Ok(Archive {
            settings,
            store,
            encryption,
            decryption,
        })
    }
}
