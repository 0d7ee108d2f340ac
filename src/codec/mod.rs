//! Compression and encryption as streaming layers.
//!
//! Writing: source → compress → encrypt (optional: age or OpenPGP) → sink.
//! Reading: source → decrypt (when the object starts with the age header or an OpenPGP
//! session key packet) → decompress → sink.
//! Every layer works on bounded buffers; nothing holds a whole segment or tar part.

pub mod crypt;
pub mod lz4frame;
pub mod lz4par;
pub mod lzop;
pub mod pgp;
#[cfg(test)]
pub(crate) mod testdata;

use std::io::{self, BufRead, BufReader, Read, Write};

pub use crate::config::Compression;
use crate::error::Result;
use crate::storage::local::Counting;

/// How uploads are encrypted.
#[derive(Debug)]
pub enum Encryption {
    Age(crypt::Encryption),
    Pgp(pgp::PgpEncryption),
}

impl Encryption {
    /// age, to these recipients.
    pub fn from_recipients(keys: &[String]) -> Result<Self> {
        crypt::Encryption::from_recipients(keys).map(Encryption::Age)
    }

    fn wrap<W: Write>(&self, sink: W) -> io::Result<Encrypting<W>> {
        Ok(match self {
            Encryption::Age(a) => Encrypting::Age(a.wrap(sink)?),
            Encryption::Pgp(p) => Encrypting::Pgp(p.wrap(sink)?),
        })
    }
}

/// An encrypting writer; `finish` completes the encrypted stream.
enum Encrypting<W: Write> {
    Age(age::stream::StreamWriter<W>),
    Pgp(pgp::PgpWriter<W>),
}

impl<W: Write> Encrypting<W> {
    fn finish(self) -> io::Result<W> {
        match self {
            Encrypting::Age(a) => a.finish(),
            Encrypting::Pgp(p) => p.finish(),
        }
    }
}

impl<W: Write> Write for Encrypting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encrypting::Age(a) => a.write(buf),
            Encrypting::Pgp(p) => p.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encrypting::Age(a) => a.flush(),
            Encrypting::Pgp(p) => p.flush(),
        }
    }
}

/// The keys objects are decrypted with: age identities, OpenPGP keys, or both.
#[derive(Debug, Default)]
pub struct Decryption {
    pub age: Option<crypt::Decryption>,
    pub pgp: Option<pgp::PgpDecryption>,
}

impl Decryption {
    pub fn from_identity(id: age::x25519::Identity) -> Self {
        Decryption {
            age: Some(crypt::Decryption::from_identity(id)),
            pgp: None,
        }
    }

    /// age identities from a file.
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        Ok(Decryption {
            age: Some(crypt::Decryption::from_file(path)?),
            pgp: None,
        })
    }
}

/// Size of the buffers the pumps move data in.
pub const CHUNK: usize = 256 * 1024;

/// What [`encode`] did.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodeStats {
    pub bytes_in: u64,
}

/// Compresses (and encrypts, when `enc` is given) everything from `src` into `sink`, returning
/// the sink once every layer has been finished.
pub fn encode<R: Read, W: Write>(
    mut src: R,
    sink: W,
    compression: Compression,
    enc: Option<&Encryption>,
) -> io::Result<(W, EncodeStats)> {
    match (compression, enc) {
        (Compression::Lz4, None) => lz4_from_reader(&mut src, sink),
        (Compression::Lz4, Some(e)) => {
            let (wrapped, stats) = lz4_from_reader(&mut src, e.wrap(sink)?)?;
            Ok((wrapped.finish()?, stats))
        }
        _ => encode_with(sink, compression, enc, |w| pump(&mut src, w).map(|_| ())),
    }
}

/// lz4 reads the source straight into its block buffers (no intermediate copy).
fn lz4_from_reader<R: Read, S: Write>(src: &mut R, sink: S) -> io::Result<(S, EncodeStats)> {
    let mut w = lz4par::Lz4ParWriter::new(sink, lz4par::default_threads())?;
    let n = w.fill_from(src)?;
    Ok((w.finish()?, EncodeStats { bytes_in: n }))
}

/// Like [`encode`], with the plaintext written by `produce` (a tar builder, say).
pub fn encode_with<W: Write, F>(
    sink: W,
    compression: Compression,
    enc: Option<&Encryption>,
    produce: F,
) -> io::Result<(W, EncodeStats)>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    match enc {
        None => compress_into(sink, compression, produce),
        Some(e) => {
            let wrapped = e.wrap(sink)?;
            let (wrapped, stats) = compress_into(wrapped, compression, produce)?;
            Ok((wrapped.finish()?, stats))
        }
    }
}

