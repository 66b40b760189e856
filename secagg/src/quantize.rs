//! Signed fixed-point quantization of n_k·Δ_k into Z_2^64 (or Z_2^32, reduced after masking) with
//! unbiased stochastic rounding, and its decoding.
//!
//! An element x = n_k·Δ_k\[i\] is computed in f64 (exact: a 24-bit f32 mantissa times a count below 2^29
//! fits in 53 bits), clipped to [−C, C], scaled by S = 2^f (exact), and rounded to ⌊xS⌋ + 1 with
//! probability frac(xS), else ⌊xS⌋: E\[q\] = xS (up to the 2^-53 granularity of the uniform draw) and
//! |q − xS| < 1. The integer is stored in two's complement. Decoding a sum over K sites gives
//! Σ_k clip(n_k·Δ_k) with an absolute error below K·2^-f per element, and the FedAvg average
//! Σ n_kΔ_k / Σ n_k with an error below K·2^-f / Σ n_k (plus the final f32 rounding, 2^-24 relative).

use ring::rand::SecureRandom;

use super::prg::{Aes128Ctr, derive_aes_key};
use aes::cipher::{KeyIvInit, StreamCipher};

/// The HKDF-Expand info that turns a rounding seed into an AES-128 key (distinct from the masks'
/// [`super::prg::AES_KEY_LABEL`]; rounding seeds are drawn apart from mask seeds anyway).
pub const ROUNDING_KEY_LABEL: &[u8] = b"fedlnm-secagg-rounding-aes-128-ctr-v1";

/// A source of uniform [0, 1) draws for stochastic rounding (and the differential-privacy noise): an
/// AES-128-CTR keystream, the masks' generator (AES-NI, about three times ChaCha20 here), under a key
/// HKDF-derived from a 32-byte seed with [`ROUNDING_KEY_LABEL`]. The draws need to be unpredictable
/// to nobody but must be unbiased and independent of the data: any pseudorandom function serves.
pub struct RoundingSource {
    cipher: Aes128Ctr,
    buffer: Vec<u8>,
}

const ROUNDING_BUFFER: usize = 4096;

impl RoundingSource {
    /// A source keyed from the operating system's generator.
    ///
    /// # Errors
    /// When the OS generator fails.
    pub fn from_os(rng: &dyn SecureRandom) -> Result<Self, ring::error::Unspecified> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        rng.fill(key.as_mut())?;
        Ok(Self::from_seed(&key))
    }

    /// A reproducible source (a site's seeded rounds, tests and benchmarks).
    #[must_use]
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = derive_aes_key(seed, ROUNDING_KEY_LABEL);
        Self {
            cipher: Aes128Ctr::new((&*key).into(), &[0u8; 16].into()),
            buffer: vec![0u8; ROUNDING_BUFFER],
        }
    }

    /// Fills `out` with uniform draws in [0, 1), 53 random bits each.
    pub fn fill_units(&mut self, out: &mut [f64]) {
        for block in out.chunks_mut(ROUNDING_BUFFER / 8) {
            let bytes = &mut self.buffer[..block.len() * 8];
            bytes.fill(0);
            self.cipher.apply_keystream(bytes);
            // Fixed-size chunks, so that the loop vectorizes (`chunks_exact` + `copy_from_slice` does not).
            let (words, _) = bytes.as_chunks::<8>();
            for (u, w) in block.iter_mut().zip(words) {
                *u = (u64::from_le_bytes(*w) >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0);
            }
        }
    }
}

impl Drop for RoundingSource {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.buffer);
    }
}

/// Quantizes `n_samples · delta[i]` into `out[i]` (same length): clip to ±`clip_bound`, scale by
/// 2^`fractional_bits`, round stochastically, two's complement. Inputs must be finite (the node checks
/// its delta first); a non-finite value is clipped like an out-of-range one.
pub fn quantize_weighted(
    delta: &[f32],
    n_samples: u64,
    clip_bound: f64,
    fractional_bits: u32,
    rounding: &mut RoundingSource,
    out: &mut [u64],
) {
    let scale = super::config::scale(fractional_bits);
    let n = n_samples as f64;
    let mut units = [0f64; ROUNDING_BUFFER / 8];
    for (out_block, delta_block) in out.chunks_mut(units.len()).zip(delta.chunks(units.len())) {
        let units = &mut units[..out_block.len()];
        rounding.fill_units(units);
        for ((o, &d), &u) in out_block.iter_mut().zip(delta_block).zip(units.iter()) {
            let x = (n * f64::from(d)).clamp(-clip_bound, clip_bound);
            // NaN cannot occur after a finite check; map it to 0 rather than to an arbitrary value.
            let x = if x.is_nan() { 0.0 } else { x };
            *o = stochastic_round(x * scale, u) as u64;
        }
    }
}

