//! A streaming reader for the lz4 frame format that accepts only complete, intact frames.
//!
//! Per frame (all integers little-endian):
//!
//! ```text
//! magic            0x184D2204
//! FLG              version 01 (bits 7-6), block independence (5), block checksum (4),
//!                  content size (3), content checksum (2), reserved 0 (1), dictionary ID (0)
//! BD               block maximum size code 4..7 (bits 6-4: 64 KiB, 256 KiB, 1 MiB, 4 MiB)
//! content size     u64, if FLG says so
//! header checksum  (XXH32(FLG..content size) >> 8) & 0xff
//! blocks           u32 size word (bit 31: stored uncompressed), the data, u32 XXH32 of the
//!                  data if block checksums are on
//! end mark         u32 0
//! content checksum u32 XXH32 of the plaintext, if FLG says so
//! ```
//!
//! Every block size is checked against the frame's maximum, every block is decompressed with
//! the bounds-checked lz4 block decoder, and the end mark, content size and content checksum
//! are required where the frame declares them. Frames may follow each other, and skippable
//! frames (0x184D2A50..5F) are skipped, as the `lz4` CLI does. Input that ends anywhere before
//! a frame is complete is an `UnexpectedEof` error and damage is an `InvalidData` error, both
//! naming the byte offset; neither is ever a short clean read. Errors are sticky.
//!
//! Memory: one compressed block and one decompressed block (plus the 64 KiB window of linked
//! blocks), at most 4 MiB each, allocated for the frame's declared maximum.

use std::io::{self, BufRead, Read};

use lzzzz::lz4;
use xxhash_rust::xxh32::{xxh32, Xxh32};

const MAGIC: u32 = 0x184D_2204;
const LEGACY_MAGIC: u32 = 0x184C_2102;
const SKIPPABLE_MASK: u32 = 0xFFFF_FFF0;
const SKIPPABLE: u32 = 0x184D_2A50;

const FLG_VERSION_MASK: u8 = 0b1100_0000;
const FLG_VERSION: u8 = 0b0100_0000;
const FLG_INDEPENDENT: u8 = 0b0010_0000;
const FLG_BLOCK_CHECKSUM: u8 = 0b0001_0000;
const FLG_CONTENT_SIZE: u8 = 0b0000_1000;
const FLG_CONTENT_CHECKSUM: u8 = 0b0000_0100;
const FLG_RESERVED: u8 = 0b0000_0010;
const FLG_DICT_ID: u8 = 0b0000_0001;

const RAW: u32 = 1 << 31;
/// Linked blocks may refer back this far into earlier output.
const WINDOW: usize = 64 * 1024;

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("lz4: {msg}"))
}

fn truncated(msg: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("lz4: truncated: {msg}"),
    )
}

struct Frame {
    block_max: usize,
    independent: bool,
    block_checksum: bool,
    content_checksum: bool,
    content_size: Option<u64>,
    hash: Xxh32,
    produced: u64,
    blocks: u64,
}

enum State {
    /// At the start of the input: a frame must follow.
    Start,
    /// Inside a frame, at a block size word.
    Blocks(Box<Frame>),
    /// A frame ended; more frames may follow, or the input ends.
    Between,
    Done,
    Failed(io::ErrorKind, String),
}

