//! Optional client-side encryption with age (X25519 recipients).
//!
//! Uploading needs only the recipients (public keys: `WALKEEPER_AGE_RECIPIENT` or
//! `WALKEEPER_AGE_RECIPIENTS_FILE`); reading needs the identity (`WALKEEPER_AGE_IDENTITY_FILE`).
//! Encrypted objects are recognised by the age header, so the key names stay WAL-G's.

use std::io::{self, BufRead, Read, Write};
use std::path::Path;
use std::str::FromStr;

use crate::error::{Error, Result};

const AGE_MAGIC: &[u8] = b"age-encryption.org/v1";

/// True when `head` starts like an age file.
pub fn is_age(head: &[u8]) -> bool {
    head.starts_with(AGE_MAGIC)
}

pub struct Encryption {
    recipients: Vec<age::x25519::Recipient>,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encryption({} recipients)", self.recipients.len())
    }
}

impl Encryption {
    pub fn from_recipients(keys: &[String]) -> Result<Self> {
        let recipients = keys
            .iter()
            .map(|k| {
                age::x25519::Recipient::from_str(k.trim())
                    .map_err(|e| Error::Config(format!("age recipient {k:?}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        if recipients.is_empty() {
            return Err(Error::Config("no age recipient given".into()));
        }
        Ok(Encryption { recipients })
    }

    pub fn wrap<W: Write>(&self, sink: W) -> io::Result<age::stream::StreamWriter<W>> {
        let encryptor = age::Encryptor::with_recipients(
            self.recipients.iter().map(|r| r as &dyn age::Recipient),
        )
        .map_err(|e| io::Error::other(format!("age: {e}")))?;
        encryptor.wrap_output(sink)
    }
}

pub struct Decryption {
    identities: Vec<Box<dyn age::Identity + Send + Sync>>,
}

impl std::fmt::Debug for Decryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Decryption({} identities)", self.identities.len())
    }
}

impl Decryption {
    pub fn from_identity(id: age::x25519::Identity) -> Self {
        Decryption {
            identities: vec![Box::new(id)],
        }
    }

    /// Reads X25519 identities (`AGE-SECRET-KEY-1…` lines, `#` comments) from a file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("age identity file {}: {e}", path.display())))?;
        let mut identities: Vec<Box<dyn age::Identity + Send + Sync>> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let id = age::x25519::Identity::from_str(line).map_err(|_| {
                Error::Config(format!(
                    "age identity file {}: line {} is not an X25519 identity",
                    path.display(),
                    i + 1
                ))
            })?;
            identities.push(Box::new(id));
        }
        if identities.is_empty() {
            return Err(Error::Config(format!(
                "age identity file {}: no identity found",
                path.display()
            )));
        }
        Ok(Decryption { identities })
    }

    pub fn unwrap_reader<R: BufRead>(&self, src: R) -> io::Result<impl Read> {
        let decryptor = age::Decryptor::new_buffered(src)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("age: {e}")))?;
        decryptor
            .decrypt(
                self.identities
                    .iter()
                    .map(|i| i.as_ref() as &dyn age::Identity),
            )
            .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, format!("age: {e}")))
    }
}
