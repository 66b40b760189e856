//! Numerically careful summation: Neumaier's compensated sum, so that a mean over 10⁷ rows keeps its
//! last digits.

/// A running compensated (Kahan–Babuška–Neumaier) sum.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CompensatedSum {
    sum: f64,
    compensation: f64,
}

impl CompensatedSum {
    pub(crate) fn add(&mut self, value: f64) {
        let t = self.sum + value;
        if self.sum.abs() >= value.abs() {
            self.compensation += (self.sum - t) + value;
        } else {
            self.compensation += (value - t) + self.sum;
        }
        self.sum = t;
    }

    pub(crate) fn total(&self) -> f64 {
        self.sum + self.compensation
    }
}

/// Compensated sum of an iterator of f64.
pub(crate) fn sum(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut acc = CompensatedSum::default();
    for v in values {
        acc.add(v);
    }
    acc.total()
}

/// Compensated mean; `None` on an empty input.
#[must_use]
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| sum(values.iter().copied()) / values.len() as f64)
}

/// Sample variance with ddof = 1 (two-pass, compensated); `None` with fewer than two values.
#[must_use]
pub fn sample_variance(values: &[f64]) -> Option<f64> {
    if values.len() < 2 {
        return None;
    }
    let m = mean(values)?;
    Some(sum(values.iter().map(|v| (v - m) * (v - m))) / (values.len() - 1) as f64)
}

/// Sample covariance with ddof = 1 of two equally long slices; `None` with fewer than two pairs.
pub(crate) fn sample_covariance(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 2 || a.len() != b.len() {
        return None;
    }
    let (ma, mb) = (mean(a)?, mean(b)?);
    Some(sum(a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb))) / (a.len() - 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compensated_sum_recovers_what_naive_sum_loses() {
        let values = [1.0, 1e100, 1.0, -1e100];
        assert_eq!(sum(values), 2.0);
        assert_eq!(values.iter().sum::<f64>(), 0.0);
    }

    #[test]
    fn variance_and_covariance_match_hand_values() {
        let a = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(sample_variance(&a), Some(5.0 / 3.0));
        assert_eq!(sample_covariance(&a, &a), Some(5.0 / 3.0));
        assert_eq!(sample_covariance(&a, &[4.0, 3.0, 2.0, 1.0]), Some(-5.0 / 3.0));
        assert_eq!(sample_variance(&[1.0]), None);
    }
}
