//! The exact clinical statistics engine: every number the study reports, as `../shared/spec/statistics.md`
//! defines it (the choices of scikit-learn, statsmodels and pROC).
//!
//! Pure functions over slices, f64 throughout, no I/O. Undefined values are `None`, never a number.

pub mod binary;
pub mod calibration;
pub mod design;
pub mod kappa;
pub mod logistic;
pub mod meta;
pub mod normal;
mod parallel;
pub mod privacy;
mod radix;
pub mod sum;
mod ties;

/// Test inputs: Marsaglia's xorshift64, a tiny reproducible generator for the unit tests of every
/// module (the statistics engine depends on no random-number crate).
#[cfg(test)]
pub(crate) mod test_random {
    /// The xorshift64 sequence from `state` (not 0).
    pub(crate) fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Uniform draws in [0, 1) from the top 53 bits of [`xorshift`].
    pub(crate) fn uniform(state: u64) -> impl FnMut() -> f64 {
        let mut next = xorshift(state);
        move || (next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub use normal::{Z_95, normal_two_sided_p, wilson_interval};

/// What can be wrong with the input of a statistic. Each variant names the offending position.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StatsError {
    /// No rows at all.
    #[error("no rows: the statistic needs at least one observation")]
    Empty,
    /// Two columns that must pair up row by row have different lengths.
    #[error("length mismatch: {left_name} has {left} rows but {right_name} has {right}")]
    LengthMismatch {
        left_name: &'static str,
        left: usize,
        right_name: &'static str,
        right: usize,
    },
    /// A score is NaN or outside [0, 1].
    #[error("score at row {row} is {value}, expected a finite number in [0, 1]")]
    ScoreOutOfRange { row: usize, value: f64 },
    /// A value that must be finite is not.
    #[error("{what} at row {row} is not a finite number")]
    NotFinite { what: &'static str, row: usize },
    /// An ordinal code outside the declared scale 0..k-1.
    #[error("{what} at row {row} is {value}, outside the declared scale 0..{k}")]
    CodeOutOfRange {
        what: &'static str,
        row: usize,
        value: usize,
        k: usize,
    },
    /// A declared ordinal scale with fewer than two categories.
    #[error("the declared scale has k = {k} categories; kappa needs k >= 2")]
    ScaleTooSmall { k: usize },
    /// A declared ordinal scale too large to hold its k×k agreement tables.
    #[error("the declared scale has k = {k} categories; at most {max} are supported")]
    ScaleTooLarge { k: usize, max: usize },
}
