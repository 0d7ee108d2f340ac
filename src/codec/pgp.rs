//! OpenPGP (RFC 4880/9580) encryption as a streaming layer: WAL-E's `--gpg-key-id` (gpg over
//! lzop), `gpg --encrypt`, and WAL-G's PGP mode.
//!
//! Keys come from `WALG_PGP_KEY` (the armored key itself; WAL-G's literal `\n` accepted),
//! `WALG_PGP_KEY_PATH` (a file, armored or binary) with `WALG_PGP_KEY_PASSPHRASE`, and are used
//! in process with rpgp. `WALE_GPG_KEY_ID` (or `--gpg-key-id`) uses the user's gpg keyring as
//! WAL-E does: the public key is exported once (`gpg --export`) and uploads are encrypted in
//! process; reading runs `gpg -d -q --batch` as a streaming stage, so gpg-agent supplies the
//! secret key and its passphrase.
//!
//! Written objects are a public-key encrypted session key per recipient and one SEIPDv1 (AES-256,
//! MDC) packet with partial body lengths: what gpg, WAL-E and WAL-G all decrypt.

use std::io::{self, BufRead, Read, Write};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use pgp::composed::{Message, PublicOrSecret, SignedPublicKey, SignedSecretKey, TheRing};
use pgp::crypto::sym::SymmetricKeyAlgorithm;
use pgp::packet::{PacketTrait, PublicKeyEncryptedSessionKey};
use pgp::types::{KeyDetails, Password};
use rand::RngCore;

use crate::config::Vars;
use crate::error::{Error, Result};

/// Plaintext is handed to the encrypting thread in pieces of this size.
const PIECE: usize = 64 * 1024;
/// How many plaintext pieces may wait for the encrypting thread.
const PIECES_IN_FLIGHT: usize = 4;

/// True when `head` starts like a binary OpenPGP message: a public-key or symmetric-key
/// encrypted session key packet (what gpg, WAL-E and WAL-G write first) with a plausible body.
/// Strict, so that a compressed stream without a magic number (brotli) is not mistaken for it.
pub fn is_pgp(head: &[u8]) -> bool {
    let Some(&ctb) = head.first() else {
        return false;
    };
    if ctb & 0x80 == 0 {
        return false;
    }
    let (tag, body_len, hdr) = if ctb & 0x40 != 0 {
        let tag = ctb & 0x3f;
        match head.get(1) {
            Some(&b) if b < 192 => (tag, b as usize, 2),
            Some(&b) if b < 224 => match head.get(2) {
                Some(&c) => (tag, ((b as usize - 192) << 8) + c as usize + 192, 3),
                None => return false,
            },
            Some(&255) => match head.get(2..6) {
                Some(l) => (
                    tag,
                    u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize,
                    6,
                ),
                None => return false,
            },
            _ => return false,
        }
    } else {
        let tag = (ctb >> 2) & 0x0f;
        match ctb & 3 {
            0 => match head.get(1) {
                Some(&b) => (tag, b as usize, 2),
                None => return false,
            },
            1 => match head.get(1..3) {
                Some(l) => (tag, u16::from_be_bytes([l[0], l[1]]) as usize, 3),
                None => return false,
            },
            2 => match head.get(1..5) {
                Some(l) => (
                    tag,
                    u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize,
                    5,
                ),
                None => return false,
            },
            _ => return false,
        }
    };
    let Some(body) = head.get(hdr..) else {
        return false;
    };
    match tag {
        // Public-Key Encrypted Session Key: v3 (key id, algorithm) or v6.
        1 => match body.first() {
            Some(3) => {
                body_len >= 12
                    && body
                        .get(9)
                        .is_some_and(|a| matches!(a, 1 | 2 | 16 | 18 | 20 | 25 | 26))
            }
            Some(6) => body_len >= 4 && body.len() >= 2,
            _ => false,
        },
        // Symmetric-Key Encrypted Session Key: v4 (cipher, S2K type) or v5/v6.
        3 => match body.first() {
            Some(4) => {
                body_len >= 4
                    && body.get(1).is_some_and(|c| (1..=13).contains(c))
                    && body.get(2).is_some_and(|s| matches!(s, 0 | 1 | 3 | 4))
            }
            Some(5 | 6) => body_len >= 4 && body.get(1).is_some_and(|_| true),
            _ => false,
        },
        _ => false,
    }
}

/// The keys the settings name, parsed once.
#[derive(Debug, Default)]
pub struct PgpKeys {
    pub encryption: Option<PgpEncryption>,
    pub decryption: Option<PgpDecryption>,
}

/// Where a key came from, for messages (never the key itself).
fn key_source(vars: &Vars) -> Option<(&'static str, Option<PathBuf>)> {
    let set = |k: &str| vars.get(k).is_some_and(|v| !v.trim().is_empty());
    if set("WALG_PGP_KEY") {
        Some(("WALG_PGP_KEY", None))
    } else if set("WALG_PGP_KEY_PATH") {
        Some((
            "WALG_PGP_KEY_PATH",
            vars.get("WALG_PGP_KEY_PATH")
                .map(|p| PathBuf::from(p.trim())),
        ))
    } else {
        None
    }
}

