//! The checks a node runs on its own delta before it is quantized and masked.

use super::RoundConfig;
use crate::{SecAggError, SiteId};
use fedlnm_tensors::NamedTensors;

impl RoundConfig {
    /// The checks a node runs on its own delta before masking: every aggregated tensor present once
    /// with its configured shape (and as many values as the shape holds), no unknown tensor, all values
    /// finite, L2 norm within the bound (without differential privacy: with it the delta is clipped),
    /// and 1 ≤ n_samples ≤ max_sample_count. FedBN-excluded tensors are ignored (they may be absent).
    /// Returns the L2 norm of the aggregated tensors (what differential privacy clips).
    ///
    /// # Errors
    /// [`SecAggError::DeltaShape`], [`SecAggError::DeltaNotFinite`], [`SecAggError::DeltaNormTooLarge`]
    /// or [`SecAggError::SampleCount`].
    pub fn check_delta(
        &self,
        site: SiteId,
        delta: &NamedTensors,
        n_samples: u64,
    ) -> Result<f64, SecAggError> {
        let round = self.round();
        let max = self.config().quantization.max_sample_count;
        if n_samples == 0 || n_samples > max {
            return Err(SecAggError::SampleCount {
                site,
                round,
                n_samples,
                max,
            });
        }
        let shape_error = |reason: String| SecAggError::DeltaShape { site, round, reason };
        for t in &delta.tensors {
            if self.is_excluded(&t.name) {
                continue;
            }
            if !self.aggregated_tensors().iter().any(|s| s.name == t.name) {
                return Err(shape_error(format!("unknown tensor `{}`", t.name)));
            }
        }
        let mut sum_sq = 0.0f64;
        for spec in self.aggregated_tensors() {
            let mut found = delta.tensors.iter().filter(|t| t.name == spec.name);
            let tensor = found
                .next()
                .ok_or_else(|| shape_error(format!("missing tensor `{}`", spec.name)))?;
            if found.next().is_some() {
                return Err(shape_error(format!("tensor `{}` appears twice", spec.name)));
            }
            if tensor.shape != spec.shape {
                return Err(shape_error(format!(
                    "tensor `{}` has shape {:?}, expected {:?}",
                    spec.name, tensor.shape, spec.shape
                )));
            }
            if tensor.values.len() != spec.len() {
                return Err(shape_error(format!(
                    "tensor `{}` has {} elements, expected {} (shape {:?})",
                    spec.name,
                    tensor.values.len(),
                    spec.len(),
                    spec.shape
                )));
            }
            for (index, &v) in tensor.values.iter().enumerate() {
                if !v.is_finite() {
                    return Err(SecAggError::DeltaNotFinite {
                        site,
                        round,
                        tensor: spec.name.clone(),
                        index,
                    });
                }
                sum_sq += f64::from(v) * f64::from(v);
            }
        }
        let norm = sum_sq.sqrt();
        let bound = self.config().max_delta_norm;
        // Under differential privacy the delta is clipped to the privacy norm instead: refusing it
        // would stop the site (a diverging model is then the noise's doing, visible in the metrics).
        if norm > bound && self.config().privacy.is_none() {
            return Err(SecAggError::DeltaNormTooLarge {
                site,
                round,
                norm,
                bound,
            });
        }
        Ok(norm)
    }
}
