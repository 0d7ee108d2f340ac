//! Test inputs shared by the codec tests: WAL-like segments and damaged copies of objects.

/// A small deterministic generator (xorshift64).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A WAL-segment-like file of `len` bytes: 8 KiB pages, each with a page header (magic, timeline,
/// address) and records of text, counters and random fields, some pages only partly filled
/// (zero tail), some full-page images of random bytes — about as compressible as real WAL.
pub fn wal_like(len: usize, seed: u64) -> Vec<u8> {
    const PAGE: usize = 8192;
    let mut rng = Rng(seed | 1);
    let mut v = Vec::with_capacity(len + PAGE);
    let mut page_no: u64 = 0;
    let mut xid: u32 = 1000;
    while v.len() < len {
        let start = v.len();
        v.extend_from_slice(&0xD110u16.to_le_bytes());
        v.extend_from_slice(&[if page_no == 0 { 2 } else { 0 }, 0]);
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&(0x0100_0000u64 + page_no * PAGE as u64).to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        let kind = rng.below(10);
        let fill = match kind {
            0 => rng.below(PAGE),
            _ => PAGE,
        };
        while v.len() - start < fill {
            xid = xid.wrapping_add(1);
            let r = rng.next();
            if kind == 1 {
                // A full-page image: mostly incompressible.
                v.extend_from_slice(&r.to_le_bytes());
                continue;
            }
            v.extend_from_slice(&(48u32 + (r as u32 % 64)).to_le_bytes());
            v.extend_from_slice(&xid.to_le_bytes());
            v.extend_from_slice(&(r >> 16).to_le_bytes()[..6]);
            v.extend_from_slice(
                format!(
                    "INSERT pgbench_history {} {} {};",
                    xid % 97,
                    r % 10_000,
                    r % 7
                )
                .as_bytes(),
            );
        }
        v.resize(start + PAGE, 0);
        page_no += 1;
    }
    v.truncate(len);
    v
}

/// Cut points for an object whose structure has boundaries at `marks`: every mark, 1..4 bytes
/// on either side of it, `random` random offsets, and the last 1..8 bytes missing.
pub fn cut_points(len: usize, marks: &[usize], random: usize, seed: u64) -> Vec<usize> {
    let mut cuts = std::collections::BTreeSet::new();
    for &m in marks {
        for d in -4i64..=4 {
            let c = m as i64 + d;
            if c >= 0 && (c as usize) < len {
                cuts.insert(c as usize);
            }
        }
    }
    for k in 1..=8 {
        if len >= k {
            cuts.insert(len - k);
        }
    }
    let mut rng = Rng(seed | 1);
    for _ in 0..random {
        cuts.insert(rng.below(len));
    }
    cuts.into_iter().collect()
}

/// Bit positions (byte, bit) to flip: every byte of the first `head` and last `tail` bytes at
/// one bit each, every byte within 8 bytes after each mark, and `random` random ones.
pub fn flip_points(
    len: usize,
    marks: &[usize],
    head: usize,
    tail: usize,
    random: usize,
    seed: u64,
) -> Vec<(usize, u8)> {
    let mut rng = Rng(seed | 1);
    let mut set = std::collections::BTreeSet::new();
    for i in 0..head.min(len) {
        set.insert(i);
    }
    for i in len.saturating_sub(tail)..len {
        set.insert(i);
    }
    for &m in marks {
        for i in m..(m + 8).min(len) {
            set.insert(i);
        }
    }
    let mut flips: Vec<(usize, u8)> = set.into_iter().map(|i| (i, rng.below(8) as u8)).collect();
    for _ in 0..random {
        flips.push((rng.below(len), rng.below(8) as u8));
    }
    flips
}
