//! A streaming reader for the lzop container: the files the `lzop` CLI writes, which WAL-E
//! stores as `wal_005/<segment>.lzo` and `tar_partitions/part_<n>.tar.lzo`.
//!
//! The layout follows lzop 1.04 (`src/lzop.c` `read_header`, `src/p_lzo.c` `lzo_decompress`,
//! `src/filter.c`); all integers are big-endian:
//!
//! ```text
//! magic            89 4c 5a 4f 00 0d 0a 1a 0a
//! version          u16          (>= 0x0900)
//! lib_version      u16
//! version_needed   u16          if version >= 0x0940
//! method           u8           1 = LZO1X_1, 2 = LZO1X_1_15, 3 = LZO1X_999
//! level            u8           if version >= 0x0940
//! flags            u32
//! filter           u32          if flags & F_H_FILTER
//! mode             u32
//! mtime_low        u32
//! mtime_high       u32          if version >= 0x0940
//! name             u8 length, then the name
//! header checksum  u32          Adler-32, or CRC-32 if flags & F_H_CRC32, of everything from
//!                               `version` to the end of the name
//! extra field      u32 length, data, u32 checksum (of the length and the data), if
//!                  flags & F_H_EXTRA_FIELD
//! blocks           u32 uncompressed length (0 ends the stream), u32 compressed length,
//!                  Adler-32 then CRC-32 of the uncompressed data (each if its flag is set),
//!                  Adler-32 then CRC-32 of the compressed data (each if its flag is set and the
//!                  block is compressed), then the data: LZO1X when compressed length <
//!                  uncompressed length, else stored as is.
//! ```
//!
//! With a filter (`lzop --filter=N`, N = 1..16) each block's bytes were delta-coded with distance
//! N before compression; the reader undoes that per block, and the uncompressed-data checksums
//! cover the unfiltered bytes.
//!
//! The reader holds one block (compressed and decompressed) at a time, verifies every checksum
//! the file carries, and reports a stream that ends early as an `UnexpectedEof` error, never as a
//! short clean read. It reads small header fields straight from the inner reader, so give it a
//! buffered one.

use std::io::{self, Read};

/// The nine bytes every lzop file starts with.
pub const LZOP_MAGIC: [u8; 9] = [0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a];

const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_H_FILTER: u32 = 0x0000_0800;
const F_H_CRC32: u32 = 0x0000_1000;
/// Bits that are neither a known flag (0x3fff), the OS byte (0xff00_0000) nor the character set
/// nibble (0x00f0_0000). lzop refuses files that set them.
const F_RESERVED: u32 = 0x000f_c000;

/// lzop 1.04, whose format this reader implements; lzop refuses files that need a newer version.
const LZOP_VERSION: u16 = 0x1040;
/// The first lzop version; older version fields mean the header is not lzop's.
const LZOP_FIRST_VERSION: u16 = 0x0900;
/// Header fields added in lzop 0.94.
const V_0940: u16 = 0x0940;

/// lzop writes 256 KiB blocks and refuses blocks above 64 MiB as corrupt; so does this reader.
const MAX_BLOCK: u32 = 64 << 20;
/// The uncompressed length lzop writes to mark a split file.
const SPLIT_MARK: u32 = 0xffff_ffff;
/// Compressed data is read in steps of this size, so a corrupt length costs no more memory than
/// the input actually holds.
const READ_STEP: usize = 64 * 1024;

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("lzop: {msg}"))
}

fn truncated(msg: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("lzop: truncated: {msg}"),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sum {
    Adler32,
    Crc32,
}

impl Sum {
    fn name(self) -> &'static str {
        match self {
            Sum::Adler32 => "adler32",
            Sum::Crc32 => "crc32",
        }
    }

    fn of(self, data: &[u8]) -> u32 {
        match self {
            Sum::Adler32 => adler2::adler32_slice(data),
            Sum::Crc32 => crc32fast::hash(data),
        }
    }

    fn hasher(self) -> Hasher {
        match self {
            Sum::Adler32 => Hasher::Adler32(adler2::Adler32::new()),
            Sum::Crc32 => Hasher::Crc32(crc32fast::Hasher::new()),
        }
    }

    /// The header's checksum algorithm (also used for the extra field).
    fn for_header(flags: u32) -> Sum {
        if flags & F_H_CRC32 != 0 {
            Sum::Crc32
        } else {
            Sum::Adler32
        }
    }
}

enum Hasher {
    Adler32(adler2::Adler32),
    Crc32(crc32fast::Hasher),
}

impl Hasher {
    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Adler32(h) => h.write_slice(data),
            Hasher::Crc32(h) => h.update(data),
        }
    }

    fn finish(self) -> u32 {
        match self {
            Hasher::Adler32(h) => h.checksum(),
            Hasher::Crc32(h) => h.finalize(),
        }
    }
}

/// The inner reader, with the count of bytes taken from it (for error messages).
struct Input<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Input<R> {
    /// Reads until `buf` is full or the input ends; returns how many bytes it read.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            let rest = &mut buf[got..];
            match self.inner.read(rest) {
                Ok(0) => break,
                Ok(n) => {
                    // A reader claiming more than it was given is broken; never index past it.
                    let n = n.min(rest.len());
                    got += n;
                    self.pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    /// Fills `buf` or fails with a truncation error naming `what` was being read.
    fn exact(&mut self, buf: &mut [u8], what: impl FnOnce() -> String) -> io::Result<()> {
        if self.fill(buf)? < buf.len() {
            return Err(truncated(format!(
                "input ends at byte offset {}, inside {}",
                self.pos,
                what()
            )));
        }
        Ok(())
    }

    fn be32(&mut self, what: impl FnOnce() -> String) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_be_bytes(b))
    }
}

