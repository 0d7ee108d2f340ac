//! An lz4 frame writer that compresses independent blocks on several threads.
//!
//! One stream (a WAL segment, a tar partition) is cut into 256 KiB blocks. Each block is
//! compressed on its own (lz4 -1, as `lz4f` level 1 does) by a process-wide pool with one
//! worker thread per core (at most 4), and the results are written in order. Streams that run
//! at once (look-ahead uploads, backup partitions) share that pool, so a process never runs
//! more compression threads than cores. The frame is standard: independent blocks, 256 KiB
//! maximum block size, a block checksum (XXH32 of each block as stored) and the content
//! checksum (XXH32 of the plaintext) — any lz4 reader decodes it, and any damaged byte is
//! detected, even one that would still decompress to the same plaintext.
//!
//! Memory is bounded per process, not per stream: at most `workers + 1` blocks are in the pool
//! at once, whatever the number of streams; a stream that finds the pool full compresses its
//! block on its own thread instead of waiting (so concurrent look-ahead uploads behave like
//! single-threaded ones and hold about one block each). Input of at most one block is
//! compressed on the calling thread and never starts the pool. Buffers freed by one stream are
//! kept for the next (at most 4 of each kind, about 2 MiB).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};

use lzzzz::lz4;

use xxhash_rust::xxh32::{xxh32, Xxh32};

/// Plaintext bytes per block; the frame declares 256 KiB blocks (block size code 5).
pub const BLOCK: usize = 256 * 1024;
const MAGIC: u32 = 0x184D_2204;
/// Version 01, independent blocks, block checksums, content checksum.
const FLG: u8 = 0b0111_0100;
/// Maximum block size 256 KiB.
const BD: u8 = 5 << 4;
/// Set in a block's size word when the block is stored uncompressed.
const RAW: u32 = 1 << 31;
/// Worker threads of the shared pool, at most.
const MAX_THREADS: usize = 4;

/// Compression workers for this process: the machine's cores, capped.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_THREADS)
}

/// A block buffer: always `BLOCK` bytes long (zeroed once, when allocated), of which the
/// first `len` are the block's plaintext. Reused through the free list, so that blocks are
/// neither zeroed nor allocated again.
struct Block {
    data: Vec<u8>,
    len: usize,
}

impl Block {
    fn new() -> Self {
        Block {
            data: vec![0; BLOCK],
            len: 0,
        }
    }
}

/// A compressed block: `out` is always `lz4::max_compressed_size(BLOCK)` long, `out_len` used.
struct Packed {
    out: Vec<u8>,
    out_len: usize,
    raw: bool,
    /// XXH32 of the block as stored (the block checksum).
    sum: u32,
}

impl Packed {
    fn new() -> Self {
        Packed {
            out: vec![0; lz4::max_compressed_size(BLOCK)],
            out_len: 0,
            raw: false,
            sum: 0,
        }
    }
}

/// Buffers no stream is using, shared by every stream of the process: streams that follow one
/// another on different threads (look-ahead uploads, partitions) reuse them instead of each
/// leaving freed blocks behind in its own allocator arena.
static FREE_BLOCKS: Mutex<Vec<Block>> = Mutex::new(Vec::new());
static FREE_PACKED: Mutex<Vec<Packed>> = Mutex::new(Vec::new());
/// Free buffers kept, of each kind.
const FREE_MAX: usize = 4;

fn take_block() -> Block {
    let kept = FREE_BLOCKS.lock().ok().and_then(|mut v| v.pop());
    match kept {
        Some(mut b) => {
            b.len = 0;
            b
        }
        None => Block::new(),
    }
}

fn put_block(b: Block) {
    if b.data.len() != BLOCK {
        return;
    }
    if let Ok(mut v) = FREE_BLOCKS.lock() {
        if v.len() < FREE_MAX {
            v.push(b);
        }
    }
}

fn take_packed() -> Packed {
    let kept = FREE_PACKED.lock().ok().and_then(|mut v| v.pop());
    kept.unwrap_or_else(Packed::new)
}

