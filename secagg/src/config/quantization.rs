//! The ring of an instance's masked vectors and the fixed-point quantization into it: Z_2^64 for
//! every input, or Z_2^32 for weighted deltas with less headroom ([`QuantizationConfig::z2_32`]).

use serde::{Deserialize, Serialize};

/// The ring the masked vectors live in: Z_2^64, or Z_2^32 for training instances that want half the
/// bytes and half the mask stream (Flower's SecAgg+ ring), at the price of less headroom
/// ([`QuantizationConfig::z2_32`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ring {
    /// Z_2^64: every input kind.
    #[default]
    #[serde(rename = "z2_64")]
    Z2_64,
    /// Z_2^32: weighted deltas only ([`crate::InputKind::WeightedDelta`]).
    #[serde(rename = "z2_32")]
    Z2_32,
}

impl Ring {
    /// k of Z_2^k.
    #[must_use]
    pub fn bits(self) -> u32 {
        match self {
            Self::Z2_64 => 64,
            Self::Z2_32 => 32,
        }
    }

    /// Bytes per element on the wire.
    #[must_use]
    pub fn bytes(self) -> usize {
        self.bits() as usize / 8
    }

    /// Largest sum the signed (two's complement) reading of an element can hold: 2^(k−1) − 1.
    #[must_use]
    pub fn max_signed(self) -> u64 {
        (1u64 << (self.bits() - 1)) - 1
    }

    /// An element of Z_2^64 reduced into this ring and read as a signed (two's complement) integer:
    /// sums may be computed in Z_2^64 and reduced at the end, since 2^k divides 2^64.
    #[must_use]
    pub fn signed(self, value: u64) -> i64 {
        match self {
            Self::Z2_64 => value as i64,
            Self::Z2_32 => i64::from(value as u32 as i32),
        }
    }
}

impl std::fmt::Display for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Z_2^{}", self.bits())
    }
}

/// Fixed-point quantization of n_k·Δ_k into the ring (two's complement).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizationConfig {
    /// Scale 2^fractional_bits: one unit in the ring is 2^-fractional_bits of n_k·Δ_k.
    pub fractional_bits: u32,
    /// Each element of n_k·Δ_k is clipped to [−clip_bound, clip_bound] before quantization.
    pub clip_bound: f64,
    /// Largest sample count n_k a site may declare.
    pub max_sample_count: u64,
    /// The ring of the masked vectors (Z_2^64 unless chosen).
    #[serde(default)]
    pub ring: Ring,
}

impl Default for QuantizationConfig {
    /// Z_2^64, 2^-32 resolution and |n_k·Δ_k| ≤ 2^20 per element: 50 sites use at most 2^57.7 of the
    /// 2^63 available, and, e.g., n_k = 10^5 samples with |Δ| ≤ 10 per weight pass unclipped.
    fn default() -> Self {
        Self {
            fractional_bits: 32,
            clip_bound: 1_048_576.0,
            max_sample_count: 1_000_000,
            ring: Ring::Z2_64,
        }
    }
}

/// |n_k·Δ_k| per element that a Z_2^32 instance passes unclipped ([`QuantizationConfig::z2_32`]).
pub const Z2_32_CLIP_BOUND: f64 = 4096.0;

impl QuantizationConfig {
    /// The quantization of a training instance of `sites` participants in `ring`: the default in
    /// Z_2^64, [`Self::z2_32`] in Z_2^32.
    #[must_use]
    pub fn for_ring(ring: Ring, sites: usize) -> Self {
        match ring {
            Ring::Z2_64 => Self::default(),
            Ring::Z2_32 => Self::z2_32(sites),
        }
    }

    /// The Z_2^32 quantization for an instance of `sites` participants: |n_k·Δ_k| ≤ 2^12 per element
    /// (a site of 1,000 patients passes |Δ| ≤ 4 per weight unclipped, one of 10,000 |Δ| ≤ 0.4), and
    /// the finest resolution that cannot wrap, f = 18 − ⌈log2 sites⌉ (13 at 30 sites, 11 at 100, 10
    /// at 255): sites · (2^12 · 2^f + 1) ≤ 2^30 + sites < 2^31. Stochastic rounding keeps the decoded
    /// average unbiased; its error per element is below sites · 2^-f / Σ n_k (at 30 sites of 500
    /// patients, 2 · 10^-7 at worst, about 3 · 10^-8 typically).
    #[must_use]
    pub fn z2_32(sites: usize) -> Self {
        let log2_sites = sites.max(1).next_power_of_two().trailing_zeros();
        Self {
            fractional_bits: 18u32.saturating_sub(log2_sites),
            clip_bound: Z2_32_CLIP_BOUND,
            max_sample_count: 1_000_000,
            ring: Ring::Z2_32,
        }
    }
}
