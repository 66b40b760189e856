//! Distributed differential-privacy noise in the integer domain, added by each site before masking
//! (Kairouz, Liu & Steinke, ICML 2021): every site adds discrete Gaussian noise N_Z(0, σ_site²) to each
//! element of its fixed-point update, so that the masked sum carries the noise of all of them, and no
//! party ever sees one site's update without its noise.
//!
//! The sampler is Canonne, Kamath & Steinke's (NeurIPS 2020, algorithm 3): draw Y from a discrete
//! Laplace of scale t = ⌊σ⌋ + 1 (the difference of two geometric draws) and accept it with probability
//! exp(−(|Y| − σ²/t)² / (2σ²)). The geometric draws and the acceptance use f64 arithmetic on 53-bit
//! uniforms from an AES-128-CTR keystream ([`RoundingSource`]); at the scales used here (σ of the order of
//! 2^32 ring units) the relative error of that arithmetic is below 2^-40, far below what the privacy
//! accounting resolves. The discretisation grid (2^-32 of a weight) is so much finer than the noise
//! that no random rotation is needed: rounding moves the clipped norm by at most √d · 2^-32.

use super::quantize::RoundingSource;

/// Draws discrete Gaussian samples of one standard deviation.
pub struct DiscreteGaussian {
    sigma: f64,
    sigma_sq: f64,
    /// The discrete Laplace scale t = ⌊σ⌋ + 1.
    t: f64,
    units: Vec<f64>,
    next: usize,
}

const UNITS: usize = 512;

impl DiscreteGaussian {
    /// A sampler of N_Z(0, σ²); `sigma` must be finite and positive.
    #[must_use]
    pub fn new(sigma: f64) -> Self {
        Self {
            sigma,
            sigma_sq: sigma * sigma,
            t: sigma.floor() + 1.0,
            units: vec![0.0; UNITS],
            next: UNITS,
        }
    }

    /// The standard deviation σ of the continuous Gaussian it discretises.
    #[must_use]
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    fn unit(&mut self, source: &mut RoundingSource) -> f64 {
        if self.next == UNITS {
            source.fill_units(&mut self.units);
            self.next = 0;
        }
        let u = self.units[self.next];
        self.next += 1;
        u
    }

    /// A geometric draw on {0, 1, ...} with success probability 1 − exp(−1/t): ⌊−t·ln(1 − U)⌋.
    fn geometric(&mut self, source: &mut RoundingSource) -> f64 {
        (-self.t * (1.0 - self.unit(source)).ln()).floor()
    }

    /// One sample.
    pub fn sample(&mut self, source: &mut RoundingSource) -> i64 {
        loop {
            // Discrete Laplace of scale t, conditioned so that 0 is not counted twice.
            let (a, b) = (self.geometric(source), self.geometric(source));
            let y = a - b;
            let excess = y.abs() - self.sigma_sq / self.t;
            let accept = (-(excess * excess) / (2.0 * self.sigma_sq)).exp();
            if self.unit(source) < accept {
                // |y| is far below 2^62 (a geometric draw of scale t exceeds 40t with probability
                // e^-40); the cast is exact.
                #[allow(clippy::cast_possible_truncation)]
                return y as i64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moments(sigma: f64, n: usize, seed: u8) -> (f64, f64, Vec<i64>) {
        let mut source = RoundingSource::from_seed(&[seed; 32]);
        let mut gaussian = DiscreteGaussian::new(sigma);
        let samples: Vec<i64> = (0..n).map(|_| gaussian.sample(&mut source)).collect();
        let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        let variance = samples.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        (mean, variance, samples)
    }

    /// The exact pmf of N_Z(0, σ²) at small σ: the sample frequencies match it (chi-square).
    #[test]
    fn small_sigma_matches_the_discrete_gaussian_pmf() {
        let sigma = 1.7;
        let n = 200_000;
        let (_, _, samples) = moments(sigma, n, 3);
        let weight = |k: i64| (-(k * k) as f64 / (2.0 * sigma * sigma)).exp();
        let normaliser: f64 = (-60..=60).map(weight).sum();
        let mut statistic = 0.0;
        for k in -5..=5 {
            let observed = samples.iter().filter(|&&x| x == k).count() as f64;
            let expected = n as f64 * weight(k) / normaliser;
            statistic += (observed - expected).powi(2) / expected;
        }
        // 11 cells (10 degrees of freedom): the 0.999 quantile of chi-square(10) is 29.6.
        assert!(statistic < 29.6, "chi-square {statistic}");
    }

    /// At the ring's scale the variance is σ² and the mean 0, within sampling error.
    #[test]
    fn large_sigma_has_the_stated_variance_and_no_bias() {
        for (sigma, seed) in [(1.0e6, 1), (4.0e9, 2)] {
            let n = 100_000;
            let (mean, variance, _) = moments(sigma, n, seed);
            // Standard errors: σ/√n for the mean, about σ²·√(2/n) for the variance.
            assert!(
                mean.abs() < 5.0 * sigma / (n as f64).sqrt(),
                "σ {sigma}: mean {mean}"
            );
            let relative = (variance / (sigma * sigma) - 1.0).abs();
            assert!(
                relative < 5.0 * (2.0 / n as f64).sqrt(),
                "σ {sigma}: variance ratio off by {relative}"
            );
        }
    }
}