/// The gpg key id WAL-E's users set (`WALE_GPG_KEY_ID`; `WALG_GPG_KEY_ID` as an alias).
pub fn gpg_key_id(vars: &Vars) -> Option<String> {
    ["WALE_GPG_KEY_ID", "WALG_GPG_KEY_ID"]
        .iter()
        .filter_map(|k| vars.get(k))
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

impl PgpKeys {
    /// Reads `WALG_PGP_KEY` / `WALG_PGP_KEY_PATH` (with `WALG_PGP_KEY_PASSPHRASE`), else
    /// `WALE_GPG_KEY_ID` from the gpg keyring. Nothing set: no keys.
    pub fn from_vars(vars: &Vars) -> Result<Self> {
        let passphrase = vars.get("WALG_PGP_KEY_PASSPHRASE").map(str::to_string);
        if let Some((var, path)) = key_source(vars) {
            let text = match &path {
                None => vars
                    .get("WALG_PGP_KEY")
                    .unwrap_or_default()
                    .replace("\\n", "\n")
                    .into_bytes(),
                Some(p) => std::fs::read(p)
                    .map_err(|e| Error::Config(format!("{var} {}: {e}", p.display())))?,
            };
            let what = match &path {
                None => var.to_string(),
                Some(p) => format!("{var} {}", p.display()),
            };
            return Self::from_key_bytes(&text, &what, passphrase);
        }
        if let Some(id) = gpg_key_id(vars) {
            let gpg = Gpg::from_vars(vars);
            let exported = gpg.export(&id)?;
            let keys = Self::from_key_bytes(&exported, &format!("gpg key {id}"), None)?;
            return Ok(PgpKeys {
                encryption: keys.encryption,
                decryption: Some(PgpDecryption { how: How::Gpg(gpg) }),
            });
        }
        Ok(PgpKeys::default())
    }

    /// Parses one or more keys (armored or binary, public or secret).
    pub fn from_key_bytes(text: &[u8], what: &str, passphrase: Option<String>) -> Result<Self> {
        // rpgp's message is not shown: it might quote the (secret) input.
        let bad = |_: pgp::errors::Error| {
            Error::Config(format!("{what}: not an OpenPGP key (armored or binary)"))
        };
        let (keys, _) = PublicOrSecret::from_reader_many(text).map_err(bad)?;
        let mut public = Vec::new();
        let mut secret = Vec::new();
        for k in keys {
            match k.map_err(bad)? {
                PublicOrSecret::Public(p) => public.push(p),
                PublicOrSecret::Secret(s) => {
                    public.push(s.to_public_key());
                    secret.push(s);
                }
            }
        }
        if public.is_empty() {
            return Err(Error::Config(format!("{what}: no OpenPGP key found")));
        }
        let encryption = PgpEncryption::to_keys(&public, what)?;
        let decryption = (!secret.is_empty()).then(|| PgpDecryption {
            how: How::Keys {
                keys: secret,
                passphrase: passphrase.map(Password::from).unwrap_or_default(),
            },
        });
        Ok(PgpKeys {
            encryption: Some(encryption),
            decryption,
        })
    }
}

/// An rpgp error in one line, without its backtrace.
fn short(e: &pgp::errors::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

/// A key a session key is encrypted to.
#[derive(Clone)]
enum Recipient {
    Primary(pgp::packet::PublicKey),
    Sub(pgp::packet::PublicSubkey),
}

/// Encrypts uploads to one or more public keys.
#[derive(Clone)]
pub struct PgpEncryption {
    recipients: Arc<Vec<Recipient>>,
    ids: Vec<String>,
}

impl std::fmt::Debug for PgpEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgpEncryption(to {})", self.ids.join(", "))
    }
}

impl PgpEncryption {
    /// Every key's encryption subkeys (key flags allow encrypting; else any subkey of an
    /// encrypting algorithm), else its primary key when that can encrypt.
    fn to_keys(keys: &[SignedPublicKey], what: &str) -> Result<Self> {
        let mut recipients = Vec::new();
        let mut ids = Vec::new();
        for k in keys {
            let mut found = false;
            for sub in &k.public_subkeys {
                let flagged = sub.signatures.iter().any(|s| {
                    let f = s.key_flags();
                    f.encrypt_comms() || f.encrypt_storage()
                });
                let no_flags = sub.signatures.iter().all(|s| {
                    let f = s.key_flags();
                    !f.encrypt_comms() && !f.encrypt_storage() && !f.sign() && !f.certify()
                });
                if sub.key.algorithm().can_encrypt() && (flagged || no_flags) {
                    ids.push(sub.key.legacy_key_id().to_string());
                    recipients.push(Recipient::Sub(sub.key.clone()));
                    found = true;
                }
            }
            if !found && k.primary_key.algorithm().can_encrypt() {
                ids.push(k.primary_key.legacy_key_id().to_string());
                recipients.push(Recipient::Primary(k.primary_key.clone()));
                found = true;
            }
            if !found {
                return Err(Error::Config(format!(
                    "{what}: key {} has no key that can encrypt",
                    k.primary_key.legacy_key_id()
                )));
            }
        }
        Ok(PgpEncryption {
            recipients: Arc::new(recipients),
            ids,
        })
    }

    /// The key ids uploads are encrypted to.
    pub fn key_ids(&self) -> &[String] {
        &self.ids
    }

    /// A writer that encrypts into `sink`; [`PgpWriter::finish`] completes the message.
    pub fn wrap<W: Write>(&self, sink: W) -> io::Result<PgpWriter<W>> {
        let (pt_tx, pt_rx) = mpsc::sync_channel::<Vec<u8>>(PIECES_IN_FLIGHT);
        let (ct_tx, ct_rx) = mpsc::channel::<Vec<u8>>();
        let recipients = Arc::clone(&self.recipients);
        let worker = std::thread::Builder::new()
            .name("pgp-encrypt".into())
            .spawn(move || encrypt_worker(&recipients, pt_rx, ct_tx))?;
        Ok(PgpWriter {
            sink,
            tx: Some(pt_tx),
            rx: ct_rx,
            worker: Some(worker),
            piece: Vec::with_capacity(PIECE),
        })
    }
}