/// Reads header fields, keeping their bytes for the header checksum.
struct HeaderBytes<'a, R> {
    input: &'a mut Input<R>,
    bytes: Vec<u8>,
}

impl<R: Read> HeaderBytes<'_, R> {
    fn take<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut b = [0u8; N];
        self.input.exact(&mut b, || "the file header".to_string())?;
        self.bytes.extend_from_slice(&b);
        Ok(b)
    }

    fn u8(&mut self) -> io::Result<u8> {
        let [b] = self.take::<1>()?;
        Ok(b)
    }

    fn u16(&mut self) -> io::Result<u16> {
        Ok(u16::from_be_bytes(self.take::<2>()?))
    }

    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_be_bytes(self.take::<4>()?))
    }

    fn skip(&mut self, n: usize) -> io::Result<()> {
        let start = self.bytes.len();
        self.bytes.resize(start + n, 0);
        self.input
            .exact(&mut self.bytes[start..], || "the file header".to_string())
    }
}

enum State {
    /// More blocks (or the end marker) to read.
    Blocks,
    /// The end marker was read and the input ended right after it.
    End,
    /// An error was returned; every later read returns it again.
    Failed(io::ErrorKind, String),
}

/// Streaming decoder: holds at most one block (lzop's max block is 256 KiB; reject anything above 64 MiB as corrupt) in memory.
pub struct LzopReader<R: std::io::Read> {
    input: Input<R>,
    flags: u32,
    /// Delta distance of the file's filter, 0 for none.
    filter: usize,
    /// The current block's uncompressed bytes; `pos` is how many were handed out.
    block: Vec<u8>,
    pos: usize,
    /// The current block as read (compressed, or stored).
    compressed: Vec<u8>,
    /// Blocks decoded so far.
    blocks: u64,
    state: State,
}

impl<R: std::io::Read> LzopReader<R> {
    /// Reads and validates the header (magic, version fields, method must be LZO1X_1/1_15/999 i.e. methods 1,2,3, header checksum per F_H_CRC32).
    pub fn new(inner: R) -> std::io::Result<Self> {
        let mut input = Input { inner, pos: 0 };

        let mut magic = [0u8; 9];
        let got = input.fill(&mut magic)?;
        if magic[..got] != LZOP_MAGIC[..got] {
            return Err(corrupt(format!(
                "not an lzop file: bad magic at byte offset 0 (found {}, expected {})",
                hex(&magic[..got]),
                hex(&LZOP_MAGIC)
            )));
        }
        if got < magic.len() {
            return Err(truncated(format!(
                "input ends at byte offset {got}, inside the magic"
            )));
        }

        let mut h = HeaderBytes {
            input: &mut input,
            bytes: Vec::with_capacity(64),
        };
        let version = h.u16()?;
        let _lib_version = h.u16()?;
        let needed = if version >= V_0940 {
            Some(h.u16()?)
        } else {
            None
        };
        let method_at = 9 + h.bytes.len();
        let method = h.u8()?;
        if version >= V_0940 {
            let _level = h.u8()?;
        }
        let flags_at = 9 + h.bytes.len();
        let flags = h.u32()?;
        let filter = if flags & F_H_FILTER != 0 { h.u32()? } else { 0 };
        let _mode = h.u32()?;
        let _mtime_low = h.u32()?;
        if version >= V_0940 {
            let _mtime_high = h.u32()?;
        }
        let name_len = h.u8()?;
        h.skip(usize::from(name_len))?;
        let header = std::mem::take(&mut h.bytes);

        // The checksum comes first: a damaged header is reported as such, not as whatever its
        // damaged fields happen to say.
        let sum = Sum::for_header(flags);
        let sum_at = input.pos;
        let stored = input.be32(|| "the header checksum".to_string())?;
        let computed = sum.of(&header);
        if stored != computed {
            return Err(corrupt(format!(
                "header checksum mismatch at byte offset {sum_at} ({} expected {stored:#010x}, \
                 got {computed:#010x})",
                sum.name()
            )));
        }

        if version < LZOP_FIRST_VERSION {
            return Err(corrupt(format!(
                "header: version {version:#06x} at byte offset 9 predates lzop 0.90"
            )));
        }
        if let Some(needed) = needed {
            if needed > LZOP_VERSION {
                return Err(corrupt(format!(
                    "header: the file needs lzop version {needed:#06x} to extract (byte offset \
                     13); this reader implements lzop {LZOP_VERSION:#06x}"
                )));
            }
            if needed < LZOP_FIRST_VERSION {
                return Err(corrupt(format!(
                    "header: needed version {needed:#06x} at byte offset 13 predates lzop 0.90"
                )));
            }
        }
        if !(1..=3).contains(&method) {
            return Err(corrupt(format!(
                "header: unsupported compression method {method} at byte offset {method_at} \
                 (only LZO1X: 1 = LZO1X_1, 2 = LZO1X_1_15, 3 = LZO1X_999)"
            )));
        }
        if flags & F_RESERVED != 0 {
            return Err(corrupt(format!(
                "header: reserved flag bits {:#010x} set in flags {flags:#010x} at byte offset \
                 {flags_at}",
                flags & F_RESERVED
            )));
        }
        if filter > 16 {
            return Err(corrupt(format!(
                "header: unsupported filter {filter} (lzop's filters are 1..16)"
            )));
        }

        if flags & F_H_EXTRA_FIELD != 0 {
            skip_extra_field(&mut input, sum)?;
        }

        Ok(LzopReader {
            input,
            flags,
            // filter <= 16 was checked above.
            filter: filter as usize,
            block: Vec::new(),
            pos: 0,
            compressed: Vec::new(),
            blocks: 0,
            state: State::Blocks,
        })
    }