fn compress_into<W: Write, F>(
    sink: W,
    compression: Compression,
    produce: F,
) -> io::Result<(W, EncodeStats)>
where
    F: FnOnce(&mut dyn Write) -> io::Result<()>,
{
    match compression {
        Compression::Lz4 => {
            // Independent 256 KiB blocks, compressed on every core, content checksum.
            let w = lz4par::Lz4ParWriter::new(sink, lz4par::default_threads())?;
            let mut counted = Counting { inner: w, n: 0 };
            produce(&mut counted)?;
            let n = counted.n;
            Ok((counted.inner.finish()?, EncodeStats { bytes_in: n }))
        }
        Compression::Zstd => {
            let mut w = zstd::Encoder::new(sink, 1)?;
            // The frame carries an XXH64 of its content, so damage is detected on reading.
            w.include_checksum(true)?;
            let mut counted = Counting { inner: w, n: 0 };
            produce(&mut counted)?;
            let n = counted.n;
            Ok((counted.inner.finish()?, EncodeStats { bytes_in: n }))
        }
        other => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("writing {} is not supported", other.ext()),
        )),
    }
}

/// Decodes an object: decrypts when it carries the age header, then decompresses into `dst`.
/// Returns the number of plaintext bytes written. A truncated or corrupt stream is an error.
pub fn decode<R: Read + Send, W: Write + ?Sized>(
    src: R,
    dst: &mut W,
    compression: Compression,
    dec: Option<&Decryption>,
) -> io::Result<u64> {
    let mut r = decoder(src, compression, dec)?;
    pump(&mut r, dst)
}

/// A reader of an object's plaintext. It reports a truncated or corrupt stream as an error
/// (at the latest when it reaches the end), never as a short clean read.
pub fn decoder<'a, R: Read + Send + 'a>(
    src: R,
    compression: Compression,
    dec: Option<&Decryption>,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let mut src = BufReader::with_capacity(CHUNK, src);
    let head = src.fill_buf()?;
    if pgp::is_pgp(head) {
        let dec = dec.and_then(|d| d.pgp.as_ref()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the object is OpenPGP-encrypted; set WALG_PGP_KEY or WALG_PGP_KEY_PATH (a secret \
                 key), or WALE_GPG_KEY_ID (gpg's keyring), to read it",
            )
        })?;
        let plain = dec.unwrap_reader(src)?;
        return decompressor(BufReader::with_capacity(CHUNK, plain), compression);
    }
    if crypt::is_age(head) {
        let dec = dec.and_then(|d| d.age.as_ref()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the object is age-encrypted; set WALKEEPER_AGE_IDENTITY_FILE to read it",
            )
        })?;
        let plain = dec.unwrap_reader(src)?;
        decompressor(BufReader::with_capacity(CHUNK, plain), compression)
    } else {
        decompressor(src, compression)
    }
}

fn decompressor<'a, R: BufRead + Send + 'a>(
    src: R,
    compression: Compression,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match compression {
        Compression::Lz4 => Box::new(lz4frame::Lz4FrameReader::new(src)),
        Compression::Zstd => Box::new(Checked::new(
            "zstd",
            zstd::Decoder::with_buffer(Tagged(src))?,
        )),
        Compression::Lzo => Box::new(lzop::LzopReader::new(src)?),
        Compression::Brotli => Box::new(Checked::new(
            "brotli",
            brotli_decompressor::Decompressor::new(Tagged(src), CHUNK),
        )),
        Compression::Lzma => Box::new(Checked::new("lzma", LzmaReader::new(Tagged(src)))),
    })
}

/// An error of the object's source (storage, decryption), passed through a third-party
/// decoder so that [`Checked`] can tell it from a decode error.
#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {}

fn tag(e: io::Error) -> io::Error {
    io::Error::new(e.kind(), SourceError(e))
}

/// The source of a third-party decoder: its errors are marked as [`SourceError`]s.
struct Tagged<R>(R);

impl<R: Read> Read for Tagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(tag)
    }
}

impl<R: BufRead> BufRead for Tagged<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.0.fill_buf().map_err(tag)
    }
    fn consume(&mut self, amt: usize) {
        self.0.consume(amt)
    }
}

/// Wraps a third-party decoder: source errors come out as they went in; every other error is
/// a decode error (`InvalidData`, or `UnexpectedEof` for a truncated stream) named after the
/// codec; after an error every read fails again (some decoders report damage only once).
struct Checked<D> {
    codec: &'static str,
    inner: D,
    failed: Option<(io::ErrorKind, String)>,
}