/// Partial body lengths (RFC 4880 §4.2.2.4) of the written packets: a power of two, ≥ 512.
const CHUNK_LOG2: u8 = 16;
const CHUNK: usize = 1 << CHUNK_LOG2;

/// Encrypts the session key to every recipient with rpgp, then runs [`Seipd`] over the
/// plaintext pieces, sending ciphertext pieces back. An empty piece marks the end; a channel
/// closed without it (the writer was dropped unfinished) is an error, so no complete message is
/// ever made of a partial stream.
fn encrypt_worker(
    recipients: &[Recipient],
    pt: Receiver<Vec<u8>>,
    ct: mpsc::Sender<Vec<u8>>,
) -> io::Result<()> {
    let mut rng = rand::thread_rng();
    let alg = SymmetricKeyAlgorithm::AES256;
    let session_key = alg.new_session_key(&mut rng);
    let openpgp = |e: pgp::errors::Error| io::Error::other(format!("OpenPGP: {}", short(&e)));
    let mut head = Vec::new();
    for r in recipients {
        let esk = match r {
            Recipient::Primary(k) => {
                PublicKeyEncryptedSessionKey::from_session_key_v3(&mut rng, &session_key, alg, k)
            }
            Recipient::Sub(k) => {
                PublicKeyEncryptedSessionKey::from_session_key_v3(&mut rng, &session_key, alg, k)
            }
        }
        .map_err(openpgp)?;
        esk.to_writer_with_header(&mut head).map_err(openpgp)?;
    }
    let mut prefix = [0u8; 18];
    rng.fill_bytes(&mut prefix[..16]);
    let mut seipd = Seipd::new(session_key.as_ref(), head, prefix)?;
    loop {
        match pt.recv() {
            Ok(p) if p.is_empty() => break,
            Ok(p) => seipd.literal(&p),
            Err(_) => return Err(io::Error::other("the upload was abandoned")),
        }
        seipd.send(&ct)?;
    }
    seipd.finish();
    seipd.send(&ct)
}

/// A SEIPDv1 packet (RFC 4880 §5.13: AES-256 in CFB mode, zero IV, random prefix, MDC) around
/// one binary literal data packet, both written with partial body lengths. rpgp's message
/// builder writes the same packets; this writer avoids its per-byte copying through readers
/// and encrypts whole runs of blocks per call (AES-NI, SHA-NI where the CPU has them).
struct Seipd {
    cfb: Option<cfb_mode::Encryptor<aes::Aes256>>,
    mdc: sha1::Sha1,
    /// The literal packet's body not yet framed (less than a chunk).
    lit: Vec<u8>,
    /// The SEIPD plaintext not yet encrypted (encrypted in whole blocks).
    plain: Vec<u8>,
    /// The SEIPD body (version octet, ciphertext) not yet framed.
    body: Vec<u8>,
    /// Framed output not yet sent.
    out: Vec<u8>,
}

/// A final (non-partial) new-format body length.
fn fixed_len(out: &mut Vec<u8>, len: usize) {
    if len < 192 {
        out.push(len as u8);
    } else if len < 8384 {
        let l = len - 192;
        out.extend_from_slice(&[((l >> 8) + 192) as u8, (l & 0xff) as u8]);
    } else {
        out.push(0xff);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}

impl Seipd {
    fn new(key: &[u8], head: Vec<u8>, mut prefix: [u8; 18]) -> io::Result<Self> {
        use cfb_mode::cipher::KeyIvInit;
        let cfb = cfb_mode::Encryptor::<aes::Aes256>::new_from_slices(key, &[0u8; 16])
            .map_err(|_| io::Error::other("OpenPGP: bad session key length"))?;
        let mut s = Seipd {
            cfb: Some(cfb),
            mdc: sha1::Sha1::default(),
            lit: Vec::with_capacity(CHUNK),
            plain: Vec::with_capacity(2 * CHUNK),
            body: Vec::with_capacity(2 * CHUNK),
            out: head,
        };
        // New-format tag 18; the body starts with version 1.
        s.out.push(0xc0 | 18);
        s.body.push(1);
        // The random prefix with its last two octets repeated ("quick check").
        prefix[16] = prefix[14];
        prefix[17] = prefix[15];
        s.plaintext(&prefix);
        // New-format tag 11; the literal body starts with format 'b', no file name, date 0.
        s.plaintext(&[0xc0 | 11]);
        s.lit.extend_from_slice(&[b'b', 0, 0, 0, 0, 0]);
        Ok(s)
    }

    /// Literal data.
    fn literal(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = (CHUNK - self.lit.len()).min(data.len());
            self.lit.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.lit.len() == CHUNK {
                let lit = std::mem::take(&mut self.lit);
                self.plaintext(&[0xe0 | CHUNK_LOG2]);
                self.plaintext(&lit);
                self.lit = lit;
                self.lit.clear();
            }
        }
    }

    /// SEIPD plaintext, hashed for the MDC.
    fn plaintext(&mut self, data: &[u8]) {
        use sha1::Digest;
        self.mdc.update(data);
        self.plain.extend_from_slice(data);
        if self.plain.len() >= CHUNK {
            self.encrypt_blocks();
        }
    }

    /// Encrypts the whole blocks of the pending plaintext and frames full chunks of the body.
    fn encrypt_blocks(&mut self) {
        use cfb_mode::cipher::{inout::InOutBuf, BlockEncryptMut};
        let n = self.plain.len() / 16 * 16;
        if let Some(cfb) = self.cfb.as_mut() {
            let (blocks, _) = InOutBuf::from(&mut self.plain[..n]).into_chunks();
            cfb.encrypt_blocks_inout_mut(blocks);
        }
        self.body.extend_from_slice(&self.plain[..n]);
        self.plain.drain(..n);
        let mut at = 0;
        while self.body.len() - at >= CHUNK {
            self.out.push(0xe0 | CHUNK_LOG2);
            self.out.extend_from_slice(&self.body[at..at + CHUNK]);
            at += CHUNK;
        }
        self.body.drain(..at);
    }

    /// Ends the literal packet, appends the MDC packet, encrypts the rest and ends the SEIPD.
    fn finish(&mut self) {
        use cfb_mode::cipher::AsyncStreamCipher;
        use sha1::Digest;
        let lit = std::mem::take(&mut self.lit);
        let mut len = Vec::with_capacity(5);
        fixed_len(&mut len, lit.len());
        self.plaintext(&len);
        self.plaintext(&lit);
        // The MDC packet: tag 19, length 20, SHA-1 of everything before its hash.
        self.plaintext(&[0xd3, 0x14]);
        let digest = self.mdc.finalize_reset();
        self.plain.extend_from_slice(&digest);
        self.encrypt_blocks();
        if let Some(cfb) = self.cfb.take() {
            cfb.encrypt(&mut self.plain);
        }
        self.body.append(&mut self.plain);
        fixed_len(&mut self.out, self.body.len());
        self.out.append(&mut self.body);
    }

    /// Sends the framed output.
    fn send(&mut self, ct: &mpsc::Sender<Vec<u8>>) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        ct.send(std::mem::replace(
            &mut self.out,
            Vec::with_capacity(2 * CHUNK),
        ))
        .map_err(|_| io::Error::other("the upload was abandoned"))
    }
}

