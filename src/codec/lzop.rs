//! A streaming reader for the lzop container (WAL-E's `.lzo` objects), over lzokay's pure-Rust
//! LZO1X decoder. It holds one block at a time and checks every checksum the file carries.

use std::io::{self, Read};

pub const LZOP_MAGIC: [u8; 9] = [0x89, 0x4c, 0x5a, 0x4f, 0x00, 0x0d, 0x0a, 0x1a, 0x0a];

const F_ADLER32_D: u32 = 0x0000_0001;
const F_ADLER32_C: u32 = 0x0000_0002;
const F_H_EXTRA_FIELD: u32 = 0x0000_0040;
const F_CRC32_D: u32 = 0x0000_0100;
const F_CRC32_C: u32 = 0x0000_0200;
const F_H_FILTER: u32 = 0x0000_0800;
const F_H_CRC32: u32 = 0x0000_1000;
/// lzop writes blocks of at most 256 KiB; anything far larger is corruption.
const MAX_BLOCK: usize = 64 << 20;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("lzop: {msg}"))
}

#[derive(Clone, Copy)]
enum Sum {
    Adler,
    Crc,
}

impl Sum {
    fn of(self, data: &[u8]) -> u32 {
        match self {
            Sum::Adler => adler2::adler32_slice(data),
            Sum::Crc => crc32fast::hash(data),
        }
    }
    fn name(self) -> &'static str {
        match self {
            Sum::Adler => "adler32",
            Sum::Crc => "crc32",
        }
    }
}

/// Reads the header bytes while remembering them for the header checksum.
struct HeaderReader<'a, R> {
    inner: &'a mut R,
    seen: Vec<u8>,
}

impl<R: Read> HeaderReader<'_, R> {
    fn bytes(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; n];
        self.inner.read_exact(&mut b).map_err(truncated("header"))?;
        self.seen.extend_from_slice(&b);
        Ok(b)
    }
    fn u8(&mut self) -> io::Result<u8> {
        Ok(self.bytes(1)?[0])
    }
    fn u16(&mut self) -> io::Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> io::Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn truncated(what: &'static str) -> impl Fn(io::Error) -> io::Error {
    move |e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("lzop: truncated {what}"),
            )
        } else {
            e
        }
    }
}

fn read_u32<R: Read>(r: &mut R, what: &'static str) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).map_err(truncated(what))?;
    Ok(u32::from_be_bytes(b))
}

pub struct LzopReader<R: Read> {
    inner: R,
    flags: u32,
    block: Vec<u8>,
    pos: usize,
    compressed: Vec<u8>,
    blocks: u64,
    finished: bool,
}

impl<R: Read> LzopReader<R> {
    /// Reads and checks the header: magic, method (LZO1X), header checksum.
    pub fn new(mut inner: R) -> io::Result<Self> {
        let mut magic = [0u8; 9];
        inner.read_exact(&mut magic).map_err(truncated("magic"))?;
        if magic != LZOP_MAGIC {
            return Err(invalid("not an lzop file (bad magic)".into()));
        }
        let mut h = HeaderReader {
            inner: &mut inner,
            seen: Vec::new(),
        };
        let version = h.u16()?;
        let _lib_version = h.u16()?;
        if version >= 0x0940 {
            let _needed = h.u16()?;
        }
        let method = h.u8()?;
        if !(1..=3).contains(&method) {
            return Err(invalid(format!("compression method {method} is not LZO1X")));
        }
        if version >= 0x0940 {
            let _level = h.u8()?;
        }
        let flags = h.u32()?;
        if flags & F_H_FILTER != 0 {
            return Err(invalid("filtered lzop files are not supported".into()));
        }
        let _mode = h.u32()?;
        let _mtime_low = h.u32()?;
        if version >= 0x0940 {
            let _mtime_high = h.u32()?;
        }
        let name_len = h.u8()? as usize;
        let _name = h.bytes(name_len)?;
        let sum = if flags & F_H_CRC32 != 0 {
            Sum::Crc
        } else {
            Sum::Adler
        };
        let expected = sum.of(&h.seen);
        let stored = read_u32(&mut inner, "header checksum")?;
        if stored != expected {
            return Err(invalid(format!(
                "header checksum mismatch ({} expected {stored:#010x}, got {expected:#010x})",
                sum.name()
            )));
        }
        if flags & F_H_EXTRA_FIELD != 0 {
            let len = read_u32(&mut inner, "extra field")? as usize;
            if len > MAX_BLOCK {
                return Err(invalid(format!("extra field of {len} bytes")));
            }
            let mut extra = vec![0u8; len];
            inner
                .read_exact(&mut extra)
                .map_err(truncated("extra field"))?;
            let stored = read_u32(&mut inner, "extra field checksum")?;
            if stored != sum.of(&extra) {
                return Err(invalid("extra field checksum mismatch".into()));
            }
        }
        Ok(LzopReader {
            inner,
            flags,
            block: Vec::new(),
            pos: 0,
            compressed: Vec::new(),
            blocks: 0,
            finished: false,
        })
    }