impl<D> Checked<D> {
    fn new(codec: &'static str, inner: D) -> Self {
        Checked {
            codec,
            inner,
            failed: None,
        }
    }
}

impl<D: Read> Read for Checked<D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some((kind, msg)) = &self.failed {
            return Err(io::Error::new(*kind, msg.clone()));
        }
        let e = match self.inner.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => e,
        };
        let e = if e.get_ref().is_some_and(|r| r.is::<SourceError>()) {
            match e.into_inner().map(|b| b.downcast::<SourceError>()) {
                Some(Ok(s)) => s.0,
                Some(Err(other)) => io::Error::other(other),
                None => io::Error::other("source error"),
            }
        } else {
            let kind = match e.kind() {
                io::ErrorKind::UnexpectedEof => io::ErrorKind::UnexpectedEof,
                _ => io::ErrorKind::InvalidData,
            };
            let msg = e.to_string();
            let msg = if msg.starts_with(self.codec) {
                msg
            } else {
                format!("{}: {msg}", self.codec)
            };
            io::Error::new(kind, msg)
        };
        self.failed = Some((e.kind(), e.to_string()));
        Err(e)
    }
}

/// lzma-rs decodes push-style: small compressed chunks go in, their output comes out.
struct LzmaReader<R> {
    src: R,
    stream: Option<lzma_rs::decompress::Stream<Vec<u8>>>,
    out: Vec<u8>,
    pos: usize,
    /// Whether any input was read.
    fed: bool,
}

impl<R: Read> LzmaReader<R> {
    fn new(src: R) -> Self {
        LzmaReader {
            src,
            stream: Some(lzma_rs::decompress::Stream::new(Vec::new())),
            out: Vec::new(),
            pos: 0,
            fed: false,
        }
    }
}

fn lzma_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("lzma: {e}"))
}

impl<R: Read> Read for LzmaReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let Some(stream) = self.stream.as_mut() else {
                return Ok(0);
            };
            let mut chunk = [0u8; 4096];
            let k = self.src.read(&mut chunk)?;
            self.pos = 0;
            if k == 0 {
                let stream = self.stream.take().ok_or_else(|| lzma_err("state"))?;
                if !self.fed {
                    // lzma-rs finishes an empty input as an empty stream.
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "lzma: truncated: the object is empty",
                    ));
                }
                self.out = stream.finish().map_err(lzma_err)?;
            } else {
                self.fed = true;
                stream.write_all(&chunk[..k])?;
                let produced = stream.get_output_mut().ok_or_else(|| lzma_err("state"))?;
                self.out = std::mem::take(produced);
            }
        }
    }
}