/// Encrypts what is written to it into the sink. The plaintext goes to an encrypting thread
/// through a bounded channel; ciphertext comes back and is written to the sink on the caller's
/// thread, after every piece. At most a few pieces (64 KiB each) are held at any time.
pub struct PgpWriter<W: Write> {
    sink: W,
    tx: Option<SyncSender<Vec<u8>>>,
    rx: Receiver<Vec<u8>>,
    worker: Option<JoinHandle<io::Result<()>>>,
    piece: Vec<u8>,
}

impl<W: Write> PgpWriter<W> {
    /// The worker's error, once it has stopped.
    fn worker_error(&mut self) -> io::Error {
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => io::Error::other("OpenPGP: the encrypting thread failed"),
            _ => io::Error::other("OpenPGP: the encrypting thread stopped"),
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        while let Ok(ct) = self.rx.try_recv() {
            self.sink.write_all(&ct)?;
        }
        Ok(())
    }

    fn send_piece(&mut self) -> io::Result<()> {
        let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(PIECE));
        let sent = match &self.tx {
            Some(tx) => tx.send(piece).is_ok(),
            None => false,
        };
        if !sent {
            return Err(self.worker_error());
        }
        self.drain()
    }

    /// Ends the message, writes the rest of it, and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.piece.is_empty() {
            self.send_piece()?;
        }
        // The end marker.
        let ended = self.tx.take().is_some_and(|tx| tx.send(Vec::new()).is_ok());
        if !ended {
            return Err(self.worker_error());
        }
        while let Ok(ct) = self.rx.recv() {
            self.sink.write_all(&ct)?;
        }
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => return Err(e),
            _ => return Err(io::Error::other("OpenPGP: the encrypting thread failed")),
        }
        self.sink.flush()?;
        let PgpWriter { sink, .. } = self;
        Ok(sink)
    }
}

impl<W: Write> Write for PgpWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = PIECE - self.piece.len();
        let n = buf.len().min(room);
        self.piece.extend_from_slice(&buf[..n]);
        if self.piece.len() == PIECE {
            self.send_piece()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.sink.flush()
    }
}

/// How a reader gets at the session key.
enum How {
    /// Secret keys in process, unlocked with the passphrase.
    Keys {
        keys: Vec<SignedSecretKey>,
        passphrase: Password,
    },
    /// `gpg -d`, as WAL-E runs it: the keyring and its agent.
    Gpg(Gpg),
}

/// Decrypts OpenPGP objects.
pub struct PgpDecryption {
    how: How,
}

impl std::fmt::Debug for PgpDecryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.how {
            How::Keys { keys, .. } => write!(f, "PgpDecryption({} secret keys)", keys.len()),
            How::Gpg(_) => write!(f, "PgpDecryption(gpg keyring)"),
        }
    }
}

/// The source of an object, shown to rpgp (which wants `Debug`) without its contents.
struct Source<R>(R);

impl<R> std::fmt::Debug for Source<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("object")
    }
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: BufRead> BufRead for Source<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.0.fill_buf()
    }
    fn consume(&mut self, amt: usize) {
        self.0.consume(amt)
    }
}