    /// Reads and decodes the next block into `self.block`, or handles the end marker.
    fn next_block(&mut self) -> io::Result<()> {
        let n = self.blocks + 1;
        let at = self.input.pos;
        let in_header = || format!("the header of block {n} (which starts at byte offset {at})");

        let mut word = [0u8; 4];
        let got = self.input.fill(&mut word)?;
        if got == 0 {
            return Err(truncated(format!(
                "input ends at byte offset {at}, before block {n}: the end-of-stream marker is \
                 missing"
            )));
        }
        if got < word.len() {
            return Err(truncated(format!(
                "input ends at byte offset {}, inside {}",
                self.input.pos,
                in_header()
            )));
        }
        let ulen = u32::from_be_bytes(word);
        if ulen == 0 {
            return self.finish(at);
        }
        let here = format!("block {n} (at byte offset {at})");
        if ulen == SPLIT_MARK {
            return Err(corrupt(format!(
                "{here}: this is a split lzop file, which is not supported"
            )));
        }
        if ulen > MAX_BLOCK {
            return Err(corrupt(format!(
                "{here}: uncompressed length {ulen} exceeds the limit of {MAX_BLOCK} bytes"
            )));
        }
        let clen = self.input.be32(in_header)?;
        if clen == 0 || clen > ulen {
            return Err(corrupt(format!(
                "{here}: compressed length {clen} is impossible for {ulen} uncompressed bytes"
            )));
        }
        let packed = clen < ulen;
        let flags = self.flags;
        let mut read_sum = |flag: u32, present: bool| -> io::Result<Option<u32>> {
            if flags & flag != 0 && present {
                self.input.be32(in_header).map(Some)
            } else {
                Ok(None)
            }
        };
        let d_adler = read_sum(F_ADLER32_D, true)?;
        let d_crc = read_sum(F_CRC32_D, true)?;
        let c_adler = read_sum(F_ADLER32_C, packed)?;
        let c_crc = read_sum(F_CRC32_C, packed)?;

        // Read the data in steps, so a corrupt length costs at most what the input holds.
        let data_at = self.input.pos;
        let clen = clen as usize;
        self.compressed.clear();
        while self.compressed.len() < clen {
            let start = self.compressed.len();
            let end = clen.min(start + READ_STEP);
            self.compressed.resize(end, 0);
            let got = self.input.fill(&mut self.compressed[start..])?;
            if got < end - start {
                return Err(truncated(format!(
                    "input ends at byte offset {}, inside the data of {here}: {} of its {clen} \
                     bytes are present",
                    self.input.pos,
                    start + got
                )));
            }
        }

        for (sum, stored) in [(Sum::Adler32, c_adler), (Sum::Crc32, c_crc)] {
            if let Some(stored) = stored {
                let computed = sum.of(&self.compressed);
                if computed != stored {
                    return Err(corrupt(format!(
                        "{here}: compressed data checksum mismatch ({} expected {stored:#010x}, \
                         got {computed:#010x})",
                        sum.name()
                    )));
                }
            }
        }

        let ulen = ulen as usize;
        if packed {
            self.block.resize(ulen, 0);
            let out =
                lzokay::decompress::decompress(&self.compressed, &mut self.block).map_err(|e| {
                    corrupt(format!(
                        "{here}: the LZO1X data at byte offset {data_at} is corrupt ({e})"
                    ))
                })?;
            if out != ulen {
                return Err(corrupt(format!(
                    "{here}: the LZO1X data decodes to {out} bytes, the block header says {ulen}"
                )));
            }
        } else {
            // Stored: the data is the block. Swap the buffers instead of copying.
            std::mem::swap(&mut self.block, &mut self.compressed);
        }

        if self.filter > 0 {
            unfilter_delta(&mut self.block, self.filter);
        }

        for (sum, stored) in [(Sum::Adler32, d_adler), (Sum::Crc32, d_crc)] {
            if let Some(stored) = stored {
                let computed = sum.of(&self.block);
                if computed != stored {
                    return Err(corrupt(format!(
                        "{here}: uncompressed data checksum mismatch ({} expected \
                         {stored:#010x}, got {computed:#010x})",
                        sum.name()
                    )));
                }
            }
        }

        self.blocks = n;
        self.pos = 0;
        Ok(())
    }

    /// After the end marker (at byte offset `at`) the input must end.
    fn finish(&mut self, at: u64) -> io::Result<()> {
        let mut probe = [0u8; 1];
        if self.input.fill(&mut probe)? != 0 {
            return Err(corrupt(format!(
                "unexpected data at byte offset {} after the end-of-stream marker at byte offset \
                 {at} (concatenated lzop streams are not supported)",
                self.input.pos - 1
            )));
        }
        self.state = State::End;
        self.block = Vec::new();
        self.compressed = Vec::new();
        self.pos = 0;
        Ok(())
    }
}

