//! Mask expansion: PRG(seed) as a seekable stream of little-endian words of the ring's width (u64 in
//! Z_2^64, u32 in Z_2^32), so element i of a mask is keystream bytes 8i..8i+8 (4i..4i+4) and any
//! slice of the vector is masked independently; long vectors are split over scoped threads. The
//! protocol's generator is AES-128-CTR ([`Generator::PROTOCOL`]); ChaCha20, the generator before it,
//! stays selectable so that benchmarks compare both in one run.
//!
//! AES-128-CTR: key k = HKDF-Expand(PRK = seed, info = "fedlnm-secagg-prg-aes-128-ctr-v1", L = 16)
//! (RFC 5869 §2.3; one HMAC-SHA256 block, truncated; the seed is already a uniform 32-byte HKDF output,
//! so it is a valid PRK). Keystream block j = AES-128_k(j), j a 128-bit big-endian counter from 0, so
//! mask elements 2j and 2j+1 are the two halves of block j (in Z_2^32, elements 4j..4j+3 are its four
//! quarters). A counter never repeats under a key: a stream is far shorter than 2^128 blocks, and every
//! key belongs to one (instance, pair) or (instance, site), the HKDF salt covering the configuration
//! hash (which names the ring).

use crate::Ring;
use aes::Aes128;
use aes::cipher::{BlockEncrypt, KeyInit};
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use fedlnm_tensors::parallel::for_each_part_of_at_least;
use ring::hmac;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

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

/// How a seed is expanded into a mask. Every party of an instance must use the same one: the
/// configuration hash includes [`Generator::PROTOCOL`]'s [`Generator::id`], so a node and an aggregator
/// built with different generators refuse each other's first message (`ConfigMismatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generator {
    /// ChaCha20 (RFC 8439), key = seed, nonce = 0, block counter from 0: the generator of configuration
    /// hashes that name no generator. Kept for comparison; the protocol does not use it.
    ChaCha20,
    /// AES-128-CTR keyed by HKDF-Expand(seed, [`AES_KEY_LABEL`]), counter block j = j (see the module
    /// documentation). AES-NI when the CPU has it (x86/x86_64, detected at run time).
    Aes128Ctr,
}

/// The HKDF-Expand info that turns a mask seed into an AES-128 key; distinct from the protocol's
/// other HKDF domains ("mask", "enc", "self"), and versioned.
pub const AES_KEY_LABEL: &[u8] = b"fedlnm-secagg-prg-aes-128-ctr-v1";

impl Generator {
    /// The generator every instance uses: about three times ChaCha20's throughput with AES-NI.
    pub const PROTOCOL: Self = Self::Aes128Ctr;

    /// The name the configuration hash includes.
    #[must_use]
    pub fn id(self) -> &'static str {
        match self {
            Self::ChaCha20 => "chacha20-rfc8439-key=seed-nonce=0-u64le",
            Self::Aes128Ctr => "aes-128-ctr-hkdf-v1-ctr128be=0-u64le",
        }
    }

    /// The implementation this CPU gets (the crates choose at run time; their `*_force_soft` cfgs,
    /// which this workspace does not set, would override it).
    #[must_use]
    pub fn backend(self) -> &'static str {
        #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
        {
            match self {
                Self::ChaCha20 if std::arch::is_x86_feature_detected!("avx2") => "AVX2",
                Self::ChaCha20 => "SSE2",
                Self::Aes128Ctr if std::arch::is_x86_feature_detected!("aes") => "AES-NI",
                Self::Aes128Ctr => "software (fixsliced, constant time)",
            }
        }
        #[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
        {
            match self {
                Self::ChaCha20 => "portable",
                // aes 0.8 uses the ARMv8 instructions only when built with `--cfg aes_armv8`.
                Self::Aes128Ctr => "software (fixsliced, constant time)",
            }
        }
    }
}

/// Elements per keystream buffer (8 KiB of u64 elements: the buffer and the target slice stay in L1).
const CHUNK: usize = 1024;
/// The keystream is XORed onto zeros (`apply_keystream_b2b`), which saves clearing the buffer.
static ZEROS: [u8; CHUNK * 8] = [0; CHUNK * 8];
/// Below this many elements per thread, a thread costs more than it saves.
const MIN_PER_THREAD: usize = 1 << 16;