/// The key ids a message's session key is encrypted to, for messages.
fn recipients_of(msg: &Message<'_>) -> String {
    let Message::Encrypted { esk, .. } = msg else {
        return String::new();
    };
    let ids: Vec<String> = esk
        .iter()
        .filter_map(|e| match e {
            pgp::composed::Esk::PublicKeyEncryptedSessionKey(k) => {
                k.id().ok().map(|id| id.to_string())
            }
            pgp::composed::Esk::SymKeyEncryptedSessionKey(_) => Some("a passphrase".into()),
        })
        .collect();
    if ids.is_empty() {
        String::new()
    } else {
        format!(" (it is encrypted to {})", ids.join(", "))
    }
}

impl PgpDecryption {
    /// A reader of the plaintext of the OpenPGP message `src` starts with. A wrong key is a
    /// `PermissionDenied` error; damage is `InvalidData`/`UnexpectedEof`, at the latest at the
    /// end of the stream (the MDC is checked there).
    pub fn unwrap_reader<'a, R: BufRead + Send + 'a>(
        &self,
        src: R,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        match &self.how {
            How::Gpg(gpg) => Ok(Box::new(gpg.decrypt(src)?)),
            How::Keys { keys, passphrase } => {
                let msg = Message::from_bytes(Source(super::Tagged(src))).map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("OpenPGP: {}", short(&e)),
                    )
                })?;
                let to = recipients_of(&msg);
                // Streaming: SEIPDv1 is not checked before plaintext is released (that would
                // hold the whole object); its MDC is checked when the stream ends, and a
                // mismatch is an error there, before anything is reported as restored.
                let ring = TheRing {
                    secret_keys: keys.iter().collect(),
                    key_passwords: vec![passphrase],
                    decrypt_options: pgp::composed::DecryptionOptions::new()
                        .set_seipdv1_read_mode(pgp::types::Seipdv1ReadMode::Streaming),
                    ..Default::default()
                };
                let (msg, _) = msg.decrypt_the_ring(ring, true).map_err(|e| {
                    let why = match e {
                        pgp::errors::Error::MissingKey => {
                            "none of the configured secret keys can decrypt it".to_string()
                        }
                        other => short(&other),
                    };
                    io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!("OpenPGP: cannot decrypt the object{to}: {why}"),
                    )
                })?;
                let msg = if msg.is_compressed() {
                    msg.decompress().map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("OpenPGP: {}", short(&e)),
                        )
                    })?
                } else {
                    msg
                };
                Ok(Box::new(super::Checked::new("OpenPGP", msg)))
            }
        }
    }
}

/// The gpg binary and the environment it runs in.
#[derive(Clone)]
pub struct Gpg {
    program: PathBuf,
    /// GNUPGHOME from the settings (an envdir's), passed on to gpg.
    home: Option<PathBuf>,
}