fn put_packed(p: Packed) {
    if let Ok(mut v) = FREE_PACKED.lock() {
        if v.len() < FREE_MAX {
            v.push(p);
        }
    }
}

struct Job {
    block: Block,
    packed: Packed,
    reply: SyncSender<io::Result<(Block, Packed)>>,
}

fn compress_block(block: &Block, packed: &mut Packed) -> io::Result<()> {
    let input = &block.data[..block.len];
    let n = lz4::compress(input, &mut packed.out, lz4::ACC_LEVEL_DEFAULT)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("lz4: {e}")))?;
    packed.out_len = n;
    // A block that does not shrink is stored as it is.
    packed.raw = n == 0 || n >= input.len();
    packed.sum = if packed.raw {
        xxh32(input, 0)
    } else {
        xxh32(&packed.out[..n], 0)
    };
    Ok(())
}

fn work(job: Job) {
    let Job {
        block,
        mut packed,
        reply,
    } = job;
    let res = compress_block(&block, &mut packed).map(|()| (block, packed));
    // The writer may have given up (error, drop): nobody is waiting for this block then.
    let _ = reply.send(res);
}

/// The process-wide worker pool: a job queue and `default_threads()` threads that live as
/// long as the process. Started on first use.
struct Pool {
    jobs: Mutex<Sender<Job>>,
}

static POOL: OnceLock<io::Result<Pool>> = OnceLock::new();

/// Blocks in the pool (queued, being compressed, or compressed and not yet written out).
static IN_POOL: AtomicUsize = AtomicUsize::new(0);

/// Takes a place in the pool for one block, if one is free.
fn try_reserve(limit: usize) -> bool {
    IN_POOL
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
}

fn release(n: usize) {
    IN_POOL.fetch_sub(n, Ordering::AcqRel);
}

fn start_pool() -> io::Result<Pool> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    for i in 0..default_threads() {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("lz4-{i}"))
            .spawn(move || loop {
                // Hold the lock only to take a job, not while compressing it.
                let job = match rx.lock() {
                    Ok(guard) => guard.recv(),
                    Err(_) => return,
                };
                match job {
                    Ok(job) => work(job),
                    Err(_) => return,
                }
            })?;
    }
    Ok(Pool {
        jobs: Mutex::new(tx),
    })
}

/// The pool, started on first use; an error if its threads could not be started (callers
/// then compress on their own thread).
fn pool() -> io::Result<&'static Pool> {
    let res = POOL.get_or_init(|| {
        let started = start_pool();
        if let Err(e) = &started {
            tracing::warn!(error = %e, "cannot start lz4 worker threads; compressing on one thread");
        }
        started
    });
    res.as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start lz4 workers: {e}")))
}

impl Pool {
    fn send(&self, job: Job) -> io::Result<()> {
        let tx = self
            .jobs
            .lock()
            .map_err(|_| io::Error::other("lz4 worker pool poisoned"))?;
        tx.send(job)
            .map_err(|_| io::Error::other("lz4 worker pool stopped"))
    }
}

/// Writes one lz4 frame into `sink`; [`Lz4ParWriter::finish`] ends it and returns the sink.
pub struct Lz4ParWriter<W: Write> {
    sink: Option<W>,
    threads: usize,
    /// Blocks handed to the pool, oldest first.
    pending: VecDeque<Receiver<io::Result<(Block, Packed)>>>,
    cur: Block,
    hash: Xxh32,
    /// A sink error, kept so that every later call reports it.
    failed: Option<(io::ErrorKind, String)>,
}

impl<W: Write> Lz4ParWriter<W> {
    /// Starts a frame. With `threads` > 1 blocks go to the shared pool (and at most
    /// `threads + 1` are in flight); with 1 they are compressed on the calling thread.
    pub fn new(mut sink: W, threads: usize) -> io::Result<Self> {
        let mut header = Vec::with_capacity(7);
        header.extend_from_slice(&MAGIC.to_le_bytes());
        header.extend_from_slice(&[FLG, BD]);
        header.push((xxh32(&[FLG, BD], 0) >> 8) as u8);
        sink.write_all(&header)?;
        Ok(Lz4ParWriter {
            sink: Some(sink),
            threads: threads.max(1),
            pending: VecDeque::new(),
            cur: take_block(),
            hash: Xxh32::new(0),
            failed: None,
        })
    }