/// Reads the plaintext of one or more lz4 frames from `src`.
pub struct Lz4FrameReader<R> {
    src: R,
    /// Bytes consumed from `src`.
    pos: u64,
    state: State,
    /// Compressed block being read.
    cbuf: Vec<u8>,
    /// Decompressed output: `out[start..end]` is not yet handed out. For linked blocks the
    /// bytes before `start` (up to `WINDOW`) are the previous output the next block may use.
    out: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: BufRead> Lz4FrameReader<R> {
    pub fn new(src: R) -> Self {
        Lz4FrameReader {
            src,
            pos: 0,
            state: State::Start,
            cbuf: Vec::new(),
            out: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// Fills `buf` from the source; returns how many bytes it got (short only at EOF).
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.src.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n.min(buf.len() - got),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.pos += got as u64;
        Ok(got)
    }

    fn exact(&mut self, buf: &mut [u8], what: &dyn Fn() -> String) -> io::Result<()> {
        let at = self.pos;
        let got = self.fill(buf)?;
        if got < buf.len() {
            return Err(truncated(format!(
                "the input ends at byte offset {}, inside {} (which starts at byte offset {at})",
                self.pos,
                what()
            )));
        }
        Ok(())
    }

    fn le32(&mut self, what: &dyn Fn() -> String) -> io::Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    /// True when the source has no more bytes.
    fn at_eof(&mut self) -> io::Result<bool> {
        loop {
            match self.src.fill_buf() {
                Ok(b) => return Ok(b.is_empty()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a magic number and what it introduces: a frame header (returned), or a skippable
    /// frame (skipped; returns None).
    fn frame_start(&mut self) -> io::Result<Option<Box<Frame>>> {
        let at = self.pos;
        let magic = self.le32(&|| "a frame's magic number".to_string())?;
        if magic & SKIPPABLE_MASK == SKIPPABLE {
            let len = self.le32(&|| "a skippable frame's length".to_string())?;
            let mut left = u64::from(len);
            let mut buf = [0u8; 8192];
            while left > 0 {
                let step = buf.len().min(left as usize);
                self.exact(&mut buf[..step], &|| {
                    format!("a skippable frame of {len} bytes")
                })?;
                left -= step as u64;
            }
            return Ok(None);
        }
        if magic == LEGACY_MAGIC {
            return Err(corrupt(format!(
                "the legacy lz4 format (magic at byte offset {at}) is not supported"
            )));
        }
        if magic != MAGIC {
            return Err(corrupt(format!(
                "bad magic {magic:#010x} at byte offset {at} (expected {MAGIC:#010x})"
            )));
        }
        let what = || "the frame descriptor".to_string();
        let mut desc = [0u8; 2 + 8 + 4];
        self.exact(&mut desc[..2], &what)?;
        let (flg, bd) = (desc[0], desc[1]);
        let mut len = 2;
        if flg & FLG_CONTENT_SIZE != 0 {
            self.exact(&mut desc[len..len + 8], &what)?;
            len += 8;
        }
        if flg & FLG_DICT_ID != 0 {
            self.exact(&mut desc[len..len + 4], &what)?;
            len += 4;
        }
        let mut hc = [0u8; 1];
        self.exact(&mut hc, &what)?;
        let want = (xxh32(&desc[..len], 0) >> 8) as u8;
        if hc[0] != want {
            return Err(corrupt(format!(
                "frame descriptor checksum mismatch at byte offset {} (stored {:#04x}, computed \
                 {want:#04x})",
                self.pos - 1,
                hc[0]
            )));
        }
        if flg & FLG_VERSION_MASK != FLG_VERSION {
            return Err(corrupt(format!(
                "unsupported frame version in FLG {flg:#04x} at byte offset {}",
                at + 4
            )));
        }
        if flg & FLG_RESERVED != 0 || bd & 0b1000_1111 != 0 {
            return Err(corrupt(format!(
                "reserved bits set in the frame descriptor (FLG {flg:#04x}, BD {bd:#04x}) at \
                 byte offset {}",
                at + 4
            )));
        }
        if flg & FLG_DICT_ID != 0 {
            return Err(corrupt(format!(
                "the frame at byte offset {at} needs a dictionary, which is not supported"
            )));
        }
        let block_max = match (bd >> 4) & 0x7 {
            4 => 64 << 10,
            5 => 256 << 10,
            6 => 1 << 20,
            7 => 4 << 20,
            code => {
                return Err(corrupt(format!(
                    "invalid block maximum size code {code} at byte offset {}",
                    at + 5
                )))
            }
        };
        let content_size = (flg & FLG_CONTENT_SIZE != 0).then(|| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&desc[2..10]);
            u64::from_le_bytes(b)
        });
        let independent = flg & FLG_INDEPENDENT != 0;
        let window = if independent { 0 } else { WINDOW };
        if self.out.len() < window + block_max {
            self.out.resize(window + block_max, 0);
        }
        if self.cbuf.len() < block_max {
            self.cbuf.resize(block_max, 0);
        }
        self.start = 0;
        self.end = 0;
        Ok(Some(Box::new(Frame {
            block_max,
            independent,
            block_checksum: flg & FLG_BLOCK_CHECKSUM != 0,
            content_checksum: flg & FLG_CONTENT_CHECKSUM != 0,
            content_size,
            hash: Xxh32::new(0),
            produced: 0,
            blocks: 0,
        })))
    }

    /// Reads the next block of `f`. Returns false at the end mark (having checked the frame's
    /// trailer). With `direct`, an independent block is decompressed straight into it and its
    /// length is returned in `Ok(Some(n))` form via `direct_len`.
    fn next_block(
        &mut self,
        f: &mut Frame,
        direct: Option<&mut [u8]>,
        direct_len: &mut usize,
    ) -> io::Result<bool> {
        let at = self.pos;
        let n = f.blocks + 1;
        let word = self.le32(&|| format!("the size word of block {n}"))?;
        if word == 0 {
            return self.frame_end(f, at).map(|()| false);
        }
        let raw = word & RAW != 0;
        let size = (word & !RAW) as usize;
        if size > f.block_max {
            return Err(corrupt(format!(
                "block {n} at byte offset {at}: size {size} exceeds the frame's maximum block \
                 size {}",
                f.block_max
            )));
        }
        let need = size + if f.block_checksum { 4 } else { 0 };
        let mut out = Out {
            buf: &mut self.out,
            start: &mut self.start,
            end: &mut self.end,
        };
        let pos = &mut self.pos;
        let buffered = loop {
            match self.src.fill_buf() {
                Ok(b) => break b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if buffered.len() >= need {
            // The whole block is in the source's buffer: decode it from there, no copy.
            let (data, sum) = buffered[..need].split_at(size);
            let stored = (f.block_checksum).then(|| le32_of(sum));
            let res = decode_block(f, data, stored, &mut out, n, at, raw, direct, direct_len);
            self.src.consume(need);
            *pos += need as u64;
            return res.map(|()| true);
        }
        let mut cbuf = std::mem::take(&mut self.cbuf);
        let res = self.read_block(f, &mut cbuf[..size], n, at, raw, direct, direct_len);
        self.cbuf = cbuf;
        res.map(|()| true)
    }

    #[allow(clippy::too_many_arguments)]
    fn read_block(
        &mut self,
        f: &mut Frame,
        data: &mut [u8],
        n: u64,
        at: u64,
        raw: bool,
        direct: Option<&mut [u8]>,
        direct_len: &mut usize,
    ) -> io::Result<()> {
        let size = data.len();
        self.exact(data, &|| format!("block {n} ({size} bytes)"))?;
        let stored = if f.block_checksum {
            Some(self.le32(&|| format!("the checksum of block {n}"))?)
        } else {
            None
        };
        let mut out = Out {
            buf: &mut self.out,
            start: &mut self.start,
            end: &mut self.end,
        };
        decode_block(f, data, stored, &mut out, n, at, raw, direct, direct_len)
    }

    /// After the end mark at `at`: the content checksum and size must agree.
    fn frame_end(&mut self, f: &mut Frame, at: u64) -> io::Result<()> {
        if f.content_checksum {
            let sum_at = self.pos;
            let stored = self.le32(&|| "the content checksum".to_string())?;
            let computed = f.hash.digest();
            if stored != computed {
                return Err(corrupt(format!(
                    "content checksum mismatch at byte offset {sum_at} (stored {stored:#010x}, \
                     computed {computed:#010x})"
                )));
            }
        }
        if let Some(want) = f.content_size {
            if f.produced != want {
                return Err(corrupt(format!(
                    "the frame ending at byte offset {at} holds {} bytes, its header declares \
                     {want}",
                    f.produced
                )));
            }
        }
        Ok(())
    }

    fn step(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.start < self.end {
                let n = buf.len().min(self.end - self.start);
                buf[..n].copy_from_slice(&self.out[self.start..self.start + n]);
                self.start += n;
                return Ok(n);
            }
            match std::mem::replace(&mut self.state, State::Done) {
                State::Start => {
                    if self.at_eof()? {
                        return Err(truncated("the object is empty: no lz4 frame".to_string()));
                    }
                    self.state = match self.frame_start()? {
                        Some(f) => State::Blocks(f),
                        None => State::Between,
                    };
                }
                State::Between => {
                    if self.at_eof()? {
                        self.state = State::Done;
                        self.cbuf = Vec::new();
                        self.out = Vec::new();
                        return Ok(0);
                    }
                    self.state = match self.frame_start()? {
                        Some(f) => State::Blocks(f),
                        None => State::Between,
                    };
                }
                State::Blocks(mut f) => {
                    let direct = (f.independent && buf.len() >= f.block_max).then_some(&mut *buf);
                    let mut direct_len = usize::MAX;
                    let more = self.next_block(&mut f, direct, &mut direct_len)?;
                    self.state = if more {
                        State::Blocks(f)
                    } else {
                        State::Between
                    };
                    if direct_len != usize::MAX && direct_len > 0 {
                        return Ok(direct_len);
                    }
                }
                State::Done => return Ok(0),
                State::Failed(kind, msg) => {
                    self.state = State::Failed(kind, msg.clone());
                    return Err(io::Error::new(kind, msg));
                }
            }
        }
    }
}

impl<R: BufRead> Read for Lz4FrameReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        match self.step(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                // Source errors (a dropped connection, say) keep their kind for the retry
                // logic, but the reader stays failed: its position in the frame is lost.
                self.state = State::Failed(e.kind(), e.to_string());
                self.cbuf = Vec::new();
                self.out = Vec::new();
                self.start = 0;
                self.end = 0;
                Err(e)
            }
        }
    }
}

/// Where decompressed blocks go: `buf[start..end]` is output not yet handed out.
struct Out<'a> {
    buf: &'a mut Vec<u8>,
    start: &'a mut usize,
    end: &'a mut usize,
}

fn le32_of(b: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w)
}