pub(crate) type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// Adds or subtracts PRG(seed) for every `(seed, sign)` to `target`, element i of `target` taking
/// mask element `first_element + i`, with the protocol's generator. A mask element is a word of
/// `ring`'s width (8 or 4 keystream bytes, little-endian), added mod 2^64: for Z_2^32 the caller
/// reduces the result mod 2^32 (2^32 divides 2^64, so the reduced sum is the sum in Z_2^32). Uses up
/// to `threads` scoped threads.
pub fn apply_masks(
    target: &mut [u64],
    first_element: u64,
    masks: &[(&MaskSeed, Sign)],
    ring: Ring,
    threads: usize,
) {
    apply_masks_with(Generator::PROTOCOL, ring, target, first_element, masks, threads);
}

/// [`apply_masks`] with a chosen generator (benchmarks and tests; the protocol uses
/// [`Generator::PROTOCOL`]).
pub fn apply_masks_with(
    generator: Generator,
    ring: Ring,
    target: &mut [u64],
    first_element: u64,
    masks: &[(&MaskSeed, Sign)],
    threads: usize,
) {
    for_each_part_of_at_least(target, threads, MIN_PER_THREAD, |part, start| {
        apply_masks_serial(generator, ring, part, first_element + start as u64, masks);
    });
}

fn apply_masks_serial(
    generator: Generator,
    ring: Ring,
    target: &mut [u64],
    first_element: u64,
    masks: &[(&MaskSeed, Sign)],
) {
    match generator {
        Generator::ChaCha20 => {
            let streams = masks.iter().map(|(seed, sign)| {
                let mut cipher = ChaCha20::new((&seed.0).into(), &[0u8; 12].into());
                cipher.seek(first_element * ring.bytes() as u64);
                (cipher, *sign)
            });
            match ring {
                Ring::Z2_64 => add_streams::<8, _>(target, streams.collect()),
                Ring::Z2_32 => add_streams::<4, _>(target, streams.collect()),
            }
        }
        Generator::Aes128Ctr => {
            let keys: Vec<(Aes128, Sign)> = masks
                .iter()
                .map(|(seed, sign)| (Aes128::new((&*aes_key(seed)).into()), *sign))
                .collect();
            match ring {
                Ring::Z2_64 => add_aes_streams::<2>(target, first_element, &keys),
                Ring::Z2_32 => add_aes_streams::<4>(target, first_element, &keys),
            }
        }
    }
}

/// The AES-128-CTR masks of `keys` added to (or subtracted from) `target`, element i taking mask
/// element `first_element + i`, `E` elements per 16-byte block (2 for Z_2^64, 4 for Z_2^32). The
/// block cipher is run directly over a buffer of counter blocks (the `ctr` crate's
/// keystream-XOR-zeros path ran at about half the speed): one buffer of counters per chunk serves
/// every key, and the backend encrypts many blocks per call (AES-NI, eight at a time). Same stream
/// as [`Aes128Ctr`]: block j = AES_k(j as a 128-bit big-endian integer).
fn add_aes_streams<const E: usize>(target: &mut [u64], first_element: u64, keys: &[(Aes128, Sign)]) {
    // A chunk of CHUNK elements starting inside a block spans CHUNK / E + 1 blocks.
    let capacity = CHUNK / E + 1;
    let skip = (first_element % E as u64) as usize;
    let mut counter = u128::from(first_element / E as u64);
    let mut counters = vec![aes::Block::default(); capacity];
    let mut keystream = vec![aes::Block::default(); capacity];
    for chunk in target.chunks_mut(CHUNK) {
        let blocks = (skip + chunk.len()).div_ceil(E);
        for (j, block) in counters[..blocks].iter_mut().enumerate() {
            *block = (counter + j as u128).to_be_bytes().into();
        }
        for (key, sign) in keys {
            let stream = &mut keystream[..blocks];
            if key.encrypt_blocks_b2b(&counters[..blocks], stream).is_err() {
                // Unreachable: both slices have `blocks` blocks. The in-place form cannot fail.
                stream.clone_from_slice(&counters[..blocks]);
                key.encrypt_blocks(stream);
            }
            match sign {
                Sign::Add => add_blocks::<E>(chunk, skip, stream, u64::wrapping_add),
                Sign::Subtract => add_blocks::<E>(chunk, skip, stream, u64::wrapping_sub),
            }
        }
        // Chunks are a whole number of blocks (E divides CHUNK), so `skip` holds for every chunk.
        counter += (CHUNK / E) as u128;
    }
    for block in &mut keystream {
        block.as_mut_slice().zeroize();
    }
}