    /// Reads the next block into `self.block`; false at the end marker.
    fn next_block(&mut self) -> io::Result<bool> {
        let n = self.blocks + 1;
        let ulen = read_u32(&mut self.inner, "block header")? as usize;
        if ulen == 0 {
            return Ok(false);
        }
        let clen = read_u32(&mut self.inner, "block header")? as usize;
        if ulen > MAX_BLOCK || clen > MAX_BLOCK || clen > ulen {
            return Err(invalid(format!(
                "block {n}: implausible lengths ({clen} compressed, {ulen} uncompressed)"
            )));
        }
        let dsum = match (self.flags & F_ADLER32_D != 0, self.flags & F_CRC32_D != 0) {
            (true, _) => Some((Sum::Adler, read_u32(&mut self.inner, "block checksum")?)),
            (_, true) => Some((Sum::Crc, read_u32(&mut self.inner, "block checksum")?)),
            _ => None,
        };
        let csum = if clen < ulen {
            match (self.flags & F_ADLER32_C != 0, self.flags & F_CRC32_C != 0) {
                (true, _) => Some((Sum::Adler, read_u32(&mut self.inner, "block checksum")?)),
                (_, true) => Some((Sum::Crc, read_u32(&mut self.inner, "block checksum")?)),
                _ => None,
            }
        } else {
            None
        };
        self.compressed.resize(clen, 0);
        self.inner
            .read_exact(&mut self.compressed)
            .map_err(truncated("block data"))?;
        if let Some((sum, stored)) = csum {
            let got = sum.of(&self.compressed);
            if got != stored {
                return Err(invalid(format!(
                    "block {n}: compressed data checksum mismatch ({} expected {stored:#010x}, got {got:#010x})",
                    sum.name()
                )));
            }
        }
        self.block.resize(ulen, 0);
        if clen == ulen {
            self.block.copy_from_slice(&self.compressed);
        } else {
            let out = lzokay::decompress::decompress(&self.compressed, &mut self.block)
                .map_err(|e| invalid(format!("block {n}: LZO1X data is corrupt ({e:?})")))?;
            if out != ulen {
                return Err(invalid(format!(
                    "block {n}: decoded {out} bytes, the header says {ulen}"
                )));
            }
        }
        if let Some((sum, stored)) = dsum {
            let got = sum.of(&self.block);
            if got != stored {
                return Err(invalid(format!(
                    "block {n}: uncompressed data checksum mismatch ({} expected {stored:#010x}, got {got:#010x})",
                    sum.name()
                )));
            }
        }
        self.blocks = n;
        self.pos = 0;
        Ok(true)
    }
}

impl<R: Read> Read for LzopReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.block.len() {
            if self.finished || buf.is_empty() {
                return Ok(0);
            }
            if !self.next_block()? {
                self.finished = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    fn data(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut x: u32 = 12345;
        while v.len() < len {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            if (x >> 16).is_multiple_of(3) {
                v.extend_from_slice(&x.to_le_bytes());
            } else {
                v.extend_from_slice(b"pgbench_accounts row ");
            }
        }
        v.truncate(len);
        v
    }

    fn lzop(args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("lzop")
            .args(args)
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("lzop is installed by .ci/setup");
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let w = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        w.join().unwrap().unwrap();
        assert!(out.status.success());
        out.stdout
    }

    fn decode_in_odd_chunks(file: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = LzopReader::new(file)?;
        let mut out = Vec::new();
        let mut buf = [0u8; 7777];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(out);
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn decodes_lzop_cli_output_byte_identical() {
        let d = data(3 * 1024 * 1024 + 11);
        for args in [&[][..], &["-1"], &["-3"], &["-7"], &["-9"]] {
            let file = lzop(args, &d);
            assert!(decode_in_odd_chunks(&file).unwrap() == d, "lzop {args:?}");
        }
        assert!(decode_in_odd_chunks(&lzop(&[], b"")).unwrap().is_empty());
    }

    #[test]
    fn incompressible_blocks_are_stored_and_round_trip() {
        let mut x: u64 = 99;
        let d: Vec<u8> = (0..600_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(decode_in_odd_chunks(&lzop(&[], &d)).unwrap() == d);
    }

    #[test]
    fn truncation_corruption_and_bad_magic_are_errors() {
        let d = data(1024 * 1024);
        let file = lzop(&[], &d);
        for cut in [file.len() - 1, file.len() - 4, file.len() / 2, 30] {
            assert!(decode_in_odd_chunks(&file[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = file.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        assert!(decode_in_odd_chunks(&bad).is_err());
        let mut bad = file;
        bad[0] = 0;
        let err = decode_in_odd_chunks(&bad).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }
}