    fn check(&self) -> io::Result<()> {
        match &self.failed {
            Some((kind, msg)) => Err(io::Error::new(*kind, msg.clone())),
            None => Ok(()),
        }
    }

    fn sink(&mut self) -> io::Result<&mut W> {
        self.sink
            .as_mut()
            .ok_or_else(|| io::Error::other("lz4 frame already finished"))
    }

    fn emit(&mut self, block: Block, packed: Packed) -> io::Result<()> {
        let res = {
            let sink = self.sink()?;
            let (word, body) = if packed.raw {
                (block.len as u32 | RAW, &block.data[..block.len])
            } else {
                (packed.out_len as u32, &packed.out[..packed.out_len])
            };
            sink.write_all(&word.to_le_bytes())
                .and_then(|_| sink.write_all(body))
                .and_then(|_| sink.write_all(&packed.sum.to_le_bytes()))
        };
        if let Err(e) = &res {
            self.failed = Some((e.kind(), e.to_string()));
        }
        put_block(block);
        put_packed(packed);
        res
    }

    /// Writes out the oldest block in flight, waiting for it.
    fn emit_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let res = rx.recv();
        release(1);
        let (block, packed) =
            res.map_err(|_| io::Error::other("an lz4 worker thread stopped"))??;
        self.emit(block, packed)
    }

    /// Hands the current block to the workers, or compresses it here when `inline`.
    fn submit(&mut self, inline: bool) -> io::Result<()> {
        if self.cur.len == 0 {
            return Ok(());
        }
        let fresh = take_block();
        let block = std::mem::replace(&mut self.cur, fresh);
        self.cur.len = 0;
        let mut packed = take_packed();
        while self.pending.len() > self.threads {
            self.emit_oldest()?;
        }
        // Without workers (one core, or threads could not be started) compress here.
        let workers = if inline || self.threads == 1 {
            None
        } else {
            pool().ok()
        };
        let reserved = workers.is_some() && try_reserve(self.threads + 1);
        let (Some(workers), true) = (workers, reserved) else {
            // Blocks in the pool are written before this one: keep the order.
            while !self.pending.is_empty() {
                self.emit_oldest()?;
            }
            compress_block(&block, &mut packed)?;
            return self.emit(block, packed);
        };
        let (reply, rx) = mpsc::sync_channel(1);
        let sent = workers.send(Job {
            block,
            packed,
            reply,
        });
        if let Err(e) = sent {
            release(1);
            return Err(e);
        }
        self.pending.push_back(rx);
        Ok(())
    }

    /// Reads `src` to its end straight into the block buffers (no intermediate copy).
    /// Returns the number of bytes read.
    pub fn fill_from<R: Read + ?Sized>(&mut self, src: &mut R) -> io::Result<u64> {
        self.check()?;
        let mut total = 0u64;
        loop {
            if self.cur.len == BLOCK {
                // Only now is it known that another block follows (see `write`).
                let mut probe = [0u8; 1];
                let n = loop {
                    match src.read(&mut probe) {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        other => break other?,
                    }
                };
                if n == 0 {
                    return Ok(total);
                }
                self.submit(false)?;
                self.cur.data[0] = probe[0];
                self.cur.len = 1;
                self.hash.update(&probe);
                total += 1;
            }
            let start = self.cur.len;
            let n = match src.read(&mut self.cur.data[start..]) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.hash.update(&self.cur.data[start..start + n]);
            self.cur.len += n;
            total += n as u64;
        }
    }

    /// Compresses what is left, writes the end mark and the content checksum, and returns
    /// the sink (not flushed: the caller owns it).
    pub fn finish(mut self) -> io::Result<W> {
        self.check()?;
        // Input of one block is compressed here: no thread is started for it.
        let inline = self.pending.is_empty();
        self.submit(inline)?;
        while !self.pending.is_empty() {
            self.emit_oldest()?;
        }
        let digest = self.hash.digest();
        let sink = self.sink()?;
        sink.write_all(&0u32.to_le_bytes())?;
        sink.write_all(&digest.to_le_bytes())?;
        self.sink
            .take()
            .ok_or_else(|| io::Error::other("lz4 frame already finished"))
    }
}

