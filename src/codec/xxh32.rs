//! XXH32, the checksum of the lz4 frame format (header checksum and content checksum), written
//! from the xxHash specification. Streaming: feed any number of slices, then [`Xxh32::digest`].

const P1: u32 = 0x9E37_79B1;
const P2: u32 = 0x85EB_CA77;
const P3: u32 = 0xC2B2_AE3D;
const P4: u32 = 0x27D4_EB2F;
const P5: u32 = 0x1656_67B1;

#[derive(Debug, Clone)]
pub struct Xxh32 {
    seed: u32,
    acc: [u32; 4],
    /// Bytes of an incomplete 16-byte stripe.
    buf: [u8; 16],
    buf_len: usize,
    total: u64,
}

#[inline(always)]
fn round(acc: u32, lane: u32) -> u32 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(13)
        .wrapping_mul(P1)
}

#[inline(always)]
fn lane(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

impl Xxh32 {
    pub fn new(seed: u32) -> Self {
        Xxh32 {
            seed,
            acc: [
                seed.wrapping_add(P1).wrapping_add(P2),
                seed.wrapping_add(P2),
                seed,
                seed.wrapping_sub(P1),
            ],
            buf: [0; 16],
            buf_len: 0,
            total: 0,
        }
    }

    fn stripe(acc: &mut [u32; 4], s: &[u8]) {
        acc[0] = round(acc[0], lane(s, 0));
        acc[1] = round(acc[1], lane(s, 4));
        acc[2] = round(acc[2], lane(s, 8));
        acc[3] = round(acc[3], lane(s, 12));
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buf_len > 0 {
            let take = (16 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 16 {
                return;
            }
            let buf = self.buf;
            Self::stripe(&mut self.acc, &buf);
            self.buf_len = 0;
        }
        let mut chunks = data.chunks_exact(16);
        let mut acc = self.acc;
        for s in &mut chunks {
            Self::stripe(&mut acc, s);
        }
        self.acc = acc;
        let rest = chunks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    pub fn digest(&self) -> u32 {
        let mut h = if self.total >= 16 {
            self.acc[0]
                .rotate_left(1)
                .wrapping_add(self.acc[1].rotate_left(7))
                .wrapping_add(self.acc[2].rotate_left(12))
                .wrapping_add(self.acc[3].rotate_left(18))
        } else {
            self.seed.wrapping_add(P5)
        };
        // The specification adds the length modulo 2^32.
        h = h.wrapping_add(self.total as u32);
        let mut rest = &self.buf[..self.buf_len];
        while rest.len() >= 4 {
            h = h
                .wrapping_add(lane(rest, 0).wrapping_mul(P3))
                .rotate_left(17)
                .wrapping_mul(P4);
            rest = &rest[4..];
        }
        for &b in rest {
            h = h
                .wrapping_add(u32::from(b).wrapping_mul(P5))
                .rotate_left(11)
                .wrapping_mul(P1);
        }
        h ^= h >> 15;
        h = h.wrapping_mul(P2);
        h ^= h >> 13;
        h = h.wrapping_mul(P3);
        h ^= h >> 16;
        h
    }

    /// The digest of one slice.
    pub fn oneshot(seed: u32, data: &[u8]) -> u32 {
        let mut h = Xxh32::new(seed);
        h.update(data);
        h.digest()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lzzzz::lz4f;

    #[test]
    fn empty_input_has_the_published_digest() {
        assert_eq!(Xxh32::oneshot(0, b""), 0x02CC_5D05);
    }

    /// liblz4 writes XXH32(content, 0) as the frame's last four bytes: compare against it for
    /// lengths around every stripe and tail boundary, fed in uneven pieces.
    #[test]
    fn matches_the_content_checksum_liblz4_writes() {
        let mut data = Vec::new();
        let mut x: u32 = 12345;
        for _ in 0..70_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.push((x >> 16) as u8);
        }
        let prefs = lz4f::PreferencesBuilder::new()
            .content_checksum(lz4f::ContentChecksum::Enabled)
            .build();
        for len in (0..40).chain([63, 64, 65, 4095, 4096, 65_537, 70_000]) {
            let src = &data[..len];
            let mut frame = Vec::new();
            lz4f::compress_to_vec(src, &mut frame, &prefs).unwrap();
            let want = u32::from_le_bytes(frame[frame.len() - 4..].try_into().unwrap());
            assert_eq!(Xxh32::oneshot(0, src), want, "length {len}");
            let mut h = Xxh32::new(0);
            for piece in src.chunks(7) {
                h.update(piece);
            }
            assert_eq!(h.digest(), want, "length {len} in pieces");
        }
    }
}
