//! Differential-privacy accounting: the Rényi-DP (RDP) accountant of the Poisson-subsampled Gaussian
//! mechanism (Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian
//! Mechanism"), composed over steps and converted to (ε, δ) with the bound of Canonne, Kamath & Steinke
//! 2020 (Proposition 12 of arXiv:2004.00010 v4; also Asoodeh et al. 2020, eq. 20).
//!
//! It computes what Google's `dp-accounting` `RdpAccountant` computes, with the same orders and the same
//! series, so that a study's ε can be checked against that independent implementation (the tests do, to
//! 1e-6). A federated round with per-site clipping to C and Gaussian noise of standard deviation σ·C on
//! the sum, every site taking part, is one step with sampling rate 1 and noise multiplier σ.

use std::f64::consts::{LN_2, PI};

/// The RDP orders of `dp-accounting`'s default: 1.1, 1.2, …, 10.9, then 11 … 63, 128, 256, 512, 1024.
#[must_use]
pub fn default_orders() -> Vec<f64> {
    let mut orders: Vec<f64> = (1..100).map(|x| 1.0 + f64::from(x) / 10.0).collect();
    orders.extend((11..64).map(f64::from));
    orders.extend([128.0, 256.0, 512.0, 1024.0]);
    orders
}

/// A parameter the accountant cannot use, named.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrivacyError {
    #[error("the sampling rate must be in [0, 1], not {0}")]
    SamplingRate(f64),
    #[error("the noise multiplier must be a non-negative number, not {0}")]
    NoiseMultiplier(f64),
    #[error("δ must be in [0, 1), not {0}")]
    Delta(f64),
    #[error("RDP orders must be finite and above 1, not {0}")]
    Order(f64),
}

/// The privacy spent by a sequence of Poisson-subsampled Gaussian steps, as RDP at each order.
#[derive(Debug, Clone, PartialEq)]
pub struct RdpAccountant {
    orders: Vec<f64>,
    rdp: Vec<f64>,
}

impl Default for RdpAccountant {
    fn default() -> Self {
        let orders = default_orders();
        let rdp = vec![0.0; orders.len()];
        Self { orders, rdp }
    }
}

impl RdpAccountant {
    /// An accountant over `orders` (each finite and > 1).
    ///
    /// # Errors
    /// [`PrivacyError::Order`].
    pub fn with_orders(orders: Vec<f64>) -> Result<Self, PrivacyError> {
        if let Some(&bad) = orders.iter().find(|&&a| !(a.is_finite() && a > 1.0)) {
            return Err(PrivacyError::Order(bad));
        }
        let rdp = vec![0.0; orders.len()];
        Ok(Self { orders, rdp })
    }

    /// Adds `steps` steps of the Gaussian mechanism with noise multiplier `noise_multiplier` (noise
    /// standard deviation over the L2 sensitivity) on a Poisson sample of rate `sampling_rate`.
    ///
    /// # Errors
    /// A sampling rate outside [0, 1] or a negative or non-finite noise multiplier.
    pub fn compose_poisson_gaussian(
        &mut self,
        sampling_rate: f64,
        noise_multiplier: f64,
        steps: u64,
    ) -> Result<(), PrivacyError> {
        if !(0.0..=1.0).contains(&sampling_rate) {
            return Err(PrivacyError::SamplingRate(sampling_rate));
        }
        if !(noise_multiplier >= 0.0 && noise_multiplier.is_finite()) {
            return Err(PrivacyError::NoiseMultiplier(noise_multiplier));
        }
        #[allow(clippy::cast_precision_loss)] // Step counts are far below 2^53.
        let steps = steps as f64;
        for (rdp, &order) in self.rdp.iter_mut().zip(&self.orders) {
            *rdp += steps * poisson_gaussian_rdp(sampling_rate, noise_multiplier, order);
        }
        Ok(())
    }

    /// The RDP at each order so far.
    #[must_use]
    pub fn rdp(&self) -> &[f64] {
        &self.rdp
    }

    #[must_use]
    pub fn orders(&self) -> &[f64] {
        &self.orders
    }

    /// The smallest ε such that the steps so far are (ε, δ)-DP, and the order that gives it.
    ///
    /// # Errors
    /// [`PrivacyError::Delta`] outside [0, 1).
    pub fn epsilon(&self, delta: f64) -> Result<(f64, f64), PrivacyError> {
        if !(0.0..1.0).contains(&delta) {
            return Err(PrivacyError::Delta(delta));
        }
        if delta == 0.0 {
            let epsilon = if self.rdp.iter().all(|&r| r == 0.0) {
                0.0
            } else {
                f64::INFINITY
            };
            return Ok((epsilon, 0.0));
        }
        let mut best = (f64::INFINITY, self.orders.first().copied().unwrap_or(0.0));
        for (&order, &rdp) in self.orders.iter().zip(&self.rdp) {
            let epsilon = if rdp < 0.0 {
                0.0
            } else if delta * delta + (-rdp).exp_m1() > 0.0 {
                // Bounded through the KL divergence: δ ≤ sqrt(1 − exp(−KL)).
                0.0
            } else if order > 1.01 {
                rdp + (-1.0 / order).ln_1p() - (delta * order).ln() / (order - 1.0)
            } else {
                f64::INFINITY
            };
            if epsilon < best.0 {
                best = (epsilon, order);
            }
        }
        Ok((best.0.max(0.0), best.1))
    }
}