impl<W: Write> Drop for Lz4ParWriter<W> {
    fn drop(&mut self) {
        // Blocks still in the pool (a failed stream) give their places back; the workers drop
        // them when they find nobody waiting.
        release(self.pending.len());
        put_block(std::mem::replace(
            &mut self.cur,
            Block {
                data: Vec::new(),
                len: 0,
            },
        ));
    }
}

impl<W: Write> Write for Lz4ParWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.check()?;
        if buf.is_empty() {
            return Ok(0);
        }
        // A full block is handed on only when more input arrives, so that input of at most
        // one block is compressed by finish() on this thread, without starting workers.
        if self.cur.len == BLOCK {
            self.submit(false)?;
        }
        let start = self.cur.len;
        let n = (BLOCK - start).min(buf.len());
        self.cur.data[start..start + n].copy_from_slice(&buf[..n]);
        self.cur.len += n;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Blocks are cut by size, not by flushes; the frame is complete only after finish().
        self.check()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        let mut x: u32 = 7;
        while v.len() < len {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            // Half compressible text, half noise, so both block kinds occur.
            if (v.len() / BLOCK) % 3 == 2 {
                v.push((x >> 24) as u8);
            } else {
                v.extend_from_slice(format!("row {} value {};", x % 1000, x % 7).as_bytes());
            }
        }
        v.truncate(len);
        v
    }

    fn encode(data: &[u8], threads: usize, piece: usize) -> Vec<u8> {
        let mut w = Lz4ParWriter::new(Vec::new(), threads).unwrap();
        for p in data.chunks(piece.max(1)) {
            w.write_all(p).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn frames_decode_with_liblz4_for_every_size_and_thread_count() {
        for len in [
            0,
            1,
            100,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            3 * BLOCK,
            9 * BLOCK + 77,
        ] {
            let data = sample(len);
            for threads in [1, 2, 3] {
                let frame = encode(&data, threads, 10_000);
                let mut back = Vec::new();
                lzzzz::lz4f::ReadDecompressor::new(&frame[..])
                    .unwrap()
                    .read_to_end(&mut back)
                    .unwrap();
                assert!(back == data, "length {len}, {threads} threads");
                // The same bytes whatever the thread count.
                assert!(frame == encode(&data, 1, 4096), "length {len}");
            }
        }
    }

    /// A reader that returns at most `step` bytes per call.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn reading_a_source_gives_the_same_frame_as_writing_it() {
        for len in [0, 5, BLOCK, BLOCK + 1, 4 * BLOCK, 4 * BLOCK + 3] {
            let data = sample(len);
            for step in [1000, BLOCK, 3 * BLOCK] {
                let mut w = Lz4ParWriter::new(Vec::new(), 2).unwrap();
                let n = w.fill_from(&mut Trickle(&data, step)).unwrap();
                assert_eq!(n, len as u64);
                let frame = w.finish().unwrap();
                assert!(frame == encode(&data, 1, 4096), "length {len}, step {step}");
            }
        }
    }

    #[test]
    fn incompressible_blocks_are_stored_raw() {
        let mut data = vec![0u8; 2 * BLOCK];
        let mut x: u64 = 1;
        for b in data.iter_mut().take(BLOCK) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let frame = encode(&data, 2, BLOCK);
        let first = u32::from_le_bytes(frame[7..11].try_into().unwrap());
        assert_eq!(first, BLOCK as u32 | RAW);
        let mut back = Vec::new();
        lzzzz::lz4f::ReadDecompressor::new(&frame[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
    }

    #[test]
    fn a_sink_error_is_reported_not_swallowed() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 < b.len() {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
                }
                self.0 -= b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = sample(20 * BLOCK);
        let mut w = Lz4ParWriter::new(Full(100_000), 2).unwrap();
        let res = w.write_all(&data).and_then(|_| w.finish().map(|_| ()));
        let err = res.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{err}");
    }
}
