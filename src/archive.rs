//! An opened archive: settings, the store, and the codec keys. Every command starts here.

use crate::codec::{Decryption, Encryption};
use crate::config::Settings;
use crate::error::Result;
use crate::storage::Store;

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