impl Gpg {
    pub fn from_vars(vars: &Vars) -> Self {
        Gpg {
            program: vars
                .get("WALKEEPER_GPG")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("gpg")),
            home: vars.get("GNUPGHOME").map(PathBuf::from),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.program);
        if let Some(h) = &self.home {
            c.env("GNUPGHOME", h);
        }
        c
    }

    /// The public key `id` from the keyring (binary).
    fn export(&self, id: &str) -> Result<Vec<u8>> {
        let out = self
            .command()
            .args(["--batch", "--export", "--"])
            .arg(id)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Config(format!("{}: {e}", self.program.display())))?;
        if !out.status.success() || out.stdout.is_empty() {
            return Err(Error::Config(format!(
                "gpg has no public key {id:?} in its keyring ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(out.stdout)
    }

    /// `gpg -d -q --batch` fed from `src`, as a reader of its output.
    fn decrypt<R: Read>(&self, src: R) -> io::Result<GpgReader<R>> {
        let mut child = self
            .command()
            .args(["-d", "-q", "--batch"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io::Error::other(format!("{}: {e}", self.program.display())))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("gpg: no pipes"));
        };
        for fd in [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()] {
            set_nonblocking(fd)?;
        }
        Ok(GpgReader {
            child: Some(child),
            stdin: Some(stdin),
            stdout: Some(stdout),
            stderr: Some(stderr),
            src,
            pending: Vec::new(),
            pos: 0,
            err_tail: Vec::new(),
        })
    }
}

fn set_nonblocking(fd: i32) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor this process owns.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// gpg as a stage: the object goes to its stdin, the plaintext comes from its stdout; one
/// thread drives both through poll(2), so neither pipe can fill up and stall the other.
struct GpgReader<R> {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    src: R,
    pending: Vec<u8>,
    pos: usize,
    /// The end of what gpg wrote to stderr (for the error message).
    err_tail: Vec<u8>,
}

const ERR_TAIL: usize = 4096;

impl<R: Read> GpgReader<R> {
    fn drain_stderr(&mut self) {
        let mut buf = [0u8; 1024];
        while let Some(e) = self.stderr.as_mut() {
            match e.read(&mut buf) {
                Ok(0) => self.stderr = None,
                Ok(n) => {
                    self.err_tail.extend_from_slice(&buf[..n]);
                    if self.err_tail.len() > ERR_TAIL {
                        let cut = self.err_tail.len() - ERR_TAIL;
                        self.err_tail.drain(..cut);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }

    /// gpg's output ended: its exit status decides.
    fn finish(&mut self) -> io::Result<usize> {
        self.stdin = None;
        let Some(mut child) = self.child.take() else {
            return Ok(0);
        };
        // Read stderr to its end (blocking is fine now: gpg is exiting).
        if let Some(e) = self.stderr.take() {
            let fd = e.as_raw_fd();
            // SAFETY: clearing O_NONBLOCK on our own descriptor.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFL);
                libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
            }
            let mut rest = Vec::new();
            let mut e = e;
            let _ = e.by_ref().take(64 * 1024).read_to_end(&mut rest);
            self.err_tail.extend_from_slice(&rest);
        }
        let status = child.wait()?;
        if status.success() {
            return Ok(0);
        }
        let text = String::from_utf8_lossy(&self.err_tail);
        let text: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let text = text.join("; ");
        let kind = if text.contains("No secret key") || text.contains("Bad passphrase") {
            io::ErrorKind::PermissionDenied
        } else {
            io::ErrorKind::InvalidData
        };
        Err(io::Error::new(
            kind,
            format!("gpg -d failed ({status}): {text}"),
        ))
    }
}

impl<R: Read> Read for GpgReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(out) = self.stdout.as_mut() else {
                return self.finish();
            };
            match out.read(buf) {
                Ok(0) => {
                    self.stdout = None;
                    return self.finish();
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.drain_stderr();
            // Feed gpg.
            if self.stdin.is_some() && self.pos == self.pending.len() {
                self.pending.resize(PIECE, 0);
                let n = loop {
                    match self.src.read(&mut self.pending) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            self.pending.clear();
                            self.pos = 0;
                            return Err(e);
                        }
                    }
                };
                self.pending.truncate(n);
                self.pos = 0;
                if n == 0 {
                    // End of the object: closing stdin tells gpg.
                    self.stdin = None;
                }
            }
            if let Some(inp) = self.stdin.as_mut() {
                if self.pos < self.pending.len() {
                    match inp.write(&self.pending[self.pos..]) {
                        Ok(n) => {
                            self.pos += n;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // gpg stopped reading (it failed, or the message ended): its exit
                        // status tells which.
                        Err(_) => self.stdin = None,
                    }
                }
            }
            // Wait until gpg can take input or has output.
            let mut fds = Vec::with_capacity(3);
            if let Some(o) = &self.stdout {
                fds.push(libc::pollfd {
                    fd: o.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if let Some(e) = &self.stderr {
                fds.push(libc::pollfd {
                    fd: e.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            if let Some(i) = &self.stdin {
                if self.pos < self.pending.len() {
                    fds.push(libc::pollfd {
                        fd: i.as_raw_fd(),
                        events: libc::POLLOUT,
                        revents: 0,
                    });
                }
            }
            // SAFETY: `fds` is a valid array of pollfd for the duration of the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 60_000) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

impl<R> Drop for GpgReader<R> {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            // Stopped early (an error downstream): end the child this reader started.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::testdata::wal_like;
    use crate::codec::{decode, encode, Compression, Decryption, Encryption};

    /// A GNUPGHOME of the test's own with one freshly generated key; its agent is stopped on
    /// drop.
    pub(crate) struct Home {
        pub dir: tempfile::TempDir,
        pub fpr: String,
        passphrase: String,
    }

    impl Home {
        /// `algo`: "future-default" (ed25519 + cv25519) or "rsa2048".
        pub fn new(algo: &str, passphrase: &str) -> Home {
            let dir = tempfile::Builder::new().prefix("gpg").tempdir().unwrap();
            let h = Home {
                dir,
                fpr: String::new(),
                passphrase: passphrase.to_string(),
            };
            let uid = "walkeeper test <test@walkeeper.invalid>";
            if algo == "rsa2048" {
                h.ok(&["--quick-gen-key", uid, "rsa2048", "cert,sign", "never"]);
            } else {
                h.ok(&["--quick-gen-key", uid, algo, "default", "never"]);
            }
            let list = h.ok(&["--list-keys", "--with-colons"]);
            let fpr = String::from_utf8_lossy(&list)
                .lines()
                .find(|l| l.starts_with("fpr:"))
                .and_then(|l| l.split(':').nth(9))
                .unwrap()
                .to_string();
            let mut h = h;
            h.fpr = fpr;
            if algo == "rsa2048" {
                h.ok(&[
                    "--quick-add-key",
                    &h.fpr.clone(),
                    "rsa2048",
                    "encr",
                    "never",
                ]);
            }
            h
        }

        pub fn gpg(&self) -> Command {
            let mut c = Command::new("gpg");
            c.env("GNUPGHOME", self.dir.path())
                .args(["--batch", "--yes", "--pinentry-mode", "loopback"])
                .arg("--passphrase")
                .arg(&self.passphrase);
            c
        }

        pub fn ok(&self, args: &[&str]) -> Vec<u8> {
            let out = self.gpg().args(args).output().expect("gpg is installed");
            assert!(
                out.status.success(),
                "gpg {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        }

        /// gpg with `input` on stdin.
        pub fn pipe(&self, args: &[&str], input: &[u8]) -> std::process::Output {
            let mut child = self
                .gpg()
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            let feed = input.to_vec();
            let w = std::thread::spawn(move || {
                let _ = stdin.write_all(&feed);
            });
            let out = child.wait_with_output().unwrap();
            w.join().unwrap();
            out
        }

        pub fn public(&self) -> Vec<u8> {
            self.ok(&["--armor", "--export", &self.fpr])
        }

        pub fn secret(&self) -> Vec<u8> {
            self.ok(&["--armor", "--export-secret-keys", &self.fpr])
        }

        pub fn gpg_decryption(&self) -> PgpDecryption {
            PgpDecryption {
                how: How::Gpg(Gpg {
                    program: "gpg".into(),
                    home: Some(self.dir.path().to_path_buf()),
                }),
            }
        }
    }

    impl Drop for Home {
        fn drop(&mut self) {
            let _ = Command::new("gpgconf")
                .env("GNUPGHOME", self.dir.path())
                .args(["--kill", "gpg-agent"])
                .output();
        }
    }

    fn enc_of(public: &[u8]) -> Encryption {
        Encryption::Pgp(
            PgpKeys::from_key_bytes(public, "test key", None)
                .unwrap()
                .encryption
                .unwrap(),
        )
    }

    fn dec_of(secret: &[u8], passphrase: Option<&str>) -> Decryption {
        Decryption {
            age: None,
            pgp: PgpKeys::from_key_bytes(secret, "test key", passphrase.map(String::from))
                .unwrap()
                .decryption,
        }
    }

    fn with_pgp(p: PgpDecryption) -> Decryption {
        Decryption {
            age: None,
            pgp: Some(p),
        }
    }

    fn decoded(obj: &[u8], dec: &Decryption) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decode(obj, &mut out, Compression::Lz4, Some(dec)).map(|_| out)
    }

    #[test]
    fn openpgp_headers_are_recognised_and_other_codecs_are_not() {
        let home = Home::new("future-default", "");
        let data = wal_like(300_000, 3);
        let (lz4, _) = encode(&data[..], Vec::new(), Compression::Lz4, None).unwrap();
        let (zst, _) = encode(&data[..], Vec::new(), Compression::Zstd, None).unwrap();
        let wal_e = home.pipe(&["-e", "-z", "0", "-r", &home.fpr], &lz4).stdout;
        let compressed = home.pipe(&["-e", "-r", &home.fpr], &lz4).stdout;
        let symmetric = home.pipe(&["--passphrase", "sym", "-c"], &lz4).stdout;
        let (ours, _) = encode(
            &data[..],
            Vec::new(),
            Compression::Lz4,
            Some(&enc_of(&home.public())),
        )
        .unwrap();
        for (what, obj) in [
            ("gpg -e -z 0", &wal_e),
            ("gpg -e", &compressed),
            ("gpg -c", &symmetric),
            ("walkeeper", &ours),
        ] {
            assert!(is_pgp(obj), "{what}: {:02x?}", &obj[..obj.len().min(16)]);
        }
        let id = age::x25519::Identity::generate();
        let age_enc = Encryption::from_recipients(&[id.to_public().to_string()]).unwrap();
        let (aged, _) = encode(&data[..], Vec::new(), Compression::Lz4, Some(&age_enc)).unwrap();
        for obj in [
            &lz4,
            &zst,
            &aged,
            &vec![],
            &vec![0x85],
            &vec![0x84, 0x5e, 3],
        ] {
            assert!(!is_pgp(obj), "{:02x?}", &obj[..obj.len().min(16)]);
        }
    }

    #[test]
    fn walkeeper_and_gpg_read_each_others_objects_byte_identical() {
        for algo in ["future-default", "rsa2048"] {
            let home = Home::new(algo, "");
            let data = wal_like(3 << 20, 5);
            let (lz4, _) = encode(&data[..], Vec::new(), Compression::Lz4, None).unwrap();
            let (ours, _) = encode(
                &data[..],
                Vec::new(),
                Compression::Lz4,
                Some(&enc_of(&home.public())),
            )
            .unwrap();
            assert!(!ours.windows(64).any(|w| w == &lz4[1000..1064]));
            // gpg --decrypt gives the compressed stream back.
            let out = home.pipe(&["--decrypt"], &ours);
            assert!(out.status.success(), "{algo}: {}", stderr(&out));
            assert!(out.stdout == lz4, "{algo}: gpg --decrypt differs");
            // walkeeper reads its own objects and gpg's, in process and through gpg.
            let wal_e = home.pipe(&["-e", "-z", "0", "-r", &home.fpr], &lz4).stdout;
            let compressed = home.pipe(&["-e", "-r", &home.fpr], &lz4).stdout;
            for dec in [
                dec_of(&home.secret(), None),
                with_pgp(home.gpg_decryption()),
            ] {
                for (what, obj) in [("ours", &ours), ("-z 0", &wal_e), ("zlib", &compressed)] {
                    let back = decoded(obj, &dec).unwrap_or_else(|e| panic!("{algo} {what}: {e}"));
                    assert!(back == data, "{algo} {what} {dec:?}: differs");
                }
            }
        }
    }

    #[test]
    fn written_messages_decrypt_with_gpg_at_every_partial_length_boundary() {
        let home = Home::new("future-default", "");
        let keys = PgpKeys::from_key_bytes(&home.public(), "test key", None).unwrap();
        let enc = keys.encryption.unwrap();
        // The literal body has 6 octets of header, so CHUNK - 6 fills its first chunk exactly.
        for len in [
            0,
            1,
            15,
            CHUNK - 7,
            CHUNK - 6,
            CHUNK - 5,
            CHUNK,
            2 * CHUNK - 6,
            3 * CHUNK + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut w = enc.wrap(Vec::new()).unwrap();
            w.write_all(&data).unwrap();
            let obj = w.finish().unwrap();
            let out = home.pipe(&["--decrypt"], &obj);
            assert!(out.status.success(), "{len}: {}", stderr(&out));
            assert!(out.stdout == data, "{len}: gpg --decrypt differs");
        }
    }

    #[test]
    fn a_protected_key_needs_its_passphrase() {
        let home = Home::new("future-default", "correct horse");
        let data = wal_like(1 << 20, 7);
        let (obj, _) = encode(
            &data[..],
            Vec::new(),
            Compression::Lz4,
            Some(&enc_of(&home.public())),
        )
        .unwrap();
        let secret = home.secret();
        assert!(decoded(&obj, &dec_of(&secret, Some("correct horse"))).unwrap() == data);
        for wrong in [None, Some("wrong")] {
            let e = decoded(&obj, &dec_of(&secret, wrong)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
            assert!(!e.to_string().contains("correct horse"), "{e}");
        }
        // Debug output never shows key material or the passphrase.
        let shown = format!("{:?}", dec_of(&secret, Some("correct horse")));
        assert!(
            !shown.contains("correct horse") && !shown.contains("PRIVATE"),
            "{shown}"
        );
    }

    #[test]
    fn the_wrong_key_is_a_permission_error_naming_the_recipient() {
        let right = Home::new("future-default", "");
        let wrong = Home::new("future-default", "");
        let data = wal_like(1 << 20, 9);
        let enc = enc_of(&right.public());
        let Encryption::Pgp(p) = &enc else {
            unreachable!()
        };
        let ids = p.key_ids().to_vec();
        let (obj, _) = encode(&data[..], Vec::new(), Compression::Lz4, Some(&enc)).unwrap();
        let e = decoded(&obj, &dec_of(&wrong.secret(), None)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(
            ids.iter().any(|id| e.to_string().contains(id.as_str())),
            "{e} {ids:?}"
        );
        let e = decoded(&obj, &with_pgp(wrong.gpg_decryption())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // No key at all: a clear error, not a decompression error.
        let e = decode(&obj[..], &mut Vec::new(), Compression::Lz4, None).unwrap_err();
        assert!(e.to_string().contains("WALG_PGP_KEY"), "{e}");
        // A public key alone encrypts but does not decrypt.
        let keys = PgpKeys::from_key_bytes(&right.public(), "k", None).unwrap();
        assert!(keys.encryption.is_some() && keys.decryption.is_none());
    }

    #[test]
    fn cut_or_flipped_objects_are_errors_in_process_and_through_gpg() {
        let home = Home::new("future-default", "");
        let data = wal_like(1 << 20, 11);
        let (obj, _) = encode(
            &data[..],
            Vec::new(),
            Compression::Lz4,
            Some(&enc_of(&home.public())),
        )
        .unwrap();
        let mut cases = Vec::new();
        for cut in [obj.len() - 1, obj.len() - 22, obj.len() / 2, 200] {
            cases.push(obj[..cut].to_vec());
        }
        for i in [150, obj.len() / 3, obj.len() - 10, obj.len() - 1] {
            let mut bad = obj.clone();
            bad[i] ^= 0x10;
            cases.push(bad);
        }
        for dec in [
            dec_of(&home.secret(), None),
            with_pgp(home.gpg_decryption()),
        ] {
            for bad in &cases {
                match decoded(bad, &dec) {
                    Ok(out) => panic!(
                        "{dec:?}: a damaged object of {} bytes decoded ({})",
                        bad.len(),
                        if out == data { "same" } else { "other bytes" }
                    ),
                    Err(e) => assert!(
                        matches!(
                            e.kind(),
                            io::ErrorKind::InvalidData
                                | io::ErrorKind::UnexpectedEof
                                | io::ErrorKind::PermissionDenied
                        ),
                        "{dec:?} {}: {e:?}",
                        bad.len()
                    ),
                }
            }
        }
    }

    fn stderr(o: &std::process::Output) -> String {
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::{any, prop_assert, proptest, ProptestConfig};
        use std::sync::OnceLock;

        /// An encrypted object and the secret key that reads it. The keyring is made, used and
        /// dropped (its agent stopped, its directory removed) before the cases run: a static is
        /// never dropped.
        fn fixture() -> &'static (Vec<u8>, Vec<u8>) {
            static F: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
            F.get_or_init(|| {
                let home = Home::new("future-default", "");
                let data = wal_like(20_000, 13);
                let (obj, _) = encode(
                    &data[..],
                    Vec::new(),
                    Compression::Lz4,
                    Some(&enc_of(&home.public())),
                )
                .unwrap();
                let secret = home.secret();
                (obj, secret)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]
            #[test]
            fn arbitrary_bytes_never_panic_the_openpgp_reader(
                head in proptest::sample::select(vec![0x84u8, 0x85, 0xc1, 0xc3, 0x8c]),
                body in proptest::collection::vec(any::<u8>(), 0..600),
            ) {
                let (_, secret) = fixture();
                let dec = dec_of(secret, None);
                let mut bytes = vec![head];
                bytes.extend_from_slice(&body);
                let _ = is_pgp(&bytes);
                let _ = decoded(&bytes, &dec);
            }

            #[test]
            fn damaged_encrypted_objects_never_panic_or_decode(
                edits in proptest::collection::vec((any::<proptest::sample::Index>(), 1u8..=255), 1..4),
                cut in any::<proptest::sample::Index>(),
                do_cut in any::<bool>(),
            ) {
                let (obj, secret) = fixture();
                let dec = dec_of(secret, None);
                let mut bad = obj.clone();
                for (i, x) in &edits {
                    let i = i.index(bad.len());
                    bad[i] ^= x;
                }
                if do_cut {
                    bad.truncate(cut.index(bad.len()));
                }
                let _ = is_pgp(&bad);
                prop_assert!(decoded(&bad, &dec).is_err());
            }
        }
    }
}