/// Checks block `n` (at byte offset `at`) against its checksum and decompresses it, into
/// `direct` when given (independent blocks), else into `out`.
#[allow(clippy::too_many_arguments)]
fn decode_block(
    f: &mut Frame,
    data: &[u8],
    stored: Option<u32>,
    out: &mut Out<'_>,
    n: u64,
    at: u64,
    raw: bool,
    direct: Option<&mut [u8]>,
    direct_len: &mut usize,
) -> io::Result<()> {
    let size = data.len();
    if let Some(stored) = stored {
        let computed = xxh32(data, 0);
        if stored != computed {
            return Err(corrupt(format!(
                "block {n} at byte offset {at}: block checksum mismatch (stored \
                 {stored:#010x}, computed {computed:#010x})"
            )));
        }
    }
    let bad = |e: &dyn std::fmt::Display| {
        corrupt(format!(
            "block {n} at byte offset {at}: the compressed data is damaged ({e})"
        ))
    };
    // Where the block's plaintext goes.
    let plain: &[u8] = match direct {
        Some(dst) if f.independent => {
            let dst = &mut dst[..f.block_max];
            let len = if raw {
                dst[..size].copy_from_slice(data);
                size
            } else {
                lz4::decompress(data, dst).map_err(|e| bad(&e))?
            };
            *direct_len = len;
            &dst[..len]
        }
        _ => {
            let base = if f.independent {
                0
            } else {
                // Keep the last WINDOW bytes of output in front of the new block.
                let keep = (*out.end).min(WINDOW);
                out.buf.copy_within(*out.end - keep..*out.end, 0);
                keep
            };
            let (dict, dst) = out.buf.split_at_mut(base);
            let dst = &mut dst[..f.block_max];
            let len = if raw {
                dst[..size].copy_from_slice(data);
                size
            } else if base == 0 {
                lz4::decompress(data, dst).map_err(|e| bad(&e))?
            } else {
                lz4::decompress_with_dict(data, dst, dict).map_err(|e| bad(&e))?
            };
            *out.start = base;
            *out.end = base + len;
            &out.buf[base..base + len]
        }
    };
    if f.content_checksum {
        f.hash.update(plain);
    }
    f.produced += plain.len() as u64;
    f.blocks = n;
    if let Some(want) = f.content_size {
        if f.produced > want {
            return Err(corrupt(format!(
                "block {n} at byte offset {at}: the frame holds more than its declared \
                 content size of {want} bytes"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::lz4par::Lz4ParWriter;
    use crate::codec::testdata::{cut_points, flip_points, wal_like};
    use std::io::Write;

    fn ours(data: &[u8]) -> Vec<u8> {
        let mut w = Lz4ParWriter::new(Vec::new(), 2).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn lz4_cli(args: &[&str], data: &[u8]) -> Vec<u8> {
        let mut child = std::process::Command::new("lz4")
            .args(args)
            .args(["-c", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("the lz4 CLI is installed by .ci/setup");
        let mut stdin = child.stdin.take().unwrap();
        let feed = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&feed));
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(out.status.success(), "lz4 {args:?} failed");
        out.stdout
    }

    /// Reads `frame` through a `BufReader` of `cap` bytes with reads of `step` bytes.
    fn read_all(frame: &[u8], cap: usize, step: usize) -> io::Result<Vec<u8>> {
        let mut r = Lz4FrameReader::new(io::BufReader::with_capacity(cap, frame));
        let mut out = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn decode(frame: &[u8]) -> io::Result<Vec<u8>> {
        read_all(frame, 256 * 1024, 256 * 1024)
    }

    /// Byte offsets of every block size word, block checksum, the end mark and the content
    /// checksum of one frame written by our writer (7-byte descriptor, block checksums).
    fn block_marks(frame: &[u8]) -> Vec<usize> {
        let mut marks = vec![0, 4, 6, 7];
        let mut at = 7;
        loop {
            let word = u32::from_le_bytes(frame[at..at + 4].try_into().unwrap());
            marks.push(at);
            marks.push(at + 4);
            if word == 0 {
                marks.push(at + 8);
                return marks;
            }
            let size = (word & !RAW) as usize;
            // The block checksum after the data.
            marks.push(at + 4 + size);
            at += 4 + size + 4;
        }
    }

    #[test]
    fn frames_of_our_writer_and_the_lz4_cli_decode_byte_identical() {
        let data = wal_like(5 * 1024 * 1024 + 333, 1);
        let mut frames = vec![("walkeeper".to_string(), ours(&data))];
        for args in [
            &[][..],
            &["-BD"],
            &["-B4"],
            &["-B5", "-BD"],
            &["-B6"],
            &["-B7", "-BD"],
            &["--content-size"],
            &["-BX"],
            &["-BX", "-BD", "--content-size"],
            &["--no-frame-crc"],
            &["-9"],
        ] {
            frames.push((format!("lz4 {args:?}"), lz4_cli(args, &data)));
        }
        for (what, frame) in &frames {
            for (cap, step) in [(256 * 1024, 256 * 1024), (4096, 1000), (8 << 20, 4 << 20)] {
                let back = read_all(frame, cap, step).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert!(
                    back == data,
                    "{what} (buffer {cap}, reads of {step}) differs"
                );
            }
        }
        for empty in [ours(&[]), lz4_cli(&[], &[])] {
            assert_eq!(decode(&empty).unwrap(), Vec::<u8>::new());
        }
    }

    #[test]
    fn concatenated_and_skippable_frames_are_read_like_the_lz4_cli() {
        let a = wal_like(700_000, 2);
        let b = wal_like(300_000, 3);
        let mut obj = Vec::new();
        obj.extend_from_slice(&0x184D_2A53u32.to_le_bytes());
        obj.extend_from_slice(&5u32.to_le_bytes());
        obj.extend_from_slice(b"hello");
        obj.extend_from_slice(&ours(&a));
        obj.extend_from_slice(&lz4_cli(&["-BD"], &b));
        let mut want = a.clone();
        want.extend_from_slice(&b);
        assert!(decode(&obj).unwrap() == want);
        // A cut skippable frame is as truncated as any other.
        let err = decode(&obj[..10]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[test]
    fn every_cut_of_a_16_mib_segment_is_a_truncation_error() {
        let data = wal_like(16 << 20, 4);
        let frame = ours(&data);
        let marks = block_marks(&frame);
        assert!(marks.len() > 64 * 2, "a 16 MiB segment has 64 blocks");
        let cuts = cut_points(frame.len(), &marks, 150, 5);
        for &cut in &cuts {
            match decode(&frame[..cut]) {
                Ok(out) => panic!(
                    "cut at {cut} of {} decoded cleanly to {} bytes",
                    frame.len(),
                    out.len()
                ),
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {e}");
                    assert!(e.to_string().starts_with("lz4: "), "{e}");
                }
            }
        }
        // Missing only the content checksum, or the end mark and the checksum.
        for missing in [4, 8] {
            let e = decode(&frame[..frame.len() - missing]).unwrap_err();
            assert!(
                e.to_string().contains("content checksum") || missing == 8,
                "{e}"
            );
        }
        assert!(decode(&frame).unwrap() == data);
    }

    #[test]
    fn every_cut_of_an_lz4_cli_frame_is_a_truncation_error() {
        let data = wal_like(6 << 20, 6);
        for args in [&[][..], &["-BD", "-BX", "--content-size"]] {
            let frame = lz4_cli(args, &data);
            for cut in cut_points(frame.len(), &[0, 4, 7, 11, 15], 60, 7) {
                let e = decode(&frame[..cut]).expect_err("a cut frame is an error");
                assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "cut at {cut}: {e}");
            }
        }
    }

    #[test]
    fn every_single_bit_flip_of_a_segment_is_a_corruption_error() {
        let data = wal_like(16 << 20, 8);
        let frame = ours(&data);
        let marks = block_marks(&frame);
        let mut flips = flip_points(frame.len(), &marks, 16, 16, 80, 9);
        // Every bit of the descriptor, of one size word and of the trailer.
        for i in (0..11).chain(frame.len() - 8..frame.len()) {
            for bit in 0..8 {
                flips.push((i, bit));
            }
        }
        let mut damaged = frame.clone();
        for &(i, bit) in &flips {
            damaged[i] ^= 1 << bit;
            let res = decode(&damaged);
            damaged[i] ^= 1 << bit;
            match res {
                Ok(out) => panic!(
                    "flipping bit {bit} of byte {i} went unnoticed ({} bytes out, {})",
                    out.len(),
                    if out == data {
                        "identical"
                    } else {
                        "different"
                    }
                ),
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                    ),
                    "byte {i} bit {bit}: {e}"
                ),
            }
        }
    }

    #[test]
    fn impossible_headers_and_block_sizes_are_rejected() {
        let frame = ours(&wal_like(600_000, 10));
        let err = |bytes: &[u8]| decode(bytes).unwrap_err();
        // Not lz4 at all, and an empty object.
        assert!(err(b"PK\x03\x04 zip").to_string().contains("bad magic"));
        assert_eq!(err(b"").kind(), io::ErrorKind::UnexpectedEof);
        // A block size word above the frame's maximum, with a consistent descriptor.
        let mut big = frame.clone();
        big[7..11].copy_from_slice(&((256 * 1024 + 1) as u32).to_le_bytes());
        assert!(err(&big).to_string().contains("exceeds"), "{}", err(&big));
        // Trailing garbage after the frame.
        let mut tail = frame.clone();
        tail.extend_from_slice(b"xyz!");
        assert!(err(&tail).to_string().contains("bad magic"));
        let mut tail = frame.clone();
        tail.push(0);
        assert_eq!(err(&tail).kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn errors_are_sticky_and_source_errors_keep_their_kind() {
        struct Broken<'a>(&'a [u8]);
        impl Read for Broken<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "reset"));
                }
                let n = buf.len().min(self.0.len()).min(1000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let frame = ours(&wal_like(1 << 20, 11));
        let mut r = Lz4FrameReader::new(io::BufReader::new(Broken(&frame[..frame.len() / 2])));
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionAborted);
        let again = r.read(&mut [0u8; 10]).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::ConnectionAborted);
    }

    /// Not a pass/fail test (timing on a shared machine is noise): compares this reader with
    /// liblz4's frame decoder on a 16 MiB segment. `cargo test --lib lz4frame_speed -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore]
    fn lz4frame_speed_against_liblz4() {
        let data = wal_like(16 << 20, 13);
        let frame = ours(&data);
        let mut buf = vec![0u8; 256 * 1024];
        let time = |f: &mut dyn FnMut()| {
            let t = std::time::Instant::now();
            for _ in 0..20 {
                f();
            }
            t.elapsed() / 20
        };
        let mut theirs = || {
            let mut r = lzzzz::lz4f::BufReadDecompressor::new(io::BufReader::with_capacity(
                256 * 1024,
                &frame[..],
            ))
            .unwrap();
            while r.read(&mut buf).unwrap() > 0 {}
        };
        let liblz4 = time(&mut theirs);
        let mut buf = vec![0u8; 256 * 1024];
        let mut mine = || {
            let mut r = Lz4FrameReader::new(io::BufReader::with_capacity(256 * 1024, &frame[..]));
            while r.read(&mut buf).unwrap() > 0 {}
        };
        let ours_t = time(&mut mine);
        eprintln!("16 MiB segment: liblz4 frame decoder {liblz4:?}, lz4frame {ours_t:?}");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn small_frame() -> Vec<u8> {
            let mut w = Lz4ParWriter::new(Vec::new(), 1).unwrap();
            w.write_all(&wal_like(300_000, 12)).unwrap();
            w.finish().unwrap()
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
                let _ = decode(&bytes);
            }

            #[test]
            fn arbitrary_bytes_after_a_valid_header_never_panic(
                tail in proptest::collection::vec(any::<u8>(), 0..4096),
            ) {
                let mut bytes = small_frame()[..7].to_vec();
                bytes.extend_from_slice(&tail);
                let _ = decode(&bytes);
            }

            #[test]
            fn a_mutated_frame_decodes_exactly_or_fails(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                cut in proptest::option::of(any::<prop::sample::Index>()),
            ) {
                let frame = small_frame();
                let want = decode(&frame).unwrap();
                let mut bad = frame.clone();
                for (at, b) in &edits {
                    let i = at.index(bad.len());
                    bad[i] = *b;
                }
                if let Some(c) = cut {
                    bad.truncate(c.index(bad.len()));
                }
                match decode(&bad) {
                    Ok(out) => prop_assert!(out == want, "a damaged frame decoded to other bytes"),
                    Err(e) => prop_assert!(matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                    )),
                }
            }
        }
    }
}