/// Word `h` of a 16-byte block holding `E` little-endian words (u64 for E = 2, u32 for E = 4),
/// zero-extended.
#[inline(always)]
fn word<const E: usize>(block: &aes::Block, h: usize) -> u64 {
    if E == 2 {
        let mut word = [0u8; 8];
        word.copy_from_slice(&block[8 * h..8 * h + 8]);
        u64::from_le_bytes(word)
    } else {
        let mut word = [0u8; 4];
        word.copy_from_slice(&block[4 * h..4 * h + 4]);
        u64::from(u32::from_le_bytes(word))
    }
}

/// `target[i] = op(target[i], w[skip + i])`, w the words of `blocks` ([`word`], `E` per block).
/// Written over whole blocks of elements so that the loop vectorizes.
fn add_blocks<const E: usize>(
    target: &mut [u64],
    skip: usize,
    blocks: &[aes::Block],
    op: impl Fn(u64, u64) -> u64,
) {
    let (target, blocks) = if skip > 0 {
        let head = (E - skip).min(target.len());
        let (first, rest) = target.split_at_mut(head);
        for (i, t) in first.iter_mut().enumerate() {
            *t = op(*t, word::<E>(&blocks[0], skip + i));
        }
        (rest, blocks.get(1..).unwrap_or_default())
    } else {
        (target, blocks)
    };
    let (whole, tail) = target.as_chunks_mut::<E>();
    for (elements, block) in whole.iter_mut().zip(blocks) {
        for (h, t) in elements.iter_mut().enumerate() {
            *t = op(*t, word::<E>(block, h));
        }
    }
    for (h, t) in tail.iter_mut().enumerate() {
        *t = op(*t, word::<E>(&blocks[whole.len()], h));
    }
}

/// k = HKDF-Expand(PRK = seed, info = [`AES_KEY_LABEL`], L = 16) = HMAC-SHA256(seed, info ‖ 0x01)[..16]
/// (for L ≤ 32 HKDF-Expand is that one block; written out because it then cannot fail).
fn aes_key(seed: &MaskSeed) -> Zeroizing<[u8; 16]> {
    derive_aes_key(&seed.0, AES_KEY_LABEL)
}

/// HKDF-Expand(PRK = `seed`, info = `label`, L = 16): [`aes_key`]'s derivation under another label.
pub(crate) fn derive_aes_key(seed: &[u8; 32], label: &[u8]) -> Zeroizing<[u8; 16]> {
    let prk = hmac::Key::new(hmac::HMAC_SHA256, seed);
    let mut context = hmac::Context::with_key(&prk);
    context.update(label);
    context.update(&[1]);
    let block = context.sign();
    let mut key = Zeroizing::new([0u8; 16]);
    key.copy_from_slice(&block.as_ref()[..16]);
    key
}