/// RDP at `order` of one step of the Gaussian mechanism with noise multiplier `sigma` on a Poisson sample
/// of rate `q`.
fn poisson_gaussian_rdp(q: f64, sigma: f64, order: f64) -> f64 {
    if q == 0.0 {
        return 0.0;
    }
    if sigma == 0.0 {
        return f64::INFINITY;
    }
    if q == 1.0 {
        return order / (2.0 * sigma * sigma);
    }
    let log_a = if order.fract() == 0.0 {
        log_a_integer(q, sigma, order)
    } else {
        log_a_fractional(q, sigma, order)
    };
    log_a / (order - 1.0)
}

/// log(exp(x) + exp(y)).
fn log_add(x: f64, y: f64) -> f64 {
    let (low, high) = if x < y { (x, y) } else { (y, x) };
    if low == f64::NEG_INFINITY {
        return high;
    }
    (low - high).exp().ln_1p() + high
}

/// log of the binomial coefficient (n choose k), for real n and k.
fn log_comb(n: f64, k: f64) -> f64 {
    libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - libm::lgamma(n - k + 1.0)
}

/// log(erfc(x)), accurate far into the tail.
fn log_erfc(x: f64) -> f64 {
    let value = libm::erfc(x);
    if value > 1e-300 {
        return value.ln();
    }
    // The asymptotic series of log(erfc(x)) at +∞ (dp-accounting's fallback), exact to double
    // precision where erfc itself underflows (x > 26).
    -PI.ln() / 2.0 - x.ln() - x * x - 0.5 * x.powi(-2) + 0.625 * x.powi(-4) - 37.0 / 24.0 * x.powi(-6)
        + 353.0 / 64.0 * x.powi(-8)
}

/// log(A_α) for an integer order α (Mironov et al. 2019, Section 3.3): a finite binomial sum.
fn log_a_integer(q: f64, sigma: f64, order: f64) -> f64 {
    let mut log_a = f64::NEG_INFINITY;
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let mut i = 0.0;
    while i <= order {
        let log_coefficient = log_comb(order, i) + i * log_q + (order - i) * log_1mq;
        log_a = log_add(log_a, log_coefficient + (i * i - i) / (2.0 * sigma * sigma));
        i += 1.0;
    }
    log_a
}

/// The most terms of the series for a fractional order (as dp-accounting).
const MAX_FRACTIONAL_TERMS: u32 = 1000;

/// log(A_α) for a fractional order (Mironov et al. 2019, Section 3.3): two converging series, summed
/// until both terms decrease and fall 30 nats below the total. An order whose series does not converge
/// gives +∞ (it is then never the optimal order).
fn log_a_fractional(q: f64, sigma: f64, order: f64) -> f64 {
    let (mut log_a0, mut log_a1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let z0 = sigma * sigma * (1.0 / q - 1.0).ln() + 0.5;
    let (log_q, log_1mq) = (q.ln(), (-q).ln_1p());
    let (mut last_s0, mut last_s1) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    let scale = std::f64::consts::SQRT_2 * sigma;
    for step in 0..MAX_FRACTIONAL_TERMS {
        let i = f64::from(step);
        let log_coefficient = log_comb(order, i);
        let j = order - i;
        let log_t0 = log_coefficient + i * log_q + j * log_1mq;
        let log_t1 = log_coefficient + j * log_q + i * log_1mq;
        let log_e0 = -LN_2 + log_erfc((i - z0) / scale);
        let log_e1 = -LN_2 + log_erfc((z0 - j) / scale);
        let log_s0 = log_t0 + (i * i - i) / (2.0 * sigma * sigma) + log_e0;
        let log_s1 = log_t1 + (j * j - j) / (2.0 * sigma * sigma) + log_e1;
        log_a0 = log_add(log_a0, log_s0);
        log_a1 = log_add(log_a1, log_s1);
        let total = log_add(log_a0, log_a1);
        if log_s0 < last_s0 && log_s1 < last_s1 && log_s0.max(log_s1) < total - 30.0 {
            return total;
        }
        last_s0 = log_s0;
        last_s1 = log_s1;
    }
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn without_sampling_the_gaussian_mechanism_has_its_closed_form() {
        // q = 1: RDP α/(2σ²) at every order, composed linearly.
        let mut accountant = RdpAccountant::default();
        accountant.compose_poisson_gaussian(1.0, 2.0, 10).unwrap();
        for (&order, &rdp) in accountant.orders().iter().zip(accountant.rdp()) {
            assert!((rdp - 10.0 * order / 8.0).abs() < 1e-12);
        }
        let (epsilon, order) = accountant.epsilon(1e-5).unwrap();
        assert!(epsilon > 0.0 && order > 1.0);
    }

    #[test]
    fn nothing_spent_is_epsilon_zero_and_bad_parameters_are_named() {
        let accountant = RdpAccountant::default();
        assert_eq!(accountant.epsilon(1e-5).unwrap().0, 0.0);
        assert_eq!(accountant.epsilon(0.0).unwrap().0, 0.0);
        let mut accountant = RdpAccountant::default();
        assert_eq!(
            accountant.compose_poisson_gaussian(1.5, 1.0, 1),
            Err(PrivacyError::SamplingRate(1.5))
        );
        assert!(matches!(
            accountant.compose_poisson_gaussian(0.1, f64::NAN, 1),
            Err(PrivacyError::NoiseMultiplier(_))
        ));
        assert_eq!(accountant.epsilon(1.0), Err(PrivacyError::Delta(1.0)));
        assert_eq!(
            RdpAccountant::with_orders(vec![0.5]),
            Err(PrivacyError::Order(0.5))
        );
        // Subsampling amplifies privacy: a smaller rate never spends more.
        let spend = |q| {
            let mut a = RdpAccountant::default();
            a.compose_poisson_gaussian(q, 1.1, 100).unwrap();
            a.epsilon(1e-5).unwrap().0
        };
        assert!(spend(0.01) < spend(0.1) && spend(0.1) < spend(1.0));
    }
}