/// Copies `src` into `dst` through one bounded buffer.
pub fn pump<R: Read + ?Sized, W: Write + ?Sized>(src: &mut R, dst: &mut W) -> io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        total += n as u64;
    }
    dst.flush()?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: repeating records with a counter.
        let mut v = Vec::with_capacity(len);
        let mut i: u32 = 0;
        while v.len() < len {
            v.extend_from_slice(b"INSERT INTO pgbench_history VALUES (");
            v.extend_from_slice(&i.to_le_bytes());
            v.extend_from_slice(&(i.wrapping_mul(2654435761)).to_be_bytes());
            i = i.wrapping_add(1);
        }
        v.truncate(len);
        v
    }

    fn roundtrip(c: Compression, enc: Option<(&Encryption, &Decryption)>) {
        let data = sample(3 * 1024 * 1024 + 17);
        let (out, stats) = encode(&data[..], Vec::new(), c, enc.map(|e| e.0)).unwrap();
        assert_eq!(stats.bytes_in, data.len() as u64);
        assert!(out.len() < data.len());
        let mut back = Vec::new();
        let n = decode(&out[..], &mut back, c, enc.map(|e| e.1)).unwrap();
        assert_eq!(n, data.len() as u64);
        assert!(back == data, "round trip differs for {c:?}");
    }

    #[test]
    fn lz4_and_zstd_round_trip_byte_identical() {
        roundtrip(Compression::Lz4, None);
        roundtrip(Compression::Zstd, None);
    }

    #[test]
    fn encrypted_round_trip_needs_the_identity() {
        let id = age::x25519::Identity::generate();
        let enc = Encryption::from_recipients(&[id.to_public().to_string()]).unwrap();
        let dec = Decryption::from_identity(id);
        roundtrip(Compression::Lz4, Some((&enc, &dec)));
        let (out, _) = encode(
            &b"secret wal"[..],
            Vec::new(),
            Compression::Zstd,
            Some(&enc),
        )
        .unwrap();
        assert!(!out.windows(10).any(|w| w == b"secret wal"));
        let err = decode(&out[..], &mut Vec::new(), Compression::Zstd, None).unwrap_err();
        assert!(
            err.to_string().contains("WALKEEPER_AGE_IDENTITY_FILE"),
            "{err}"
        );
    }

    #[test]
    fn truncated_lz4_and_zstd_objects_are_errors() {
        let data = sample(1024 * 1024);
        for c in [Compression::Lz4, Compression::Zstd] {
            let (out, _) = encode(&data[..], Vec::new(), c, None).unwrap();
            for cut in [out.len() - 1, out.len() - 4, out.len() / 2] {
                let r = decode(&out[..cut], &mut Vec::new(), c, None);
                assert!(
                    r.is_err(),
                    "{c:?} cut at {cut} of {} decoded without error",
                    out.len()
                );
            }
        }
    }

    #[test]
    fn corrupted_lz4_object_is_an_error() {
        let data = sample(1024 * 1024);
        let (mut out, _) = encode(&data[..], Vec::new(), Compression::Lz4, None).unwrap();
        let mid = out.len() / 2;
        out[mid] ^= 0x55;
        let mut back = Vec::new();
        let r = decode(&out[..], &mut back, Compression::Lz4, None);
        assert!(r.is_err() || back != data);
        assert!(r.is_err(), "corruption went unnoticed");
    }

    #[test]
    fn lzma_objects_made_by_the_xz_cli_decode_byte_identical() {
        let data = sample(1024 * 1024 + 3);
        let mut child = std::process::Command::new("xz")
            .args(["--format=lzma", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("xz is installed");
        let mut stdin = child.stdin.take().unwrap();
        let feed = data.clone();
        let writer = std::thread::spawn(move || stdin.write_all(&feed));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        let mut back = Vec::new();
        decode(&out.stdout[..], &mut back, Compression::Lzma, None).unwrap();
        assert!(back == data);
        assert!(decode(
            &out.stdout[..out.stdout.len() / 2],
            &mut Vec::new(),
            Compression::Lzma,
            None
        )
        .is_err());
    }

    #[test]
    fn lz4_cli_reads_what_walkeeper_writes() {
        let data = sample(2 * 1024 * 1024);
        let (out, _) = encode(&data[..], Vec::new(), Compression::Lz4, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.lz4");
        std::fs::write(&f, &out).unwrap();
        let res = std::process::Command::new("lz4")
            .args(["-d", "-c"])
            .arg(&f)
            .output()
            .expect("the lz4 CLI is installed by .ci/setup");
        assert!(res.status.success());
        assert!(res.stdout == data);
    }
}

#[cfg(test)]
mod damage_tests {
    use super::testdata::{cut_points, flip_points, wal_like};
    use super::*;

    fn cli(program: &str, args: &[&str], data: &[u8]) -> Vec<u8> {
        let mut child = std::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{program} is installed by .ci/setup: {e}"));
        let mut stdin = child.stdin.take().unwrap();
        let feed = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&feed));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "{program} {args:?} failed");
        out.stdout
    }

    /// A brotli stream of uncompressed meta-blocks (no brotli encoder is at hand): enough to
    /// check how the reader treats a stream that ends early.
    fn brotli_stored(data: &[u8]) -> Vec<u8> {
        struct Bits {
            out: Vec<u8>,
            acc: u64,
            n: u32,
        }
        impl Bits {
            fn put(&mut self, v: u64, bits: u32) {
                self.acc |= v << self.n;
                self.n += bits;
                while self.n >= 8 {
                    self.out.push(self.acc as u8);
                    self.acc >>= 8;
                    self.n -= 8;
                }
            }
            fn align(&mut self) {
                if self.n > 0 {
                    self.put(0, 8 - self.n);
                }
            }
        }
        let mut b = Bits {
            out: Vec::new(),
            acc: 0,
            n: 0,
        };
        b.put(0, 1); // WBITS 16
        for chunk in data.chunks(65536) {
            b.put(0, 1); // ISLAST
            b.put(0, 2); // MNIBBLES 4
            b.put(chunk.len() as u64 - 1, 16);
            b.put(1, 1); // ISUNCOMPRESSED
            b.align();
            b.out.extend_from_slice(chunk);
        }
        b.put(1, 1); // ISLAST
        b.put(1, 1); // ISLASTEMPTY
        b.align();
        b.out
    }

    fn decoded(obj: &[u8], c: Compression) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decode(obj, &mut out, c, None).map(|_| out)
    }

    fn objects(data: &[u8]) -> Vec<(&'static str, Compression, Vec<u8>)> {
        vec![
            (
                "zstd (walkeeper)",
                Compression::Zstd,
                encode(data, Vec::new(), Compression::Zstd, None).unwrap().0,
            ),
            (
                "zstd (CLI)",
                Compression::Zstd,
                cli("zstd", &["-c", "-q"], data),
            ),
            (
                "lzma (xz CLI)",
                Compression::Lzma,
                cli("xz", &["--format=lzma", "-c"], data),
            ),
            ("lzop (CLI)", Compression::Lzo, cli("lzop", &["-c"], data)),
            ("brotli", Compression::Brotli, brotli_stored(data)),
        ]
    }

    #[test]
    fn every_cut_of_a_zstd_lzma_lzop_or_brotli_object_is_an_error() {
        // 1 MiB: lzma-rs is slow, and the cut classes do not depend on the length.
        let data = wal_like(1 << 20, 21);
        for (what, c, obj) in objects(&data) {
            assert!(decoded(&obj, c).unwrap() == data, "{what} round trip");
            let sweep: Vec<usize> = (0..obj.len()).step_by(obj.len() / 40 + 1).collect();
            let mut clean = Vec::new();
            for cut in cut_points(obj.len(), &sweep, 60, 22) {
                match decoded(&obj[..cut], c) {
                    Ok(out) => clean.push((cut, out.len())),
                    Err(e) => assert!(
                        matches!(
                            e.kind(),
                            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                        ),
                        "{what}: cut at {cut}: {e:?}"
                    ),
                }
            }
            assert!(
                clean.is_empty(),
                "{what}: cuts of {} bytes that decoded cleanly (cut, bytes out): {clean:?}",
                obj.len()
            );
        }
    }

    #[test]
    fn a_cut_or_flipped_encrypted_object_is_a_decode_error() {
        let id = age::x25519::Identity::generate();
        let enc = Encryption::from_recipients(&[id.to_public().to_string()]).unwrap();
        let dec = Decryption::from_identity(id);
        let data = wal_like(1 << 20, 25);
        for c in [Compression::Lz4, Compression::Zstd] {
            let (obj, _) = encode(&data[..], Vec::new(), c, Some(&enc)).unwrap();
            let mut cases: Vec<Vec<u8>> = cut_points(obj.len(), &[obj.len() / 2], 10, 26)
                .into_iter()
                .filter(|&cut| cut > 64)
                .map(|cut| obj[..cut].to_vec())
                .collect();
            for i in [200, obj.len() / 2, obj.len() - 1] {
                let mut bad = obj.clone();
                bad[i] ^= 1;
                cases.push(bad);
            }
            for bad in cases {
                let e = decode(&bad[..], &mut Vec::new(), c, Some(&dec))
                    .expect_err("a damaged encrypted object is an error");
                // A damaged age header fails the header MAC: PermissionDenied, which wal-fetch
                // also counts as a corrupt object.
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData
                            | io::ErrorKind::UnexpectedEof
                            | io::ErrorKind::PermissionDenied
                    ),
                    "{c:?} {} of {} bytes: {e:?}",
                    bad.len(),
                    obj.len()
                );
            }
        }
    }

    #[test]
    fn single_bit_flips_in_checksummed_zstd_and_lzop_objects_are_errors() {
        let data = wal_like(2 << 20, 23);
        for (what, c, obj) in objects(&data) {
            // lzma and brotli carry no checksum: a flip may decode to other bytes unnoticed.
            if matches!(c, Compression::Lzma | Compression::Brotli) || what == "zstd (CLI)" {
                continue;
            }
            let mut bad = obj.clone();
            for (i, bit) in flip_points(obj.len(), &[], 64, 16, 150, 24) {
                bad[i] ^= 1 << bit;
                let res = decoded(&bad, c);
                bad[i] ^= 1 << bit;
                match res {
                    // zstd's frame header has no checksum: a flip in a field the decoder does
                    // not need (the window size, say) changes nothing. Never other bytes.
                    Ok(out) if c == Compression::Zstd && out == data && i < 6 => {}
                    Ok(out) => panic!(
                        "{what}: flipping bit {bit} of byte {i} went unnoticed ({})",
                        if out == data {
                            "same output"
                        } else {
                            "other output"
                        }
                    ),
                    Err(e) => assert!(
                        matches!(
                            e.kind(),
                            io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                        ),
                        "{what}: byte {i} bit {bit}: {e:?}"
                    ),
                }
            }
        }
    }
}