/// Adds (or subtracts) each stream's `W`-byte little-endian words (W = 8 or 4) to `target`, chunk by
/// chunk, all streams per chunk.
fn add_streams<const W: usize, C: StreamCipher>(target: &mut [u64], mut streams: Vec<(C, Sign)>) {
    let mut buffer = vec![0u8; CHUNK * 8];
    for block in target.chunks_mut(CHUNK) {
        let bytes = &mut buffer[..block.len() * W];
        for (cipher, sign) in &mut streams {
            if cipher.apply_keystream_b2b(&ZEROS[..bytes.len()], bytes).is_err() {
                // Unreachable: both slices have the same length. Fall back to the in-place form
                // (which panics rather than leave a word unmasked if the stream ran out).
                bytes.fill(0);
                cipher.apply_keystream(bytes);
            }
            // Fixed-size chunks, so that the loops vectorize (`chunks_exact` + `copy_from_slice`
            // does not).
            let (words, _) = bytes.as_chunks::<W>();
            let le = |w: &[u8; W]| {
                let mut word = [0u8; 8];
                word[..W].copy_from_slice(w);
                u64::from_le_bytes(word)
            };
            match sign {
                Sign::Add => {
                    for (t, w) in block.iter_mut().zip(words) {
                        *t = t.wrapping_add(le(w));
                    }
                }
                Sign::Subtract => {
                    for (t, w) in block.iter_mut().zip(words) {
                        *t = t.wrapping_sub(le(w));
                    }
                }
            }
        }
    }
    buffer.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockEncrypt, KeyInit};
    use proptest::prelude::*;

    fn le_word(w: &[u8]) -> u64 {
        let mut word = [0u8; 8];
        word[..w.len()].copy_from_slice(w);
        u64::from_le_bytes(word)
    }

    const RINGS: [Ring; 2] = [Ring::Z2_64, Ring::Z2_32];

    const GENERATORS: [Generator; 2] = [Generator::ChaCha20, Generator::Aes128Ctr];

    /// Reference: the whole keystream from the start, no seeking, no threads.
    fn reference_mask(generator: Generator, ring: Ring, seed: &[u8; 32], len: usize) -> Vec<u64> {
        let mut bytes = vec![0u8; len * ring.bytes()];
        match generator {
            Generator::ChaCha20 => {
                ChaCha20::new(seed.into(), &[0u8; 12].into()).apply_keystream(&mut bytes);
            }
            Generator::Aes128Ctr => {
                let key = aes_key(&MaskSeed(*seed));
                Aes128Ctr::new((&*key).into(), &[0u8; 16].into()).apply_keystream(&mut bytes);
            }
        }
        bytes.chunks_exact(ring.bytes()).map(le_word).collect()
    }

    fn mask(generator: Generator, seed: &[u8; 32], first_element: u64, len: usize) -> Vec<u64> {
        mask_in(generator, Ring::Z2_64, seed, first_element, len)
    }

    fn mask_in(
        generator: Generator,
        ring: Ring,
        seed: &[u8; 32],
        first_element: u64,
        len: usize,
    ) -> Vec<u64> {
        let mut v = vec![0u64; len];
        apply_masks_with(
            generator,
            ring,
            &mut v,
            first_element,
            &[(&MaskSeed(*seed), Sign::Add)],
            1,
        );
        v
    }

    fn hex<const N: usize>(s: &str) -> [u8; N] {
        let mut out = [0u8; N];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    #[test]
    fn chacha20_matches_the_rfc8439_keystream() {
        // RFC 8439 §2.4.2 uses counter 1; our stream starts at counter 0, so the test vector with
        // all-zero key/nonce (RFC 8439 A.1, test vector 1, counter 0) applies.
        let v = mask(Generator::ChaCha20, &[0; 32], 0, 2);
        assert_eq!(
            v[0].to_le_bytes(),
            [0x76, 0xb8, 0xe0, 0xad, 0xa0, 0xf1, 0x3d, 0x90]
        );
        assert_eq!(
            v[1].to_le_bytes(),
            [0x40, 0x5d, 0x6a, 0xe5, 0x53, 0x86, 0xbd, 0x28]
        );
    }

    #[test]
    fn aes_ctr_matches_nist_sp800_38a_f51_from_any_offset() {
        // NIST SP 800-38A F.5.1, CTR-AES128.Encrypt: the same crate and counter flavour as the
        // generator, with the published key and initial counter block; every start offset (in bytes,
        // seeking mid-block too) gives the tail of the published ciphertext.
        let key: [u8; 16] = hex("2b7e151628aed2a6abf7158809cf4f3c");
        let counter: [u8; 16] = hex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        let plaintext: [u8; 64] = hex(concat!(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
        ));
        let ciphertext: [u8; 64] = hex(concat!(
            "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff",
            "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee"
        ));
        for start in [0usize, 8, 16, 24, 37, 48] {
            let mut buf = plaintext[start..].to_vec();
            let mut cipher = Aes128Ctr::new((&key).into(), (&counter).into());
            cipher.seek(start as u64);
            cipher.apply_keystream(&mut buf);
            assert_eq!(buf, ciphertext[start..], "start {start}");
        }
    }

    #[test]
    fn aes_ctr_mask_is_the_block_cipher_on_the_counter() {
        // The layout, from the block cipher alone: element 2j ‖ 2j+1 = AES-128_k(j as a 128-bit
        // big-endian integer), k = HKDF-Expand(seed, label, 16).
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let first = 1u64 << 33; // a block index past 2^32: no 32-bit counter wraps
        let v = mask(Generator::Aes128Ctr, &seed, 2 * first - 1, 5);
        let key = aes_key(&MaskSeed(seed));
        let cipher = Aes128::new((&*key).into());
        for (i, j) in (first - 1..first + 2).enumerate() {
            let mut block = aes::Block::from(u128::from(j).to_be_bytes());
            cipher.encrypt_block(&mut block);
            let words = [le_word(&block[..8]), le_word(&block[8..])];
            // v[0] is the second half of block first−1, v[1..3] block first, v[3..5] block first+1.
            match i {
                0 => assert_eq!(v[0], words[1]),
                1 => assert_eq!(v[1..3], words),
                _ => assert_eq!(v[3..5], words),
            }
        }
    }

    #[test]
    fn z2_32_mask_elements_are_the_four_words_of_each_block() {
        // Element 4j + h of a Z_2^32 mask = little-endian u32 word h of AES-128_k(j); from an
        // element inside a block, past a 32-bit block counter.
        let seed: [u8; 32] = std::array::from_fn(|i| (3 * i) as u8);
        let first = 1u64 << 33;
        let v = mask_in(Generator::Aes128Ctr, Ring::Z2_32, &seed, 4 * first - 3, 11);
        let key = aes_key(&MaskSeed(seed));
        let cipher = Aes128::new((&*key).into());
        let mut expected = Vec::new();
        for j in first - 1..first + 2 {
            let mut block = aes::Block::from(u128::from(j).to_be_bytes());
            cipher.encrypt_block(&mut block);
            expected.extend(block.chunks_exact(4).map(le_word));
        }
        assert_eq!(v, expected[1..]);
        assert!(v.iter().all(|&w| w <= u64::from(u32::MAX)));
        // The same key's Z_2^64 stream reads the same bytes two words at a time.
        let wide = mask(Generator::Aes128Ctr, &seed, 2 * first, 2);
        assert_eq!(wide[0], expected[4] | expected[5] << 32);
    }

    #[test]
    fn aes_key_derivation_matches_an_independent_hkdf() {
        // Computed with Python's hmac/hashlib and `cryptography` (OpenSSL), independently of ring and
        // the RustCrypto crates: k = HMAC-SHA256(00..1f, label ‖ 01)[..16]; the first eight mask words
        // are AES-128-CTR_k(counter 0) read as little-endian u64s.
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let key: [u8; 16] = hex("33e68a72afe37b60def1a755a893d4ed");
        assert_eq!(*aes_key(&MaskSeed(seed)), key);
        assert_eq!(
            mask(Generator::Aes128Ctr, &seed, 0, 8),
            [
                0x2229_6a07_e53e_859c,
                0xb555_14ba_d823_a063,
                0x1acb_03eb_f8c5_c782,
                0x52c6_7643_3d0e_5852,
                0x90b6_bb00_03eb_e691,
                0xaec5_0cbe_8bc6_1ca4,
                0x4425_e347_f643_aef2,
                0x29d3_3f76_e498_63bd,
            ]
        );
    }

    #[test]
    fn aes_stream_is_domain_separated_from_chacha20_and_the_raw_seed() {
        // The AES key is not the seed (nor a prefix of it): the same seed keys ChaCha20 directly.
        let seed = [9u8; 32];
        let key = aes_key(&MaskSeed(seed));
        assert_ne!(key[..], seed[..16]);
        let aes = mask(Generator::Aes128Ctr, &seed, 0, 64);
        assert_ne!(aes, mask(Generator::ChaCha20, &seed, 0, 64));
        let mut raw = vec![0u8; 64 * 8];
        Aes128Ctr::new((&[9u8; 16]).into(), &[0u8; 16].into()).apply_keystream(&mut raw);
        assert_ne!(aes, raw.chunks_exact(8).map(le_word).collect::<Vec<_>>());
        // The label is no other HKDF domain of the protocol, nor a prefix of one.
        for other in [&b"mask"[..], b"enc", b"self"] {
            assert!(!AES_KEY_LABEL.starts_with(other) && !other.starts_with(AES_KEY_LABEL));
        }
        assert_ne!(Generator::ChaCha20.id(), Generator::Aes128Ctr.id());
        assert_eq!(Generator::PROTOCOL, Generator::Aes128Ctr);
    }

    proptest! {
        /// Masking any slice at its offset, with any thread count and either generator, equals the
        /// same slice of the whole-stream mask; subtracting undoes adding.
        #[test]
        fn seekable_and_parallel_masking_match_the_stream(
            seed in any::<[u8; 32]>(),
            len in 1usize..20_000,
            offset_frac in 0.0f64..1.0,
            threads in 1usize..5,
            aes in any::<bool>(),
            wide in any::<bool>(),
        ) {
            let generator = if aes { Generator::Aes128Ctr } else { Generator::ChaCha20 };
            let ring = if wide { Ring::Z2_64 } else { Ring::Z2_32 };
            let reference = reference_mask(generator, ring, &seed, len);
            let start = (offset_frac * len as f64) as usize;
            let s = MaskSeed(seed);
            let mut part = vec![5u64; len - start];
            apply_masks_with(generator, ring, &mut part, start as u64, &[(&s, Sign::Add)], threads);
            for (p, r) in part.iter().zip(&reference[start..]) {
                prop_assert_eq!(*p, r.wrapping_add(5));
            }
            apply_masks_with(generator, ring, &mut part, start as u64, &[(&s, Sign::Subtract)], threads);
            prop_assert!(part.iter().all(|&p| p == 5));
        }

        /// Distinct seeds give distinct streams (a collision in 16 words would be a 2^-1024 event).
        #[test]
        fn distinct_seeds_give_distinct_streams(
            a in any::<[u8; 32]>(),
            b in any::<[u8; 32]>(),
            offset in 0u64..1 << 30, // ChaCha20's stream ends at 2^35 words
        ) {
            prop_assume!(a != b);
            for generator in GENERATORS {
                prop_assert_ne!(mask(generator, &a, offset, 16), mask(generator, &b, offset, 16));
            }
        }
    }

    #[test]
    fn parallel_split_of_a_long_vector_matches_serial() {
        let len = 3 * MIN_PER_THREAD + 17;
        let a = MaskSeed([3; 32]);
        let b = MaskSeed([4; 32]);
        let masks = [(&a, Sign::Add), (&b, Sign::Subtract)];
        for generator in GENERATORS {
            for ring in RINGS {
                let mut serial = vec![1u64; len];
                apply_masks_with(generator, ring, &mut serial, 11, &masks, 1);
                let mut parallel = vec![1u64; len];
                apply_masks_with(generator, ring, &mut parallel, 11, &masks, 4);
                assert_eq!(serial, parallel);
            }
        }
    }

    #[test]
    fn many_keys_of_both_signs_mask_as_each_stream_alone() {
        // Nine seeds, five added and four subtracted, with one buffer of counters per chunk
        // serving every key; from an odd element, on one and three threads.
        let seeds: Vec<MaskSeed> = (0..9u8).map(|i| MaskSeed([i.wrapping_mul(37); 32])).collect();
        let signs = |i: usize| {
            if i.is_multiple_of(2) {
                Sign::Add
            } else {
                Sign::Subtract
            }
        };
        let (first, len) = (3u64, 2 * MIN_PER_THREAD + 1001);
        let masks: Vec<(&MaskSeed, Sign)> = seeds.iter().enumerate().map(|(i, s)| (s, signs(i))).collect();
        for ring in RINGS {
            let mut expected = vec![7u64; len];
            for (i, seed) in seeds.iter().enumerate() {
                let stream = reference_mask(Generator::Aes128Ctr, ring, &seed.0, first as usize + len);
                for (e, w) in expected.iter_mut().zip(&stream[first as usize..]) {
                    *e = match signs(i) {
                        Sign::Add => e.wrapping_add(*w),
                        Sign::Subtract => e.wrapping_sub(*w),
                    };
                }
            }
            for threads in [1, 3] {
                let mut v = vec![7u64; len];
                apply_masks(&mut v, first, &masks, ring, threads);
                assert_eq!(v, expected, "{ring}, {threads} threads");
            }
        }
    }

    #[test]
    fn apply_masks_uses_the_protocol_generator() {
        let seed = [5u8; 32];
        let mut v = vec![0u64; 40];
        apply_masks(&mut v, 3, &[(&MaskSeed(seed), Sign::Add)], Ring::Z2_64, 1);
        assert_eq!(v, mask(Generator::PROTOCOL, &seed, 3, 40));
    }
}