impl<R: std::io::Read> std::io::Read for LzopReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.block.len() {
                let n = buf.len().min(self.block.len() - self.pos);
                buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            match &self.state {
                State::Blocks => {
                    if let Err(e) = self.next_block() {
                        self.state = State::Failed(e.kind(), e.to_string());
                        self.block = Vec::new();
                        self.compressed = Vec::new();
                        self.pos = 0;
                        return Err(e);
                    }
                }
                State::End => return Ok(0),
                State::Failed(kind, msg) => return Err(io::Error::new(*kind, msg.clone())),
            }
        }
    }
}

/// Skips the header's extra field, checking its checksum (which covers the length word too).
fn skip_extra_field<R: Read>(input: &mut Input<R>, sum: Sum) -> io::Result<()> {
    let at = input.pos;
    let what = || format!("the extra field (which starts at byte offset {at})");
    let mut len = [0u8; 4];
    input.exact(&mut len, what)?;
    let mut hasher = sum.hasher();
    hasher.update(&len);
    let mut left = u64::from(u32::from_be_bytes(len));
    let mut buf = [0u8; 4096];
    while left > 0 {
        let step = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        input.exact(&mut buf[..step], what)?;
        hasher.update(&buf[..step]);
        left -= step as u64;
    }
    let stored = input.be32(what)?;
    let computed = hasher.finish();
    if stored != computed {
        return Err(corrupt(format!(
            "extra field checksum mismatch at byte offset {at} ({} expected {stored:#010x}, got \
             {computed:#010x})",
            sum.name()
        )));
    }
    Ok(())
}