/// ⌊v⌋ + [u < v − ⌊v⌋]. The configuration's headroom check keeps |v| < 2^62, so the casts are exact:
/// `v as i64` truncates toward zero (one instruction, where `f64::floor` is a libm call on the x86-64
/// baseline, which has no SSE4.1 rounding), and truncation is one above the floor exactly when it
/// lies above v. Below 2^53 every integer is an f64; above it v is itself an integer.
#[inline(always)]
fn stochastic_round(v: f64, u: f64) -> i64 {
    let truncated = v as i64;
    let floor = truncated - i64::from(truncated as f64 > v);
    let frac = v - floor as f64;
    floor + i64::from(u < frac)
}

/// Decodes a sum of quantized values, read as a signed integer ([`crate::Ring::signed`]), back to a
/// real number.
#[must_use]
pub fn dequantize(value: i64, fractional_bits: u32) -> f64 {
    value as f64 / super::config::scale(fractional_bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn exact_dyadic_values_round_trip_and_negatives_are_twos_complement() {
        let mut r = RoundingSource::from_seed(&[1; 32]);
        let mut out = [0u64; 4];
        quantize_weighted(&[0.5, -0.25, 0.0, -3.0], 2, 100.0, 8, &mut r, &mut out);
        assert_eq!(out, [256, (-128i64) as u64, 0, (-1536i64) as u64]);
        assert_eq!(dequantize(out[3] as i64, 8), -6.0);
        // Clipping at ±C.
        quantize_weighted(&[1e30, -1e30, 7.0, -7.0], 1, 5.0, 0, &mut r, &mut out);
        assert_eq!(out, [5, (-5i64) as u64, 5, (-5i64) as u64]);
    }

    #[test]
    fn rounding_draws_are_aes_128_of_the_counter_under_their_own_key() {
        use aes::Aes128;
        use aes::cipher::{BlockEncrypt, KeyInit};
        let seed = [7u8; 32];
        let mut units = vec![0f64; 1030]; // crosses a keystream buffer boundary
        RoundingSource::from_seed(&seed).fill_units(&mut units);
        let key = derive_aes_key(&seed, ROUNDING_KEY_LABEL);
        let cipher = Aes128::new((&*key).into());
        for (j, pair) in units.chunks(2).enumerate() {
            let mut block = (j as u128).to_be_bytes().into();
            cipher.encrypt_block(&mut block);
            for (half, &u) in block.chunks(8).zip(pair) {
                let word = u64::from_le_bytes(half.try_into().unwrap());
                assert_eq!(u, (word >> 11) as f64 / 2f64.powi(53), "draw of block {j}");
            }
        }
        // The masks' key from the same seed is another one: rounding draws never repeat a mask.
        assert_ne!(*key, *derive_aes_key(&seed, super::super::prg::AES_KEY_LABEL));
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // 0.3 at f = 0 rounds to 1 with probability 0.3: over N draws the mean is 0.3 ± 6σ.
        let mut r = RoundingSource::from_seed(&[9; 32]);
        let n = 200_000;
        let mut out = vec![0u64; n];
        quantize_weighted(&vec![-0.3f32; n], 1, 10.0, 0, &mut r, &mut out);
        let mean = out.iter().map(|&q| q as i64 as f64).sum::<f64>() / n as f64;
        let x = f64::from(-0.3f32);
        let sigma = (0.3 * 0.7 / n as f64).sqrt();
        assert!((mean - x).abs() < 6.0 * sigma, "mean {mean} vs {x}");
        assert!(out.iter().all(|&q| q as i64 == 0 || q as i64 == -1));
    }

    proptest! {
        /// The truncation-based floor is `f64::floor`, for any value the headroom check lets through
        /// and any draw.
        #[test]
        fn rounding_floors_like_f64_floor(
            v in prop_oneof![-1e3f64..1e3, -4e18f64..4e18, Just(-0.5), Just(-1.0), Just(0.0), Just(-0.0)],
            u in 0f64..1.0,
        ) {
            let floor = v.floor();
            prop_assert_eq!(stochastic_round(v, u), floor as i64 + i64::from(u < v - floor));
        }

        /// Every quantized element lies within one unit (2^-f) of the clipped input.
        #[test]
        fn error_is_below_one_unit(
            values in proptest::collection::vec(-1e3f32..1e3, 1..64),
            n in 1u64..100_000,
            bits in 0u32..40,
            seed in any::<[u8; 32]>(),
        ) {
            let clip = 1e6;
            let mut r = RoundingSource::from_seed(&seed);
            let mut out = vec![0u64; values.len()];
            quantize_weighted(&values, n, clip, bits, &mut r, &mut out);
            for (&q, &d) in out.iter().zip(&values) {
                let x = (n as f64 * f64::from(d)).clamp(-clip, clip);
                let err = (dequantize(q as i64, bits) - x).abs();
                prop_assert!(err < super::super::config::scale(bits).recip(), "{q} vs {x}");
            }
        }
    }
}
