//! Mask expansion: the ChaCha20 keystream under a 32-byte seed (nonce 0), read as little-endian u64
//! words, so element i of the mask is keystream bytes 8i..8i+8. The stream is seekable, so any slice of
//! the vector is masked independently; long vectors are split over scoped threads.

use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte PRG seed (a pairwise seed s_uv or a derived self-mask seed). Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MaskSeed(pub(crate) [u8; 32]);

impl MaskSeed {
    /// A seed from raw bytes (tests and benchmarks; the protocol derives seeds with HKDF).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for MaskSeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MaskSeed(..)")
    }
}

/// Whether a mask is added to or subtracted from the vector (mod 2^64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    Add,
    Subtract,
}

/// Elements per keystream buffer (8 KiB: the buffer and the target slice stay in L1).
const CHUNK: usize = 1024;
/// The keystream is XORed onto zeros (`apply_keystream_b2b`), which saves clearing the buffer.
static ZEROS: [u8; CHUNK * 8] = [0; CHUNK * 8];
/// Below this many elements per thread, a thread costs more than it saves.
const MIN_PER_THREAD: usize = 1 << 16;

/// Adds or subtracts PRG(seed) for every `(seed, sign)` to `target` (mod 2^64), element i of `target`
/// taking mask element `first_element + i`. Uses up to `threads` scoped threads.
pub fn apply_masks(target: &mut [u64], first_element: u64, masks: &[(&MaskSeed, Sign)], threads: usize) {
    let threads = threads.clamp(1, target.len().div_ceil(MIN_PER_THREAD).max(1));
    if threads == 1 {
        apply_masks_serial(target, first_element, masks);
        return;
    }
    let per_thread = target.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for (i, part) in target.chunks_mut(per_thread).enumerate() {
            let start = first_element + (i * per_thread) as u64;
            scope.spawn(move || apply_masks_serial(part, start, masks));
        }
    });
}

/// The number of threads to use for masking: the machine's available parallelism.
#[must_use]
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn apply_masks_serial(target: &mut [u64], first_element: u64, masks: &[(&MaskSeed, Sign)]) {
    let mut ciphers: Vec<(ChaCha20, Sign)> = masks
        .iter()
        .map(|(seed, sign)| {
            let mut c = ChaCha20::new((&seed.0).into(), &[0u8; 12].into());
            c.seek(first_element * 8);
            (c, *sign)
        })
        .collect();
    let mut buffer = vec![0u8; CHUNK * 8];
    for block in target.chunks_mut(CHUNK) {
        let bytes = &mut buffer[..block.len() * 8];
        for (cipher, sign) in &mut ciphers {
            if cipher.apply_keystream_b2b(&ZEROS[..bytes.len()], bytes).is_err() {
                // Unreachable: both slices have the same length. Fall back to the in-place form.
                bytes.fill(0);
                cipher.apply_keystream(bytes);
            }
            match sign {
                Sign::Add => {
                    for (t, w) in block.iter_mut().zip(bytes.chunks_exact(8)) {
                        *t = t.wrapping_add(le_word(w));
                    }
                }
                Sign::Subtract => {
                    for (t, w) in block.iter_mut().zip(bytes.chunks_exact(8)) {
                        *t = t.wrapping_sub(le_word(w));
                    }
                }
            }
        }
    }
    buffer.zeroize();
}

#[inline(always)]
fn le_word(w: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(w);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference: the whole keystream from the start, no seeking.
    fn reference_mask(seed: &[u8; 32], len: usize) -> Vec<u64> {
        let mut bytes = vec![0u8; len * 8];
        ChaCha20::new(seed.into(), &[0u8; 12].into()).apply_keystream(&mut bytes);
        bytes.chunks_exact(8).map(le_word).collect()
    }

    #[test]
    fn matches_the_rfc8439_keystream() {
        // RFC 8439 §2.4.2 uses counter 1; our stream starts at counter 0, so the test vector with
        // all-zero key/nonce (RFC 8439 A.1, test vector 1, counter 0) applies.
        let mut v = vec![0u64; 2];
        apply_masks(&mut v, 0, &[(&MaskSeed([0; 32]), Sign::Add)], 1);
        assert_eq!(
            v[0].to_le_bytes(),
            [0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90]
        );
        assert_eq!(
            v[1].to_le_bytes(),
            [0x40, 0x5d, 0x6a, 0xe5, 0x53, 0x86, 0xbd, 0x28]
        );
    }

    proptest! {
        /// Masking any slice at its offset, with any thread count, equals the same slice of the
        /// whole-stream mask; subtracting undoes adding.
        #[test]
        fn seekable_and_parallel_masking_match_the_stream(
            seed in any::<[u8; 32]>(),
            len in 1usize..20_000,
            offset_frac in 0.0f64..1.0,
            threads in 1usize..5,
        ) {
            let reference = reference_mask(&seed, len);
            let start = (offset_frac * len as f64) as usize;
            let s = MaskSeed(seed);
            let mut part = vec![5u64; len - start];
            apply_masks(&mut part, start as u64, &[(&s, Sign::Add)], threads);
            for (p, r) in part.iter().zip(&reference[start..]) {
                prop_assert_eq!(*p, r.wrapping_add(5));
            }
            apply_masks(&mut part, start as u64, &[(&s, Sign::Subtract)], threads);
            prop_assert!(part.iter().all(|&p| p == 5));
        }
    }

    #[test]
    fn parallel_split_of_a_long_vector_matches_serial() {
        let len = 3 * MIN_PER_THREAD + 17;
        let a = MaskSeed([3; 32]);
        let b = MaskSeed([4; 32]);
        let masks = [(&a, Sign::Add), (&b, Sign::Subtract)];
        let mut serial = vec![1u64; len];
        apply_masks(&mut serial, 11, &masks, 1);
        let mut parallel = vec![1u64; len];
        apply_masks(&mut parallel, 11, &masks, 4);
        assert_eq!(serial, parallel);
    }
}