/// Undoes lzop's delta filter (`t_add` in lzop's filter.c): each byte was stored as the
/// difference to the byte `dist` positions earlier in the same block.
fn unfilter_delta(block: &mut [u8], dist: usize) {
    for i in dist..block.len() {
        block[i] = block[i].wrapping_add(block[i - dist]);
    }
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing".to_string();
    }
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    // ---- test data ---------------------------------------------------------------------------

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Deterministic data mixing WAL-like content: text records, runs of zeros, random bytes.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = XorShift(seed | 1);
        let mut v = Vec::with_capacity(len + 64);
        let mut row = 0u64;
        while v.len() < len {
            let r = rng.next();
            let run = 1 + (r >> 8) as usize % 40_000;
            let end = (v.len() + run).min(len);
            match r % 5 {
                0 => {
                    while v.len() < end {
                        v.extend_from_slice(&rng.next().to_le_bytes());
                    }
                }
                1 => v.resize(end, 0),
                _ => {
                    while v.len() < end {
                        row += 1;
                        let line = format!(
                            "{row:010} INSERT INTO pgbench_history VALUES ({}, {}, now());\n",
                            row % 97,
                            rng.next() % 10_000
                        );
                        v.extend_from_slice(line.as_bytes());
                    }
                }
            }
        }
        v.truncate(len);
        v
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = XorShift(seed | 1);
        let mut v = Vec::with_capacity(len + 8);
        while v.len() < len {
            v.extend_from_slice(&rng.next().to_le_bytes());
        }
        v.truncate(len);
        v
    }

    // ---- the lzop CLI ------------------------------------------------------------------------

    fn lzop_cmd(args: &[&str], input: &[u8]) -> std::process::Output {
        let mut child = Command::new("lzop")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the lzop CLI is installed (apt-get install lzop)");
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().expect("lzop runs");
        // lzop may exit before reading all of its input when it rejects it; ignore EPIPE.
        let _ = writer.join().expect("the writer thread does not panic");
        out
    }

    /// `lzop -c <args>` of `input` fed on stdin.
    fn lzop(args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut all = vec!["-c"];
        all.extend_from_slice(args);
        let out = lzop_cmd(&all, input);
        assert!(
            out.status.success(),
            "lzop {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// What the real `lzop -dc` makes of `file`: its output, or its error message.
    fn lzop_decompress(file: &[u8]) -> Result<Vec<u8>, String> {
        let out = lzop_cmd(&["-dc"], file);
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    // ---- reading in awkward pieces -----------------------------------------------------------

    /// A source that returns a few bytes at a time and is sometimes interrupted.
    struct Trickle<'a> {
        data: &'a [u8],
        calls: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            const SIZES: [usize; 6] = [1, 3, 5, 4099, 17, 70_001];
            self.calls += 1;
            if self.calls.is_multiple_of(7) {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "signal"));
            }
            let n = SIZES[self.calls % SIZES.len()]
                .min(buf.len())
                .min(self.data.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    /// Decodes `file` from a trickling source, reading the output in small odd-sized chunks.
    fn decode(file: &[u8]) -> io::Result<Vec<u8>> {
        const CHUNKS: [usize; 6] = [1, 7, 13, 4093, 3, 65_537];
        let mut r = LzopReader::new(Trickle {
            data: file,
            calls: 0,
        })?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 65_537];
        for i in 0.. {
            let want = CHUNKS[i % CHUNKS.len()];
            let n = r.read(&mut buf[..want])?;
            if n == 0 {
                // The end stays the end.
                assert_eq!(r.read(&mut buf)?, 0);
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
        unreachable!()
    }

    fn decode_err(file: &[u8]) -> io::Error {
        match decode(file) {
            Ok(out) => panic!("decoded {} bytes without an error", out.len()),
            Err(e) => e,
        }
    }

    // ---- a minimal lzop container parser and writer, to make variants of CLI output ------------

    struct Layout {
        method: u8,
        level: u8,
        flags: u32,
        /// Offset of the first block header.
        blocks_at: usize,
        /// (offset of the block header, uncompressed length, compressed length, data).
        blocks: Vec<(usize, usize, usize, Vec<u8>)>,
    }

    fn be32(b: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    /// Parses what lzop 1.04 writes (version >= 0.94, no extra field).
    fn layout(file: &[u8]) -> Layout {
        assert_eq!(file[..9], LZOP_MAGIC);
        let version = u16::from_be_bytes([file[9], file[10]]);
        assert!(version >= V_0940);
        let method = file[15];
        let level = file[16];
        let flags = be32(file, 17);
        let mut p = 21 + if flags & F_H_FILTER != 0 { 4 } else { 0 } + 12;
        p += 1 + file[p] as usize + 4;
        let blocks_at = p;
        let mut blocks = Vec::new();
        loop {
            let ulen = be32(file, p) as usize;
            if ulen == 0 {
                assert_eq!(p + 4, file.len());
                break;
            }
            let clen = be32(file, p + 4) as usize;
            let mut q = p + 8;
            for (flag, compressed_only) in [
                (F_ADLER32_D, false),
                (F_CRC32_D, false),
                (F_ADLER32_C, true),
                (F_CRC32_C, true),
            ] {
                if flags & flag != 0 && (!compressed_only || clen < ulen) {
                    q += 4;
                }
            }
            blocks.push((p, ulen, clen, file[q..q + clen].to_vec()));
            p = q + clen;
        }
        Layout {
            method,
            level,
            flags,
            blocks_at,
            blocks,
        }
    }

    /// Writes an lzop file with a header of the given version (the fields of 0.94 and later are
    /// present only from 0x0940 on), flags, extra field and blocks; `plain` is the uncompressed
    /// data the blocks decode to, for the data checksums.
    fn build(
        l: &Layout,
        version: u16,
        flags: u32,
        extra: Option<&[u8]>,
        plain: &[u8],
        corrupt_sum: Option<(usize, u32)>,
    ) -> Vec<u8> {
        let sum = Sum::for_header(flags);
        let mut h = Vec::new();
        h.extend_from_slice(&version.to_be_bytes());
        h.extend_from_slice(&0x20a0u16.to_be_bytes());
        if version >= V_0940 {
            h.extend_from_slice(&0x0940u16.to_be_bytes());
        }
        h.push(l.method);
        if version >= V_0940 {
            h.push(l.level);
        }
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&0o100644u32.to_be_bytes());
        h.extend_from_slice(&1_700_000_000u32.to_be_bytes());
        if version >= V_0940 {
            h.extend_from_slice(&0u32.to_be_bytes());
        }
        h.push(7);
        h.extend_from_slice(b"seg.wal");
        let mut f = LZOP_MAGIC.to_vec();
        f.extend_from_slice(&h);
        f.extend_from_slice(&sum.of(&h).to_be_bytes());
        if let Some(extra) = extra {
            let mut e = (extra.len() as u32).to_be_bytes().to_vec();
            e.extend_from_slice(extra);
            f.extend_from_slice(&e);
            f.extend_from_slice(&sum.of(&e).to_be_bytes());
        }
        let mut off = 0;
        for (i, (_, ulen, clen, data)) in l.blocks.iter().enumerate() {
            let u = &plain[off..off + ulen];
            off += ulen;
            f.extend_from_slice(&(*ulen as u32).to_be_bytes());
            f.extend_from_slice(&(*clen as u32).to_be_bytes());
            // `corrupt_sum` = (block index, xor mask for each of that block's checksum words).
            let mask = match corrupt_sum {
                Some((b, m)) if b == i => m,
                _ => 0,
            };
            for (flag, sum, of_compressed) in [
                (F_ADLER32_D, Sum::Adler32, false),
                (F_CRC32_D, Sum::Crc32, false),
                (F_ADLER32_C, Sum::Adler32, true),
                (F_CRC32_C, Sum::Crc32, true),
            ] {
                if flags & flag == 0 || (of_compressed && clen >= ulen) {
                    continue;
                }
                let v = sum.of(if of_compressed { data } else { u }) ^ mask;
                f.extend_from_slice(&v.to_be_bytes());
            }
            f.extend_from_slice(data);
        }
        assert_eq!(off, plain.len());
        f.extend_from_slice(&0u32.to_be_bytes());
        f
    }

    /// Rewrites header bytes at `at` and fixes the header checksum, so only the field is wrong.
    fn patch_header(file: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut f = file.to_vec();
        f[at..at + bytes.len()].copy_from_slice(bytes);
        let l = layout(file);
        let sum_at = l.blocks_at - 4;
        let c = Sum::for_header(be32(&f, 17)).of(&f[9..sum_at]);
        f[sum_at..sum_at + 4].copy_from_slice(&c.to_be_bytes());
        f
    }

    fn assert_same(got: &[u8], want: &[u8], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length differs");
        assert!(got == want, "{what}: content differs");
    }

    // ---- decoding ----------------------------------------------------------------------------

    #[test]
    fn decodes_lzop_cli_output_byte_identical() {
        let data = sample(3 * 1024 * 1024 + 11, 1);
        let mut methods = Vec::new();
        for args in [
            &[][..],
            &["-1"],
            &["-7"],
            &["-9"],
            &["--crc32"],
            &["-9", "--crc32"],
            &["--no-checksum"],
        ] {
            let file = lzop(args, &data);
            let l = layout(&file);
            assert!(l.blocks.len() > 10, "lzop {args:?} wrote several blocks");
            methods.push(l.method);
            assert_same(&decode(&file).unwrap(), &data, &format!("lzop {args:?}"));
        }
        for m in 1..=3 {
            assert!(methods.contains(&m), "method {m} was exercised");
        }
    }

    #[test]
    fn decodes_lzop_cli_output_of_a_named_file() {
        // Compressing a file (not stdin) stores its name and mode in the header.
        let data = sample(700_000, 2);
        let dir = std::env::temp_dir().join(format!("lzop-reader-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("000000010000000000000001");
        std::fs::write(&path, &data).unwrap();
        let out = Command::new("lzop")
            .arg("-c")
            .arg(&path)
            .output()
            .expect("the lzop CLI is installed");
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(out.status.success());
        let name_len = out.stdout[33] as usize;
        assert_eq!(&out.stdout[34..34 + name_len], b"000000010000000000000001");
        assert_same(&decode(&out.stdout).unwrap(), &data, "named file");
    }

    #[test]
    fn decodes_empty_input_compressed_by_lzop_cli() {
        for args in [&[][..], &["--crc32"], &["-9"]] {
            let file = lzop(args, b"");
            assert!(layout(&file).blocks.is_empty());
            assert!(decode(&file).unwrap().is_empty(), "lzop {args:?}");
        }
    }

    #[test]
    fn incompressible_blocks_are_stored_and_round_trip() {
        // Random data, then compressible data: stored and compressed blocks in one file.
        let mut data = random(600_000, 3);
        data.extend_from_slice(&sample(400_000, 4));
        for args in [&[][..], &["--crc32"], &["-9"]] {
            let file = lzop(args, &data);
            let l = layout(&file);
            assert!(l.blocks.iter().any(|b| b.1 == b.2), "a block is stored");
            assert!(l.blocks.iter().any(|b| b.2 < b.1), "a block is compressed");
            assert_same(&decode(&file).unwrap(), &data, &format!("lzop {args:?}"));
        }
    }

    #[test]
    fn undoes_lzop_delta_filters() {
        let mut data = sample(900_000, 5);
        data.extend_from_slice(&random(300_000, 6));
        for filter in ["1", "2", "3", "4", "16"] {
            let arg = format!("--filter={filter}");
            for extra in [&[][..], &["--crc32"]] {
                let mut args = vec![arg.as_str()];
                args.extend_from_slice(extra);
                let file = lzop(&args, &data);
                let l = layout(&file);
                assert!(l.flags & F_H_FILTER != 0);
                assert!(l.blocks.iter().any(|b| b.1 == b.2), "a block is stored");
                assert_same(&decode(&file).unwrap(), &data, &format!("lzop {args:?}"));
            }
        }
    }

    #[test]
    fn verifies_every_combination_of_data_checksums() {
        // Three compressible 256 KiB blocks, then random ones that lzop stores.
        let mut data = sample(3 * 256 * 1024, 7);
        data.extend_from_slice(&random(300_000, 8));
        let l = layout(&lzop(&["--no-checksum"], &data));
        assert!(l.blocks[1].2 < l.blocks[1].1, "block 2 is compressed");
        assert!(l.blocks[3].2 == l.blocks[3].1, "block 4 is stored");
        // Keep the OS byte and the stdin/stdout flags lzop wrote.
        let base = l.flags & 0xff00_000c;
        for d in [0, F_ADLER32_D, F_CRC32_D, F_ADLER32_D | F_CRC32_D] {
            for c in [0, F_ADLER32_C, F_CRC32_C, F_ADLER32_C | F_CRC32_C] {
                for h in [0, F_H_CRC32] {
                    let flags = base | d | c | h;
                    let what = format!("flags {flags:#x}");
                    let file = build(&l, 0x1040, flags, None, &data, None);
                    // The real lzop agrees these files are valid and mean `data`. (lzop never
                    // writes a compressed-data checksum without the same kind of data checksum,
                    // and asserts against that combination on stored blocks.)
                    let lzop_can_read = (c & F_ADLER32_C == 0 || d & F_ADLER32_D != 0)
                        && (c & F_CRC32_C == 0 || d & F_CRC32_D != 0);
                    if lzop_can_read {
                        assert_same(&lzop_decompress(&file).unwrap(), &data, &what);
                    }
                    assert_same(&decode(&file).unwrap(), &data, &what);
                    if d | c == 0 {
                        continue;
                    }
                    // A wrong checksum in block 2 (compressed) or 4 (stored) is found.
                    for bad in [1, 3] {
                        if bad == 3 && d == 0 {
                            continue; // a stored block carries only data checksums
                        }
                        let file = build(&l, 0x1040, flags, None, &data, Some((bad, 0x0100)));
                        assert!(lzop_decompress(&file).is_err(), "{what}: lzop agrees");
                        let e = decode_err(&file);
                        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
                        let msg = e.to_string();
                        assert!(msg.contains(&format!("block {} ", bad + 1)), "{msg}");
                        assert!(msg.contains("checksum mismatch"), "{msg}");
                    }
                }
            }
        }
    }

    #[test]
    fn skips_the_checksummed_header_extra_field() {
        let data = sample(500_000, 9);
        let l = layout(&lzop(&["--no-checksum"], &data));
        let extra = random(10_000, 10);
        for h in [0, F_H_CRC32] {
            let flags = F_ADLER32_D | F_H_EXTRA_FIELD | h;
            let file = build(&l, 0x1040, flags, Some(&extra), &data, None);
            assert_same(&lzop_decompress(&file).unwrap(), &data, "lzop -d");
            assert_same(&decode(&file).unwrap(), &data, "extra field");
            // Magic, the 32 header bytes `build` writes, header checksum, extra field length.
            let extra_at = 9 + 32 + 4 + 4;
            assert_eq!(file[extra_at..extra_at + 64], extra[..64]);
            let mut bad = file.clone();
            bad[extra_at + 100] ^= 1;
            let e = LzopReader::new(&bad[..])
                .err()
                .expect("a damaged extra field is refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(
                e.to_string().contains("extra field checksum mismatch"),
                "{e}"
            );
            let e = LzopReader::new(&file[..extra_at + 5_000])
                .err()
                .expect("a cut extra field is refused");
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        }
    }

    #[test]
    fn decodes_the_shorter_header_of_lzop_before_0_94() {
        let data = sample(600_000, 19);
        for args in [&["--no-checksum"][..], &["-9", "--no-checksum"]] {
            let l = layout(&lzop(args, &data));
            for flags in [0, F_ADLER32_D, F_CRC32_D | F_CRC32_C | F_H_CRC32] {
                let file = build(&l, 0x0930, flags, None, &data, None);
                let what = format!("lzop {args:?}, flags {flags:#x}");
                assert_same(&lzop_decompress(&file).unwrap(), &data, &what);
                assert_same(&decode(&file).unwrap(), &data, &what);
            }
        }
        let file = build(&layout(&lzop(&[], b"x")), 0x0830, 0, None, b"x", None);
        let e = LzopReader::new(&file[..]).err().expect("refused");
        assert!(e.to_string().contains("predates lzop 0.90"), "{e}");
    }

    #[test]
    fn holds_one_block_at_a_time() {
        struct Counting<'a> {
            data: &'a [u8],
            taken: usize,
        }
        impl Read for Counting<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.data.len() - self.taken);
                buf[..n].copy_from_slice(&self.data[self.taken..self.taken + n]);
                self.taken += n;
                Ok(n)
            }
        }
        let data = sample(2_000_000, 11);
        let file = lzop(&[], &data);
        let l = layout(&file);
        let mut r = LzopReader::new(Counting {
            data: &file,
            taken: 0,
        })
        .unwrap();
        assert_eq!(r.input.inner.taken, l.blocks_at);
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte).unwrap();
        assert_eq!(r.input.inner.taken, l.blocks[1].0, "only block 1 was read");
        assert!(r.block.len() <= 256 * 1024);
    }

    // ---- damaged input -----------------------------------------------------------------------

    #[test]
    fn truncated_input_is_an_unexpected_eof_error() {
        let mut data = sample(600_000, 12);
        data.extend_from_slice(&random(100_000, 13));
        let file = lzop(&[], &data);
        let l = layout(&file);
        let mut cuts: Vec<usize> = (0..l.blocks_at + 12).collect();
        for (at, _, clen, _) in &l.blocks {
            cuts.extend(at.saturating_sub(3)..at + 16);
            cuts.push(at + 12 + clen / 2);
        }
        cuts.extend(file.len() - 4..file.len());
        cuts.extend((0..file.len()).step_by(9_973));
        for cut in cuts {
            let r = match LzopReader::new(&file[..cut]) {
                Err(e) => Err(e),
                Ok(mut r) => {
                    let mut out = Vec::new();
                    r.read_to_end(&mut out)
                }
            };
            let e = r
                .err()
                .unwrap_or_else(|| panic!("cut at {cut} decoded cleanly"));
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {e}");
            assert!(e.to_string().starts_with("lzop: truncated: "), "{e}");
        }
        let e = decode_err(&file[..file.len() - 4]);
        let msg = e.to_string();
        assert!(msg.contains("end-of-stream marker is missing"), "{msg}");
        assert!(
            msg.contains(&format!("byte offset {}", file.len() - 4)),
            "{msg}"
        );
    }

    #[test]
    fn flipped_byte_in_a_compressed_block_is_an_error() {
        let data = sample(1_500_000, 14);
        for args in [&[][..], &["--crc32"], &["-9"]] {
            let file = lzop(args, &data);
            let l = layout(&file);
            let (at, ulen, clen, _) = l.blocks[2];
            assert!(clen < ulen);
            let data_at = at + 12; // block header and one data checksum
            for k in [0, 1, clen / 3, clen / 2, clen - 4, clen - 1] {
                for mask in [0x01, 0x40, 0xff] {
                    let mut bad = file.clone();
                    bad[data_at + k] ^= mask;
                    let e = decode_err(&bad);
                    assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
                    assert!(e.to_string().contains("block 3 "), "{e}");
                }
            }
        }
    }

    #[test]
    fn bad_magic_is_an_error() {
        let file = lzop(&[], b"hello");
        for i in 0..9 {
            let mut bad = file.clone();
            bad[i] ^= 0x20;
            let e = LzopReader::new(&bad[..])
                .err()
                .expect("bad magic is refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(e.to_string().contains("bad magic"), "{e}");
        }
        let gzip = [0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0, 0, 3, 3, 0];
        assert!(LzopReader::new(&gzip[..]).is_err());
        let e = LzopReader::new(&b""[..])
            .err()
            .expect("empty input is refused");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn damaged_or_unsupported_header_is_an_error() {
        let file = lzop(&[], &sample(100_000, 15));
        let l = layout(&file);
        // Any damaged header byte fails the header checksum.
        for at in 9..l.blocks_at {
            let mut bad = file.clone();
            bad[at] ^= 0x04;
            let e = LzopReader::new(&bad[..]).err().expect("damage is found");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "byte {at}: {e}");
        }
        let mut bad = file.clone();
        bad[30] ^= 1; // mtime
        let e = LzopReader::new(&bad[..]).err().expect("damage is found");
        assert!(e.to_string().contains("header checksum mismatch"), "{e}");

        // Well-formed headers that lzop 1.04 refuses too.
        for (what, at, bytes, expect) in [
            ("method 0", 15, &[0u8][..], "compression method 0"),
            ("method 4", 15, &[4], "compression method 4"),
            ("zlib method", 15, &[128], "compression method 128"),
            ("reserved flag", 19, &[0x40], "reserved flag"),
            ("too new", 13, &[0x20, 0x00], "needs lzop version"),
        ] {
            let bad = patch_header(&file, at, bytes);
            assert!(
                lzop_decompress(&bad).is_err(),
                "{what}: lzop refuses it too"
            );
            let e = LzopReader::new(&bad[..]).err().expect("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}");
            assert!(e.to_string().contains(expect), "{what}: {e}");
        }
        // The methods this reader supports, relabelled, still decode (LZO1X is one format).
        for m in 1..=3u8 {
            let f = patch_header(&file, 15, &[m]);
            assert!(decode(&f).is_ok(), "method {m}");
        }
    }

    #[test]
    fn impossible_block_lengths_are_errors() {
        let data = sample(600_000, 16);
        let file = lzop(&[], &data);
        let l = layout(&file);
        let at = l.blocks[1].0;
        for (what, ulen, clen, expect) in [
            ("huge", 0x0400_0001u32, None, "exceeds the limit"),
            ("split", 0xffff_ffff, None, "split lzop file"),
            ("clen > ulen", 1000, Some(1001u32), "impossible"),
            ("clen 0", 1000, Some(0), "impossible"),
        ] {
            let mut bad = file.clone();
            bad[at..at + 4].copy_from_slice(&ulen.to_be_bytes());
            if let Some(c) = clen {
                bad[at + 4..at + 8].copy_from_slice(&c.to_be_bytes());
            }
            let e = decode_err(&bad);
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{what}: {e}");
            assert!(e.to_string().contains("block 2 "), "{what}: {e}");
            assert!(e.to_string().contains(expect), "{what}: {e}");
        }
        // A wrong uncompressed length of a compressed block.
        let mut bad = file.clone();
        let ulen = be32(&file, at);
        bad[at..at + 4].copy_from_slice(&(ulen + 1).to_be_bytes());
        assert_eq!(decode_err(&bad).kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn data_after_the_end_marker_is_an_error() {
        let data = sample(300_000, 17);
        let file = lzop(&[], &data);
        for tail in [&[0u8][..], b"garbage", &file[..]] {
            let mut bad = file.clone();
            bad.extend_from_slice(tail);
            let e = decode_err(&bad);
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
            let msg = e.to_string();
            assert!(msg.contains("after the end-of-stream marker"), "{msg}");
            assert!(
                msg.contains(&format!("byte offset {}", file.len())),
                "{msg}"
            );
        }
    }

    #[test]
    fn errors_are_sticky() {
        let data = sample(600_000, 18);
        let mut file = lzop(&[], &data);
        let l = layout(&file);
        file[l.blocks[1].0 + 20] ^= 0x10;
        let mut r = LzopReader::new(&file[..]).unwrap();
        let mut out = Vec::new();
        let first = r.read_to_end(&mut out).unwrap_err();
        assert!(
            out.len() <= l.blocks[0].1,
            "nothing past block 1 was returned"
        );
        let mut buf = [0u8; 100];
        for _ in 0..3 {
            let again = r.read(&mut buf).unwrap_err();
            assert_eq!(again.kind(), first.kind());
            assert_eq!(again.to_string(), first.to_string());
        }
        assert!(first.to_string().contains("block 2 "), "{first}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// One lzop CLI file (with adler32 and crc32 checksums) and its plaintext, made once.
        fn file() -> &'static (Vec<u8>, Vec<u8>) {
            static FILE: std::sync::OnceLock<(Vec<u8>, Vec<u8>)> = std::sync::OnceLock::new();
            FILE.get_or_init(|| {
                let data = sample(300_000, 41);
                (lzop(&["--crc32"], &data), data)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let _ = decode(&bytes);
            }

            #[test]
            fn arbitrary_bytes_after_the_magic_never_panic(
                tail in proptest::collection::vec(any::<u8>(), 0..4096),
            ) {
                let mut bytes = LZOP_MAGIC.to_vec();
                bytes.extend_from_slice(&tail);
                let _ = decode(&bytes);
            }

            #[test]
            fn a_mutated_or_cut_file_decodes_exactly_or_fails(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..5),
                cut in proptest::option::of(any::<prop::sample::Index>()),
            ) {
                let (lzo, data) = file();
                let mut bad = lzo.clone();
                for (at, b) in &edits {
                    let i = at.index(bad.len());
                    bad[i] = *b;
                }
                if let Some(c) = cut {
                    bad.truncate(c.index(bad.len()));
                }
                match decode(&bad) {
                    Ok(out) => prop_assert!(out == *data, "a damaged file decoded to other bytes"),
                    Err(e) => prop_assert!(matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                    )),
                }
                if cut.is_some() {
                    prop_assert!(decode(&bad).is_err() || bad == *lzo);
                }
            }
        }
    }
}
