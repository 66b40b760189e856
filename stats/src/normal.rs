//! The standard normal distribution and interval helpers used by every reported CI and p-value.

/// z for two-sided 95% intervals, as statistics.md fixes it.
pub const Z_95: f64 = 1.959963984540054;

/// Two-sided p-value of a standard normal statistic: P(|Z| >= |z|) = erfc(|z|/√2).
///
/// `erfc` (musl's, through `libm`) keeps full relative precision in the far tail, where
/// `1 - Φ(z)` would cancel to zero.
#[must_use]
pub fn normal_two_sided_p(z: f64) -> f64 {
    libm::erfc(z.abs() / std::f64::consts::SQRT_2)
}

/// Standard normal CDF Φ(z).
#[must_use]
pub fn normal_cdf(z: f64) -> f64 {
    0.5 * libm::erfc(-z / std::f64::consts::SQRT_2)
}

/// Wilson score 95% interval for a proportion `successes / n` (`statsmodels.stats.proportion
/// .proportion_confint(method="wilson")`). `None` when `n == 0`.
#[must_use]
pub fn wilson_interval(successes: u64, n: u64) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let n_f = n as f64;
    let p = successes as f64 / n_f;
    let z2 = Z_95 * Z_95;
    let denom = 1.0 + z2 / n_f;
    let centre = (p + z2 / (2.0 * n_f)) / denom;
    let half = Z_95 * (p * (1.0 - p) / n_f + z2 / (4.0 * n_f * n_f)).sqrt() / denom;
    // At k = 0 (k = n) the lower (upper) bound is exactly 0 (1); the formula only gets there up to rounding.
    let lower = if successes == 0 { 0.0 } else { centre - half };
    let upper = if successes == n { 1.0 } else { centre + half };
    Some((lower, upper))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sided_p_at_known_quantiles() {
        // Φ⁻¹(0.975) = Z_95, so the two-sided p at Z_95 is 0.05.
        assert!((normal_two_sided_p(Z_95) - 0.05).abs() < 1e-15);
        assert!((normal_two_sided_p(-Z_95) - 0.05).abs() < 1e-15);
        assert!((normal_two_sided_p(0.0) - 1.0).abs() < 1e-15);
        // Far tail keeps relative precision: 2·(1-Φ(10)) = 1.5239706174e-23.
        let p = normal_two_sided_p(10.0);
        assert!((p / 1.523_970_604_832_105e-23 - 1.0).abs() < 1e-9, "{p}");
    }

    #[test]
    fn wilson_is_inside_unit_interval_and_contains_p() {
        for (k, n) in [(0_u64, 10_u64), (10, 10), (3, 10), (1, 1), (500, 1000)] {
            let (lo, hi) = wilson_interval(k, n).unwrap();
            let p = k as f64 / n as f64;
            assert!(
                (0.0..=p).contains(&lo) && (p..=1.0).contains(&hi),
                "{k}/{n}: {lo} {hi}"
            );
        }
        assert_eq!(wilson_interval(0, 0), None);
    }
}
